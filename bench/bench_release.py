"""Release benches:
1. compile time for N label rows (default 100k), as rows/s: sidecars and consensus made up, members tiny;
2. `load_dataset` with a fresh cache (samples/s) as a ratio to reading the same tars with plain webdataset
   (decoding the same members), in the same run: the median of `--repeats` interleaved repeats, with
   min and max. load_dataset does strictly more (it builds the Arrow cache), so a ratio above 1 is noise.

    .venv/bin/python bench/bench_release.py [--rows 100000] [--load-rows 2000] [--repeats 5]
"""

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench import fakes, timing  # noqa: E402
from pipelines import release  # noqa: E402
from rf1m import schema, shards, tables  # noqa: E402
from rf1m.release import load  # noqa: E402


def make_batch(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    w = shards.ShardWriter(root / "shards" / "b", "shard-000000", maxcount=10_000)
    cons = []
    for i in range(n):
        key = f"b-p{i // 8:06d}-studio-s{i}"
        recipe = fakes.recipe(i, key=key, product_id=f"p{i // 8:06d}", category=f"c{i % 5}",
                              created_at="2026-11-29T00:00:00+00:00")
        w.write(key, {m.wds_name: png for m in schema.MEMBERS}, recipe)
        v = "available" if rng.random() < 0.5 else "not_available"
        cons.append({"key": key, "verdict": v, "reasons": [] if v == "available" else ["size_mismatch"],
                     "confidence": 0.9, "status": "decided", "votes_available": int(v == "available"),
                     "votes_not_available": int(v != "available"), "majority_verdict": v,
                     "majority_confidence": 1.0, "n_annotators": 1, "annotators": ["a"], "source": "simulated"})
    w.close()
    tables.write(tables.CONSENSUS, cons, root / "labels" / "b" / "consensus.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--load-rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    import webdataset as wds

    rec = timing.Record("release", vars(a))
    compile_s = {}
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
            compile_s[n] = took
            print(f"compile {n:>7} rows: {took:6.1f} s = {n / took:7.0f} rows/s")
        small = root / "small" / "releases"
        tars = sorted(str(p) for p in (small / "v1" / "data").glob("*.tar"))

        def plain(r: int) -> float:
            took, n = timing.timed(lambda: sum(1 for _ in wds.WebDataset(tars, shardshuffle=False).decode("pil")))
            assert n == a.load_rows
            return took

        def hf(r: int) -> float:
            def read() -> int:
                ds = load("v1", root=small, cache_dir=root / f"cache{r}")  # a fresh cache each repeat
                return sum(1 for split in ds.values() for _ in split)
            took, n = timing.timed(read)
            assert n == a.load_rows
            return took

        t_wds, t_hf = timing.interleaved(plain, hf, a.repeats)
    result = {"compile_s": compile_s, "webdataset_s": timing.spread(t_wds), "load_dataset_s": timing.spread(t_hf),
              "ratio": timing.ratio(t_wds, t_hf, more_work=True)}
    print(f"webdataset  : {a.load_rows / result['webdataset_s']['median']:7.0f} samples/s (median; decode pil)")
    print(f"load_dataset: {a.load_rows / result['load_dataset_s']['median']:7.0f} samples/s "
          "(median; fresh cache: Arrow build + iterate with decoding)")
    print(f"ratio       : {timing.describe(result['ratio'])}")
    rec.save(**result)


if __name__ == "__main__":
    main()
