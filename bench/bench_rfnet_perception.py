"""What keeps RFNet from the oracle: learning the panel's rules, or seeing what they measure?

The panel labels a sample from a handful of measurements (annotation.rules.features: the ground line
and its step, the product's base and height, contrast, busyness, halo, banding, clutter) and the
caption's size norm. This bench fits a gradient-boosted classifier on exactly those numbers, with the
noisy 1-2-vote training labels RFNet gets, on the inner validation splits bench_rfnet tunes on (first
repeat's training folds, 20% of their products held out; no test fold): a model with perfect
perception. Then it takes measurements away, group by group, and replaces the panel's ground line
(found in the background rows beside the product's true mask) by what an image-only detector finds
(the same strongest-step search on rows of the whole image, on rows with the product's saliency left
out, on the depth map's rows), which is what a network that sees only RFNet's inputs would have to do.

    .venv/bin/python bench/bench_rfnet_perception.py --root ~/.cache/rf1m-bench-rfnet-v5
        # needs bench_rfnet.py --root R --prepare-only and bench_rfnet_cnn.py --root R (its input cache)
Writes bench/results/rfnet_perception.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from annotation import panel  # noqa: E402
from annotation.rules import SCENE_CLUTTER, Rules, _ground, norm_height  # noqa: E402
from bench.bench_rfnet import ROOT, as_targets, panel_labels  # noqa: E402
from bench.bench_rfnet_cnn import load_inputs  # noqa: E402
from pipelines import params  # noqa: E402
from rfnet.cv import grouped_folds, grouped_split, mean_sd  # noqa: E402
from rfnet.evaluate import average_precision  # noqa: E402

OUT = Path(__file__).parent / "results" / "rfnet_perception.json"
NAMES = ("base", "height", "ground", "ground_step", "gap", "contrast", "busy", "halo", "banding", "clutter",
         "log_norm", "log_size_ratio", "truncated")
DROPS = {"the ground line (line, step, gap, size ratio)": ("ground", "ground_step", "gap", "log_size_ratio"),
         "the caption's norm (norm, size ratio)": ("log_norm", "log_size_ratio"),
         "appearance (contrast, busy, halo, banding, clutter)": ("contrast", "busy", "halo", "banding", "clutter"),
         "the product's geometry (base, height, gap, size ratio)": ("base", "height", "gap", "log_size_ratio"),
         # not an image measurement: the recipe's flag (the networks never train on unsuitable-only samples)
         "the product's truncation flag": ("truncated",)}


def measurements(f: dict, ground: float | None = None, step: float | None = None) -> list[float]:
    """One row of NAMES; `ground`/`step` replace the panel's ground line (share of the side, CIELAB step)."""
    r = Rules()
    ground = f["ground"] if ground is None else ground
    step = f["ground_step"] if step is None else step
    gap = f["base"] - ground
    norm = norm_height(f.get("title", ""), f.get("category", "")) or 0.2
    implied = f["height"] * r.camera_m / max(gap, 1e-3)
    return [f["base"], f["height"], ground, step, gap, f["contrast"], f["busy"], f["halo"], f["banding"],
            f["clutter"] / SCENE_CLUTTER.get(f["prompt_id"], 10.0), np.log(norm), np.log(implied / norm),
            float(bool(f.get("truncated")))]


def detected_line(scene: np.ndarray, how: str) -> tuple[int, float]:
    """The panel's strongest-row-step search (rules._ground) on a profile an image-only model could make:
    `scene` is bench_rfnet_cnn's 5 x S x S (RGB, depth, saliency)."""
    lab = cv2.cvtColor(np.ascontiguousarray(scene[:3].transpose(1, 2, 0)), cv2.COLOR_RGB2LAB).astype(np.float64)
    if how == "image rows":
        prof = np.median(lab, axis=1)
    elif how == "image rows, salient half left out":
        sal = scene[4]
        prof = np.stack([np.median(lab[y][sal[y] <= np.median(sal[y])], axis=0) for y in range(len(sal))])
    else:  # "depth rows"
        prof = np.repeat(np.median(scene[3].astype(np.float64), axis=1)[:, None], 3, axis=1)
    return _ground(prof, Rules().window)


