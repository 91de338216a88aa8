"""Interleaved repeats, ratios as median with min and max, and the JSON record every bench writes.

Why: on a shared 2-core machine a single run, or the best of a few, says as much about the neighbours
as about the code. So baseline and candidate run alternately in one process (their order swapped each
repeat, so neither always inherits a warm cache), every repeat gives its own ratio, and a bench reports
the median of those ratios with their min and max. The load average at the start and the end goes into
`bench/results/<bench>.json`, so a reader can tell whether other work shared the cores.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def interleaved(baseline: Callable[[int], float], candidate: Callable[[int], float], repeats: int) -> tuple[list, list]:
    """Seconds per repeat for each side; each side gets the repeat index and returns the time it measured
    (so it can prepare its own untimed inputs). Repeat r runs the baseline first when r is even."""
    base, cand = [], []
    for r in range(repeats):
        if r % 2 == 0:
            base.append(baseline(r))
            cand.append(candidate(r))
        else:
            cand.append(candidate(r))
            base.append(baseline(r))
    return base, cand


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def ratio(base: list[float], cand: list[float], more_work: bool) -> dict:
    """Candidate throughput over baseline throughput, per repeat (base_i / cand_i: above 1 = candidate
    faster). `more_work`: the candidate does strictly more than the baseline, so anything above 1 is noise."""
    out = spread([b / c for b, c in zip(base, cand)])
    out["candidate_does_more_work"] = more_work
    return out


def describe(r: dict) -> str:
    text = f"{r['median']:.3f} (median of {len(r['values'])}; min {r['min']:.3f}, max {r['max']:.3f})"
    if r.get("candidate_does_more_work") and r["max"] > 1:
        text += "; above 1 is noise: the candidate does strictly more work"
    return text


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    """Seconds that fn(*args, **kwargs) took, and what it returned."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


class Record:
    """Start it before the bench's work, `save` its results after; the file is rewritten each run."""

    def __init__(self, bench: str, args: dict):
        args = {k: str(v) if isinstance(v, Path) else v for k, v in args.items()}  # argparse's type=Path
        self.data = {"bench": bench, "args": args, "started": dt.datetime.now().isoformat(timespec="seconds"),
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "platform": platform.platform()},
                     "loadavg_start": os.getloadavg()}

    def save(self, **results) -> Path:
        self.data.update(loadavg_end=os.getloadavg(), results=results)
        torch = sys.modules.get("torch")  # only where the bench itself uses it
        if torch is not None:
            self.data.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        busy = max(self.data["loadavg_start"][0], self.data["loadavg_end"][0]) > (os.cpu_count() or 1)
        self.data["shared_machine"] = busy  # other work competed for the cores during the bench
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.data['bench']}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(path)
        print(f"load average {self.data['loadavg_start'][0]:.2f} at start, {self.data['loadavg_end'][0]:.2f} at end"
              f"{' (other work shared the cores)' if busy else ''}; results in {path}")
        return path
