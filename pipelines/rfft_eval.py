"""Did RFFT raise the usable rate? Arms (the base generator, fine-tuned ControlNets) on the same held-out items.

Every arm samples the SAME test products (`rfft.split_of`: never trained or validated on) x prompts x
seeds, with the seeds and layout `generate` gives them, so each comparison is paired: an image of an
arm and of the base differ only by the ControlNet. Per arm:
  oracle.rate / ci95       the panel's noise-free rules (the stand-in for people), Wilson 95% interval
  rfnet.rate / ci95        RFNet's decision at its validated threshold
  judge_oracle_agreement   share of images where the two agree: its fall is the sign of reward hacking
  judge_oracle_ap          how well RFNet's p(available) ranks the oracle's verdicts, threshold-free
  paired_vs_base           by the oracle: fixed (base no, arm yes), broken (base yes, arm no), and the
                           rate difference with a 95% interval from resampling test products (the
                           independent units: a product's images share its shape and caption)
  diversity                mean pairwise distance (1 - cosine) of EfficientNet-Lite0 features within a
                           prompt, and between the prompts' mean features; a collapse to one plain
                           background lowers both (research/rfft_feasibility.md: report both), and
                           `change_vs_base` gives each as a fraction of the base's
  attempts                 expected attempts of cyclic generation, 1/p, by RFNet's decision (what
                           cyclic spends) and by the oracle
The `rfft_eval` stage compares the base with the `rfft` stage's kept ControlNet;
bench/bench_rfft.py adds the no-constraint and KL arms and training seeds, through `evaluate_arms`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from pipelines.rfft import RFFTConfig
from rf1m.atomic import write_json
from rfnet.evaluate import average_precision


@dataclass(frozen=True)
class RFFTEvalConfig:
    rfft: RFFTConfig = field(default_factory=RFFTConfig)  # products, generator, judge, sampler: the rfft stage's
    controlnet: str = "models/rfft/controlnet"  # the `rfft` arm (the base arm is the base model's own ControlNet)
    seeds: int = 2  # per test product x prompt
    out: str = "metrics/rfft/eval.json"
    boot: int = 1000  # product resamples for the paired interval


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score interval of a binomial rate: sound near 0 and 1, where the normal one is not."""
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
    out = [net(torch.stack([to_tensor(Image.fromarray(im), 128) for im in images[i: i + 32]])).mean(dim=(2, 3))
           for i in range(0, len(images), 32)]
    return torch.nn.functional.normalize(torch.cat(out), dim=1).numpy()


def diversity(feats: np.ndarray, prompts: list[str]) -> dict:
    def mean_pair(f):
        n = len(f)
        return float((1 - f @ f.T)[np.triu_indices(n, 1)].mean()) if n > 1 else 0.0

    groups = sorted(set(prompts))
    within = [mean_pair(feats[[p == g for p in prompts]]) for g in groups]
    cents = np.stack([feats[[p == g for p in prompts]].mean(0) for g in groups])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    return {"within_prompt": round(float(np.mean(within)), 4), "between_prompts": round(mean_pair(cents), 4)}


def paired(base: np.ndarray, arm: np.ndarray, groups: list[str], boot: int, seed: int = 0) -> dict:
    """Oracle verdicts of the same items under two arms: fixed, broken, rate difference with a product bootstrap."""
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    parts = [np.array(v) for v in members.values()]
    d = arm.astype(float) - base.astype(float)
    rng = np.random.default_rng(seed)
    draws = [d[np.concatenate([parts[j] for j in rng.integers(len(parts), size=len(parts))])].mean()
             for _ in range(boot)]
    lo, hi = np.percentile(draws, [2.5, 97.5]) if draws else (float("nan"), float("nan"))
    return {"fixed": int((~base & arm).sum()), "broken": int((base & ~arm).sum()),
            "diff": round(float(d.mean()), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)]}


def judge_arm(cfg: RFFTConfig, controlnet: str | None, items: list[tuple], judge) -> dict:
    """Images of `items` with `controlnet` (None: the base model's), and the oracle's and RFNet's verdicts."""
    from pipelines import rfft
    from pipelines.models import pick_device

    gen = rfft.Generator(replace(cfg, controlnet_model=controlnet), pick_device(cfg.device))
    t = time.time()
    images, o, r, p = rfft.judged(gen, judge, items)
    return {"images": images, "oracle": o, "rfnet": r, "p_available": p, "seconds": time.time() - t}


