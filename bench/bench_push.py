"""Push throughput (tasks/s, every task with an RFNet prediction) as a ratio to one raw bulk-import
call of the same payload, in the same Label Studio, same run. Target >= 0.9.

push.run does what a user runs: reads the shard sidecars, extracts the two images per task by their
offsets into the media folder, lists the keys already in the project, imports in chunks.

    .venv/bin/python bench/bench_push.py [--tasks 1000]
"""

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from annotation import push  # noqa: E402
from bench.ls_bench_server import label_studio  # noqa: E402
from rf1m import schema, shards  # noqa: E402


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
        recipe = {f.name: i if f.arrow == pa.int64() else 0.7 if f.arrow == pa.float64()
                  else False if f.arrow == pa.bool_() else f"v{i}" for f in schema.RECIPE}
        recipe.update(key=key, title=f"product {i}", prompt="a product on a podium")
        w.write(key, {m.wds_name: png for m in schema.MEMBERS}, recipe)
        keys.append(key)
    w.close()
    preds = root / f"{batch}-predictions.parquet"
    pq.write_table(pa.Table.from_pylist([{"key": k, "model_version": "rfnet-bench", "p_available": float(p),
                                          **{f"p_{r}": 0.6 for r in schema.REASON_NAMES}}
                                         for k, p in zip(keys, rng.random(n))]), preds)
    return preds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, label_studio(tmp) as client:
        root = Path(tmp)
        raw_t, ours_t = [], []
        for r in range(2):
            preds = fake_batch(root, f"raw{r}", a.tasks)
            cfg = push.PushConfig(batch_id=f"raw{r}", shards=str(root / "shards"), media=str(root / "media"),
                                  files_root=tmp, predictions=str(preds), gold_rate=0)
            payload, media = push.build_tasks(cfg)  # baseline gets the finished payload and media for free
            push.extract_media(media)
            project, _ = push.ensure_project(client, cfg)
            t = time.perf_counter()
            client.post(f"/api/projects/{project['id']}/import", payload)
            raw_t.append(time.perf_counter() - t)
            preds = fake_batch(root, f"ours{r}", a.tasks)
            cfg = push.PushConfig(batch_id=f"ours{r}", shards=str(root / "shards"), media=str(root / "media"),
                                  files_root=tmp, predictions=str(preds), gold_rate=0)
            t = time.perf_counter()
            got = push.run(cfg, client)
            ours_t.append(time.perf_counter() - t)
            assert got["imported_now"] == a.tasks and got["with_predictions"] == a.tasks
    raw, ours = min(raw_t), min(ours_t)
    print(f"raw bulk import : {a.tasks / raw:7.1f} tasks/s (one call, payload prepared beforehand)")
    print(f"rf1m push       : {a.tasks / ours:7.1f} tasks/s (project, media, key listing, chunks)")
    print(f"ratio           : {raw / ours:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
