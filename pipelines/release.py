"""The release stage: consensus labels + shards -> an immutable `releases/<version>/` (format: `rf1m.release`).

Splits are by product (no product in two splits) and sticky: a product keeps the split it has in
any release already under the releases root, so a model trained on one version's train split is never
tested on its products in a later version's test split. Only new products are dealt (see
`split_products`). Undecided consensus samples (tied votes) are left out by default and counted.
A version that exists is never overwritten. The compiled version becomes the current one (what
`load_dataset("rf1m")` loads) when it is the newest; `promote` switches it by hand.

Speed (a million samples in minutes, not half an hour): selection, splits, labels and counts work on
Arrow columns, not Python dicts, and each part of each split is written by its own task in a process
pool (`workers`, see `write_part`: a sample's tar entries are copied from its source shard by the
sidecar's offsets, one read a sample, nothing decoded). A part depends only on its own rows, so any
number of workers gives the same bytes as one. The release is built under `<version>.tmp` and renamed
whole: a killed worker fails the compile and leaves nothing under the final name (each part is itself
written under `.tmp` and renamed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing
import os
import shutil
import tarfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

from rf1m import atomic, schema, shards, tables
from rf1m.release import (
    SPLITS,
    card_yaml,
    current_card,
    labels_features,
    list_releases,
    manifest_hash,
    release_dir,
    sha256_file,
    verify,
    version_key,
    write_manifest,
)

TEMPLATES = Path(__file__).with_name("templates")


@dataclass(frozen=True)
class Policy:
    min_annotators: int = 1
    min_confidence: float = 0.0
    simulated: str = "flag"  # "flag": keep, marked source=simulated; "exclude": leave out
    undecided: str = "exclude"  # "exclude": leave out (a tie is a coin flip); "not_available": ship as such


@dataclass(frozen=True)
class ReleaseConfig:
    version: str = "v0.1"
    batches: tuple[str, ...] = ("demo",)
    shards: str = "data/shards"
    labels: str = "data/labels"
    out: str = "releases"
    parent: str | None = None
    splits: tuple[float, ...] = (0.8, 0.1, 0.1)
    seed: int = 0
    policy: Policy = field(default_factory=Policy)
    license: str = "cc-by-nc-4.0"
    maxcount: int = 1000
    workers: int = 0  # processes writing the parts; 0: one per core; 1: no pool, in this process


LABEL_COLUMNS = ("verdict", "reasons", "confidence", "n_annotators", "annotators", "source")
LABELS_JSON = ("reasons", "confidence", "n_annotators", "annotators", "source")  # labels.json, in this order


def kept_by_policy(cons: pa.Table, policy: Policy, excluded: Counter) -> np.ndarray:
    """Which consensus rows the policy keeps; each row left out is counted under the FIRST rule that
    applies, in this order: undecided, min_annotators, min_confidence, simulated."""
    rules = [("min_annotators", pc.less(cons["n_annotators"], policy.min_annotators)),
             ("min_confidence", pc.less(cons["confidence"], policy.min_confidence))]
    if policy.undecided == "exclude":
        rules.insert(0, ("undecided", pc.equal(cons["status"], "undecided")))
    if policy.simulated == "exclude":
        rules.append(("simulated", pc.equal(cons["source"], "simulated")))
    out = np.zeros(cons.num_rows, bool)
    for rule, hit in rules:
        first = hit.to_numpy(zero_copy_only=False) & ~out
        if first.any():
            excluded[rule] += int(first.sum())
        out |= first
    return ~out


def select(cfg: ReleaseConfig) -> tuple[pa.Table, dict, Counter]:
    """Labelled samples that pass the policy, joined with their recipe and shard location (`_batch_dir`),
    in batch and sidecar order; the provenance per batch; how many labelled samples each rule left out."""
    parts, provenance, excluded = [], {}, Counter()
    for batch in cfg.batches:
        cons_file = Path(cfg.labels) / batch / "consensus.parquet"
        if not cons_file.exists():
            raise ValueError(f"no consensus labels for batch {batch!r} ({cons_file}): run annotate consensus")
        cons = tables.read(tables.CONSENSUS, cons_file)
        batch_dir = Path(cfg.shards) / batch
        samples = shards.read_sidecars(batch_dir)
        at = pc.index_in(samples["key"], value_set=cons["key"])  # the sample's consensus row, or null
        labelled = samples.filter(pc.is_valid(at))
        cons = cons.take(at.drop_null())
        keep = kept_by_policy(cons, cfg.policy, excluded)
        part = labelled.filter(keep)
        for name in LABEL_COLUMNS:
            part = part.append_column(name, cons[name].filter(keep))
        parts.append(part.append_column("_batch_dir", pa.array([str(batch_dir)] * part.num_rows, pa.string())))
        agreement = Path(cfg.labels) / batch / "agreement.json"
        push = Path(cfg.labels) / batch / "push.json"
        first = samples.slice(0, 1).to_pylist()
        provenance[batch] = {
            "agreement": json.loads(agreement.read_text()) if agreement.exists() else None,
            "label_studio": json.loads(push.read_text()) if push.exists() else None,
            "generator": {k: first[0][k] for k in ("base_model", "controlnet_model", "model_revision",
                                                   "scheduler", "steps", "guidance", "size")} if first else None,
        }
    rows = pa.concat_tables(parts).combine_chunks()  # one chunk: a take from many chunks copies them all
    if not rows.num_rows:
        raise ValueError(f"no labelled sample passes the release policy (left out: {dict(excluded)})")
    return rows, provenance, excluded


def earlier_splits(root: str | Path) -> dict[str, str]:
    """product_id -> split over every release under `root`, read from their labels Parquet.

    Raises when two releases put a product in different splits: that release already leaks, and
    silently picking one of them would hide it."""
    seen: dict[str, tuple[str, str]] = {}
    for m in sorted(Path(root).glob("*/manifest.json")):
        version = m.parent.name
        if version.endswith(atomic.TMP):  # a compile that died before its rename
            continue
        for split in SPLITS:
            t = tables.read(tables.RELEASE_LABELS, m.parent / "labels" / f"{split}.parquet")
            for pid, s in zip(t["product_id"].to_pylist(), t["split"].to_pylist()):
                first = seen.setdefault(pid, (s, version))
                if first[0] != s:
                    raise ValueError(f"product {pid!r} is in {first[0]} in release {first[1]} but in {s} in "
                                     f"release {version}; splits must be sticky, fix the releases first")
    return {pid: split for pid, (split, _) in seen.items()}


def _hash_unit(seed: int, product_id: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{seed}/{product_id}".encode()).digest()[:8], "big") / 2 ** 64


def split_products(products: dict[str, str], fractions: tuple[float, ...], seed: int,
                   earlier: dict[str, str] | None = None) -> dict[str, str]:
    """product_id -> split, for `products` (product_id -> category).

    A product in `earlier` keeps that split. New products, ordered by category and then by a sha256
    of their id, are dealt one by one to the split furthest below its share of the NEW products
    (stratified among new products only, so old products' splits never steer a new one). The hash
    makes the order independent of labels, so a relabel cannot move anything; the dealing keeps a
    small batch at its fractions (a pure hash threshold leaves a 10% split empty for 25 products one
    time in 7)."""
    earlier = earlier or {}
    out = {pid: earlier[pid] for pid in products if pid in earlier}
    counts: Counter = Counter()
    new = sorted((pid for pid in products if pid not in out), key=lambda p: (products[p], _hash_unit(seed, p)))
    for pid in new:
        n = sum(counts.values()) + 1
        split = max(SPLITS, key=lambda s: fractions[SPLITS.index(s)] * n - counts[s])
        counts[split] += 1
        out[pid] = split
    return out


ENTRIES = (*(m.name for m in schema.MEMBERS), "recipe")  # a sample's tar entries in a source shard, in order


def _block(x: np.ndarray) -> np.ndarray:
    return -(-x // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


class _Sources:
    """Reads byte ranges of source shards, one open file each for the life of a part."""

    def __init__(self):
        self.fds: dict[str, int] = {}

    def read(self, path: str, offset: int, size: int, key: str) -> bytes:
        try:
            fd = self.fds.get(path)
            if fd is None:
                fd = self.fds[path] = os.open(path, os.O_RDONLY)
            data = os.pread(fd, size, offset)
        except OSError as e:
            raise ValueError(f"sample {key!r}: cannot read its members from {path}: {e}") from e
        if len(data) != size:
            raise ValueError(f"sample {key!r}: {path} ends before the members its sidecar records "
                             f"(wanted bytes {offset}-{offset + size}, the file has {offset + len(data)})")
        return data

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def write_part(task: tuple[str, str, int, pa.Table]) -> list[dict]:
    """One release part, `<split>-<index>.tar` and its sidecar, from its rows; top-level so a process
    pool can run it. Returns the part's files with their sha256 (the tar hashed as it is written).

    A sample's entries (member headers, data, padding; then recipe.json) lie one after another in its
    source shard, as ShardWriter writes them, so a sample is one read, copied whole: the members are
    not decoded and their headers not rebuilt. Only label.cls and labels.json are new, inserted before
    recipe.json. A sample whose sidecar offsets are not laid out that way is copied member by member."""
    directory, split, index, rows = task
    tar = Path(directory) / f"{split}-{index:05d}.tar"
    off = {e: rows[f"{e}_offset"].to_numpy() for e in ENTRIES}
    size = {e: rows[f"{e}_size"].to_numpy() for e in ENTRIES}
    lo, end = off[ENTRIES[0]] - tarfile.BLOCKSIZE, off["recipe"] + _block(size["recipe"])
    cut = off["recipe"] - tarfile.BLOCKSIZE - lo  # where recipe.json's header starts in the block
    laid_out = np.ones(rows.num_rows, bool)
    for a, b in zip(ENTRIES, ENTRIES[1:]):
        laid_out &= off[b] == off[a] + _block(size[a]) + tarfile.BLOCKSIZE
    label = pc.index_in(rows["verdict"], value_set=pa.array(schema.VERDICTS)).to_pylist()
    labels_json = rows.select(list(LABELS_JSON)).to_pylist()
    keys = rows["key"].to_pylist()
    sources = pc.binary_join_element_wise(rows["_batch_dir"], rows["shard"], "/").to_pylist()
    inserted = np.zeros(rows.num_rows, np.int64)  # bytes of the two new entries, before recipe.json
    start = np.zeros(rows.num_rows, np.int64)  # where each sample starts in the part
    out_off = {e: np.zeros(rows.num_rows, np.int64) for e in ENTRIES}
    reader, tmp = _Sources(), atomic.tmp_path(tar)
    try:
        with open(tmp, "wb", buffering=1 << 20) as f:
            stream = shards.TarStream(f, sha256=True)
            for i, key in enumerate(keys):
                start[i] = stream.offset
                new = (_entry(f"{key}.label.cls", str(label[i]).encode())
                       + _entry(f"{key}.labels.json", json.dumps(labels_json[i]).encode()))
                inserted[i] = len(new)
                if laid_out[i]:
                    block = reader.read(sources[i], int(lo[i]), int(end[i] - lo[i]), key)
                    if block[257:262] != b"ustar":  # the magic of the header before the first member
                        raise ValueError(f"sample {key!r}: the sidecar's offsets in {sources[i]} do not point "
                                         "at tar entries")
                    stream.add_entries(block[:cut[i]] + new + block[cut[i]:])
                    continue
                for e, m in zip(ENTRIES, (*(m.wds_name for m in schema.MEMBERS), schema.RECIPE_MEMBER)):
                    if e == "recipe":
                        stream.add_entries(new)
                    data = reader.read(sources[i], int(off[e][i]), int(size[e][i]), key)
                    out_off[e][i] = stream.add(f"{key}.{m}", data)
            stream.close()
    finally:
        reader.close()
    for e in ENTRIES:  # copied blocks: an entry moves by the block's shift, recipe.json also by the insert
        moved = off[e] - lo + start + (inserted if e == "recipe" else 0)
        out_off[e] = np.where(laid_out, moved, out_off[e])
    sidecar = pa.table({**{f: rows[f] for f in schema.RECIPE_NAMES},
                        "shard": pa.array([tar.name] * rows.num_rows, pa.string()),
                        **{c: v for e in ENTRIES for c, v in ((f"{e}_offset", out_off[e]), (f"{e}_size", size[e]))}},
                       schema=schema.sidecar_schema())
    side = tar.with_suffix(".parquet")
    pq.write_table(sidecar, atomic.tmp_path(side))
    atomic.commit(tmp, tar, durable=False)
    atomic.commit(atomic.tmp_path(side), side, durable=False)
    return [{"file": f"data/{tar.name}", "sha256": stream.hash.hexdigest(), "size": stream.offset, "count": len(keys)},
            {"file": f"data/{side.name}", "sha256": sha256_file(side), "size": side.stat().st_size, "count": 0}]


def _entry(name: str, data: bytes) -> bytes:
    return shards.TarStream.header(name, len(data)) + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def _workers(setting: int, rows: int) -> int:
    """`release.workers`: a number is obeyed; 0 means one per core, but one process below 10,000 rows,
    which it compiles in about the time that starting the pool's processes takes."""
    return setting or (os.cpu_count() or 1 if rows >= 10_000 else 1)


@contextmanager
def _results(fn, tasks: list, workers: int):
    """fn over tasks, results in order. One worker: lazily, in this process. Several: a pool of fresh
    processes (spawned, not forked: the parent holds Arrow's threads) that starts on every task at once,
    so the caller can work while they write. A worker that dies breaks the pool, whose other tasks are
    cancelled; the caller sees a RuntimeError."""
    if workers == 1 or len(tasks) <= 1:
        yield map(fn, tasks)
        return
    pool = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool.map(fn, tasks)
    except BrokenProcessPool as e:
        raise RuntimeError(f"a release writer process died ({e}); nothing was released, compile again") from e
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def labels_table(part: pa.Table, split: str) -> pa.Table:
    """The labels Parquet rows of one split (RELEASE_LABELS), from the selected rows, by column."""
    reasons = part["reasons"].combine_chunks()
    reason_ids = pc.index_in(reasons.flatten(), value_set=pa.array(schema.REASON_NAMES))
    if reason_ids.null_count:
        unknown = set(reasons.flatten().filter(pc.is_null(reason_ids)).to_pylist())
        raise ValueError(f"consensus labels name reasons outside the taxonomy: {sorted(unknown)}")
    return pa.table({
        "key": part["key"], "split": pa.array([split] * part.num_rows, pa.string()), "batch_id": part["batch_id"],
        "product_id": part["product_id"], "category": part["category"], "prompt_id": part["prompt_id"],
        "seed": part["seed"], "scale": part["scale"],
        "label": pc.index_in(part["verdict"], value_set=pa.array(schema.VERDICTS)).cast(pa.int64()),
        "reasons": pa.ListArray.from_arrays(reasons.offsets, reason_ids.cast(pa.int64())),
        "confidence": part["confidence"], "n_annotators": part["n_annotators"], "source": part["source"],
        "created_at": pc.cast(part["created_at"], pa.timestamp("s", tz="UTC")),
    })


def compile_release(cfg: ReleaseConfig) -> dict:
    from datasets import Dataset, DatasetInfo
    from datasets.table import InMemoryTable

    if abs(sum(cfg.splits) - 1) > 1e-6 or len(cfg.splits) != 3:
        raise ValueError("splits must be three fractions (train, validation, test) summing to 1")
    if cfg.policy.undecided not in ("exclude", "not_available") or cfg.policy.simulated not in ("flag", "exclude"):
        raise ValueError("release.policy: undecided must be exclude or not_available, simulated flag or exclude")
    if cfg.maxcount < 1 or cfg.workers < 0:
        raise ValueError("release: maxcount must be >= 1 and workers >= 0 (0: one per core)")
    final = release_dir(cfg.version, cfg.out)
    if final.exists():
        raise ValueError(f"release {cfg.version} exists at {final}; releases are immutable, pick a new version")
    if cfg.parent and not (release_dir(cfg.parent, cfg.out) / "manifest.json").exists():
        raise ValueError(f"parent release {cfg.parent} not found in {cfg.out}")
    rows, provenance, excluded = select(cfg)
    pids = rows["product_id"].to_pylist()
    assignment = split_products(dict(zip(pids, rows["category"].to_pylist())), cfg.splits, cfg.seed,
                                earlier_splits(cfg.out))
    split_of = pa.array([assignment[p] for p in pids], pa.string())
    tmp = atomic.tmp_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "labels").mkdir(parents=True)
    (tmp / "data").mkdir()
    try:
        by_split, tasks = {}, []
        for split in SPLITS:
            part = rows.filter(pc.equal(split_of, split))
            order = pc.sort_indices(part["key"])  # stable: equal keys keep batch and sidecar order
            by_split[split] = part.take(order)
            tasks += [(str(tmp / "data"), split, i, part.take(order.slice(start, cfg.maxcount)))  # take: compact
                      for i, start in enumerate(range(0, part.num_rows, cfg.maxcount))]
        known, features = {}, labels_features()
        with _results(write_part, tasks, _workers(cfg.workers, rows.num_rows)) as written:
            label_tables = {s: labels_table(by_split[s], s) for s in SPLITS}  # while the workers write
            for split, t in label_tables.items():
                # not tables.write: the `huggingface` schema metadata Dataset writes is what makes
                # `load_dataset(<release>/labels)` type `label` and `reasons` as ClassLabel
                Dataset(InMemoryTable(t.cast(features.arrow_schema)), info=DatasetInfo(features=features)) \
                    .to_parquet(str(tmp / "labels" / f"{split}.parquet"))
            with tqdm(total=rows.num_rows, unit="sample", desc=f"release {cfg.version}", mininterval=1) as bar:
                for files in written:
                    for f in files:
                        known[f["file"]] = {"sha256": f["sha256"], "size": f["size"]}
                        bar.update(f["count"])
        counts = {**_counts(label_tables), "excluded": dict(excluded)}
        (tmp / "README.md").write_text(card(cfg, counts, provenance), encoding="utf-8")
        write_manifest(tmp, {"version": cfg.version, "parent": cfg.parent, "schema_version": schema.SCHEMA_VERSION,
                             "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             "counts": counts, "params": {k: v for k, v in asdict(cfg).items() if k != "workers"},
                             "batches": list(cfg.batches)}, known)  # workers: no bearing on the bytes
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(final)
    newest = version_key(cfg.version) >= max(version_key(r["version"]) for r in list_releases(cfg.out))
    if newest:
        promote(cfg.version, cfg.out)
    return {"version": cfg.version, "path": str(final), "samples": counts["samples"], "splits": counts["splits"],
            "excluded": counts["excluded"], "current": newest}


