"""Prelabel throughput as a ratio to RFNet's forward pass alone (target >= 0.8), model loading included
on both sides: a prelabel run starts from a checkpoint on disk, so the baseline does too.

baseline : checkpoint.load + forward over batches decoded beforehand (decoding is not timed: the floor)
candidate: predict.run = checkpoint.load + read the shards, decode in a loader worker, forward, write Parquet

The batch is synthetic (smooth random images in the batch's shard layout, 50 samples a shard as the
generate stage writes them) and the checkpoint holds an untrained fusion on the pretrained backbones:
throughput does not depend on what the model learnt, and the bench needs no demo run. The prelabel side
does strictly more, so a ratio above 1 is noise. The ratio is the median of `--repeats` interleaved
repeats, with min and max.

    .venv/bin/python bench/bench_prelabel.py [--samples 192] [--repeats 5]
"""

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench import fakes, timing  # noqa: E402
from rf1m import schema, shards  # noqa: E402
from rfnet import checkpoint, predict  # noqa: E402
from rfnet.data import collate, shard_samples  # noqa: E402
from rfnet.model import RFNet, RFNetConfig  # noqa: E402


def smooth_png(rng, size: int, mode: str) -> bytes:
    """Low-frequency noise upscaled: compresses and decodes like a photo, unlike white noise."""
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    small = rng.integers(0, 255, (16, 16, channels), dtype=np.uint8)
    img = Image.fromarray(small.squeeze(-1) if channels == 1 else small, mode).resize((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def fake_batch(root: Path, batch: str, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for start in range(0, n, 50):
        w = shards.ShardWriter(root / batch, f"shard-{start // 50:06d}", maxcount=50)
        for i in range(start, min(n, start + 50)):
            key = f"{batch}-p{i:05d}-studio-s{i}"
            recipe = fakes.recipe(i, key=key, title=f"ceramic mug {i} with a blue glaze")
            w.write(key, {m.wds_name: smooth_png(rng, size, m.mode) for m in schema.MEMBERS},
                    recipe)
        w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=predict.PrelabelConfig.batch_size)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    rec = timing.Record("prelabel", vars(a))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = RFNet(RFNetConfig())
        ckpt = checkpoint.save(tmp / "ckpt", model)
        size = model.cfg.image_size
        fake_batch(tmp / "shards", "bench", a.samples, size)
        urls = sorted(str(p) for p in (tmp / "shards" / "bench").glob("*.tar"))
        batches = list(torch.utils.data.DataLoader(shard_samples(urls, size), batch_size=a.batch_size,
                                                   collate_fn=collate))
        cfg = predict.PrelabelConfig(checkpoint=str(ckpt), batch_id="bench", shards=str(tmp / "shards"),
                                     out=str(tmp / "pred"), batch_size=a.batch_size)

        def forward_alone(r: int) -> float:
            t = time.perf_counter()
            m, _ = checkpoint.load(ckpt)
            with torch.no_grad():
                for b in batches:
                    m(b["images"], m.tokenize(b["captions"]))
            return time.perf_counter() - t

        def prelabel(r: int) -> float:
            took, got = timing.timed(predict.run, cfg)
            assert got["samples"] == a.samples and pq.read_metadata(got["predictions"]).num_rows == a.samples
            return took

        load_s = [timing.timed(checkpoint.load, ckpt)[0] for _ in range(3)]  # also warms the file cache
        fwd, pre = timing.interleaved(forward_alone, prelabel, a.repeats)
    n = a.samples
    result = {"samples": n, "checkpoint_load_s": timing.spread(load_s), "forward_s": timing.spread(fwd),
              "prelabel_s": timing.spread(pre), "ratio": timing.ratio(fwd, pre, more_work=True)}
    print(f"checkpoint load   : {result['checkpoint_load_s']['median']:.2f} s (median of 3), timed on both sides")
    print(f"forward pass alone: {n / result['forward_s']['median']:6.1f} samples/s (median; load + forward)")
    print(f"prelabel          : {n / result['prelabel_s']['median']:6.1f} samples/s "
          f"(median; load, read shards, decode in a worker, forward, write)")
    print(f"ratio             : {timing.describe(result['ratio'])}  (target >= 0.8)")
    rec.save(**result)


if __name__ == "__main__":
    main()
