"""Where stage jobs run. A stage hands an engine picklable jobs and a top-level function.

`local` runs them in this process (workers=1) or in a spawn process pool; each job writes its own
shard, as img2dataset's workers do, so nothing is shared between them. `ray` runs the same function
on a pool of Ray actors (a fixed number, `num_gpus` each), so a team past one machine changes a
setting, not code. What makes both safe to kill and re-run lives in the job, not the engine: a job
names its shard (`shard-NNNNNN`), deletes every trace of that shard before writing, writes under
`.tmp` names and marks itself done last. A retried or repeated job therefore replaces, never adds.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass


class LocalEngine:
    def __init__(self, workers: int = 1):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers

    def map(self, fn: Callable, jobs: Iterable, progress: Callable[[int], None]) -> Iterator:
        """Yield fn(job) for every job, as they finish; `progress(n)` is told of samples done."""
        jobs = list(jobs)
        if self.workers == 1 or len(jobs) <= 1:
            for job in jobs:
                yield fn(job, progress)
            return
        with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(fn, job) for job in jobs]
            for fut in as_completed(futures):
                result = fut.result()
                progress(result["count"])
                yield result


@dataclass(frozen=True)
class RayConfig:
    """How the Ray engine runs. Operational only: none of it changes what a shard holds."""

    # None: start a private single-node Ray for this run (one machine, tests). "auto": join the
    # cluster this node belongs to (`ray start` ran here). "ray://head:10001": Ray Client.
    address: str | None = None
    actors: int = 1  # actor pool size: one loaded model each, so one per GPU on a GPU cluster
    num_gpus: float = 0.0  # per actor; 1 on a GPU cluster (0.5 puts two actors on one GPU)
    num_cpus: float = 1.0  # per actor
    max_retries: int = 3  # actor restarts, and retries of the job it was running, after a worker dies
    object_store_mb: int | None = None  # private Ray only; None is Ray's default (30% of RAM)


class _JobActor:
    """One long-lived worker process: the stage function's module-level model cache (e.g.
    `pipelines.worker._LOADED`) is filled by its first job and reused by every later one."""

    def run(self, fn: Callable, job) -> dict:
        return fn(job)


class RayEngine:
    def __init__(self, cfg: RayConfig | None = None):
        self.cfg = cfg or RayConfig()
        if self.cfg.actors < 1 or self.cfg.max_retries < 0:
            raise ValueError("ray.actors must be >= 1 and ray.max_retries >= 0")

    def _init(self) -> bool:
        """Connect to (or start) Ray unless this process already did; True when this call did."""
        import ray

        if ray.is_initialized():
            return False
        c = self.cfg
        if c.address is None:
            store = c.object_store_mb * 2**20 if c.object_store_mb else None
            ray.init(include_dashboard=False, object_store_memory=store, log_to_driver=False)
        else:
            ray.init(address=c.address, log_to_driver=False)
        return True

    def map(self, fn: Callable, jobs: Iterable, progress: Callable[[int], None]) -> Iterator:
        """Yield fn(job) for every job, as they finish. A job whose actor dies is retried on the
        restarted actor up to `max_retries` times, then the run fails with Ray's error."""
        try:
            import ray
            from ray.util import ActorPool
        except ImportError as e:
            raise RuntimeError("engine ray needs Ray: pip install -e '.[cluster]'") from e

        jobs = list(jobs)
        if not jobs:
            return
        started = self._init()
        c = self.cfg
        actor = ray.remote(num_cpus=c.num_cpus, num_gpus=c.num_gpus, max_restarts=c.max_retries,
                           max_task_retries=c.max_retries)(_JobActor)
        actors = [actor.remote() for _ in range(min(c.actors, len(jobs)))]
        try:
            for result in ActorPool(actors).map_unordered(lambda a, job: a.run.remote(fn, job), jobs):
                progress(result["count"])
                yield result
        finally:
            for a in actors:
                ray.kill(a)
            if started:
                ray.shutdown()


def make_engine(kind: str = "local", workers: int = 1, ray: RayConfig | None = None) -> LocalEngine | RayEngine:
    if kind == "local":
        return LocalEngine(workers)
    if kind == "ray":
        return RayEngine(ray)
    raise ValueError(f"unknown engine {kind!r}: 'local' or 'ray'")
