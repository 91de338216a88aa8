"""RFFT evaluation: base / rfft / no_constraint / kl on held-out products, paired, judged by the oracle.

Each trained arm runs `rf1m rfft` (pipelines.rfft.run) from the same base ControlNet with the same
training seed and steps; then every arm samples the SAME test products x prompts x seeds (the test
split of `rfft.split_of`, never seen in training or validation). Per arm:
  oracle.rate / ci95       the panel's noise-free rules (stand-in for people), Wilson 95% interval
  rfnet.rate / ci95        RFNet's decision at its validated threshold
  judge_oracle_agreement   share of images where the two agree (its fall = reward hacking)
  paired_vs_base           fixed (base no, arm yes) / broken (base yes, arm no) by the oracle
  diversity                mean pairwise EfficientNet-Lite0 feature distance (cosine) within a prompt,
                           and between the prompts' mean features (collapse to one plain background
                           lowers both; research/rfft_feasibility.md: use both, not the first alone)
  attempts                 expected cyclic attempts 1/p, by RFNet's decision (what cyclic spends)
                           and by the oracle
The trained arms are evaluated with their final weights (`last`) and, when early stopping kept
another checkpoint, with the kept one (`<out>/controlnet`) too. Rounds of the loop (relabel, retrain
RFNet, continue) are not run here: `rounds` lists each trained arm's validation history instead.

    .venv/bin/python bench/bench_rfft.py --products /tmp/h6/data/products --out /tmp/h6/bench --steps 40
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import Record  # noqa: E402

ARMS = {"rfft": {"regulariser": "cc"}, "no_constraint": {"regulariser": "none"}, "kl": {"regulariser": "kl"}}


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(c - h, 4), round(c + h, 4)]


@torch.no_grad()
def features(images: list[np.ndarray]) -> np.ndarray:
    """EfficientNet-Lite0 (ImageNet) global-average features, L2-normalised."""
    from PIL import Image

    from rfnet.backbones import EfficientNetLite0
    from rfnet.data import to_tensor

    net = features.__dict__.setdefault("net", EfficientNetLite0.pretrained().eval())
    out = []
    for i in range(0, len(images), 32):
        x = torch.stack([to_tensor(Image.fromarray(im), 128) for im in images[i: i + 32]])
        out.append(net(x).mean(dim=(2, 3)))
    f = torch.cat(out)
    return torch.nn.functional.normalize(f, dim=1).numpy()


def diversity(feats: np.ndarray, prompts: list[str]) -> dict:
    def mean_pair(f):
        s = f @ f.T
        n = len(f)
        return float((1 - s)[np.triu_indices(n, 1)].mean()) if n > 1 else 0.0

    groups = sorted(set(prompts))
    within = [mean_pair(feats[[p == g for p in prompts]]) for g in groups]
    cents = np.stack([feats[[p == g for p in prompts]].mean(0) for g in groups])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    return {"within_prompt": round(float(np.mean(within)), 4), "between_prompts": round(mean_pair(cents), 4)}


def judge_arm(cfg, controlnet: str | None, items, judge) -> dict:
    from pipelines import rfft
    from pipelines.models import pick_device

    gen = rfft.Generator(replace(cfg, controlnet_model=controlnet), pick_device(cfg.device))
    t = time.time()
    images, o, r = rfft.judged(gen, judge, items)
    return {"images": images, "oracle": o, "rfnet": r, "seconds": time.time() - t}


def summary(arm: dict, base: dict | None, prompts: list[str]) -> dict:
    o, r = arm["oracle"], arm["rfnet"]
    out = {"n": len(o),
           "oracle": {"rate": round(float(o.mean()), 4), "ci95": wilson(int(o.sum()), len(o))},
           "rfnet": {"rate": round(float(r.mean()), 4), "ci95": wilson(int(r.sum()), len(r))},
           "judge_oracle_agreement": round(float((o == r).mean()), 4),
           "diversity": diversity(features(arm["images"]), prompts),
           "attempts": {"rfnet": round(1 / r.mean(), 3) if r.any() else None,
                        "oracle": round(1 / o.mean(), 3) if o.any() else None},
           "eval_seconds": round(arm["seconds"], 1)}
    if base is not None:
        out["paired_vs_base"] = {"fixed": int((~base["oracle"] & o).sum()), "broken": int((base["oracle"] & ~o).sum())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--products", default="/tmp/h6/data/products")
    ap.add_argument("--count", type=int, default=60, help="synthetic products made when --products is empty")
    ap.add_argument("--out", default="/tmp/h6/bench")
    ap.add_argument("--base-model", default="models/scene-generator")
    ap.add_argument("--checkpoint", default="models/rfnet/best")
    ap.add_argument("--steps", type=int, default=40, help="RFFT optimizer steps per arm")
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=2, help="seeds per test product x prompt")
    ap.add_argument("--beta", type=float, default=100.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rec = Record("rfft", vars(a))

    from pipelines import params, products, rfft
    from pipelines.cyclic import RFNetJudge
    from pipelines.models import pick_device

    if not (Path(a.products) / "products.parquet").exists():
        products.run(products.ProductsConfig(count=a.count, out=a.products))
    cfg = params.load("rfft", rfft.RFFTConfig, overrides={
        "base_model": a.base_model, "products": a.products, "checkpoint": a.checkpoint, "max_steps": a.steps,
        "eval_every": a.eval_every, "save_every": a.eval_every, "patience": 10 ** 6, "lr": a.lr, "beta": a.beta, "batch_size": a.batch_size,
        "threads": a.threads, "val_seeds": 1})
    data = rfft._products(cfg)
    items = rfft.fixed_items(cfg, data["test"], a.seeds)
    prompts = [pr.id for _, pr, _, _ in items]
    judge = RFNetJudge(a.checkpoint, cfg.aux, pick_device(cfg.device))
    print(f"{len(data['train'])} train / {len(data['val'])} val / {len(data['test'])} test products; "
          f"{len(items)} paired test generations per arm", flush=True)

    base = judge_arm(cfg, None, items, judge)
    arms = {"base": summary(base, None, prompts)}
    print("base", {k: arms["base"][k] for k in ("oracle", "rfnet", "judge_oracle_agreement")}, flush=True)
    rounds = []
    for name in a.arms:
        for seed in a.train_seeds:
            key = name if len(a.train_seeds) == 1 else f"{name}_seed{seed}"
            out = Path(a.out) / key
            arm_cfg = replace(cfg, **ARMS[name], seed=seed, out=str(out), metrics=str(out / "metrics"))
            t = time.time()
            trained = rfft.run(arm_cfg)
            train_s = time.time() - t
            final = judge_arm(cfg, str(out / "last" / "controlnet"), items, judge)
            arms[key] = {**summary(final, base, prompts), "weights": "final",
                         "training": {"steps": trained["steps"], "seconds": round(train_s, 1),
                                      "kept_step": trained["best"]["step"]}}
            if trained["best"]["step"] not in (0, trained["steps"]):
                kept = judge_arm(cfg, str(out / "controlnet"), items, judge)
                arms[key]["kept"] = summary(kept, base, prompts)
            rounds.append({"arm": key, "round": 1, "history": trained["history"]})
            print(key, {k: arms[key][k] for k in ("oracle", "rfnet", "judge_oracle_agreement")}, flush=True)
            rec.data.update(arms=arms, rounds=rounds)  # saved after every arm: a long run keeps what it measured
            rec.save(arms=arms, test_products=len(data["test"]), generations_per_arm=len(items))


if __name__ == "__main__":
    main()
