"""How much of the panel's judgement do RFNet's frozen image features carry, at each image size?

`bench_rfnet.py` finds RFNet at 0.75x the oracle's AP, and image-only as good as all inputs. This bench
asks whether the fusion or the features are the limit: a linear probe (L2 logistic regression on the
flattened, standardised EfficientNet-Lite0 output, every spatial cell kept) is trained on the same
samples and labels, on the generated image alone and on all four images, at 128 px (4x4 cells, RFNet's
default) and at larger sizes (256 px: 8x8 cells). If a linear probe on the features does as well as
RFNet's fusion, a better fusion cannot help; if a larger input lifts the probe, the image size is the
lever (the paper's is 384).

It runs on inner validation splits only (the first repeat's training folds, as `bench_rfnet`'s tuning
does), never on its test folds, so it can guide the next full run without tuning on test. AP is
against the oracle's labels (the noise-free rules) and against the panel's 1-2-vote labels. The
features (unflipped, one file per size under --root) are cached; the shards are `bench_rfnet`'s.

    nice -n 10 .venv/bin/python bench/bench_rfnet_probe.py --sizes 128 256
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench import timing  # noqa: E402
from bench.bench_rfnet import MAIN_PRODUCTS, ROOT, as_targets, panel_labels  # noqa: E402
from rf1m import shards  # noqa: E402
from rfnet.cv import grouped_folds, grouped_split, mean_sd  # noqa: E402
from rfnet.evaluate import average_precision  # noqa: E402
from rfnet.model import IMAGES  # noqa: E402

INPUTS = {"image only": [IMAGES.index("image")], "all four images": list(range(len(IMAGES)))}


@torch.no_grad()
def features(batch: Path, rows: list[dict], size: int, cache: Path) -> torch.Tensor:
    """EfficientNet-Lite0 output of every sample's four images at `size` px: N x 4 x 1280 x h x w (float16)."""
    from PIL import Image

    from rfnet.backbones import EfficientNetLite0
    from rfnet.data import MEMBER_OF, to_tensor

    keys = [r["key"] for r in rows]
    if cache.exists():
        saved = torch.load(cache, weights_only=True)
        if saved["keys"] == keys:
            return saved["image"]
    enc, out = EfficientNetLite0.pretrained().eval(), []
    for i in tqdm(range(0, len(rows), 16), desc=f"encode {size} px", unit="batch"):
        x = torch.stack([torch.stack([to_tensor(Image.open(io.BytesIO(shards.member_bytes(batch, r, MEMBER_OF[m]))), size)
                                      for m in IMAGES]) for r in rows[i: i + 16]])
        out.append(enc(x.flatten(0, 1)).unflatten(0, (len(x), len(IMAGES))).half())
    image = torch.cat(out)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"keys": keys, "image": image}, cache.with_suffix(".tmp"))
    cache.with_suffix(".tmp").rename(cache)
    return image


def _span_coordinates(z_rest: torch.Tensor, z_val: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of both sets in an orthonormal basis of the training rows' span. An L2-penalised
    linear model's weights lie in that span (representer theorem), so fitting on these N coordinates
    instead of the D >> N features gives the same model, at a cost of N x N instead of D."""
    lam, u = torch.linalg.eigh((z_rest @ z_rest.T).double())
    keep = lam > lam.max() * 1e-9
    lam, u = lam[keep], u[:, keep]
    return (u * lam.sqrt()).numpy(), ((z_val @ z_rest.T).double() @ u / lam.sqrt()).numpy()


def probe(x: torch.Tensor, y_train: np.ndarray, y_oracle: np.ndarray, y_panel_ok: np.ndarray, products: list[str],
          cs: list[float], folds: int, tune_folds: int) -> dict:
    """Validation AP of an L2 logistic regression per inverse strength C, over the inner splits
    bench_rfnet.tune uses; trained on the panel's 1-2-vote labels as RFNet is."""
    from sklearn.linear_model import LogisticRegression

    n = len(y_train)
    out = {c: {"ap_vs_oracle": [], "ap_vs_panel": []} for c in cs}
    for k, test in enumerate(grouped_folds(products, folds, 0)[:tune_folds]):
        rest, val = grouped_split(products, np.setdiff1d(np.arange(n), test), 0.2, 100 + k)
        rest, val = rest[y_panel_ok[rest]], val[y_panel_ok[val]]
        mu, sd = x[rest].mean(0), x[rest].std(0) + 1e-3
        tr, va = _span_coordinates((x[rest] - mu) / sd, (x[val] - mu) / sd)
        for c in cs:
            p = LogisticRegression(C=c, max_iter=2000).fit(tr, y_train[rest]).predict_proba(va)[:, 1]
            out[c]["ap_vs_oracle"].append(average_precision(y_oracle[val], p))
            out[c]["ap_vs_panel"].append(average_precision(y_train[val], p))
    return {c: {k: mean_sd(v) for k, v in d.items()} for c, d in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=ROOT, help="bench_rfnet's --root (its shards must exist)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--c", type=float, nargs="+", default=[0.0003, 0.001, 0.01], help="inverse L2 strengths tried")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--tune-folds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rec = timing.Record("rfnet_probe", vars(a))
    t0 = time.perf_counter()
    batch = a.root / "shards" / "cv"
    if not any(batch.glob("shard-*.parquet")):
        sys.exit(f"no shards under {batch}: make them first with bench/bench_rfnet.py --prepare-only --root {a.root}")
    rows = sorted(shards.read_sidecars(batch).to_pylist(), key=lambda r: r["key"])
    keep = set(sorted({r["product_id"] for r in rows})[:MAIN_PRODUCTS])
    rows = [r for r in rows if r["product_id"] in keep]
    labels = panel_labels(a.root, "cv", [r["key"] for r in rows])
    targets, ok = as_targets(labels["train"])
    y_train = targets[:, 0].numpy() > 0.5
    y_oracle = np.array([v == "available" for v, _ in labels["oracle"]])
    products = [r["product_id"] for r in rows]
    res = {"n_samples": len(rows), "n_products": len(keep), "probes": []}
    for size in a.sizes:
        feats = features(batch, rows, size, a.root / "probe" / f"efficientnet_lite0-{size}.pt")
        for name, mods in INPUTS.items():
            x = feats[:, mods].float().flatten(1)
            for c, r in probe(x, y_train, y_oracle, ok, products, a.c, a.folds, a.tune_folds).items():
                r = {"size": size, "cells": f"{feats.shape[-2]}x{feats.shape[-1]}", "inputs": name, "C": c, **r}
                print(r, flush=True)
                res["probes"].append(r)
    res["minutes"] = (time.perf_counter() - t0) / 60
    rec.data.update(res)
    rec.save(note="validation splits only (bench_rfnet's tuning splits), never its test folds")


if __name__ == "__main__":
    main()
