"""The Ray engine's scenarios, run by tests/test_ray.py in one loopback-only network namespace.

Ray binds every interface and probes cloud-metadata addresses even with usage stats off, so it is
never started in the test process itself: `python -m tests.ray_scenarios ARGS.json` runs under
`unshare -n` with only `lo` up, one Ray session for every scenario (start-up costs ~5 s on 2 cores),
and writes what it saw to the JSON file named in ARGS for the tests to judge. ARGS `scenario`:
"prelabel" runs the prelabel stage alone; without it, the generate scenarios run.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

_LOADS = 0  # per process: how often this process "loaded the model"


def count_loads(job: dict) -> dict:
    """A stand-in stage function: loads its model on first use, like pipelines.worker does."""
    global _LOADS
    if _LOADS == 0:
        _LOADS += 1
        time.sleep(0.2)
    time.sleep(0.1)
    return {"count": 1, "job": job, "pid": os.getpid(), "loads": _LOADS}


def _own_netns_pids(title: str) -> list[int]:
    """PIDs whose process title starts with `title`, in this network namespace only (so never a
    process of another Ray on the host)."""
    mine, found = os.readlink("/proc/self/ns/net"), []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and os.readlink(d / "ns/net") == mine and \
                    (d / "cmdline").read_bytes().startswith(title.encode()):
                found.append(int(d.name))
        except OSError:
            continue
    return found


def kill_mid_job(batch: Path, report: dict) -> None:
    """SIGKILL the actor once the first shard is done and the next one is half written."""
    deadline = time.time() + 240
    while time.time() < deadline:
        if list(batch.glob("*.stats.json")) and list(batch.glob("*.tar.tmp")):
            pids = _own_netns_pids("ray::_JobActor")
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                report["killed"] = pids[0]
                report["stats_before_kill"] = len(list(batch.glob("*.stats.json")))
                report["tmp_at_kill"] = sorted(p.name for p in batch.glob("*.tmp"))
                return
        time.sleep(0.02)


def prelabel(args: dict, report: dict) -> None:
    """The prelabel stage on two actors (tests/test_prelabel.py's uneven batch: three shards)."""
    from pipelines import prelabel
    from pipelines.engines import RayConfig

    tmp = Path(args["tmp"])
    report["prelabel"] = prelabel.run(prelabel.PrelabelConfig(
        checkpoint=args["checkpoint"], batch_id="u", shards=str(tmp / "shards"), out=str(tmp / "ray"), engine="ray",
        ray=RayConfig(actors=2)))


def main(args: dict) -> None:
    import ray
    import torch

    torch.set_num_threads(1)
    report: dict = {}
    t0 = time.time()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    report["init_s"] = time.time() - t0
    {"prelabel": prelabel}.get(args.get("scenario"), generate_scenarios)(args, report)
    ray.shutdown()
    Path(args["report"]).write_text(json.dumps(report))


def generate_scenarios(args: dict, report: dict) -> None:
    from pipelines import generate
    from pipelines.engines import RayConfig, RayEngine
    from tests.conftest import small_config

    tmp, model = Path(args["tmp"]), Path(args["model"])

    # 1. the generate stage on two actors, to compare with the local engine's batch
    cfg = small_config(tmp, model, out=str(tmp / "ray-shards"), engine="ray", ray=RayConfig(actors=2))
    report["identical"] = generate.run(cfg)

    # 2. one model load per actor, however many jobs it runs
    engine = RayEngine(RayConfig(actors=2))
    report["loads"] = list(engine.map(count_loads, list(range(6)), lambda n: None))

    # 3. an actor killed mid-shard: restarted, the job redone, every sample once
    cfg = small_config(tmp, model, out=str(tmp / "killed-shards"), engine="ray", batch_size=1, steps=6,
                       ray=RayConfig(actors=1, max_retries=2))
    killer = threading.Thread(target=kill_mid_job, args=(Path(cfg.out) / cfg.batch_id, report))
    killer.start()
    report["killed_run"] = generate.run(cfg)
    killer.join()
    report["rerun"] = generate.run(cfg)


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()))
