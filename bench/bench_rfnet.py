"""RFNet's held-out AP of `available` on a compiled release (default: the demo's v0.1), against an
image-only baseline (the generated image alone, same backbone, same training). The demo release is
small, so instead of its 40-sample held-out splits this uses K-fold cross-validation by product over all
its samples: every sample is predicted once by a model that never saw its product, and AP is computed on
the pooled predictions. With --ablations, also one model per dropped input, in the shape of the paper's
table. Prelabel throughput is `bench_prelabel.py`.

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

from bench import timing  # noqa: E402
from pipelines import params  # noqa: E402
from rfnet import checkpoint  # noqa: E402
from rfnet.data import ReleaseSplit, collate  # noqa: E402
from rfnet.evaluate import metrics  # noqa: E402
from rfnet.evaluate import predict as run_model  # noqa: E402
from rfnet.train import TrainConfig, train  # noqa: E402


def cross_validated_ap(cfg: TrainConfig, data: ReleaseSplit, folds: int, tmp: Path) -> tuple[float, int]:
    products = sorted(set(data.products))
    np.random.default_rng(cfg.seed).shuffle(products)
    fold_of = {p: i % folds for i, p in enumerate(products)}
    probs, targets = [], []
    for k in range(folds):
        held = [i for i, p in enumerate(data.products) if fold_of[p] == k]
        seen = [i for i, p in enumerate(data.products) if fold_of[p] != k]
        out = tmp / f"fold{k}"
        train(replace(cfg, out=str(out)), data=(data.subset(seen, augment=cfg.augment), data.subset(held, False)))
        model, _ = checkpoint.load(out / "last")
        _, p, t = run_model(model, torch.utils.data.DataLoader(data.subset(held, False), batch_size=16,
                                                               collate_fn=collate))
        probs.append(p)
        targets.append(t)
    return metrics(np.concatenate(probs), np.concatenate(targets))["ap"], sum(len(p) for p in probs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", default="v0.1")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--folds", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    rec = timing.Record("rfnet_ap", vars(a))
    base = params.load("rfnet", TrainConfig, "params.yaml", {"release": a.release, "epochs": a.epochs})
    runs = {"RFNet (all inputs)": (), "image only (generated image)": ("product", "depth", "saliency", "caption")}
    if a.ablations:
        runs.update({f"- {m}": (m,) for m in ("product", "depth", "saliency", "caption")})
    with tempfile.TemporaryDirectory() as tmp:
        data = ReleaseSplit(a.release, "train+validation+test", base.releases, base.model.image_size,
                            base.augment, str(Path(tmp) / "hf"))
        results = {}
        for name, drop in runs.items():
            cfg = replace(base, model=replace(base.model, drop=drop))
            t = time.perf_counter()
            run_dir = Path(tmp) / name.replace(" ", "_")
            results[name] = (*cross_validated_ap(cfg, data, a.folds, run_dir), time.perf_counter() - t)
        print(f"\nAP of available, {a.folds}-fold cross-validation by product over {a.release} ({a.epochs} epochs):")
        for name, (ap_, n, secs) in results.items():
            print(f"  {name:32s} AP {ap_:.3f}  (n={n}, {secs:.0f} s)")
    rec.save(**{name: {"ap": ap_, "n": n, "seconds": secs} for name, (ap_, n, secs) in results.items()})


if __name__ == "__main__":
    main()
