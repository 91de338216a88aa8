"""Shard-write throughput against one process writing the same members with plain `tarfile`:

- rf1m's ShardWriter in the same process (tar + sidecar + offsets, renames): target >= 0.9;
- one ShardWriter per core in a process pool, each writing its share of the samples into its own shard
  (as the generate stage's workers do): target >= 1.8 on 2 cores (issue 15);
- ShardWriter with `durable=True` (fsync before each rename), in the same process.

ShardWriter writes its tars with `rf1m.shards.TarStream` (the bytes tarfile writes, without tarfile's
per-member Python cost), so the one-process ratio can exceed 1. Each ratio is the median of `--repeats`
interleaved repeats, with min and max. The pool's processes are started and given their members before
the clock (a stage's workers live for many shards); the clock runs from handing out the work to the
last shard renamed.

    .venv/bin/python bench/bench_shard_write.py [--samples 2000] [--repeats 5] [--workers 0]
"""

import argparse
import io
import json
import multiprocessing
import os
import sys
import tarfile
import tempfile
from concurrent.futures import ProcessPoolExecutor, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import numpy as np  # noqa: E402

from bench import fakes, timing  # noqa: E402
from rf1m import schema, shards  # noqa: E402

_SAMPLES: list = []  # a pool worker's copy of the payload (set by _init)


def payload(n: int, rng) -> list[tuple[str, dict, dict]]:
    out = []
    for i in range(n):
        members = {m.wds_name: rng.bytes(int(rng.integers(3000, 12000))) for m in schema.MEMBERS}
        recipe = fakes.recipe(i, key=f"bench-{i:06d}")
        out.append((recipe["key"], members, recipe))
    return out


def plain_tarfile(path: Path, samples) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members, recipe in samples:
            entries = {**members, schema.RECIPE_MEMBER: json.dumps(recipe, sort_keys=True).encode()}
            for name, data in entries.items():
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                tar.addfile(info, io.BytesIO(data))


def rf1m_writer(directory: Path, samples, durable: bool = False, stem: str = "shard-000000") -> None:
    w = shards.ShardWriter(directory, stem, durable=durable)
    for key, members, recipe in samples:
        w.write(key, members, recipe)
    w.close()


def _init(n: int) -> None:
    _SAMPLES[:] = payload(n, np.random.default_rng(0))  # the same members as the parent's


def _write_share(directory: str, worker: int, workers: int) -> None:
    rf1m_writer(Path(directory), _SAMPLES[worker::workers], stem=f"shard-{worker:06d}")


def _warm_up(directory: str, worker: int) -> None:
    """Busy long enough that each process of the pool takes one warm-up task (and has its payload)."""
    import time

    rf1m_writer(Path(directory), _SAMPLES[:1], stem=f"shard-{worker:06d}")
    time.sleep(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0, help="pool size; 0: one per core")
    a = ap.parse_args()
    workers = a.workers or os.cpu_count() or 1
    rec = timing.Record("shard_write", vars(a))
    samples = payload(a.samples, np.random.default_rng(0))
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init,
                               initargs=(a.samples,))
    with tempfile.TemporaryDirectory() as tmp:
        rf1m_writer(Path(tmp) / "warm-up", samples[:10])  # one-time imports (pyarrow's pandas shim)
        wait([pool.submit(_warm_up, f"{tmp}/warm-up{w}", w) for w in range(workers)])

        def plain(r: int) -> float:
            return timing.timed(plain_tarfile, Path(tmp) / f"plain{r}.tar", samples)[0]

        def ours(r: int, durable: bool = False) -> float:
            return timing.timed(rf1m_writer, Path(tmp) / f"ours{r}{durable}", samples, durable)[0]

        def pooled(r: int) -> float:
            def run() -> None:
                for f in [pool.submit(_write_share, f"{tmp}/pool{r}", w, workers) for w in range(workers)]:
                    f.result()
            return timing.timed(run)[0]

        base, fast = timing.interleaved(plain, ours, a.repeats)
        base_p, par = timing.interleaved(plain, pooled, a.repeats)
        base_d, slow = timing.interleaved(plain, lambda r: ours(r, durable=True), a.repeats)
        written = sorted(p.name for p in (Path(tmp) / "pool0").glob("*.tar"))
    pool.shutdown()
    assert len(written) == workers, written
    result = {"samples": a.samples, "workers": workers, "plain_s": timing.spread(base + base_p + base_d),
              "shardwriter_s": timing.spread(fast), "pool_s": timing.spread(par), "durable_s": timing.spread(slow),
              "ratio": timing.ratio(base, fast, more_work=False),
              "ratio_pool": timing.ratio(base_p, par, more_work=False),
              "ratio_durable": timing.ratio(base_d, slow, more_work=False)}
    med = {k: a.samples / result[k]["median"] for k in ("plain_s", "shardwriter_s", "pool_s", "durable_s")}
    print(f"plain tarfile : {med['plain_s']:8.0f} samples/s (median of every baseline run)")
    print(f"rf1m shards   : {med['shardwriter_s']:8.0f} samples/s (one process: tar + sidecar with offsets, rename)")
    print(f"  {workers} writers   : {med['pool_s']:8.0f} samples/s (one ShardWriter per core, own shards)")
    print(f"  durable=True: {med['durable_s']:8.0f} samples/s (one process, fsync before each rename)")
    print(f"ratio         : {timing.describe(result['ratio'])}  (target >= 0.9)")
    print(f"ratio pool    : {timing.describe(result['ratio_pool'])}  (target >= 1.8 on 2 cores)")
    print(f"ratio durable : {timing.describe(result['ratio_durable'])}")
    rec.save(**result)


if __name__ == "__main__":
    main()