def _counts(label_tables: dict[str, pa.Table]) -> dict:
    out = {"samples": sum(t.num_rows for t in label_tables.values()), "splits": {}, "labels": {}, "reasons": {},
           "products": {}}
    for split, t in label_tables.items():
        label = t["label"].to_numpy()
        reasons = t["reasons"].combine_chunks()
        k = len(schema.REASON_NAMES)  # a reason counts once per sample, however often it is listed
        pairs = np.unique(reasons.value_parent_indices().to_numpy() * k + reasons.flatten().to_numpy())
        listed = np.bincount(pairs % k, minlength=k)
        out["splits"][split] = t.num_rows
        out["labels"][split] = {v: int((label == k).sum()) for k, v in enumerate(schema.VERDICTS)}
        out["reasons"][split] = {n: int(listed[i]) for i, n in enumerate(schema.REASON_NAMES)}
        out["products"][split] = pc.count_distinct(t["product_id"]).as_py()
    return out


def _render(template: str, header: dict, **fields) -> str:
    """A card: the YAML header `datasets` and the Hub read, then the template's Markdown body."""
    body = Template((TEMPLATES / template).read_text(encoding="utf-8")).substitute(fields)
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def _provenance_line(batch: str, p: dict) -> str:
    a, ls = p["agreement"] or {}, p["label_studio"] or {}
    kappas = [v["kappa"] for v in (a.get("cohen_kappa") or {}).values() if v["kappa"] is not None]
    alpha = a.get("krippendorff_alpha")
    alpha = f"{alpha:.3f}" if alpha is not None else f"n/a ({a.get('krippendorff_alpha_undefined', 'no figures')})"
    return (f"- batch `{batch}`: Label Studio project {ls.get('project_id', '?')} ({ls.get('tasks', '?')} "
            f"tasks, {ls.get('gold', '?')} gold); {a.get('judgements', '?')} judgements; Krippendorff's alpha {alpha}"
            + (f"; pairwise Cohen's kappa {min(kappas):.2f} to {max(kappas):.2f}" if kappas else "")
            + f"; generator `{json.dumps(p['generator'])}`")


