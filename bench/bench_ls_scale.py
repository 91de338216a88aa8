"""Label Studio at a team's scale (issue 14.4): push and pull on one project of 100,000 tasks.

Outside CI (about an hour on a shared 2-core machine; run it with `nice -n 10`). A private Label Studio
(sqlite by default; `--db postgresql` starts a private cluster as the tests do) gets, in one project:

1. the import: `push.import_tasks` of `--tasks` tasks, each with a pre-label and one annotation seeded
   inline, chunk by chunk, with each chunk's time (does the import slow down as the project grows?);
2. the key listing an idempotent re-push pays (`push.existing_tasks`) on the full project;
3. pulls: a full pull into a fresh labels folder straight after the import, the pull straight after it
   (the overlap window still covers the end of the import burst), and one more with nothing new (steady
   state); then the key listing of step 2 (after the pulls, which must meet the burst);
4. with `--repush N` (default 10,000), in a project of its own: the key listing as push did it before
   (1,000 a page, URIs resolved) against `push.existing_tasks` now (URIs unresolved; the run of 2026-12-01
   also had 5,000 a page), interleaved, beside the import.

Throughout, the server's process tree is sampled for its resident memory (psutil), and every request
that timed out, failed or was retried is counted. Results go to bench/results/ls_scale.json after every
step, so an interrupted run keeps what it measured.

    nice -n 10 .venv/bin/python bench/bench_ls_scale.py [--tasks 100000] [--chunk 1000] [--repush 10000]
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parents[1]))
from annotation import pull, push  # noqa: E402
from annotation.client import Client  # noqa: E402
from annotation.config import choice_result  # noqa: E402
from bench import timing  # noqa: E402
from bench.ls_bench_server import label_studio  # noqa: E402


class Watched(Client):
    """The project's client, counting every attempt of every call and the ones that failed (and why)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.attempts, self.failures = Counter(), Counter()

    def call(self, what, fn, *args, **kw):
        def attempt(*a, **k):
            self.attempts[what] += 1
            try:
                return fn(*a, **k)
            except Exception as e:  # counted, then handled by Client.call as usual
                self.failures[f"{what}: {type(e).__name__}"] += 1
                raise
        return super().call(what, attempt, *args, **kw)


class PeakRSS:
    """Samples the resident memory of a process and its children every `every` seconds."""

    def __init__(self, pid: int, every: float = 0.5):
        self.proc, self.every, self.peak, self.last = psutil.Process(pid), every, 0, 0
        self._stop = threading.Event()
        self._sample()
        threading.Thread(target=self._run, daemon=True).start()

    def _sample(self):
        with contextlib.suppress(psutil.Error):
            self.last = sum(p.memory_info().rss for p in [self.proc, *self.proc.children(recursive=True)])
            self.peak = max(self.peak, self.last)

    def _run(self):
        while not self._stop.wait(self.every):
            self._sample()

    def mb(self) -> dict:
        return {"peak_mb": round(self.peak / 2**20), "now_mb": round(self.last / 2**20)}

    def reset(self) -> None:
        self.peak = self.last


def tasks(batch: str, n: int, annotated: bool) -> list[dict]:
    """Task payloads of push's shape (data, a pre-label), optionally each with one annotation."""
    out = []
    for i in range(n):
        verdict, reasons = ("available", []) if i % 3 == 0 else ("not_available", ["size_mismatch"])
        key = f"{batch}-{i:06d}"
        t = {"data": {"task_key": key, "key": key, "batch_id": batch, "gold": False,
                      "image": f"/data/local-files/?d=media/{batch}/{key}.image.png",
                      "product": f"/data/local-files/?d=media/{batch}/{key}.product.png",
                      "title": f"product {i}", "prompt": "a product on a marble table"},
             "predictions": [{"model_version": "rfnet-bench", "score": 0.5, "result": choice_result(verdict, reasons)}]}
        if annotated:
            t["annotations"] = [{"result": choice_result(verdict, reasons), "lead_time": 4.0}]
        out.append(t)
    return out


def old_listing(client: Client, project_id: int) -> set[str]:
    """The key listing as push did it before: 1,000 a page, URIs resolved by Label Studio."""
    return {t.data["task_key"] for t in client.call("tasks.list", lambda: list(client.ls.tasks.list(
        project=project_id, fields="task_only", page_size=1000)))}


