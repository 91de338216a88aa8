"""Pull throughput over 10k annotations (annotations/s), and the cost of a second, incremental pull
with nothing new, as a ratio to the first. The annotations are seeded inline at import. Each repeat
pulls into a fresh labels folder (a first pull) and then again (nothing new), so first and second
alternate; the ratio is the median of the per-repeat ratios, with min and max.

    .venv/bin/python bench/bench_pull.py [--annotations 10000] [--repeats 5]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from annotation import pull, push  # noqa: E402
from annotation.config import choice_result  # noqa: E402
from bench import timing  # noqa: E402
from bench.ls_bench_server import label_studio  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotations", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    rec = timing.Record("pull", vars(a))
    with tempfile.TemporaryDirectory() as tmp, label_studio(tmp) as (client, _):
        cfg = push.PushConfig(batch_id="pullbench", files_root=tmp, media=str(Path(tmp) / "media"))
        project, _ = push.ensure_project(client, cfg)
        tasks = [{"data": {"task_key": f"k{i}", "key": f"k{i}", "batch_id": "pullbench", "gold": False,
                           "image": "", "product": "", "title": "t", "prompt": "p"},
                  "annotations": [{"result": choice_result("not_available", ["size_mismatch"]) if i % 3 else
                                   choice_result("available", []), "lead_time": 4.0}]}
                 for i in range(a.annotations)]
        print(f"seeding {len(tasks)} annotated tasks ...", file=sys.stderr)
        push.import_tasks(client, project["id"], tasks, chunk=1000)
        # Steady state: the project's last change is one annotation, well after the seeding. An incremental pull
        # re-reads the tasks changed within overlap_s before the newest change it saw, so straight after the bulk
        # seeding (10,000 tasks in about a minute) it would re-read most of them.
        time.sleep(pull.PullConfig.overlap_s)
        last = next(iter(client.ls.tasks.list(project=project["id"], fields="task_only", page_size=1)))
        client.ls.annotations.create(last.id, result=choice_result("available", []), lead_time=1.0)
        t1, t2 = [], []
        for r in range(a.repeats):
            pcfg = pull.PullConfig(batch_id="pullbench", labels=str(Path(tmp) / f"labels{r}"))
            took, first = timing.timed(pull.run, pcfg, client)
            t1.append(took)
            took, second = timing.timed(pull.run, pcfg, client)
            t2.append(took)
            assert first["labels"] == a.annotations + 1 and second["new_or_changed"] == 0 and second["tasks_read"] <= 1
    result = {"annotations": a.annotations, "first_s": timing.spread(t1), "second_s": timing.spread(t2),
              "second_over_first": timing.spread([b / f for f, b in zip(t1, t2)])}
    r = result["second_over_first"]
    print(f"first pull  : {a.annotations / result['first_s']['median']:8.1f} annotations/s "
          f"(median {result['first_s']['median']:.1f} s for {a.annotations})")
    print(f"second pull : {result['second_s']['median']:.1f} s with nothing new; second/first {r['median']:.2f} "
          f"(median of {a.repeats}; min {r['min']:.2f}, max {r['max']:.2f}; only changed tasks are listed)")
    rec.save(**result)


if __name__ == "__main__":
    main()
