"""WebDataset shards that are complete or invisible, with a Parquet sidecar for random access.

Layout of a batch folder (written by the generate stage, read by everything after it):

    <batch>/shard-000003-00.tar       the samples (plain WebDataset: `<key>.<member>` entries)
    <batch>/shard-000003-00.parquet   sidecar: recipe columns + byte offset/size of every member
    <batch>/shard-000003.stats.json   written last: the job is complete (fingerprint, parts, counts)

A job (one planned group of samples) may spill into several parts when `maxsize` is reached. Every
file is written under a `.tmp` name and renamed when whole, so a reader never sees half a tar and a
killed run leaves only `.tmp` files, which the next run deletes.

The tars are written by `TarStream`, not `tarfile`: the bytes are the same (USTAR, mtime 0, mode 0444;
a test compares them), but tarfile spends about 20 us of Python per member building a header, which
made it the bottleneck of shard writing and release compiling (10 members a sample).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rf1m import schema
from rf1m.atomic import commit, tmp_path, write_json


def _ustar_template() -> tuple[bytes, int]:
    """tarfile's own USTAR header for an empty name and size 0 (so the fields we do not vary are exactly
    what this Python's tarfile writes), with the checksum field blanked, and its byte sum."""
    info = tarfile.TarInfo("")
    info.size, info.mtime, info.mode = 0, 0, 0o444
    head = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
    head[148:156] = b" " * 8  # the checksum is summed over eight spaces in its place
    return bytes(head), sum(head) - sum(head[124:136])


_HEAD, _HEAD_SUM = _ustar_template()
_END = tarfile.BLOCKSIZE * 2  # two zero blocks end the archive, padded to a whole record (tar -b20)


class TarStream:
    """An append-only USTAR writer whose output is byte-identical to tarfile's for our members
    (regular files, mtime 0, mode 0444), at a few microseconds per member: the header is a template
    with the name, size and checksum filled in. Names over 100 bytes, or sizes USTAR cannot hold, go
    through tarfile's own header code (which splits or refuses them exactly as before).
    Optionally hashes what it writes, so a release manifest needs no second read of the file."""

    def __init__(self, file, sha256: bool = False):
        self.file, self.offset = file, 0
        self.hash = hashlib.sha256() if sha256 else None

    @staticmethod
    def header(name: str, size: int) -> bytes:
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) > 100 or size >= 8 ** 11:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = size, 0, 0o444
            return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
        size_field = b"%011o\0" % size
        checksum = _HEAD_SUM + sum(raw) + sum(size_field)
        return b"".join((raw.ljust(100, b"\0"), _HEAD[100:124], size_field, _HEAD[136:148],
                         b"%06o\0 " % checksum, _HEAD[156:]))

    def _write(self, data) -> None:
        self.file.write(data)
        if self.hash is not None:
            self.hash.update(data)
        self.offset += len(data)

    def add(self, name: str, data: bytes) -> int:
        """Append one member; returns the offset of its data in the archive."""
        head = self.header(name, len(data))
        pad = -len(data) % tarfile.BLOCKSIZE
        self._write(b"".join((head, data, b"\0" * pad)) if pad else head + data)
        return self.offset - len(data) - pad

    def add_entries(self, entries: bytes) -> None:
        """Append whole entries (headers, data, padding) copied from another archive."""
        if len(entries) % tarfile.BLOCKSIZE:
            raise ValueError("tar entries come in whole 512-byte blocks")
        self._write(entries)

    def close(self) -> None:
        """End the archive as tarfile does; the caller closes the file."""
        end = _END + -(self.offset + _END) % tarfile.RECORDSIZE
        self._write(b"\0" * end)


