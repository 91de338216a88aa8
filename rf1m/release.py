"""Versioned, immutable RF1M releases that `datasets.load_dataset(<folder>)` loads.

A release folder (`releases/<version>/`):
  README.md            the dataset card; its YAML declares `configs` and `dataset_info.features`
  data/<split>-NNNNN.tar   WebDataset shards per split (train / validation / test), with sidecars
  labels/<split>.parquet   one row per sample without images, for fast analysis:
                           `load_dataset("<release>/labels")` (a folder of its own: `datasets` picks one
                           builder per folder and cannot mix WebDataset and Parquet configs)
  manifest.json        sha256 and size of every other file, counts, the params, the parent release

Splits are by product (no product in two splits) and sticky: a product keeps the split it has in
any release already under the releases root, so a model trained on one version's train split is never
tested on its products in a later version's test split. Only new products are dealt (see
`split_products`). Undecided consensus samples (tied votes) are left out by default and counted.
A version that exists is never overwritten; `verify` recomputes every hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from rf1m import schema, shards

SPLITS = ("train", "validation", "test")
CITATION = """@inproceedings{du2024reliable,
  title     = {Towards Reliable Advertising Image Generation Using Human Feedback},
  author    = {Du, Zhenbang and others},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2024},
  note      = {arXiv:2408.00418}
}"""


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def release_dir(version: str, root: str | Path = "releases") -> Path:
    return Path(root) / version


CONSENSUS_COLUMNS = ("key", "verdict", "reasons", "confidence", "status", "n_annotators", "annotators", "source")


def excluded_by(c: dict, policy: Policy) -> str | None:
    """The first policy rule that keeps a consensus row out of the release, or None."""
    if c["status"] == "undecided" and policy.undecided == "exclude":
        return "undecided"
    if c["n_annotators"] < policy.min_annotators:
        return "min_annotators"
    if c["confidence"] < policy.min_confidence:
        return "min_confidence"
    if policy.simulated == "exclude" and c["source"] == "simulated":
        return "simulated"
    return None


def select(cfg: ReleaseConfig) -> tuple[list[dict], dict, Counter]:
    """Labelled samples that pass the policy, joined with their recipe and shard location, the
    provenance per batch, and how many labelled samples each policy rule left out."""
    rows, provenance, excluded = [], {}, Counter()
    for batch in cfg.batches:
        cons_file = Path(cfg.labels) / batch / "consensus.parquet"
        if not cons_file.exists():
            raise ValueError(f"no consensus labels for batch {batch!r} ({cons_file}): run annotate consensus")
        table = pq.read_table(cons_file)
        missing = [c for c in CONSENSUS_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"{cons_file} lacks column(s) {', '.join(missing)}: re-run annotate consensus")
        cons = {c["key"]: c for c in table.to_pylist()}
        batch_dir = Path(cfg.shards) / batch
        samples = shards.read_sidecars(batch_dir).to_pylist()
        for s in samples:
            c = cons.get(s["key"])
            if c is None:
                continue
            rule = excluded_by(c, cfg.policy)
            if rule:
                excluded[rule] += 1
                continue
            rows.append({**s, **{k: c[k] for k in ("verdict", "reasons", "confidence", "n_annotators",
                                                   "annotators", "source")}, "_batch_dir": str(batch_dir)})
        agreement = Path(cfg.labels) / batch / "agreement.json"
        push = Path(cfg.labels) / batch / "push.json"
        provenance[batch] = {
            "agreement": json.loads(agreement.read_text()) if agreement.exists() else None,
            "label_studio": json.loads(push.read_text()) if push.exists() else None,
            "generator": {k: samples[0][k] for k in ("base_model", "controlnet_model", "model_revision",
                                                     "scheduler", "steps", "guidance", "size")} if samples else None,
        }
    if not rows:
        raise ValueError(f"no labelled sample passes the release policy (left out: {dict(excluded)})")
    return rows, provenance, excluded


def earlier_splits(root: str | Path) -> dict[str, str]:
    """product_id -> split over every release under `root`, read from their labels Parquet.

    Raises when two releases put a product in different splits: that release already leaks, and
    silently picking one of them would hide it."""
    seen: dict[str, tuple[str, str]] = {}
    for m in sorted(Path(root).glob("*/manifest.json")):
        version = m.parent.name
        if version.endswith(".tmp"):  # a compile that died before its rename
            continue
        for r in read_labels(version, root):
            first = seen.setdefault(r["product_id"], (r["split"], version))
            if first[0] != r["split"]:
                raise ValueError(f"product {r['product_id']!r} is in {first[0]} in release {first[1]} but in "
                                 f"{r['split']} in release {version}; splits must be sticky, fix the releases first")
    return {pid: split for pid, (split, _) in seen.items()}


def _hash_unit(seed: int, product_id: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{seed}/{product_id}".encode()).digest()[:8], "big") / 2 ** 64


def split_products(products: dict[str, str], fractions: tuple[float, ...], seed: int,
                   earlier: dict[str, str] | None = None) -> dict[str, str]:
    """product_id -> split, for `products` (product_id -> category).

    A product in `earlier` keeps that split. New products, ordered by category and then by a sha256
    of their id, are dealt one by one to the split furthest below its share of this release's
    products. The hash makes the order independent of labels and of which other products exist, so
    a relabel cannot move anything; the dealing keeps small releases at their fractions (a pure hash
    threshold leaves a 10% split empty for 25 products one time in 7)."""
    earlier = earlier or {}
    out = {pid: earlier[pid] for pid in products if pid in earlier}
    counts = Counter(out.values())
    new = sorted((pid for pid in products if pid not in out), key=lambda p: (products[p], _hash_unit(seed, p)))
    for pid in new:
        n = sum(counts.values()) + 1
        split = max(SPLITS, key=lambda s: fractions[SPLITS.index(s)] * n - counts[s])
        counts[split] += 1
        out[pid] = split
    return out


def compile_release(cfg: ReleaseConfig) -> dict:
    from datasets import Dataset

    if abs(sum(cfg.splits) - 1) > 1e-6 or len(cfg.splits) != 3:
        raise ValueError("splits must be three fractions (train, validation, test) summing to 1")
    if cfg.policy.undecided not in ("exclude", "not_available") or cfg.policy.simulated not in ("flag", "exclude"):
        raise ValueError("release.policy: undecided must be exclude or not_available, simulated flag or exclude")
    final = release_dir(cfg.version, cfg.out)
    if final.exists():
        raise ValueError(f"release {cfg.version} exists at {final}; releases are immutable, pick a new version")
    if cfg.parent and not (release_dir(cfg.parent, cfg.out) / "manifest.json").exists():
        raise ValueError(f"parent release {cfg.parent} not found in {cfg.out}")
    rows, provenance, excluded = select(cfg)
    assignment = split_products({r["product_id"]: r["category"] for r in rows}, cfg.splits, cfg.seed,
                                earlier_splits(cfg.out))
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "labels").mkdir(parents=True)
    label_rows = []
    for split in SPLITS:
        part = sorted((r for r in rows if assignment[r["product_id"]] == split), key=lambda r: r["key"])
        writer = shards.ShardWriter(tmp / "data", split, maxcount=cfg.maxcount, part_digits=5)
        for r in part:
            batch_dir = Path(r["_batch_dir"])
            members = {m.wds_name: shards.read_member(batch_dir / r["shard"], r[f"{m.name}_offset"],
                                                      r[f"{m.name}_size"]) for m in schema.MEMBERS}
            members["label.cls"] = str(schema.VERDICTS.index(r["verdict"])).encode()
            members["labels.json"] = json.dumps({k: r[k] for k in ("reasons", "confidence", "n_annotators",
                                                                   "annotators", "source")}).encode()
            writer.write(r["key"], members, {f: r[f] for f in schema.RECIPE_NAMES})
            label_rows.append({"key": r["key"], "split": split, "batch_id": r["batch_id"],
                               "product_id": r["product_id"], "category": r["category"],
                               "prompt_id": r["prompt_id"], "seed": r["seed"], "scale": r["scale"],
                               "label": schema.VERDICTS.index(r["verdict"]),
                               "reasons": [schema.REASON_NAMES.index(x) for x in r["reasons"]],
                               "confidence": r["confidence"], "n_annotators": r["n_annotators"],
                               "source": r["source"], "created_at": dt.datetime.fromisoformat(r["created_at"])})
        writer.close()
        Dataset.from_list([x for x in label_rows if x["split"] == split], features=labels_features()) \
            .to_parquet(str(tmp / "labels" / f"{split}.parquet"))
    counts = {**_counts(label_rows), "excluded": dict(excluded)}
    (tmp / "README.md").write_text(card(cfg, counts, provenance), encoding="utf-8")
    files = {str(p.relative_to(tmp)): {"sha256": _sha256(p), "size": p.stat().st_size}
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    manifest = {"version": cfg.version, "parent": cfg.parent, "schema_version": schema.SCHEMA_VERSION,
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "counts": counts, "params": asdict(cfg), "batches": list(cfg.batches), "files": files}
    shards.write_json_atomic(tmp / "manifest.json", manifest)
    tmp.rename(final)
    return {"version": cfg.version, "path": str(final), "samples": counts["samples"], "splits": counts["splits"],
            "excluded": counts["excluded"]}


def _counts(label_rows: list[dict]) -> dict:
    out = {"samples": len(label_rows), "splits": {}, "labels": {}, "reasons": {}, "products": {}}
    for split in SPLITS:
        rs = [r for r in label_rows if r["split"] == split]
        out["splits"][split] = len(rs)
        out["labels"][split] = {v: sum(schema.VERDICTS[r["label"]] == v for r in rs) for v in schema.VERDICTS}
        out["reasons"][split] = {n: sum(i in r["reasons"] for r in rs) for i, n in enumerate(schema.REASON_NAMES)}
        out["products"][split] = len({r["product_id"] for r in rs})
    return out


def card(cfg: ReleaseConfig, counts: dict, provenance: dict) -> str:
    import yaml

    features = hf_features()._to_yaml_list()
    header = {
        "license": cfg.license, "pretty_name": f"RF1M {cfg.version}", "task_categories": ["image-classification"],
        "tags": ["advertising", "human-feedback", "generated-images", "webdataset"],
        "size_categories": ["n<1K" if counts["samples"] < 1000 else "1K<n<10K" if counts["samples"] < 10_000
                            else "10K<n<100K" if counts["samples"] < 100_000 else "100K<n<1M"],
        "configs": [{"config_name": "default", "default": True,
                     "data_files": [{"split": s, "path": f"data/{s}-*.tar"} for s in SPLITS if counts["splits"][s]]}],
        "dataset_info": {"features": features},
    }
    rows = "\n".join(
        f"| {s} | {counts['splits'][s]} | {counts['products'][s]} | {counts['labels'][s]['available']} | "
        f"{counts['labels'][s]['not_available']} | "
        + " | ".join(str(counts["reasons"][s][n]) for n in schema.REASON_NAMES) + " |" for s in SPLITS)
    taxonomy = "\n".join(f"| `{r.name}` | {r.definition} |" for r in schema.LABELS)
    prov = []
    for batch, p in provenance.items():
        a = p["agreement"] or {}
        ls = p["label_studio"] or {}
        kappas = [v["kappa"] for v in (a.get("cohen_kappa") or {}).values() if v["kappa"] is not None]
        alpha = a.get("krippendorff_alpha")
        alpha = f"{alpha:.3f}" if alpha is not None else f"n/a ({a.get('krippendorff_alpha_undefined', 'no figures')})"
        prov.append(f"- batch `{batch}`: Label Studio project {ls.get('project_id', '?')} ({ls.get('tasks', '?')} "
                    f"tasks, {ls.get('gold', '?')} gold); {a.get('judgements', '?')} judgements; Krippendorff's "
                    f"alpha {alpha}"
                    + (f"; pairwise Cohen's kappa {min(kappas):.2f} to {max(kappas):.2f}" if kappas else "")
                    + f"; generator `{json.dumps(p['generator'])}`")
    simulated = "flagged (`labels.json` -> `source`)" if cfg.policy.simulated == "flag" else "excluded"
    undecided = ("excluded: a tie is a coin flip, not a label; they wait for another judgement"
                 if cfg.policy.undecided == "exclude" else "shipped as not available")
    left_out = ", ".join(f"{n} {rule}" for rule, n in sorted(counts["excluded"].items())) or "none"
    body = f"""# RF1M {cfg.version}

