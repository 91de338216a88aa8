"""Train the offline depth network (`pipelines.depthnet`) on the renderer's true depth.

The renderer (`pipelines.scenes`) paints scenes with a product standing in them, placed by the
generate stage's own layout, and knows each pixel's depth: (image, depth) pairs for free. The
generated adverts are the generator's imitation of those renders, a little blurred, so training
blurs and colour-jitters half of the batches. Fixed step counts (not a time budget) keep the weights a
function of the config and seed at a given thread count. About 2 minutes on 2 cores with the defaults.

Held-out renders (other seeds, other products) measure what the tests and the report need (`evaluate`):
the per-image Spearman correlation with the true depth, and whether the background's depth follows
each scene's own horizon and walls; a product-mask copy or a fixed ramp fails the second.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pipelines.conditions import LayoutConfig, draw_layout, make_conditions
from pipelines.depthnet import DepthNetConfig, TinyDepth, predict, target, to_input
from pipelines.products import KINDS, ProductsConfig, synthetic_products
from pipelines.scenes import CORPUS_VERSION, PROMPTS, corpus_preset, render

HELD_OUT_SEED = 1_000_000  # held-out scenes use seeds from here: never a training scene


@dataclass(frozen=True)
class DepthTrainConfig:
    out: str = "models/depth-net"
    metrics: str = "metrics/depth"  # train.json: loss curve, held-out correlations, timings
    seed: int = 0
    render_size: int = 128  # the generate stage's canvas; scenes are rendered there and area-resized
    size: int = 32  # the network's input side: depth is smooth, and 32 px is what 2 cores afford
    channels: tuple[int, ...] = (8, 16, 32, 48, 64)
    images: int = 1000
    held_out: int = 64
    steps: int = 800
    batch: int = 16
    lr: float = 2e-3
    threads: int = 1  # two threads on the loaded 2-core machine ran >10x slower per step (measured)


def renders(cfg: DepthTrainConfig, count: int, first_seed: int) -> dict[str, np.ndarray]:
    """`count` scenes with synthetic products placed as generate places them, every kind in every preset."""
    layout = LayoutConfig(size=cfg.render_size, scale_range=(0.60, 0.90), jitter=0.10)  # params.yaml's
    prods = synthetic_products(ProductsConfig(count=count, seed=cfg.seed + first_seed + 1, size=cfg.render_size,
                                              truncated_every=0))
    presets = list(PROMPTS)
    images, depth, alpha = [], [], []
    for i, (_, _, _, rgba) in enumerate(tqdm(prods, total=count, desc="render depth scenes", unit="img")):
        c = make_conditions(rgba, layout, draw_layout(layout, np.random.default_rng([cfg.seed, first_seed + i])))
        preset = presets[corpus_preset(i, len(KINDS))]
        s = render(preset, cfg.seed * 1_000_003 + first_seed + i, cfg.render_size, c.product)
        images.append(s.image)
        depth.append(target(s.depth, cfg.size))
        alpha.append(cv2.resize(c.product[..., 3], (cfg.size, cfg.size), interpolation=cv2.INTER_AREA))
    return {"images": np.stack(images), "depth": np.stack(depth), "alpha": np.stack(alpha)}


def _augment(x, g):
    """Half the batch blurred (the generator's VAE blurs) and brightness/contrast-jittered by up to 10%."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    blur = torch.rand(n, 1, 1, 1, generator=g) < 0.5
    x = torch.where(blur, F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), x)
    gain = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    shift = 0.2 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    return (x * gain + shift).clamp(-1, 1)


