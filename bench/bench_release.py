"""Release benches, over the synthetic catalog of bench/synthetic_catalog.py (sidecars, tiny members):

1. compile, rows/s: at the smaller size (default 100k), one process (`workers=1`) and the pool
   (`workers=0`, one per core) in interleaved repeats, and their ratio; at the larger size (default 1M),
   `--big-repeats` runs of the pool (the time allows 1-3 on this machine);
2. `rf1m release verify` of each compiled release (sha256 of every file, on every core);
3. the catalog views (rf1m.catalog: DuckDB over the sidecars, consensus and the release labels) at
   each size: opening the catalog and five queries, median of `--repeats` with min and max;
4. `load_dataset` with a fresh cache vs plain webdataset on --load-rows real samples (decoding the same
   members), as a ratio; load_dataset does strictly more (it builds the Arrow cache);
5. `--profile`: cProfile of a one-process compile at the smaller size, the top entries by own time.

    .venv/bin/python bench/bench_release.py [--sizes 100000 1000000] [--repeats 5] [--big-repeats 1]
"""

import argparse
import cProfile
import io
import os
import pstats
import resource
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench import fakes, synthetic_catalog, timing  # noqa: E402
from pipelines import release  # noqa: E402
from rf1m import schema, shards, tables  # noqa: E402
from rf1m.catalog import Catalog  # noqa: E402
from rf1m.paths import Layout  # noqa: E402
from rf1m.release import load, verify  # noqa: E402

QUERIES = {
    "samples": "SELECT count(*) FROM samples",
    "samples per batch": "SELECT batch_id, count(*) FROM samples GROUP BY ALL",
    "products per category": "SELECT category, count(DISTINCT product_id) FROM samples GROUP BY ALL",
    "point lookup by key": "SELECT shard, image_offset FROM samples WHERE key = '{key}'",
    "usable rate per batch": "SELECT s.batch_id, avg((c.verdict = 'available')::INT) FROM samples s "
                             "JOIN consensus c USING (key) GROUP BY ALL",
    "release split sizes": "SELECT version, split, count(*) FROM releases GROUP BY ALL",
}


def make_batch(root: Path, n: int) -> None:
    """n samples with real 64 px PNG members (for the load_dataset comparison) and their consensus."""
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


def config(data: Path, out: Path, workers: int) -> release.ReleaseConfig:
    layout = Layout(data)
    return release.ReleaseConfig(version="v1", batches=tuple(synthetic_catalog.batches(data)),
                                 shards=str(layout.shards_root), labels=str(layout.labels_root), out=str(out),
                                 workers=workers)


CPU_S: dict[str, list[float]] = {}  # CPU seconds (this process and its finished children) per compile


def compile_once(data: Path, out: Path, workers: int) -> float:
    """Seconds to compile the whole catalog into a fresh releases folder (removed first, untimed). The
    CPU seconds it used, pool workers included, go to CPU_S: on a shared machine they say what the
    compile costs better than the wall clock does."""
    shutil.rmtree(out, ignore_errors=True)
    before = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    took = timing.timed(release.compile_release, config(data, out, workers))[0]
    after = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    CPU_S.setdefault(f"workers={workers}", []).append(
        sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before)))
    return took


def catalog_views(data: Path, releases: Path, repeats: int) -> dict:
    """Opening the catalog, then each query: median, min and max seconds of `repeats`."""
    opened = [timing.timed(Catalog, data, releases=releases)[0] for _ in range(repeats)]
    cat = Catalog(data, releases=releases)
    key = cat.query("SELECT key FROM samples LIMIT 1 OFFSET 12345").column(0)[0].as_py()
    out = {"open": timing.spread(opened)}
    for name, sql in QUERIES.items():
        out[name] = timing.spread([timing.timed(cat.query, sql.format(key=key))[0] for _ in range(repeats)])
    return out


def profile(data: Path, out: Path, top: int = 20) -> list[dict]:
    """The top entries by own time of a one-process compile (the pool's work shows up in-process)."""
    shutil.rmtree(out, ignore_errors=True)
    prof = cProfile.Profile()
    prof.runcall(release.compile_release, config(data, out, workers=1))
    stats = pstats.Stats(prof)
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    shutil.rmtree(out, ignore_errors=True)
    return [{"function": f"{Path(f).name}:{line}({fn})", "calls": nc, "own_s": round(tt, 3), "cumulative_s": round(ct, 3)}
            for (f, line, fn), (_, nc, tt, ct, _) in rows]