def mask_sensitivity(root: Path, keys: list[str], feats: dict, rules: Rules, grow: int = 2) -> dict:
    """The panel's own ground line and verdict when the product's mask is `grow` px wider on every side: how
    much of the line is the scene, and how much is which thin strips of background the mask leaves."""
    from annotation.rules import features, judge
    from rf1m import shards

    batch = root / "shards" / "cv"
    rows = {r["key"]: r for r in shards.read_sidecars(batch).to_pylist()}
    kernel = np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)
    moved, flipped = [], []
    for k in keys:
        image, product = (panel._member(batch, rows[k], m, mode) for m, mode in (("image", "RGB"), ("product", "RGBA")))
        product = product.copy()
        product[..., 3] = cv2.dilate(product[..., 3], kernel)
        g = features(image, product, rules)
        side = image.shape[0]
        if feats[k]["ground_step"] >= rules.ground_step:  # a line the rules use; a weaker one is "no line" either way
            moved.append(abs(g["ground"] - feats[k]["ground"]) * side > 3)
        line = {"ground": g["ground"], "ground_step": g["ground_step"]}  # the product's own base and height kept
        flipped.append(judge({**feats[k], **line}, rules)[0] != judge(feats[k], rules)[0])
    return {"grow_px": grow, "line_moves_over_3px": round(float(np.mean(moved)), 3), "lines": len(moved),
            "verdict_flips_by_the_line": round(float(np.mean(flipped)), 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="bench_rfnet's cache")
    ap.add_argument("--products", type=int, default=100)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--tune-folds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    from sklearn.ensemble import HistGradientBoostingClassifier

    data = load_inputs(a.root, a.products)
    keys, products = list(data["keys"]), list(data["product_id"])
    pcfg = params.load("panel", panel.PanelConfig, "params.yaml", {"batch_id": "cv", "shards": str(a.root / "shards")})
    feats = panel.sample_features(pcfg)
    labels = panel_labels(a.root, "cv", keys)
    t, ok = as_targets(labels["train"])
    y = t[:, 0].numpy() > 0.5
    y_oracle = np.array([v == "available" for v, _ in labels["oracle"]])
    splits = []
    for k, test in enumerate(grouped_folds(products, a.folds, 0)[: a.tune_folds]):
        rest, val = grouped_split(products, np.setdiff1d(np.arange(len(keys)), test), 0.2, 100 + k)
        splits.append((rest[ok[rest]], val[ok[val]]))

    def score(x: np.ndarray) -> dict:
        ap_val, ap_oracle = [], []
        for k, (rest, val) in enumerate(splits):
            m = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=k).fit(x[rest], y[rest])
            p = m.predict_proba(x[val])[:, 1]
            ap_val.append(average_precision(y[val], p))
            ap_oracle.append(average_precision(y_oracle[val], p))
        return {"val_ap": [round(v, 3) for v in ap_val], "mean": mean_sd(ap_val), "vs_oracle": mean_sd(ap_oracle)}

    x = np.array([measurements(feats[k]) for k in keys])
    res = {"root": str(a.root), "n_samples": len(keys), "n_products": len(set(products)),
           "oracle_verdict_vs_val_labels": mean_sd([average_precision(y[v], y_oracle[v].astype(float)) for _, v in splits]),
           "prevalence": mean_sd([float(y[v].mean()) for _, v in splits]),
           "all_measurements": score(x), "without": {}, "ground_line_from": {}}
    for name, drop in DROPS.items():
        res["without"][name] = score(x[:, [i for i, n in enumerate(NAMES) if n not in drop]])
    side = data["scene"].shape[-1]
    panel_row = np.array([feats[k]["ground"] for k in keys]) * side
    for how in ("image rows", "image rows, salient half left out", "depth rows"):
        lines = [detected_line(data["scene"][i], how) for i in range(len(keys))]
        x2 = np.array([measurements(feats[k], g / side, s) for k, (g, s) in zip(keys, lines)])
        res["ground_line_from"][how] = {
            "within_3px_of_panel": round(float(np.mean(np.abs(np.array([g for g, _ in lines]) - panel_row) <= 3)), 3),
            **score(x2)}
    res["panel_line_with_mask_grown"] = mask_sensitivity(a.root, keys, feats, pcfg.rules)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
