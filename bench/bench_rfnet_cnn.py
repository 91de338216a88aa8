"""Image features trained on this data: a small CNN from scratch, against RFNet's frozen features.

`bench_rfnet.py` found that frozen ImageNet features cap RFNet at 0.70-0.77 AP against a ceiling of
0.978, and that the extra inputs never beat the generated image alone by more than the noise. The
failures the panel measures are geometric (a few pixels between the product's base and the ground
line, a size against the caption's norm), which pooled ImageNet features are built to ignore. This
bench asks whether features trained on the panel's labels see them, on bench_rfnet's own data (its
cached shards under --root, the same products, folds, panel labels and bootstrap), without tuning
on test:

    --tune   the inner validation splits bench_rfnet tunes on (first repeat's training folds, 20% of
             their products held out), AP against the panel's 1-2 votes and the oracle; no test fold
    --cv     K-fold grouped CV (R repeats), AP against the 3-vote test labels, the paired difference
             full - image only with a bootstrap 95% CI over products, and AP against the oracle

Arms: `image` is the CNN on the generated image alone; `full` adds depth and saliency as input channels,
the original product image through a second, smaller CNN, and the caption's MiniLM embedding (mean
over tokens, frozen). `profile` (ProfileNet) reads only the scene's row and column profiles and the caption:
the geometry the panel judges, in 2,304 numbers (bench_rfnet_perception says why it was tried). The recipe (epochs, peak learning rate, weight averaging) is fixed by --tune.
`frozen_full` and `frozen_image` are bench_rfnet's own arms (RFNet's fusion on the frozen
EfficientNet-Lite0 + MiniLM features, its `fit` with the learning rate its full runs chose, 3.3e-4, 4
epochs at batch 64), on the same splits, so the comparison is paired.

    .venv/bin/python bench/bench_rfnet_cnn.py --root ~/.cache/rf1m-bench-rfnet-v3 --tune
    .venv/bin/python bench/bench_rfnet_cnn.py --root ~/.cache/rf1m-bench-rfnet-v3 --cv --repeats 1
    .venv/bin/python bench/bench_rfnet_cnn.py --root ~/.cache/rf1m-bench-rfnet-v5 --tune \
        --arms profile,frozen_image,frozen_full --recipes 20:2e-3:0 --out bench/results/rfnet_cnn_v5.json
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench import bench_rfnet  # noqa: E402
from bench.bench_rfnet import IMAGE_ONLY, ROOT, as_targets, panel_labels  # noqa: E402
from pipelines import params  # noqa: E402
from rf1m import shards  # noqa: E402
from rfnet.cv import bootstrap_diff, grouped_folds, grouped_split, mean_sd  # noqa: E402
from rfnet.evaluate import average_precision  # noqa: E402
from rfnet.train import TrainConfig, class_weights, soft_ce  # noqa: E402

SIZE = 128
OUT = Path(__file__).parent / "results" / "rfnet_cnn.json"


def load_inputs(root: Path, products: int) -> dict:
    """uint8 arrays of the cv batch (cached): generated image, depth, saliency, product on grey; titles."""
    path = root / f"cnn_inputs_{SIZE}_{products}.npz"
    batch = root / "shards" / "cv"
    rows = sorted(shards.read_sidecars(batch).to_pylist(), key=lambda r: r["key"])
    keep = sorted({r["product_id"] for r in rows})[:products]
    rows = [r for r in rows if r["product_id"] in keep]
    if path.exists():
        z = np.load(path, allow_pickle=False)
        if list(z["keys"]) == [r["key"] for r in rows]:
            return {k: z[k] for k in z.files} | {"keys": [r["key"] for r in rows]}

    def img(r, member, mode):
        im = Image.open(io.BytesIO(shards.member_bytes(batch, r, member)))
        if im.mode == "RGBA":
            im = Image.alpha_composite(Image.new("RGBA", im.size, (127, 127, 127, 255)), im)
        return np.asarray(im.convert(mode).resize((SIZE, SIZE), Image.BILINEAR))

    scene = np.zeros((len(rows), 5, SIZE, SIZE), np.uint8)
    product = np.zeros((len(rows), 3, SIZE, SIZE), np.uint8)
    for i, r in enumerate(tqdm(rows, desc="read shards", unit="sample")):
        scene[i, :3] = img(r, "image", "RGB").transpose(2, 0, 1)
        scene[i, 3] = img(r, "depth", "L")
        scene[i, 4] = img(r, "saliency", "L")
        product[i] = img(r, "product_original", "RGB").transpose(2, 0, 1)
    out = {"scene": scene, "product": product, "title": np.array([r["title"] for r in rows]),
           "product_id": np.array([r["product_id"] for r in rows]), "keys": np.array([r["key"] for r in rows])}
    np.savez(path, **out)
    return out | {"keys": [r["key"] for r in rows]}


@torch.no_grad()
def caption_embeddings(titles: np.ndarray) -> torch.Tensor:
    from rfnet.backbones import text_encoder

    enc = text_encoder("minilm").eval()
    uniq = sorted(set(titles.tolist()))
    t = enc.tokenize(uniq)
    h = enc(**t)
    m = t["attention_mask"].unsqueeze(-1).float()
    e = dict(zip(uniq, (h * m).sum(1) / m.sum(1)))
    return torch.stack([e[x] for x in titles.tolist()])


def _stage(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CNN(nn.Module):
    """Five stride-2 stages (128 px to 4x4 cells), flattened so that where things are survives."""

    def __init__(self, arm: str, text_dim: int = 384):
        super().__init__()
        self.full = arm == "full"
        widths = (32, 48, 64, 96, 128)
        chans = (5 if self.full else 3,) + widths
        self.scene = nn.Sequential(*[_stage(a, b) for a, b in zip(chans, chans[1:])])
        dim = 128 * 16
        if self.full:
            self.product = nn.Sequential(*[_stage(a, b) for a, b in zip((3, 16, 32, 64), (16, 32, 64, 64))],
                                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.text = nn.Sequential(nn.Linear(text_dim, 64), nn.ReLU())
            dim += 64 + 64
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, 5))

    def forward(self, scene, product, text):
        parts = [self.scene(scene if self.full else scene[:, :3]).flatten(1)]
        if self.full:
            parts += [self.product(product), self.text(text)]
        return self.head(torch.cat(parts, 1))


def profiles(scene: torch.Tensor) -> torch.Tensor:
    """B x 2 (rows, columns) x 9 x SIZE: per row and per column, the mean of the image's RGB, depth and
    saliency, and of RGB and depth weighted by 1 - saliency (where the background is). A ground line is a
    step along the rows, a product's base and height where the saliency's row mass ends and spans."""
    s = (scene + 1) / 2
    w = 1 - s[:, 4:5]
    bg = s[:, :4] * w
    return torch.stack([torch.cat([s.mean(a), bg.sum(a) / (w.sum(a) + 1e-3)], 1) for a in (3, 2)], 1)


class ProfileNet(nn.Module):
    """1-D convolutions along the row and the column profiles (`profiles`), positions kept, with the caption:
    the geometry the panel judges (where the ground line is, where the product stands, how tall it is
    against its kind's norm) as 2,304 numbers instead of 82,000 pixel values."""

    def __init__(self, text_dim: int = 384):
        super().__init__()

        def enc():
            layers, c = [], 9
            for cout, stride in ((32, 1), (64, 2), (64, 2)):
                layers += [nn.Conv1d(c, cout, 5, stride, 2, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]
                c = cout
            return nn.Sequential(*layers, nn.Flatten())

        self.rows, self.cols = enc(), enc()
        self.text = nn.Sequential(nn.Linear(text_dim, 64), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * 64 * SIZE // 4 + 64, 128), nn.ReLU(), nn.Linear(128, 5))

    def forward(self, scene, product, text):
        p = profiles(scene)
        return self.head(torch.cat([self.rows(p[:, 0]), self.cols(p[:, 1]), self.text(text)], 1))


def _batch(data, idx, flip=None):
    s = torch.from_numpy(data["scene"][idx]).float() / 127.5 - 1
    p = torch.from_numpy(data["product"][idx]).float() / 127.5 - 1
    if flip is not None:
        f = flip.bool()
        s[f], p[f] = s[f].flip(-1), p[f].flip(-1)
    return s, p, data["text"][idx]


def fit(data, idx, targets, seed, epochs, lr, arm, ema=0.0, batch=32):
    idx = np.array([i for i in idx if targets[i].sum() > 0])
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = ProfileNet() if arm == "profile" else CNN(arm)
    avg = copy.deepcopy(model) if ema else None
    weight = class_weights([targets[i] for i in idx])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    steps = epochs * -(-len(idx) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    model.train()
    for _ in range(epochs):
        order = idx[torch.randperm(len(idx), generator=g).numpy()]
        for b in range(0, len(order), batch):
            bi = order[b: b + batch]
            loss = soft_ce(model(*_batch(data, bi, torch.randint(0, 2, (len(bi),), generator=g))), targets[bi], weight)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            opt.step()
            sched.step()
            if avg is not None:
                with torch.no_grad():
                    for a, p in zip(avg.state_dict().values(), model.state_dict().values()):
                        a.copy_(a * ema + p * (1 - ema)) if a.dtype.is_floating_point else a.copy_(p)
    return (avg or model).eval()


FROZEN_LR = 1e-3 / 3  # what bench_rfnet's validation chose for both arms, twice (RESULTS.md)


def frozen_cache(root: Path, keys: list[str], products: int):
    """bench_rfnet's frozen features, in `keys` order (encoded once, cached beside the shards)."""
    from rfnet.features import encode_batch

    tcfg = params.load("rfnet", TrainConfig, "params.yaml", {"batch_size": 64, "epochs": 4})
    rows = shards.read_sidecars(root / "shards" / "cv").column("product_id").to_pylist()
    cache = encode_batch(root / "shards" / "cv", tcfg.model, root / "features", products=set(sorted(set(rows))[:products]))
    at = {k: i for i, k in enumerate(cache["keys"])}
    perm = torch.tensor([at[k] for k in keys])
    cache = {k: v[perm] if isinstance(v, torch.Tensor) else [v[i] for i in perm.tolist()] if isinstance(v, list) else v
             for k, v in cache.items()}
    return cache, tcfg


def fit_predict(data, frozen, arm, train, test, targets, seed, recipe):
    """p(available) on `test` from a model of `arm` trained on `train`."""
    if arm.startswith("frozen_"):
        cache, tcfg = frozen
        variant = {} if arm == "frozen_full" else {"drop": IMAGE_ONLY}
        m = bench_rfnet.fit(cache, train, targets, tcfg, variant, FROZEN_LR, seed)
        return bench_rfnet.predict(m, cache, test)[:, 0]
    ep, lr, ema = recipe.split(":")
    return predict(fit(data, train, targets, seed, int(ep), float(lr), arm, float(ema)), data, test)


@torch.no_grad()
def predict(model, data, idx):
    out = [torch.softmax(model(*_batch(data, idx[b: b + 128])), 1)[:, 0] for b in range(0, len(idx), 128)]
    return torch.cat(out).numpy()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="bench_rfnet's cache (run bench_rfnet.py --prepare-only)")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--tune", action="store_true", help="inner validation splits only (no test fold)")
    mode.add_argument("--cv", action="store_true", help="grouped CV on the test folds")
    ap.add_argument("--products", type=int, default=100)
    ap.add_argument("--arms", default="image,full", help="image, full, profile, frozen_image, frozen_full")
    ap.add_argument("--recipes", default="12:2e-3:0,12:1e-3:0.99", help="epochs:lr:ema, comma-separated (--tune)")
    ap.add_argument("--recipe", default=None, help="epochs:lr:ema for --cv (the one --tune chose)")
    ap.add_argument("--fractions", default="1", help="shares of the training products to train on (--tune): a learning curve")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--tune-folds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT, help="results JSON (merged into when it exists)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not (a.root / "shards" / "cv").exists():
        ap.error(f"no shards under {a.root}/shards/cv: run bench/bench_rfnet.py --root {a.root} --prepare-only first")
    t0 = time.perf_counter()
    data = load_inputs(a.root, a.products)
    data["text"] = caption_embeddings(data["title"])
    labels = panel_labels(a.root, "cv", list(data["keys"]))
    train_t, train_ok = as_targets(labels["train"])
    y = np.array([x[0] == "available" for x in labels["test"]])
    y_oracle = np.array([v == "available" for v, _ in labels["oracle"]])
    products = list(data["product_id"])
    frozen = frozen_cache(a.root, list(data["keys"]), a.products) if "frozen_" in a.arms else None
    n, arms = len(y), a.arms.split(",")
    res = json.loads(a.out.read_text()) if a.out.exists() else {}
    res.update(n_samples=n, n_products=len(set(products)), prevalence=float(y.mean()),
               oracle_ap=average_precision(y, y_oracle.astype(float)))
    if a.tune:
        tune = {}
        for recipe, frac, arm in [(r, float(f), arm) for r in a.recipes.split(",") for f in a.fractions.split(",")
                                  for arm in arms]:
            val_ap, val_oracle = [], []
            for k, test in enumerate(grouped_folds(products, a.folds, 0)[: a.tune_folds]):
                rest, val = grouped_split(products, np.setdiff1d(np.arange(n), test), 0.2, 100 + k)
                if frac < 1:  # the same validation products, fewer training products
                    _, rest = grouped_split(products, rest, frac, 200 + k)
                rest, val = rest[train_ok[rest]], val[train_ok[val]]
                p = fit_predict(data, frozen, arm, rest, val, train_t, 1000 + k, recipe)
                val_ap.append(average_precision(train_t[val, 0].numpy() > 0.5, p))
                val_oracle.append(average_precision(y_oracle[val], p))
                print(f"{recipe} {arm} x{frac} split {k}: val AP {val_ap[-1]:.3f}, vs oracle {val_oracle[-1]:.3f}, "
                      f"{len(rest)} training samples", flush=True)
            tune[f"{recipe} {arm}" + (f" x{frac}" if frac < 1 else "")] = {"val_ap": val_ap, "val_ap_vs_oracle": val_oracle,
                                       "mean": mean_sd(val_ap), "mean_vs_oracle": mean_sd(val_oracle)}
        res.setdefault("tune", {}).update(tune)
    else:
        oof = {arm: np.full((a.repeats, n), np.nan) for arm in arms}
        fold_ap = {arm: [] for arm in arms}
        runs = [(r, k, t) for r in range(a.repeats) for k, t in enumerate(grouped_folds(products, a.folds, r))]
        for r, k, test in tqdm(runs, desc="cv", unit="fold"):
            train = np.setdiff1d(np.arange(n), test)
            for arm in arms:
                oof[arm][r, test] = fit_predict(data, frozen, arm, train[train_ok[train]], test, train_t, 100 * r + k, a.recipe)
                fold_ap[arm].append(average_precision(y[test], oof[arm][r, test]))
        cv = {"recipe": a.recipe, "repeats": a.repeats, "folds": a.folds,
              **{f"{arm}_ap": mean_sd(fold_ap[arm]) for arm in arms},
              **{f"{arm}_ap_pooled": float(np.mean([average_precision(y, o) for o in oof[arm]])) for arm in arms},
              **{f"{arm}_ap_vs_oracle_labels": float(np.mean([average_precision(y_oracle, o) for o in oof[arm]]))
                 for arm in arms}}
        for x, z in (("full", "image"), ("image", "frozen_image"), ("full", "frozen_full")):
            if {x, z} <= set(arms):  # paired: the same folds, products and labels
                cv[f"{x}_vs_{z}"] = bootstrap_diff(y, oof[x], oof[z], products, a.boot)
        res["cv"] = cv
    res["minutes"] = round((time.perf_counter() - t0) / 60, 1)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k in ("cv", "tune")}, indent=1))


if __name__ == "__main__":
    main()
