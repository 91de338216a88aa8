"""The RF1M release format: what a release folder holds, how it is verified, compared and loaded.

A release folder (`releases/<version>/`):
  README.md            the dataset card; its YAML declares `configs` and `dataset_info.features`
  data/<split>-NNNNN.tar   WebDataset shards per split (train / validation / test), with sidecars
  labels/<split>.parquet   one row per sample without images, for fast analysis:
                           `load_dataset("<release>/labels")` (a folder of its own: `datasets` picks one
                           builder per folder and cannot mix WebDataset and Parquet configs)
  manifest.json        sha256 and size of every other file, counts, the params, the parent release

Beside the releases root, `rf1m/README.md` names the current release, so that
`datasets.load_dataset("rf1m")` run from the folder holding both loads it (see `current_card`).

Compiling a release (policy, sticky splits, re-sharding, the card) is a stage: `pipelines.release`.
This module is the contract that stage, RFNet, the catalog and researchers share.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rf1m import atomic, schema, tables

SPLITS = ("train", "validation", "test")


def hf_features():
    """The release's features: the sample's members, the verdict as ClassLabel, the reasons as a list of it."""
    from datasets import ClassLabel, List, Value

    f = schema.hf_features()
    f["label.cls"] = ClassLabel(names=list(schema.VERDICTS))
    f["labels.json"] = {"reasons": List(ClassLabel(names=list(schema.REASON_NAMES))),
                        "confidence": Value("float64"), "n_annotators": Value("int64"),
                        "annotators": List(Value("string")), "source": Value("string")}
    return f


def labels_features():
    from datasets import ClassLabel, Features, List, Value

    return Features({
        "key": Value("string"), "split": Value("string"), "batch_id": Value("string"),
        "product_id": Value("string"), "category": Value("string"), "prompt_id": Value("string"),
        "seed": Value("int64"), "scale": Value("float64"),
        "label": ClassLabel(names=list(schema.VERDICTS)), "reasons": List(ClassLabel(names=list(schema.REASON_NAMES))),
        "confidence": Value("float64"), "n_annotators": Value("int64"), "source": Value("string"),
        "created_at": Value("timestamp[s, tz=UTC]"),
    })


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_all(paths: list[Path]) -> list[str]:
    """sha256 of many files on every core: hashlib releases the GIL on large buffers, so threads suffice
    (a million-sample release is gigabytes; one core hashes it at about 1 GB/s)."""
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(sha256_file, paths))


def release_dir(version: str, root: str | Path = "releases") -> Path:
    return Path(root) / version


def card_yaml(prefix: str, splits) -> dict:
    """The card YAML `datasets` follows: one default config whose data files are the tars under
    `prefix` (the release folder as seen from the card), and the typed features. Without declared
    features `label.cls` comes back as int64 and the rest is guessed from the first 5 samples."""
    return {"configs": [{"config_name": "default", "default": True,
                         "data_files": [{"split": s, "path": f"{prefix}data/{s}-*.tar"} for s in splits]}],
            "dataset_info": {"features": hf_features()._to_yaml_list()}}


def write_manifest(folder: Path, meta: dict, known: dict[str, dict] | None = None) -> dict:
    """manifest.json: `meta` plus the sha256 and size of every other file in `folder`, which `verify` checks.

    `known`: {relative path: {"sha256", "size"}} of files whose writer hashed the bytes as it wrote them
    (the release parts); a file whose size on disk differs from its entry is hashed again."""
    known = known or {}
    paths = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"]
    files = {str(p.relative_to(folder)): {"sha256": None, "size": p.stat().st_size} for p in paths}
    for rel, f in files.items():
        if known.get(rel, {}).get("size") == f["size"]:
            f["sha256"] = known[rel]["sha256"]
    todo = [rel for rel, f in files.items() if f["sha256"] is None]
    for rel, digest in zip(todo, _hash_all([folder / rel for rel in todo])):
        files[rel]["sha256"] = digest
    manifest = {**meta, "files": files}
    atomic.write_json(folder / "manifest.json", manifest)
    return manifest


def current_card(root: str | Path = "releases") -> Path:
    """`rf1m/README.md` beside the releases root: the card naming the current release.

    `load_dataset("rf1m")` resolves the bare name to the folder `./rf1m` (in a clone, the Python
    package) and follows a card there whose data files are `../releases/<version>/data/...`."""
    return Path(root).parent / "rf1m" / "README.md"


def current(root: str | Path = "releases") -> str | None:
    """The version the current card names; None without a card or before any promotion."""
    import yaml

    card = current_card(root)
    text = card.read_text(encoding="utf-8") if card.exists() else ""
    m = re.match(r"---\n(.*?)\n---\n", text, re.S)
    return (yaml.safe_load(m.group(1)) or {}).get("rf1m_release") if m else None


def version_key(version: str) -> tuple[int, ...]:
    """Orders versions by their numbers, so v0.10 comes after v0.9."""
    return tuple(int(n) for n in re.findall(r"\d+", version))


def verify(version: str, root: str | Path = "releases") -> dict:
    """Recompute every hash; raise ValueError naming each difference."""
    d = release_dir(version, root)
    mpath = d / "manifest.json"
    if not mpath.exists():
        raise ValueError(f"no release {version} in {root} (manifest.json missing)")
    manifest = json.loads(mpath.read_text())
    problems = []
    present = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()} - {"manifest.json"}
    same_size = [rel for rel, want in manifest["files"].items()
                 if (d / rel).exists() and (d / rel).stat().st_size == want["size"]]
    digests = dict(zip(same_size, _hash_all([d / rel for rel in same_size])))
    for rel, want in manifest["files"].items():
        if not (d / rel).exists():
            problems.append(f"missing {rel}")
        elif digests.get(rel) != want["sha256"]:
            problems.append(f"changed {rel}")
    problems += [f"unexpected {rel}" for rel in sorted(present - set(manifest["files"]))]
    if problems:
        raise ValueError(f"release {version} fails verification: " + "; ".join(problems))
    return {"version": version, "files": len(manifest["files"]), "ok": True}


def manifest_hash(version: str, root: str | Path = "releases") -> str:
    return sha256_file(release_dir(version, root) / "manifest.json")


def read_labels(version: str, root: str | Path = "releases") -> list[dict]:
    d = release_dir(version, root) / "labels"
    return [r for s in SPLITS for r in tables.read(tables.RELEASE_LABELS, d / f"{s}.parquet").to_pylist()]


def diff(old: str, new: str, root: str | Path = "releases") -> dict:
    """Samples added, removed and relabelled between two releases, and the per-label deltas."""
    a = {r["key"]: r for r in read_labels(old, root)}
    b = {r["key"]: r for r in read_labels(new, root)}
    relabelled = sorted(k for k in a.keys() & b.keys()
                        if (a[k]["label"], sorted(a[k]["reasons"])) != (b[k]["label"], sorted(b[k]["reasons"])))

    def tally(rows):
        c = Counter(schema.VERDICTS[r["label"]] for r in rows)
        c.update(schema.REASON_NAMES[i] for r in rows for i in r["reasons"])
        return c

    ta, tb = tally(a.values()), tally(b.values())
    return {"old": old, "new": new, "added": sorted(b.keys() - a.keys()), "removed": sorted(a.keys() - b.keys()),
            "relabelled": relabelled,
            "label_deltas": {n: tb[n] - ta[n] for n in (*schema.VERDICTS, *schema.REASON_NAMES) if tb[n] != ta[n]}}


def list_releases(root: str | Path = "releases") -> list[dict]:
    """Every complete release under `root` (a `.tmp` folder is a compile that died), oldest version first."""
    out, cur = [], current(root)
    for m in Path(root).glob("*/manifest.json"):
        if m.parent.name.endswith(atomic.TMP):
            continue
        man = json.loads(m.read_text())
        out.append({"version": man["version"], "parent": man["parent"], "samples": man["counts"]["samples"],
                    "created_at": man["created_at"], "current": man["version"] == cur})
    return sorted(out, key=lambda r: version_key(r["version"]))


def load(version: str, split: str | None = None, root: str | Path = "releases", streaming: bool = False,
         cache_dir: str | Path | None = None):
    """`datasets.load_dataset` on a release, by absolute path and with a cache keyed by its manifest.

    `datasets` keys its cache by folder name, file patterns and features, not by contents: two
    different folders both called v0.1 would share an entry. A bare name may also resolve to the Hub
    or a stale cache. Both are avoided here."""
    from datasets import load_dataset

    d = release_dir(version, root).resolve()
    if not (d / "manifest.json").exists():
        raise ValueError(f"no release {version} in {Path(root).resolve()}")
    cache = Path(cache_dir or Path.home() / ".cache" / "rf1m" / "datasets") / manifest_hash(version, root)[:16]
    return load_dataset(str(d), split=split, streaming=streaming, cache_dir=str(cache))
