"""Object storage (S3 and anything fsspec speaks) with the guarantees local files have.

Stages write local files; a team past one machine publishes them to a bucket and reads them back
from it (`webdataset`, `datasets.load_dataset`, pyarrow, DuckDB all take fsspec URLs). Three
things are not free on object storage, and this module is where they are paid for:

- **Nothing partial under a final name.** fsspec's writers upload what they have when the `with`
  block ends, exception or not, so a writer that dies mid-file leaves a short object under its real
  name. Here every object is written to a temporary key beside it (`<name>.tmp-<id>`, which no
  `*.tar` / `*.parquet` / `*.json` pattern matches), copied into place server-side (a copy is atomic)
  and the temporary deleted; on failure the temporary is deleted and the final name untouched.
- **Completion markers last.** A shard folder's `*.stats.json` and a release's `manifest.json` say
  "whole"; `upload_tree` writes them after everything they describe, so a reader that trusts the
  marker never meets a missing part.
- **Credentials from the environment only** (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional
  `AWS_SESSION_TOKEN`, `AWS_ENDPOINT_URL` for a non-AWS server): never from params.yaml, never
  printed, and no other credential source is consulted (no `~/.aws` files, no instance-metadata
  credentials).

Local paths pass straight through to `rf1m.atomic` (and plain file reads), so a stage written
against these few functions (`read_bytes`, `read_table`, `list_names`, `remove`, `put_atomic`) takes
a folder or a bucket prefix alike and behaves locally exactly as before.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from rf1m import atomic, tables

TMP_INFIX = ".tmp-"  # temporary keys: <name>.tmp-<hex>
# completion markers, written by upload_tree after everything else, in this order (a shard is done
# before its batch, a release's files before their manifest)
MARKERS = ("*.stats.json", "batch.json", "manifest.json")
_S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def is_url(path: str | Path) -> bool:
    """True for `scheme://...` other than file://; a plain path is local."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def storage_options(url: str) -> dict:
    """fsspec options for `url`, from the environment; names the missing variables, never values."""
    if not url.startswith(("s3://", "s3a://")):
        return {}
    missing = [k for k in _S3_ENV if not os.environ.get(k)]
    if missing:
        raise PermissionError(f"{url.split('/')[2]}: set {' and '.join(missing)} in the environment "
                              "(credentials are read from there only; AWS_ENDPOINT_URL for a non-AWS server)")
    opts = {"key": os.environ["AWS_ACCESS_KEY_ID"], "secret": os.environ["AWS_SECRET_ACCESS_KEY"],
            "token": os.environ.get("AWS_SESSION_TOKEN")}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    return opts


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a URL; fresh listings (no stale directory cache)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **storage_options(url))
    fs.invalidate_cache()
    return fs, path


def join(base: str | Path, *parts: str) -> str:
    """`base/part/...` for a folder or a URL alike (a URL is not a `Path`: it would lose a slash)."""
    return "/".join([str(base).rstrip("/"), *parts])


def read_bytes(path: str | Path) -> bytes:
    if not is_url(path):
        return Path(path).read_bytes()
    fs, p = filesystem(str(path))
    return fs.cat_file(p)


def read_table(table: tables.Table, path: str | Path):
    """`tables.read` for a URL too: the file is fetched into a temporary folder and read there, and a
    contract error names the URL, not the temporary copy."""
    if not is_url(path):
        return tables.read(table, path)
    with tempfile.TemporaryDirectory(prefix="rf1m-read-") as d:
        local = Path(d) / str(path).rsplit("/", 1)[-1]
        local.write_bytes(read_bytes(path))
        try:
            return tables.read(table, local)
        except tables.ContractError as e:
            raise tables.ContractError(str(e).replace(str(local), str(path))) from None


def list_names(folder: str | Path) -> list[str]:
    """The names directly under a folder or prefix (temporaries included); none when it is absent."""
    if not is_url(folder):
        return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).is_dir() else []
    fs, path = filesystem(str(folder))
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def remove(path: str | Path) -> None:
    """Delete one file or object; an absent one is no error."""
    if not is_url(path):
        Path(path).unlink(missing_ok=True)
        return
    fs, p = filesystem(str(path))
    try:
        fs.rm_file(p)
    except FileNotFoundError:
        pass