def summary(arm: dict, base: dict | None, items: list[tuple], boot: int) -> dict:
    o, r = arm["oracle"], arm["rfnet"]
    prompts = [pr.id for _, pr, _, _ in items]
    out = {"n": len(o),
           "oracle": {"rate": round(float(o.mean()), 4), "ci95": wilson(int(o.sum()), len(o))},
           "rfnet": {"rate": round(float(r.mean()), 4), "ci95": wilson(int(r.sum()), len(r))},
           "judge_oracle_agreement": round(float((o == r).mean()), 4),
           "judge_oracle_ap": round(average_precision(o, arm["p_available"]), 4) if o.any() else None,
           "diversity": diversity(features(arm["images"]), prompts),
           "attempts": {"rfnet": round(1 / r.mean(), 3) if r.any() else None,
                        "oracle": round(1 / o.mean(), 3) if o.any() else None},
           "eval_seconds": round(arm["seconds"], 1)}
    if base is not None:
        out["paired_vs_base"] = paired(base["oracle"], o, [p["product_id"] for p, *_ in items], boot)
        b = base["summary"]["diversity"]
        out["diversity"]["change_vs_base"] = {k: round(out["diversity"][k] / b[k] - 1, 4) if b[k] else None
                                              for k in ("within_prompt", "between_prompts")}
    return out


def test_items(cfg: RFFTConfig, seeds: int) -> tuple[list[tuple], int]:
    """(every test product x prompt x seed, the number of test products)."""
    from pipelines import rfft

    test = rfft._products(cfg)["test"]
    if not test:
        raise ValueError(f"{cfg.products} has no test products (rfft.split_of puts ~20% there): add products")
    return rfft.fixed_items(cfg, test, seeds), len(test)


def evaluate_arms(cfg: RFFTConfig, arms: dict[str, str | None], seeds: int, boot: int = 1000,
                  on_arm=None) -> dict:
    """Every arm (name -> ControlNet folder; None: the base model's) on the same test items. The first
    arm is the base the others are paired with. `on_arm(name, result)` after each (long runs save as they go)."""
    from pipelines.cyclic import RFNetJudge
    from pipelines.models import pick_device

    items, n_products = test_items(cfg, seeds)
    judge = RFNetJudge(cfg.checkpoint, cfg.aux, pick_device(cfg.device))
    out, base = {}, None
    for name, controlnet in arms.items():
        arm = judge_arm(cfg, controlnet, items, judge)
        out[name] = {"controlnet": controlnet, **summary(arm, base, items, boot)}
        if base is None:
            base = {**arm, "summary": out[name]}
        if on_arm:
            on_arm(name, out[name])
    return {"test_products": n_products, "generations_per_arm": len(items), "arms": out}


def rounds_of(trained: dict) -> list[dict]:
    """rfft's training history split by round of the loop (one judge each); runs before rounds: one."""
    judges = trained.get("judges") or [{"round": 1, "from_step": 0, "checkpoint": None}]
    return [{**j, "history": [h for h in trained["history"] if h.get("round", 1) == j["round"]]} for j in judges]


def run(cfg: RFFTEvalConfig) -> dict:
    """The base and the rfft stage's ControlNet; its training history is round 1 (`rounds`)."""
    torch.set_num_threads(cfg.rfft.threads)
    if not (Path(cfg.controlnet) / "config.json").exists():
        raise FileNotFoundError(f"no ControlNet at {cfg.controlnet}: run `rf1m rfft` first")
    res = evaluate_arms(cfg.rfft, {"base": None, "rfft": cfg.controlnet}, cfg.seeds, cfg.boot)
    history = Path(cfg.rfft.metrics) / "train.json"
    trained = json.loads(history.read_text()) if history.exists() else None
    res["rounds"] = rounds_of(trained) if trained else []
    if trained:  # step 0: validation never improved on the base, so the kept ControlNet is the base's
        res["arms"]["rfft"]["kept_step"] = trained["best"]["step"]
    write_json(cfg.out, res)
    for name, a in res["arms"].items():
        print(f"{name}: oracle {a['oracle']['rate']:.3f} {a['oracle']['ci95']}, rfnet {a['rfnet']['rate']:.3f}, "
              f"agreement {a['judge_oracle_agreement']:.3f}")
    return res