Generated advertising images (a product pasted on a background made by Stable Diffusion + ControlNet
inpainting), each judged by people as usable (`available`) or not, and why. After *Towards Reliable
Advertising Image Generation Using Human Feedback* (ECCV 2024). Parent release: {cfg.parent or "none"}.

## Load

```python
import rf1m
ds = rf1m.load("{cfg.version}")                      # resolves the folder, uses a cache per manifest hash
from datasets import load_dataset                   # or by hand: an absolute path and a cache_dir per release
ds = load_dataset("/abs/path/releases/{cfg.version}", cache_dir="/tmp/hf-rf1m-{cfg.version}")
labels = load_dataset("/abs/path/releases/{cfg.version}/labels")   # labels only, no images
```

Each sample: `image.png` (the advert), `product.png` (RGBA), `mask.png`, `canny.png`, `depth.png`,
`saliency.png`, `recipe.json` (everything needed to regenerate it), `label.cls` (available /
not_available) and `labels.json` (reasons, confidence, annotators, source).

## Taxonomy

| label | definition |
|---|---|
{taxonomy}

## Counts

Splits are by product: no product appears in two splits. They are sticky: a product keeps the split it
had in every earlier release, so no later test split holds an earlier training product.

| split | samples | products | available | not available | {" | ".join(schema.REASON_NAMES)} |
|---|---|---|---|---|{"---|" * len(schema.REASON_NAMES)}
{rows}

