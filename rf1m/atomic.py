"""Atomic file writes, with one durability policy for the whole project.

A file appears under its final name whole or not at all: it is written to `<name>.tmp` in the same
folder (a rename is atomic only within one file system), fsynced, renamed over the final name, and
then the folder is fsynced so that the rename itself survives a power cut. A write that raises
leaves no temporary behind and the old file, if any, untouched. Stages that re-run delete stray
`.tmp` files they find, so a killed process costs nothing but the redo.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

TMP = ".tmp"


def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + TMP)


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's entry list is what a rename changes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, final: Path, durable: bool = True) -> None:
    """Rename a finished temporary into place. Without `durable` (big shard tars, where the fsyncs cost
    ~15%) a killed process still cannot leave a half file under the final name; a power cut could."""
    if durable:
        fsync_path(tmp)
    os.replace(tmp, final)
    if durable:
        fsync_path(final.parent)


def write_atomic(path: str | Path, data: bytes | Callable[[Path], object]) -> Path:
    """Write `data` (bytes, or a function that writes the file at the path it is given) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        if isinstance(data, (bytes, bytearray)):
            tmp.write_bytes(data)
        else:
            data(tmp)
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj) -> Path:
    return write_atomic(path, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False, default=str).encode())