def train(cfg: DepthTrainConfig, data: dict[str, np.ndarray], progress: bool = True) -> tuple[TinyDepth, list]:
    """`cfg.steps` Adam steps of L1 on disparity (cosine learning rate); returns the model and the loss curve."""
    import math

    import torch

    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = TinyDepth(DepthNetConfig(channels=tuple(cfg.channels), size=cfg.size))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    x_all = to_input(list(data["images"]), cfg.size)
    y_all = torch.from_numpy(data["depth"])
    curve, window = [], []
    for step in tqdm(range(cfg.steps), desc="train depth", unit="step", disable=not progress):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        idx = torch.randint(0, len(x_all), (cfg.batch,), generator=g)
        x, y = _augment(x_all[idx], g), y_all[idx]
        flip = torch.rand(cfg.batch, generator=g) < 0.5  # a mirrored scene has the mirrored depth
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        loss = (model(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        window.append(loss.item())
        if len(window) == 25 or step == cfg.steps - 1:
            curve.append([step + 1, round(sum(window) / len(window), 5)])
            window = []
    return model.eval(), curve


def evaluate(maps: np.ndarray, data: dict[str, np.ndarray]) -> dict:
    """How depth maps (N,S,S, 255 = near; any method) match held-out renders' true disparity.

    `spearman_*`: per-image rank correlation with the truth. `background_pearson`: on background
    pixels, the correlation of what each scene's map and truth have beyond the corpus' average at that
    pixel, i.e. whether the map follows this scene's horizon, wall and floor. A map that ignores the
    pixels (a fixed ramp, the product mask pasted on one) has nothing there: it scores 0.
    """
    from scipy.stats import pearsonr, spearmanr

    maps, truth = maps.astype(np.float64), data["depth"].astype(np.float64)
    rho = [spearmanr(p.ravel(), t.ravel()).statistic for p, t in zip(maps, truth)]
    r = [pearsonr(p.ravel(), t.ravel()).statistic if p.std() > 0 else 0.0 for p, t in zip(maps, truth)]
    bg = data["alpha"] < 128
    n = np.maximum(bg.sum(axis=0), 1)
    rest = [(x - (x * bg).sum(axis=0) / n)[bg] for x in (maps, truth)]  # minus the background mean at that pixel
    bg_r = float(pearsonr(*rest).statistic) if rest[0].std() > 1e-9 else 0.0
    return {"spearman_mean": float(np.mean(rho)), "spearman_min": float(np.min(rho)),
            "pearson_mean": float(np.mean(r)), "background_pearson": bg_r}


def predict_at(model: TinyDepth, data: dict[str, np.ndarray]) -> np.ndarray:
    """The network's maps of `data`'s images, at the targets' size."""
    side = data["depth"].shape[-1]
    return np.stack(predict(model, [cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA)
                                    for im in data["images"]]))


def run(cfg: DepthTrainConfig) -> dict:
    """The DVC stage: train, measure on held-out renders, save `cfg.out` atomically; reuse it if the config matches."""
    import torch

    out = Path(cfg.out)
    stamp = json.dumps({**{k: v for k, v in asdict(cfg).items() if k not in ("out", "metrics")},
                        "corpus": CORPUS_VERSION}, sort_keys=True)
    if (out / "train_config.json").exists() and (out / "train_config.json").read_text() == stamp:
        print(f"{out} is already trained with this config: reusing it")
        return {"out": str(out), "trained_now": False}
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    data = renders(cfg, cfg.images, 0)
    held = renders(cfg, cfg.held_out, HELD_OUT_SEED)
    t_render = time.perf_counter() - t0
    model, curve = train(cfg, data)
    t_train = time.perf_counter() - t0 - t_render
    scores = evaluate(predict_at(model, held), held)
    report = {"out": str(out), "trained_now": True, **{k: round(v, 4) for k, v in scores.items()},
              "seconds": {"render_s": round(t_render, 1), "train_s": round(t_train, 1),
                          "total_s": round(time.perf_counter() - t0, 1)}, "threads": cfg.threads, "loss": curve}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / "train_config.json").write_text(stamp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    Path(cfg.metrics).mkdir(parents=True, exist_ok=True)
    (Path(cfg.metrics) / "train.json").write_text(json.dumps(report, indent=1))
    return report
