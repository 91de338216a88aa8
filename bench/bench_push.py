"""Push benches, each ratio the median of interleaved repeats (min and max beside it):

1. End to end, same work on both sides: the baseline reads the sidecars and predictions into a payload,
   writes the media, finds or creates the project and imports everything in one bare SDK bulk call; push.run
   does the same (key listing skipped on a new project, chunks of `--chunk`, media written while the
   import runs). Each side gets its own fresh batch and project of the same shape every repeat.
2. The import step alone: one bare SDK bulk call against push.import_tasks (chunks), same prepared payload,
   each into a fresh project.
3. Re-push to an existing project with nothing new (default 10,000 tasks): what an idempotent re-run
   pays to list the project's keys and check the media, against the first push of the same batch.

    .venv/bin/python bench/bench_push.py [--tasks 2000] [--chunk 1000] [--repush 10000] [--repeats 5]
"""

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from annotation import push  # noqa: E402
from bench import fakes, timing  # noqa: E402
from bench.ls_bench_server import label_studio  # noqa: E402
from rf1m import decision, schema, shards, tables  # noqa: E402


def fake_batch(root: Path, batch: str, n: int) -> Path:
    """n samples with small real PNG members, written by the project's ShardWriter."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    w = shards.ShardWriter(root / "shards" / batch, "shard-000000", maxcount=500)
    keys = []
    for i in range(n):
        key = f"{batch}-p{i:05d}-studio-s{i}"
        recipe = fakes.recipe(i, key=key, title=f"product {i}", prompt="a product on a podium")
        w.write(key, {m.wds_name: png for m in schema.MEMBERS}, recipe)
        keys.append(key)
    w.close()
    fails = {c: 0.6 for c in tables.PREDICTED_CLASSES[1:]}
    return tables.write(tables.PREDICTIONS, [
        {"key": k, "model_version": "rfnet-bench", "threshold": decision.DEFAULT_THRESHOLD, "p_available": float(p),
         **{f"p_{c}": v for c, v in fails.items()}, **decision.decide(p, fails)}
        for k, p in zip(keys, rng.random(n))], root / f"{batch}-predictions.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=push.PushConfig.chunk)
    ap.add_argument("--repush", type=int, default=10_000, help="tasks in the re-push bench (0: skip it)")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    rec = timing.Record("push", vars(a))
    with tempfile.TemporaryDirectory() as tmp, label_studio(tmp) as (client, _):
        root = Path(tmp)

        def config(batch: str, n: int) -> push.PushConfig:  # untimed: the batch's shards and predictions
            return push.PushConfig(batch_id=batch, shards=str(root / "shards"), media=str(root / "media"),
                                   files_root=tmp, predictions=str(fake_batch(root, batch, n)), gold_rate=0,
                                   chunk=a.chunk)

        def raw_end_to_end(r: int) -> float:
            cfg = config(f"raw{r}", a.tasks)
            t = time.perf_counter()
            payload, media = push.build_tasks(cfg)
            push.extract_media(media)
            project, _ = push.ensure_project(client, cfg)
            client.ls.projects.import_tasks(project["id"], request=payload)
            return time.perf_counter() - t

        def push_end_to_end(r: int) -> float:
            cfg = config(f"ours{r}", a.tasks)
            took, got = timing.timed(push.run, cfg, client)
            assert got["imported_now"] == a.tasks and got["with_predictions"] == a.tasks
            return took

        payload, _ = push.build_tasks(config("imp", a.tasks))

        def fresh_project(name: str) -> int:
            return push.ensure_project(client, push.PushConfig(batch_id=name, media=str(root / "media"),
                                                               files_root=tmp))[0]["id"]

        def raw_import(r: int) -> float:
            pid = fresh_project(f"impraw{r}")
            return timing.timed(client.ls.projects.import_tasks, pid, request=payload)[0]

        def push_import(r: int) -> float:
            pid = fresh_project(f"impours{r}")
            return timing.timed(push.import_tasks, client, pid, payload, a.chunk, set())[0]

        e2e = timing.interleaved(raw_end_to_end, push_end_to_end, a.repeats)
        imp = timing.interleaved(raw_import, push_import, a.repeats)
        results = {
            "tasks": a.tasks, "chunk": a.chunk,
            "end_to_end": {"raw_s": timing.spread(e2e[0]), "push_s": timing.spread(e2e[1]),
                           "ratio": timing.ratio(*e2e, more_work=False)},
            "import_only": {"raw_s": timing.spread(imp[0]), "push_s": timing.spread(imp[1]),
                            "ratio": timing.ratio(*imp, more_work=True)},
        }
        if a.repush:
            cfg = config("repush", a.repush)
            first, got = timing.timed(push.run, cfg, client)
            assert got["imported_now"] == a.repush
            pid = got["project_id"]

            def list_keys(r: int) -> float:
                took, keys = timing.timed(push.existing_tasks, client, pid)
                assert len(keys) == a.repush
                return took

            def repush(r: int) -> float:
                took, again = timing.timed(push.run, cfg, client)
                assert again["imported_now"] == 0 and again["tasks"] == a.repush
                return took

            listing, re = timing.interleaved(list_keys, repush, a.repeats)
            assert len(push.existing_tasks(client, pid)) == a.repush  # nothing was doubled
            results["repush"] = {"tasks": a.repush, "first_push_s": first, "repush_s": timing.spread(re),
                                 "list_keys_s": timing.spread(listing),
                                 "repush_over_first": timing.spread([x / first for x in re])}
    n = a.tasks
    for name, what in (("end_to_end", "payload + media + project + import"), ("import_only", "import step alone")):
        r = results[name]
        print(f"{what} ({n} tasks): raw {n / r['raw_s']['median']:6.1f} tasks/s, "
              f"push {n / r['push_s']['median']:6.1f} tasks/s (medians)")
        print(f"  ratio push/raw: {timing.describe(r['ratio'])}")
    if a.repush:
        r = results["repush"]
        print(f"re-push of {a.repush} tasks, nothing new: {r['repush_s']['median']:.1f} s "
              f"(min {r['repush_s']['min']:.1f}, max {r['repush_s']['max']:.1f}); key listing alone "
              f"{r['list_keys_s']['median']:.1f} s; first push {r['first_push_s']:.1f} s "
              f"(re-push/first {r['repush_over_first']['median']:.3f})")
    rec.save(**results)


if __name__ == "__main__":
    main()