## Labels and provenance

Policy: at least {cfg.policy.min_annotators} annotator(s), consensus confidence >= {cfg.policy.min_confidence},
gold tasks excluded, simulated labels {simulated}, undecided samples (tied votes, or Dawid-Skene
against the majority) {undecided}. Labelled samples left out, by the first rule that applies:
{left_out}. Consensus is Dawid-Skene on the verdict; reasons are those picked by at least half of the
annotators who said not available.

{chr(10).join(prov)}

## License and citation

License: {cfg.license}.

```bibtex
{CITATION}
```
"""
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def verify(version: str, root: str | Path = "releases") -> dict:
    """Recompute every hash; raise ValueError naming each difference."""
    d = release_dir(version, root)
    mpath = d / "manifest.json"
    if not mpath.exists():
        raise ValueError(f"no release {version} in {root} (manifest.json missing)")
    manifest = json.loads(mpath.read_text())
    problems = []
    present = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()} - {"manifest.json"}
    for rel, want in manifest["files"].items():
        p = d / rel
        if not p.exists():
            problems.append(f"missing {rel}")
        elif p.stat().st_size != want["size"] or _sha256(p) != want["sha256"]:
            problems.append(f"changed {rel}")
    problems += [f"unexpected {rel}" for rel in sorted(present - set(manifest["files"]))]
    if problems:
        raise ValueError(f"release {version} fails verification: " + "; ".join(problems))
    return {"version": version, "files": len(manifest["files"]), "ok": True}


def manifest_hash(version: str, root: str | Path = "releases") -> str:
    return _sha256(release_dir(version, root) / "manifest.json")


def read_labels(version: str, root: str | Path = "releases") -> list[dict]:
    d = release_dir(version, root) / "labels"
    return [r for s in SPLITS for r in pq.read_table(d / f"{s}.parquet").to_pylist()]


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
    out = []
    for m in sorted(Path(root).glob("*/manifest.json")):
        man = json.loads(m.read_text())
        out.append({"version": man["version"], "parent": man["parent"], "samples": man["counts"]["samples"],
                    "created_at": man["created_at"]})
    return out


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