def card(cfg: ReleaseConfig, counts: dict, provenance: dict) -> str:
    """The release's dataset card (pipelines/templates/release_card.md), every number from `counts`."""
    n = counts["samples"]
    header = {
        "license": cfg.license, "pretty_name": f"RF1M {cfg.version}", "task_categories": ["image-classification"],
        "tags": ["advertising", "human-feedback", "generated-images", "webdataset"],
        "size_categories": ["n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K" if n < 100_000
                            else "100K<n<1M"],
        **card_yaml("", [s for s in SPLITS if counts["splits"][s]]),
    }
    rows = "\n".join(
        f"| {s} | {counts['splits'][s]} | {counts['products'][s]} | {counts['labels'][s]['available']} | "
        f"{counts['labels'][s]['not_available']} | "
        + " | ".join(str(counts["reasons"][s][r]) for r in schema.REASON_NAMES) + " |" for s in SPLITS)
    return _render(
        "release_card.md", header, version=cfg.version, parent=cfg.parent or "none", license=cfg.license,
        taxonomy="\n".join(f"| `{r.name}` | {r.definition} |" for r in schema.LABELS),
        reason_header=" | ".join(schema.REASON_NAMES), reason_rule="---|" * len(schema.REASON_NAMES),
        count_rows=rows, min_annotators=cfg.policy.min_annotators, min_confidence=cfg.policy.min_confidence,
        simulated="flagged (`labels.json` -> `source`)" if cfg.policy.simulated == "flag" else "excluded",
        undecided=("excluded: a tie is a coin flip, not a label; they wait for another judgement"
                   if cfg.policy.undecided == "exclude" else "shipped as not available"),
        left_out=", ".join(f"{k} {rule}" for rule, k in sorted(counts["excluded"].items())) or "none",
        provenance="\n".join(_provenance_line(b, p) for b, p in provenance.items()))


def promote(version: str, root: str | Path = "releases") -> dict:
    """Make `version` the release `load_dataset("rf1m")` loads: rewrite `current_card(root)` atomically.

    The release is verified first, so the current release is never one whose files changed. The card
    carries the manifest's sha256: `datasets` hashes the card into its cache key, so a rebuilt release
    under the same path cannot be served from an older cache entry (other versions differ by path)."""
    verify(version, root)
    target = current_card(root)
    folder = Path(os.path.relpath(release_dir(version, root), target.parent)).as_posix()
    counts = json.loads((release_dir(version, root) / "manifest.json").read_text())["counts"]["splits"]
    splits = [s for s in SPLITS if counts[s]]
    sha = manifest_hash(version, root)
    header = {"pretty_name": f"RF1M (current release: {version})", "rf1m_release": version,
              **card_yaml(f"{folder}/", splits)}
    header["dataset_info"]["description"] = f"RF1M {version}, manifest sha256 {sha}"
    atomic.write_atomic(target, _render("current_card.md", header, version=version, manifest=sha,
                                        splits=" / ".join(splits)).encode())
    return {"current": version, "card": str(target), "manifest_sha256": sha}
