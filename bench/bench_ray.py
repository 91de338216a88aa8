"""Ray engine vs local engine on the same generate work, and each one's per-worker throughput.

One batch (tiny random model, `--products` x 1 prompt x 2 seeds, 2 samples a shard), run alternately
(order swapped each repeat, a fresh output folder each time) by:
  local     engine local, `--workers` spawn processes (each loads the model)
  ray       engine ray, `--workers` actors, in a Ray session started just before (untimed): actor
            start-up, model loads and scheduling, as when a job joins a running cluster
Ray's own start (`ray.init` of a private single-node Ray) is timed separately each repeat; a
one-machine `rf1m generate --engine ray` pays it on top. The overhead ratio is local time / Ray time
per repeat (below 1: Ray slower). Steady throughput per worker comes from the same runs: samples of
the shards finished after each worker's first, over the time from then to the last shard, divided by
the number of workers (model loading excluded): the figure the cluster projection scales.

Ray runs with loopback only: the bench re-runs itself under `unshare -n` (root) with `lo` up.

    nice -n 5 .venv/bin/python bench/bench_ray.py [--products 6] [--size 64] [--steps 4] [--repeats 5]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

NETNS = "RF1M_BENCH_NETNS"


def in_netns() -> None:
    """Re-run this script inside a loopback-only network namespace, then exit with its status."""
    ray_tmp = tempfile.mkdtemp(prefix="rf1m-ray-")
    env = {**os.environ, NETNS: "1", "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        rc = subprocess.call(["unshare", "-n", "-p", "-f", "--kill-child", "--mount-proc", "sh", "-c",
                              'ip link set lo up && exec "$@"', "sh", sys.executable, *sys.argv], env=env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    sys.exit(rc)


def steady_rate(batch: Path, workers: int) -> float:
    """Samples per second per worker, from the shards finished after the first `workers` ones (by
    then every worker has loaded its model) to the last."""
    stats = sorted((json.loads(p.read_text()) for p in batch.glob("*.stats.json")), key=lambda s: s["finished_at"])
    after = stats[workers - 1:]
    return sum(s["count"] for s in after[1:]) / (after[-1]["finished_at"] - after[0]["finished_at"]) / workers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=6)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    if not os.environ.get(NETNS):
        in_netns()

    import ray
    import torch

    from bench import timing
    from pipelines import generate, products
    from pipelines.conditions import LayoutConfig
    from pipelines.engines import RayConfig
    from pipelines.models import build_tiny

    torch.set_num_threads(1)
    rec = timing.Record("ray", vars(a))
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    model = build_tiny(tmp / "tiny", size=a.size)
    products.run(products.ProductsConfig(count=a.products, size=96, out=str(tmp / "products")))
    runs = iter(range(10**6))

    def config(engine: str, workers: int):
        return generate.GenerateConfig(
            batch_id="b", products=str(tmp / "products"), out=str(tmp / f"out{next(runs)}"), base_model=str(model),
            steps=a.steps, seeds=2, batch_size=2, maxcount=2, layout=LayoutConfig(size=a.size),
            prompts=generate.DEFAULT_PROMPTS[:1], engine=engine, workers=workers,
            ray=RayConfig(actors=workers, object_store_mb=256))

    def init():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=256 * 2**20,
                 log_to_driver=False)

    rates, init_s = {"local": [], "ray": []}, []

    def run(engine: str) -> float:
        cfg = config(engine, a.workers)
        seconds = timing.timed(generate.run, cfg)[0]
        rates[engine].append(steady_rate(Path(cfg.out) / "b", a.workers))
        print(f"{engine}: {seconds:.1f}s", flush=True)
        return seconds

    def ray_warm(r):
        init_s.append(timing.timed(init)[0])
        try:
            return run("ray")
        finally:
            ray.shutdown()

    base, cand = timing.interleaved(lambda r: run("local"), ray_warm, a.repeats)
    shutil.rmtree(tmp, ignore_errors=True)

    results = {
        "samples": a.products * 2,
        "seconds": {"local": timing.spread(base), "ray": timing.spread(cand)},
        "ray_init_seconds": timing.spread(init_s),
        # Ray's worker processes start with the session, before the clock: not strictly more work
        "overhead_ratio": timing.ratio(base, cand, more_work=False),
        "steady_samples_per_s_per_worker": {k: timing.spread(v) for k, v in rates.items()},
        "per_worker_ratio": timing.ratio([1 / x for x in rates["local"]], [1 / x for x in rates["ray"]],
                                         more_work=False),
    }
    for k in ("overhead_ratio", "per_worker_ratio"):
        print(f"{k}: {timing.describe(results[k])}")
    print("steady samples/s per worker:", {k: round(v["median"], 3) for k, v in
                                           results["steady_samples_per_s_per_worker"].items()},
          f"ray.init {results['ray_init_seconds']['median']:.1f}s")
    rec.save(**results)


if __name__ == "__main__":
    main()