def put_atomic(url: str | Path, data: bytes | Callable) -> str:
    """Write `data` (bytes, or a function that writes into the binary file object it is given) to
    `url` whole or not at all. Local paths go through `rf1m.atomic.write_atomic`."""
    if not is_url(url):
        if callable(data):
            def write_file(tmp: Path, fn=data):
                with open(tmp, "wb") as f:
                    fn(f)
            return str(atomic.write_atomic(url, write_file))
        return str(atomic.write_atomic(url, data))
    put_all([(str(url), data)])
    return str(url)


def put_all(items: list[tuple[str, bytes | Callable | Path]]) -> None:
    """Publish several objects (bytes, a writer function, or a local file streamed up) in two phases:
    every one is uploaded to its temporary key first (the slow part), then all are copied into place
    server-side in the order given, then the temporaries deleted. A writer killed while uploading
    leaves temporaries only; one that fails leaves none, and of the final names only those copied
    before the failure (so put a completion marker last)."""
    staged = []
    try:
        for url, data in items:
            fs, path = filesystem(url)
            tmp = f"{path}{TMP_INFIX}{uuid.uuid4().hex[:12]}"
            staged.append((fs, tmp, path))
            if isinstance(data, Path):
                fs.put_file(str(data), tmp)
            elif callable(data):
                with fs.open(tmp, "wb") as f:
                    data(f)
            else:
                fs.pipe_file(tmp, bytes(data))
        for fs, tmp, path in staged:
            fs.copy(tmp, path)
    finally:
        for fs, tmp, _ in staged:
            try:
                fs.rm_file(tmp)
            except FileNotFoundError:
                pass


def sweep_tmp(url: str) -> list[str]:
    """Delete the temporary keys a killed writer left under `url` (the local sweep is `*.tmp`)."""
    fs, path = filesystem(url)
    stale = [p for p in fs.find(path) if TMP_INFIX in p.rsplit("/", 1)[-1]]
    for p in stale:
        fs.rm_file(p)
    return stale


def marker_rank(rel: str) -> int:
    """0 for data, 1.. for the completion markers in MARKERS order."""
    name = rel.rsplit("/", 1)[-1]
    return next((i + 1 for i, m in enumerate(MARKERS) if fnmatch.fnmatch(name, m)), 0)


def upload_tree(local: str | Path, url: str, progress: Callable[[int], None] | None = None) -> list[str]:
    """Publish a local folder (a batch's shards, a labels folder, a release) under `url`: each file
    atomically, tars before the sidecars that index them, completion markers last, local temporaries
    (`*.tmp`) skipped. Re-running overwrites
    every object with the same bytes under the same name, so it never duplicates."""
    local = Path(local)
    if not local.is_dir():
        raise FileNotFoundError(f"{local}: no such folder to upload")
    sweep_tmp(url)
    files = sorted((p for p in local.rglob("*") if p.is_file() and not p.name.endswith(atomic.TMP)),
                   key=lambda p: (marker_rank(p.name), p.suffix != ".tar", str(p)))  # a tar before its sidecar
    done = []
    for p in files:
        rel = p.relative_to(local).as_posix()
        put_atomic(join(url, rel), p.read_bytes())
        done.append(rel)
        if progress:
            progress(1)
    return done


def download_tree(url: str, local: str | Path) -> list[str]:
    """Copy every object under `url` (temporaries excluded) into the local folder, atomically each."""
    fs, path = filesystem(url)
    base = path.rstrip("/") + "/"
    got = []
    for p in sorted(fs.find(path)):
        rel = p[len(base):]
        if TMP_INFIX in rel.rsplit("/", 1)[-1]:
            continue
        atomic.write_atomic(Path(local) / rel, fs.cat_file(p))
        got.append(rel)
    return got


def _open_for_webdataset(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    fs, path = filesystem(url)
    return fs.open(path, mode, block_size=max(bufsize, 1 << 22))


def register_webdataset(schemes: tuple[str, ...] = ("s3",)) -> None:
    """Let `webdataset.WebDataset("s3://...")` read through fsspec (webdataset has no s3 handler;
    `gopen_schemes` is its documented extension point)."""
    import sys

    import webdataset  # noqa: F401  (loads the module; `webdataset.gopen` is shadowed by the function)

    for s in schemes:
        sys.modules["webdataset.gopen"].gopen_schemes[s] = _open_for_webdataset