class ShardWriter:
    """Writes one job's samples into `<stem>-NN.tar` parts (rolling over at maxcount / maxsize)."""

    def __init__(self, directory: Path, stem: str, maxcount: int = 10_000, maxsize: int = 1 << 40,
                 durable: bool = False, part_digits: int = 2):
        self.dir, self.stem, self.part_digits = Path(directory), stem, part_digits
        self.maxcount, self.maxsize, self.durable = maxcount, maxsize, durable
        self.dir.mkdir(parents=True, exist_ok=True)
        self.parts: list[dict] = []
        self._tar: TarStream | None = None

    def _open(self) -> None:
        name = f"{self.stem}-{len(self.parts):0{self.part_digits}d}"
        self._path = self.dir / f"{name}.tar"
        self._tmp = tmp_path(self._path)
        self._file = open(self._tmp, "wb", buffering=1 << 20)
        self._tar = TarStream(self._file)
        self._rows: list[dict] = []

    def write(self, key: str, members: dict[str, bytes], recipe: dict) -> None:
        """Write one sample; `members` maps a member name (`image.png`) to its encoded bytes."""
        if "." in key:
            raise ValueError(f"sample key {key!r} contains a dot, which WebDataset splits on")
        if self._tar is not None and (len(self._rows) >= self.maxcount or self._tar.offset >= self.maxsize):
            self._close_part()
        if self._tar is None:
            self._open()
        row = {f.name: recipe[f.name] for f in schema.RECIPE}
        row["shard"] = self._path.name
        entries = dict(members)
        entries[schema.RECIPE_MEMBER] = json.dumps(recipe, sort_keys=True, ensure_ascii=False).encode()
        for member, data in entries.items():
            stem = member.split(".", 1)[0]
            row[f"{stem}_offset"], row[f"{stem}_size"] = self._tar.add(f"{key}.{member}", data), len(data)
        self._rows.append(row)

    def _close_part(self) -> None:
        self._tar.close()
        self._file.close()
        sidecar = self._path.with_suffix(".parquet")
        sidecar_tmp = tmp_path(sidecar)
        pq.write_table(pa.Table.from_pylist(self._rows, schema=schema.sidecar_schema()), sidecar_tmp)
        commit(self._tmp, self._path, self.durable)
        commit(sidecar_tmp, sidecar, self.durable)
        self.parts.append({"tar": self._path.name, "count": len(self._rows), "bytes": self._tar.offset})
        self._tar = None

    def close(self) -> list[dict]:
        if self._tar is not None:
            self._close_part()
        return self.parts


def job_stats_path(directory: Path, stem: str) -> Path:
    return Path(directory) / f"{stem}.stats.json"


def finish_job(directory: Path, stem: str, fingerprint: str, parts: list[dict], **extra) -> dict:
    """Mark a job complete: the stats file is the last thing written."""
    stats = {"fingerprint": fingerprint, "parts": parts, "count": sum(p["count"] for p in parts),
             "bytes": sum(p["bytes"] for p in parts), "finished_at": time.time(), **extra}
    write_json(job_stats_path(directory, stem), stats)
    return stats


def remove_job(directory: Path, stem: str) -> None:
    """Delete every trace of a job (complete parts, temporaries, stats) before it is redone."""
    for f in Path(directory).glob(f"{stem}*"):
        if f.name.startswith(f"{stem}-") or f.name.startswith(f"{stem}."):
            f.unlink()


def read_sidecars(directory: Path) -> pa.Table:
    files = sorted(Path(directory).glob("*.parquet"))
    if not files:
        return schema.sidecar_schema().empty_table()
    return pa.concat_tables(pq.read_table(f) for f in files)


def read_member(shard: Path, offset: int, size: int) -> bytes:
    """Random access to `size` bytes at `offset` of a tar (no tar parsing, no reading what lies before)."""
    fd = os.open(shard, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def member_bytes(batch_dir: str | Path, row: Mapping, member: str) -> bytes:
    """One member (`image`, `product`, ..., `recipe`) of the sample a sidecar row describes."""
    return read_member(Path(batch_dir) / row["shard"], row[f"{member}_offset"], row[f"{member}_size"])
