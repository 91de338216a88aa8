"""The release stage: consensus labels + shards -> an immutable `releases/<version>/` (format: `rf1m.release`).

Splits are by product (no product in two splits) and sticky: a product keeps the split it has in
any release already under the releases root, so a model trained on one version's train split is never
tested on its products in a later version's test split. Only new products are dealt (see
`split_products`). Undecided consensus samples (tied votes) are left out by default and counted.
A version that exists is never overwritten. The compiled version becomes the current one (what
`load_dataset("rf1m")` loads) when it is the newest; `promote` switches it by hand.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template

import yaml

from rf1m import atomic, schema, shards, tables
from rf1m.release import (
    SPLITS,
    card_yaml,
    current_card,
    labels_features,
    list_releases,
    manifest_hash,
    read_labels,
    release_dir,
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
        cons = {c["key"]: c for c in tables.read(tables.CONSENSUS, cons_file).to_pylist()}
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
        if version.endswith(atomic.TMP):  # a compile that died before its rename
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
    tmp = atomic.tmp_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "labels").mkdir(parents=True)
    label_rows = []
    for split in SPLITS:
        part = sorted((r for r in rows if assignment[r["product_id"]] == split), key=lambda r: r["key"])
        writer = shards.ShardWriter(tmp / "data", split, maxcount=cfg.maxcount, part_digits=5)
        for r in part:
            members = {m.wds_name: shards.member_bytes(r["_batch_dir"], r, m.name) for m in schema.MEMBERS}
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
        # not tables.write: the `huggingface` schema metadata Dataset writes is what makes
        # `load_dataset(<release>/labels)` type `label` and `reasons` as ClassLabel
        Dataset.from_list([x for x in label_rows if x["split"] == split], features=labels_features()) \
            .to_parquet(str(tmp / "labels" / f"{split}.parquet"))
    counts = {**_counts(label_rows), "excluded": dict(excluded)}
    (tmp / "README.md").write_text(card(cfg, counts, provenance), encoding="utf-8")
    write_manifest(tmp, {"version": cfg.version, "parent": cfg.parent, "schema_version": schema.SCHEMA_VERSION,
                         "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                         "counts": counts, "params": asdict(cfg), "batches": list(cfg.batches)})
    tmp.rename(final)
    newest = version_key(cfg.version) >= max(version_key(r["version"]) for r in list_releases(cfg.out))
    if newest:
        promote(cfg.version, cfg.out)
    return {"version": cfg.version, "path": str(final), "samples": counts["samples"], "splits": counts["splits"],
            "excluded": counts["excluded"], "current": newest}


def _counts(label_rows: list[dict]) -> dict:
    out = {"samples": len(label_rows), "splits": {}, "labels": {}, "reasons": {}, "products": {}}
    for split in SPLITS:
        rs = [r for r in label_rows if r["split"] == split]
        out["splits"][split] = len(rs)
        out["labels"][split] = {v: sum(schema.VERDICTS[r["label"]] == v for r in rs) for v in schema.VERDICTS}
        out["reasons"][split] = {n: sum(i in r["reasons"] for r in rs) for i, n in enumerate(schema.REASON_NAMES)}
        out["products"][split] = len({r["product_id"] for r in rs})
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