def load_comparison(root: Path, rows: int, repeats: int) -> dict:
    import webdataset as wds

    make_batch(root, rows)
    cfg = release.ReleaseConfig(version="v1", batches=("b",), shards=str(root / "shards"),
                                labels=str(root / "labels"), out=str(root / "releases"), workers=1)
    release.compile_release(cfg)
    small = root / "releases"
    tars = sorted(str(p) for p in (small / "v1" / "data").glob("*.tar"))

    def plain(r: int) -> float:
        took, n = timing.timed(lambda: sum(1 for _ in wds.WebDataset(tars, shardshuffle=False).decode("pil")))
        assert n == rows
        return took

    def hf(r: int) -> float:
        def read() -> int:
            ds = load("v1", root=small, cache_dir=root / f"cache{r}")  # a fresh cache each repeat
            return sum(1 for split in ds.values() for _ in split)
        took, n = timing.timed(read)
        assert n == rows
        return took

    t_wds, t_hf = timing.interleaved(plain, hf, repeats)
    return {"webdataset_s": timing.spread(t_wds), "load_dataset_s": timing.spread(t_hf),
            "ratio": timing.ratio(t_wds, t_hf, more_work=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--big-repeats", type=int, default=1)
    ap.add_argument("--load-rows", type=int, default=2000, help="0: skip the load_dataset comparison")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--scratch", default=None, help="where the compiled releases go (default: a temporary folder)")
    a = ap.parse_args()
    rec = timing.Record("release", vars(a))
    result: dict = {"cores": os.cpu_count(), "compile": {}, "verify_s": {}, "catalog": {}}
    with tempfile.TemporaryDirectory(dir=a.scratch) as tmp:
        scratch = Path(tmp)
        for i, n in enumerate(sorted(a.sizes)):
            data = synthetic_catalog.build(n)
            out = scratch / f"n{n}" / "releases"
            load = {"loadavg_before": os.getloadavg()[0]}
            if i == 0:  # the smallest size: one process vs the pool, interleaved
                serial, pool = timing.interleaved(lambda r, d=data, o=out: compile_once(d, o, 1),
                                                  lambda r, d=data, o=out: compile_once(d, o, 0), a.repeats)
                res = {"one_process_s": timing.spread(serial), "pool_s": timing.spread(pool),
                       "ratio_pool_vs_one": timing.ratio(serial, pool, more_work=False)}
            else:
                res = {"pool_s": timing.spread([compile_once(data, out, 0) for _ in range(a.big_repeats)])}
            res.update(load, loadavg_after=os.getloadavg()[0], cpu_s={k: timing.spread(v) for k, v in CPU_S.items()})
            res["rows_per_cpu_s"] = {k: n / v["median"] for k, v in res["cpu_s"].items()}
            CPU_S.clear()
            for side in ("one_process_s", "pool_s"):
                if side in res:
                    res[side.replace("_s", "_rows_per_s")] = n / res[side]["median"]
            result["compile"][n] = res
            result["verify_s"][n] = timing.timed(verify, "v1", out)[0]
            result["catalog"][n] = catalog_views(data, out, a.repeats)
            shutil.rmtree(out.parent)
            print(f"{n:>8} samples: " + ", ".join(
                f"{k} {v:,.0f} rows/s" for k, v in res.items() if k.endswith("rows_per_s"))
                + "; rows per CPU second " + ", ".join(f"{k} {v:,.0f}" for k, v in res["rows_per_cpu_s"].items())
                + f"; verify {result['verify_s'][n]:.1f} s; slowest catalog query "
                f"{max(v['median'] for v in result['catalog'][n].values()) * 1000:.0f} ms", flush=True)
        if a.profile:
            result["profile"] = profile(synthetic_catalog.build(min(a.sizes)), scratch / "profile" / "releases")
            for row in result["profile"][:10]:
                print(f"  {row['own_s']:7.2f} s own  {row['calls']:>9} calls  {row['function']}")
        if a.load_rows:
            result["load"] = load_comparison(scratch / "load", a.load_rows, a.repeats)
            print(f"load_dataset vs webdataset: {timing.describe(result['load']['ratio'])}")
    rec.save(**result)


if __name__ == "__main__":
    main()
