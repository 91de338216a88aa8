"""Pull throughput over 10k annotations (annotations/s), and the cost of a second, incremental pull
with nothing new, as a ratio to the first. The annotations are seeded inline at import.

    .venv/bin/python bench/bench_pull.py [--annotations 10000]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from annotation import pull, push  # noqa: E402
from annotation.config import choice_result  # noqa: E402
from bench.ls_bench_server import label_studio  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotations", type=int, default=10_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, label_studio(tmp) as client:
        cfg = push.PushConfig(batch_id="pullbench", files_root=tmp, media=str(Path(tmp) / "media"))
        project, _ = push.ensure_project(client, cfg)
        tasks = [{"data": {"task_key": f"k{i}", "key": f"k{i}", "batch_id": "pullbench", "gold": False,
                           "image": "", "product": "", "title": "t", "prompt": "p"},
                  "annotations": [{"result": choice_result("not_available", ["size_mismatch"]) if i % 3 else
                                   choice_result("available", []), "lead_time": 4.0}]}
                 for i in range(a.annotations)]
        print(f"seeding {len(tasks)} annotated tasks ...", file=sys.stderr)
        push.import_tasks(client, project["id"], tasks, chunk=1000)
        pcfg = pull.PullConfig(batch_id="pullbench", labels=str(Path(tmp) / "labels"))
        t = time.perf_counter()
        first = pull.run(pcfg, client)
        t1 = time.perf_counter() - t
        t = time.perf_counter()
        second = pull.run(pcfg, client)
        t2 = time.perf_counter() - t
    assert first["labels"] == a.annotations and second["new_or_changed"] == 0
    print(f"first pull  : {a.annotations / t1:8.1f} annotations/s ({t1:.1f} s for {a.annotations})")
    print(f"second pull : {t2:.1f} s with nothing new (ratio to the first {t2 / t1:.2f}; the export is re-read)")


if __name__ == "__main__":
    main()
