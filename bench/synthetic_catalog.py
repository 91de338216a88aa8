"""A synthetic RF1M catalog of any size (a million samples in about a minute), for the release and catalog
benches: shard sidecars and consensus labels in the declared layout (rf1m.paths), no images generated.

    python -m bench.synthetic_catalog [--samples 1000000]   # prints the data root

Why sidecars only: generating a million images would take days and ~100 GB; what the release compiler
and the catalog views cost per sample is in the sidecars and the tar bookkeeping, not in the pixels.
Each batch has one small real tar (`members.tar`, 8 samples of tiny PNGs written by ShardWriter), and
every `shard-NNNNNN-00.tar` the sidecars name is a symlink to it; row i points at template sample i % 8,
so the compiler really reads (and copies) member bytes by offset (the copied entries keep the
template's names: a bench release is not a dataset). The members are tiny, so a bench
over this catalog measures the per-sample cost of compiling, not disk bandwidth: a real release moves
~70 KB a sample (7 PNGs at 128 px) where this one moves ~10 KB (tar headers and padding dominate).

Built once per size under ~/.cache/rf1m-bench-release/n<samples>/ (deterministic in the seed; a
`complete.json` written last marks it usable, so an interrupted build is redone).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from rf1m import schema, shards, tables  # noqa: E402
from rf1m.paths import Layout  # noqa: E402

CACHE = Path.home() / ".cache" / "rf1m-bench-release"
PER_SHARD = 1000  # samples a sidecar (the demo's generate writes 50; a GPU run would write more)
PER_BATCH = 10_000
PER_PRODUCT = 8  # samples of one product (prompts x seeds)
TEMPLATES = 8
FAILURES = tuple(r.name for r in schema.REASONS if r.generation_failure)


def _template_tar(batch_dir: Path, rng) -> pa.Table:
    """members.tar: TEMPLATES samples of tiny PNGs; returns its sidecar (the offsets rows copy)."""
    from PIL import Image

    w = shards.ShardWriter(batch_dir, "members", maxcount=TEMPLATES)
    for t in range(TEMPLATES):
        members = {}
        for m in schema.MEMBERS:
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(buf, format="PNG")
            members[m.wds_name] = buf.getvalue()
        recipe = {f.name: 0 if pa.types.is_integer(f.arrow) else 0.0 if pa.types.is_floating(f.arrow)
                  else False if pa.types.is_boolean(f.arrow) else "t" for f in schema.RECIPE}
        w.write(f"template{t}", members, {**recipe, "key": f"template{t}"})
    (part,) = w.close()
    (batch_dir / part["tar"]).rename(batch_dir / "members.tar")
    sidecar = batch_dir / Path(part["tar"]).with_suffix(".parquet")
    table = pq.read_table(sidecar)
    sidecar.unlink()  # not a sample of the batch
    return table


def _recipes(batch: str, b: int, n: int, rng) -> dict[str, pa.Array]:
    """Recipe columns for n samples of batch b: PER_PRODUCT samples a product, 10 categories."""
    i = np.arange(n)
    product = b * (PER_BATCH // PER_PRODUCT) + i // PER_PRODUCT
    prompt = i % PER_PRODUCT
    cols: dict[str, object] = {
        "key": [f"{batch}-p{p:07d}-q{q}-s{s}" for p, q, s in zip(product, prompt, i)],
        "batch_id": [batch] * n, "product_id": [f"p{p:07d}" for p in product],
        "product_sha256": [f"{p:064x}" for p in product], "title": [f"product {p}" for p in product],
        "category": [f"c{p % 10}" for p in product], "product_truncated": rng.random(n) < 0.03,
        "prompt_id": [f"q{q}" for q in prompt], "prompt": [f"a product in scene {q}" for q in prompt],
        "seed": i, "scale": np.full(n, 0.74), "created_at": [f"2026-0{1 + b % 9}-01T12:00:00+00:00"] * n,
    }
    out = {}
    for f in schema.RECIPE:
        v = cols.get(f.name)
        if v is None:  # the generator settings: one value for the whole batch
            v = [{pa.int64(): 4, pa.float64(): 7.5, pa.bool_(): False, pa.string(): f"{f.name}-setting"}[f.arrow]] * n
        out[f.name] = pa.array(v, f.arrow)
    return out


def _consensus(keys: pa.Array, rng) -> pa.Table:
    n = len(keys)
    available = rng.random(n) < 0.45
    undecided = rng.random(n) < 0.02
    picks = rng.integers(0, len(FAILURES), n)
    reasons = [[] if a else [FAILURES[p]] for a, p in zip(available, picks)]
    n_ann = rng.integers(1, 4, n)
    verdict = np.where(available, "available", "not_available")
    return pa.table({
        "key": keys, "verdict": verdict, "reasons": reasons, "confidence": rng.uniform(0.5, 1.0, n),
        "status": np.where(undecided, "undecided", "decided"),
        "votes_available": n_ann * available, "votes_not_available": n_ann * ~available,
        "majority_verdict": verdict, "majority_confidence": np.ones(n),
        "n_annotators": n_ann, "annotators": [[f"ann-{k}@rf1m.local" for k in range(a)] for a in n_ann],
        "source": np.where(rng.random(n) < 0.2, "simulated", "human"),
    }, schema=tables.CONSENSUS.schema)


def build(samples: int = 1_000_000, seed: int = 0, root: Path | None = None) -> Path:
    """The data root of a synthetic catalog of `samples` samples (built unless cached); batches of
    PER_BATCH samples, sidecars of PER_SHARD."""
    root = Path(root or CACHE / f"n{samples}")
    done = root / "complete.json"
    meta = {"samples": samples, "seed": seed, "per_shard": PER_SHARD, "per_batch": PER_BATCH,
            "schema_version": schema.SCHEMA_VERSION}
    if done.exists() and json.loads(done.read_text()) == meta:
        return root
    from tqdm import tqdm

    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    layout = Layout(root)
    sidecar_schema = schema.sidecar_schema()
    starts = range(0, samples, PER_BATCH)
    for b, start in enumerate(tqdm(starts, desc=f"synthetic catalog ({samples} samples)", unit="batch")):
        batch, n = f"b{b:04d}", min(PER_BATCH, samples - start)
        out = layout.shards(batch)
        out.mkdir(parents=True)
        template = _template_tar(out, rng)
        cols = _recipes(batch, b, n, rng)
        which = np.arange(n) % TEMPLATES
        for name in sidecar_schema.names:
            if name.endswith(("_offset", "_size")):
                cols[name] = pa.array(template[name].to_numpy()[which])
        cols["shard"] = pa.array([f"shard-{j // PER_SHARD:06d}-00.tar" for j in range(n)])
        table = pa.table({name: cols[name] for name in sidecar_schema.names}, schema=sidecar_schema)
        for j in range(0, n, PER_SHARD):
            stem = f"shard-{j // PER_SHARD:06d}-00"
            pq.write_table(table.slice(j, PER_SHARD), out / f"{stem}.parquet")
            (out / f"{stem}.tar").symlink_to("members.tar")
        tables.write(tables.CONSENSUS, _consensus(table["key"], rng), layout.consensus(batch))
    done.write_text(json.dumps(meta))
    return root


def batches(root: Path) -> list[str]:
    return sorted(p.name for p in Layout(root).shards_root.iterdir() if p.is_dir())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1_000_000)
    print(build(ap.parse_args().samples))
