"""The paper's metrics and the ones a quality lead needs, from probabilities and soft targets.

`available` is the positive class. Precision, recall and F1 are those of the decision annotators are
shown (`rf1m.decision.decide`: p(available) >= the checkpoint's threshold), never of an argmax.
The threshold was chosen on the validation split for `rfnet.target_precision` when the checkpoint was
saved (`choose_threshold`); choosing it on the test split it is reported on would flatter it.
A not-available sample with no trainable reason (unsuitable only, or no reason with half the votes)
has an all-zero target: it counts as not available in every available-vs-not metric and is left out
of the five-way accuracy, per-class figures and confusion matrix, where it has no true class.
Also: AP (scikit-learn's convention), the precision-recall curve, calibration (ECE over 10 bins).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rf1m.atomic import write_json
from rf1m.decision import DEFAULT_THRESHOLD, decide
from rfnet.model import CLASSES


@torch.no_grad()
def predict(model, loader, desc: str = "predict") -> tuple[list[str], np.ndarray, np.ndarray | None]:
    model.eval()
    dev = next(model.parameters()).device  # the batch goes where the model is (a GPU actor's cuda)
    keys, probs, targets = [], [], []
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        images = {m: x.to(dev) for m, x in batch["images"].items()}
        logits = model(images, {k: v.to(dev) for k, v in model.tokenize(batch["captions"]).items()})
        probs.append(torch.softmax(logits, dim=1).float().cpu().numpy())
        keys += batch["keys"]
        if "target" in batch:
            targets.append(batch["target"].numpy())
    p = np.concatenate(probs) if probs else np.zeros((0, len(CLASSES)))
    return keys, p, (np.concatenate(targets) if targets else None)


def decisions(probs: np.ndarray, threshold: float | None = None) -> list[dict]:
    """`decide` for every row of a probabilities array (columns in CLASSES order)."""
    return [decide(p[0], dict(zip(CLASSES[1:], p[1:].tolist())), threshold) for p in probs]


def _pr_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds (each distinct score, highest first), precision and recall of `s >= threshold`.

    Tied scores form one point, as in scikit-learn, so no result depends on the order of the input."""
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order].astype(float)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.zeros(0, dtype=int)
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / max(y.sum(), 1)
    return s[last], precision, recall


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """sum_n (R_n - R_{n-1}) P_n over distinct thresholds: scikit-learn's average_precision_score."""
    if y.sum() == 0:
        return float("nan")
    _, precision, recall = _pr_points(y, s)
    return float((np.diff(np.r_[0.0, recall]) * precision).sum())


def pr_curve(y: np.ndarray, s: np.ndarray) -> list[dict]:
    return [{"threshold": float(t), "precision": float(p), "recall": float(r)} for t, p, r in zip(*_pr_points(y, s))]


def threshold_for_precision(y: np.ndarray, s: np.ndarray, target: float) -> float | None:
    """The lowest threshold whose precision of `available` reaches `target` (None if none does)."""
    t, precision, recall = _pr_points(y, s)
    ok = t[(precision >= target) & (recall > 0)]
    return float(ok.min()) if len(ok) else None


def choose_threshold(probs: np.ndarray, targets: np.ndarray, target_precision: float,
                     split: str = "validation") -> dict:
    """The decision threshold a checkpoint carries, and where it came from (for metrics.json)."""
    y, s = targets[:, 0] > 0.5, probs[:, 0]
    t = threshold_for_precision(y, s, target_precision)
    out = {"threshold": DEFAULT_THRESHOLD if t is None else t, "target_precision": target_precision,
           f"{split}_n": int(len(y))}
    if t is None:
        return {**out, "source": f"default: no threshold reaches precision {target_precision} on {split}"}
    m = metrics(probs, targets, t)
    return {**out, "source": split, f"{split}_precision": m["precision"], f"{split}_recall": m["recall"]}


def calibration(y: np.ndarray, s: np.ndarray, bins: int = 10) -> dict:
    edges = np.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (s >= lo) & ((s < hi) | (hi == 1.0))
        if m.any():
            conf, acc = float(s[m].mean()), float(y[m].mean())
            ece += m.mean() * abs(conf - acc)
            rows.append({"bin": f"{lo:.1f}-{hi:.1f}", "n": int(m.sum()), "confidence": conf, "accuracy": acc})
    return {"ece": float(ece), "bins": rows}


def metrics(probs: np.ndarray, targets: np.ndarray, threshold: float | None = None) -> dict:
    y = targets[:, 0] > 0.5
    s = probs[:, 0]
    shown = decisions(probs, threshold)
    pred = np.array([d["verdict"] == "available" for d in shown], dtype=bool)
    tp, fp, fn = float((pred & y).sum()), float((pred & ~y).sum()), float((~pred & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    # five-way figures: the class shown (available, or the first reason), only where a true class exists
    has_class = targets.sum(1) > 0
    truth = targets.argmax(1)[has_class]
    guess = np.array([0 if d["verdict"] == "available" else CLASSES.index(d["reasons"][0]) for d in shown],
                     dtype=int)[has_class]
    conf = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    for t, g in zip(truth, guess):
        conf[t, g] += 1
    per_class = {c: {"precision": float(conf[i, i] / conf[:, i].sum()) if conf[:, i].sum() else None,
                     "recall": float(conf[i, i] / conf[i].sum()) if conf[i].sum() else None, "support": int(conf[i].sum())}
                 for i, c in enumerate(CLASSES)}
    return {
        "n": int(len(y)), "n_without_class": int((~has_class).sum()),
        "available_rate": float(y.mean()) if len(y) else None,
        "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "ap": average_precision(y, s), "accuracy": float((truth == guess).mean()) if len(truth) else None,
        "per_class": per_class, "confusion": {"classes": list(CLASSES), "matrix": conf.tolist()},
        "calibration": calibration(y, s),
        "decision": {"rule": "p(available) >= threshold",
                     "threshold": DEFAULT_THRESHOLD if threshold is None else float(threshold)},
    }


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: str = "models/rfnet/best"
    release: str = "v0.1"
    releases: str = "releases"
    split: str = "test"
    batch_size: int = 16
    out: str = "metrics/rfnet"


def run(cfg: EvalConfig) -> dict:
    """Metrics on a split at the checkpoint's validated threshold, plus the files DVC shows: metrics
    json, PR curve and calibration plots."""
    from rfnet import checkpoint
    from rfnet.data import ReleaseSplit, collate

    model, meta = checkpoint.load(Path(cfg.checkpoint))
    ds = ReleaseSplit(cfg.release, cfg.split, cfg.releases, meta["model"]["image_size"])
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, collate_fn=collate)
    _, probs, targets = predict(model, loader, desc=f"evaluate {cfg.split}")
    m = metrics(probs, targets, meta["decision"]["threshold"])
    m["decision"].update({k: v for k, v in meta["decision"].items() if k != "threshold"})
    m.update(model_version=meta["model_version"], release=cfg.release, split=cfg.split)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    y, s = targets[:, 0] > 0.5, probs[:, 0]
    write_json(out / "metrics.json", {k: v for k, v in m.items() if k not in ("confusion",)})
    write_json(out / "confusion.json", m["confusion"])
    with open(out / "pr_curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["threshold", "precision", "recall"])
        w.writeheader()
        w.writerows(pr_curve(y, s))
    with open(out / "calibration.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["bin", "n", "confidence", "accuracy"])
        w.writeheader()
        w.writerows(m["calibration"]["bins"])
    return {k: m[k] for k in ("n", "precision", "recall", "f1", "ap", "accuracy", "decision", "model_version")}
