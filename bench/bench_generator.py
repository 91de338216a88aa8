"""Does the prompt decide the scene? eta^2 of the background's mean colour by prompt (target >= 0.8).

For each generator (the random tiny model, the trained scene generator) the contact sheet's grid is
sampled: every prompt preset x the same `--columns` unseen products, layouts and seeds. Each image's
background (the inpainting mask) is reduced to its mean R, G, B; eta^2 is the share of that
variance which lies between prompts (between-group / total sum of squares), per channel. The
renderer's own scenes with the same products are the reference a perfect generator would reach.
Also reported: the within-prompt SD of the background mean (variety by seed and product), and a
high-frequency ratio (mean |Laplacian| / std of grey on the eroded background: static scores high), and
the background's saturation (mean max - min of R, G, B, 0-255; a VAE that washes colour out scores low).

    .venv/bin/python bench/bench_generator.py [--model models/scene-generator] [--columns 8] [--steps 8]
Writes bench/results/generator.json and the two contact sheets next to it.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines.conditions import LayoutConfig  # noqa: E402
from pipelines.models import build_tiny, load_pipeline  # noqa: E402
from pipelines.scenes import PROMPTS, render  # noqa: E402
from pipelines.sheet import sample_grid, write_sheet  # noqa: E402


def eta_squared(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per column of `values`: between-group sum of squares / total sum of squares."""
    total = ((values - values.mean(0)) ** 2).sum(0)
    between = sum((groups == g).sum() * (values[groups == g].mean(0) - values.mean(0)) ** 2
                  for g in np.unique(groups))
    return between / np.maximum(total, 1e-12)


def score(rows: dict) -> dict:
    means, groups, hf, sat = [], [], [], []
    for gi, pairs in enumerate(rows.values()):
        for img, mask in pairs:
            bg = mask > 0
            means.append(img[bg].astype(float).mean(0) / 255)
            sat.append(float(np.ptp(img[bg].astype(float), axis=1).mean()))
            groups.append(gi)
            grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(float)
            inner = cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0
            lap = np.abs(cv2.Laplacian(grey, cv2.CV_64F, ksize=3))[inner].mean()
            hf.append(lap / max(grey[inner].std(), 1e-6))
    means, groups = np.array(means), np.array(groups)
    within = [float(means[groups == g].std(0).mean()) for g in np.unique(groups)]
    return {"eta2_rgb": [round(float(v), 3) for v in eta_squared(means, groups)],
            "within_prompt_sd": [round(min(within), 3), round(max(within), 3)],
            "hf_ratio": round(float(np.mean(hf)), 3), "bg_saturation": round(float(np.mean(sat)), 1),
            "images": len(means)}


def rendered(grid: dict, size: int) -> dict:
    """The renderer's scenes behind the same placed products (recovered from the pasted-back grid)."""
    out = {}
    for pid, pairs in grid.items():
        out[pid] = []
        for c, (img, mask) in enumerate(pairs):
            product = np.dstack([img, np.where(mask > 0, 0, 255).astype(np.uint8)])
            out[pid].append((render(pid, 10_000 + c, size, product).image, mask))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/scene-generator")
    ap.add_argument("--columns", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    layout = LayoutConfig(size=args.size, scale_range=(0.6, 0.9), jitter=0.1)  # as params.yaml's demo
    out = Path(args.out)
    results = {"columns": args.columns, "size": args.size, "steps": args.steps, "guidance": args.guidance}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"random": str(build_tiny(Path(tmp) / "tiny", seed=0, size=args.size)), "trained": args.model}
        for name, path in models.items():
            pipe = load_pipeline(path, device="cpu")
            t = time.perf_counter()
            grid = sample_grid(pipe, PROMPTS, args.columns, args.size, args.steps, args.guidance, layout=layout)
            results[name] = {**score(grid), "seconds": round(time.perf_counter() - t, 1)}
            write_sheet({k: [im for im, _ in v] for k, v in grid.items()}, out / f"generator_{name}.png")
            print(name, results[name])
    results["rendered"] = score(rendered(grid, args.size))
    print("rendered", results["rendered"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "generator.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
