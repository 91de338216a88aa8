"""Release benches:
1. compile time for N label rows (default 100k), as rows/s: sidecars and consensus made up, members tiny;
2. `load_dataset` with a fresh cache (samples/s) as a ratio to reading the same tars with plain webdataset
   (decoding the same members), in the same run.

    .venv/bin/python bench/bench_release.py [--rows 100000] [--load-rows 2000]
"""

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from rf1m import release, schema, shards  # noqa: E402


def make_batch(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    w = shards.ShardWriter(root / "shards" / "b", "shard-000000", maxcount=10_000)
    cons = []
    for i in range(n):
        key = f"b-p{i // 8:06d}-studio-s{i}"
        recipe = {f.name: i if f.arrow == pa.int64() else 0.7 if f.arrow == pa.float64()
                  else False if f.arrow == pa.bool_() else f"v{i}" for f in schema.RECIPE}
        recipe.update(key=key, product_id=f"p{i // 8:06d}", category=f"c{i % 5}",
                      created_at="2026-11-29T00:00:00+00:00")
        w.write(key, {m.wds_name: png for m in schema.MEMBERS}, recipe)
        v = "available" if rng.random() < 0.5 else "not_available"
        cons.append({"key": key, "verdict": v, "reasons": [] if v == "available" else ["size_mismatch"],
                     "confidence": 0.9, "n_annotators": 1, "annotators": ["a"], "source": "simulated"})
    w.close()
    (root / "labels" / "b").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(cons), root / "labels" / "b" / "consensus.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--load-rows", type=int, default=2000)
    a = ap.parse_args()
    import webdataset as wds

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n, name in ((a.rows, "big"), (a.load_rows, "small")):
            d = root / name
            make_batch(d, n)
            cfg = release.ReleaseConfig(version="v1", batches=("b",), shards=str(d / "shards"),
                                        labels=str(d / "labels"), out=str(d / "releases"), maxcount=5000)
            t = time.perf_counter()
            release.compile_release(cfg)
            took = time.perf_counter() - t
            print(f"compile {n:>7} rows: {took:6.1f} s = {n / took:7.0f} rows/s")
        small = root / "small" / "releases"
        tars = sorted(str(p) for p in (small / "v1" / "data").glob("*.tar"))
        t = time.perf_counter()
        n_wds = sum(1 for _ in wds.WebDataset(tars, shardshuffle=False).decode("pil"))
        t_wds = time.perf_counter() - t
        t = time.perf_counter()
        ds = release.load("v1", root=small, cache_dir=root / "cache")
        n_hf = sum(1 for split in ds.values() for _ in split)
        t_hf = time.perf_counter() - t
    assert n_hf == n_wds == a.load_rows
    print(f"webdataset  : {n_wds / t_wds:7.0f} samples/s (decode pil)")
    print(f"load_dataset: {n_hf / t_hf:7.0f} samples/s (fresh cache: Arrow build + iterate with decoding)")
    print(f"ratio       : {t_wds / t_hf:.3f}")


if __name__ == "__main__":
    main()