def import_log(data_dir: Path, project_id: int) -> list[float]:
    """Seconds between the server's answers to successive import requests into the project (its log)."""
    import datetime as dt
    import re

    stamps = [dt.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f") for m in re.finditer(
        rf"\[(\S+ \S+)\] \[django.server[^\n]*POST /api/projects/{project_id}/import", (data_dir / "server.log").read_text())]
    stamps = sorted(set(stamps))  # the log repeats each line
    return [round((b - a).total_seconds(), 1) for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--repush", type=int, default=10_000, help="tasks in the key-listing comparison (0: skip it)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the key-listing comparison")
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--attach", metavar="DATA_DIR", help="skip the imports: measure the pulls and the key listing "
                    "on the server a cut-short run left running (its data dir), adding to the last results")
    a = ap.parse_args()
    rec = timing.Record(f"ls_scale{'_pg' if a.db == 'postgresql' else ''}", vars(a))
    with contextlib.ExitStack() as stack:
        if a.attach:
            data = Path(a.attach)
            pid = int((data / "server.pid").read_text())
            server_proc = psutil.Process(pid)
            port = server_proc.cmdline()[server_proc.cmdline().index("--port") + 1]
            os.environ["LABEL_STUDIO_API_KEY"] = server_proc.environ()["LABEL_STUDIO_USER_TOKEN"]  # never printed
            url, tmp = f"http://127.0.0.1:{port}", stack.enter_context(tempfile.TemporaryDirectory())
            res = json.loads((timing.RESULTS / f"{rec.data['bench']}.json").read_text())["results"]
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            _, cfg = stack.enter_context(label_studio(tmp, a.db))
            url, data, res = cfg.url, Path(cfg.data_dir), {"tasks": a.tasks, "db": a.db}
        measure(a, res, rec, Watched(url, timeout=1800), data, tmp)  # a 100k export must not be cut off by the client


def measure(a, res: dict, rec: timing.Record, client: Client, data: Path, tmp: str) -> None:
    mem = PeakRSS(int((data / "server.pid").read_text()))
    res.setdefault("server_idle", mem.mb())

    def step(name: str, fn, *args):
        mem.reset()
        took, out = timing.timed(fn, *args)
        res[name] = {"s": round(took, 2), **mem.mb(), "load": round(psutil.getloadavg()[0], 1)}
        res["requests"] = {"attempts": dict(client.attempts), "failures": dict(client.failures)}
        rec.save(**res)
        print(f"{name}: {took:.1f} s, server {mem.mb()}", file=sys.stderr)
        return out

    if a.repush and not a.attach:
        project, _ = push.ensure_project(client, push.PushConfig(batch_id="repush", files_root=tmp,
                                                                 media=str(Path(tmp) / "media")))
        step("repush_import", push.import_tasks, client, project["id"], tasks("repush", a.repush, False),
             a.chunk, set())

        def listed(fn):
            def run(r):
                took, keys = timing.timed(fn, client, project["id"])
                assert len(keys) == a.repush
                return took
            return run
        before, now = timing.interleaved(listed(old_listing), listed(push.existing_tasks), a.repeats)
        res["repush_listing"] = {"tasks": a.repush, "before_s": timing.spread(before), "now_s": timing.spread(now),
                                 "before_over_now": timing.spread([b / n for b, n in zip(before, now)]),
                                 "import_s": res["repush_import"]["s"]}
        rec.save(**res)

    if a.attach:
        project = push.require_projects(client, "scale")[0]
    else:
        project, _ = push.ensure_project(client, push.PushConfig(batch_id="scale", files_root=tmp,
                                                                 media=str(Path(tmp) / "media")))
        payload = tasks("scale", a.tasks, True)
        step("import", push.import_tasks, client, project["id"], payload, a.chunk, set())
    n = client.totals(project["id"]).total
    chunks = import_log(data, project["id"])
    tenth = max(1, len(chunks) // 10)
    res["import_chunks"] = {"tasks_in_project": n, "chunk": a.chunk, "chunk_s_mean_by_tenth": [
        round(sum(chunks[k: k + tenth]) / len(chunks[k: k + tenth]), 1) for k in range(0, len(chunks), tenth)]}
    pcfg = pull.PullConfig(batch_id="scale", labels=str(Path(tmp) / "labels"))
    first = step("pull_full", pull.run, pcfg, client)  # straight after the import, as a team would
    after_burst = step("pull_after_burst", pull.run, pcfg, client)
    steady = step("pull_no_change", pull.run, pcfg, client)
    assert first["labels"] == n and after_burst["tasks_read"] == steady["tasks_read"] == 0
    for name in ("pull_after_burst", "pull_no_change"):
        res[name]["over_full"] = round(res[name]["s"] / res["pull_full"]["s"], 4)
    res["pull_after_burst"]["window_tasks_listed"] = after_burst["tasks_listed"]
    keys = step("list_keys", push.existing_tasks, client, project["id"])
    assert len(keys) == n
    res["server_end"] = mem.mb()
    rec.save(**res)


if __name__ == "__main__":
    main()
