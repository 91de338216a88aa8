"""Where stage jobs run. A stage hands an engine picklable jobs and a top-level function.

`local` runs them in this process (workers=1) or in a spawn process pool; each job writes its own
shard, as img2dataset's workers do, so nothing is shared between them. Ray (GPU actors, many
machines) plugs in here as another engine with the same `map`; it is not built yet.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed


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


def make_engine(kind: str = "local", workers: int = 1) -> LocalEngine:
    if kind == "local":
        return LocalEngine(workers)
    raise ValueError(f"unknown engine {kind!r}: only 'local' is available (Ray is planned)")
