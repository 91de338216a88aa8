"""RFNet benches, on a compiled release (default: the demo's v0.1).

1. Held-out AP of `available`: the full RFNet against an image-only baseline (the generated image
   alone, same backbone, same training), both evaluated after their last epoch on validation + test.
   With --ablations, also one model per dropped input, in the shape of the paper's table.
2. Prelabel throughput as a ratio to the model's forward pass alone on the same batches (target >= 0.8).

    .venv/bin/python bench/bench_rfnet.py [--release v0.1] [--epochs 10] [--ablations]
"""

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines import params  # noqa: E402
from rfnet import checkpoint, predict  # noqa: E402
from rfnet.data import ReleaseSplit, collate, shard_samples  # noqa: E402
from rfnet.evaluate import metrics  # noqa: E402
from rfnet.evaluate import predict as run_model  # noqa: E402
from rfnet.train import TrainConfig, train  # noqa: E402


def held_out_ap(ck: Path, cfg: TrainConfig) -> float:
    model, meta = checkpoint.load(ck)
    probs, targets = [], []
    for split in ("validation", "test"):
        ds = ReleaseSplit(cfg.release, split, cfg.releases, meta["model"]["image_size"], cache_dir=cfg.cache_dir)
        _, p, t = run_model(model, torch.utils.data.DataLoader(ds, batch_size=16, collate_fn=collate))
        probs.append(p)
        targets.append(t)
    return metrics(np.concatenate(probs), np.concatenate(targets))["ap"], sum(len(p) for p in probs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", default="v0.1")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--batch", default="demo", help="batch whose shards the prelabel bench reads")
    a = ap.parse_args()
    torch.set_num_threads(1)
    base = params.load("rfnet", TrainConfig, "params.yaml", {"release": a.release, "epochs": a.epochs})
    runs = {"RFNet (all inputs)": (), "image only (generated image)": ("product", "depth", "saliency", "caption")}
    if a.ablations:
        runs.update({f"- {m}": (m,) for m in ("product", "depth", "saliency", "caption")})
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, drop in runs.items():
            cfg = replace(base, out=str(Path(tmp) / name.replace(" ", "_")), model=replace(base.model, drop=drop),
                          cache_dir=str(Path(tmp) / "hf"))
            t = time.perf_counter()
            train(cfg)
            results[name] = (*held_out_ap(Path(cfg.out) / "last", cfg), time.perf_counter() - t)
        print(f"\nheld-out AP of available (validation + test of {a.release}, {a.epochs} epochs):")
        for name, (ap_, n, secs) in results.items():
            print(f"  {name:32s} AP {ap_:.3f}  (n={n}, {secs:.0f} s)")

        full = Path(tmp) / "RFNet_(all_inputs)" / "best"
        model, meta = checkpoint.load(full)
        urls = sorted(str(p) for p in (Path("data/shards") / a.batch).glob("*.tar"))
        batches = list(torch.utils.data.DataLoader(shard_samples(urls, meta["model"]["image_size"]), batch_size=32,
                                                   collate_fn=collate))
        n = sum(len(b["keys"]) for b in batches)
        fwd, pre = [], []
        for _ in range(3):
            t = time.perf_counter()
            with torch.no_grad():
                for b in batches:
                    model(b["images"], model.tokenize(b["captions"]))
            fwd.append(time.perf_counter() - t)
            t = time.perf_counter()  # the model is loaded once per run; what is timed is the loop over the batch
            predict.prelabel(model, meta, predict.PrelabelConfig(batch_id=a.batch, out=str(Path(tmp) / "pred")))
            pre.append(time.perf_counter() - t)
        print(f"\nforward pass alone: {n / min(fwd):6.1f} samples/s")
        print(f"prelabel          : {n / min(pre):6.1f} samples/s (read shards, decode in a worker, forward, write)")
        print(f"ratio             : {min(fwd) / min(pre):.3f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
