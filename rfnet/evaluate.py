"""The paper's metrics and the ones a quality lead needs, from probabilities and soft targets.

`available` is the positive class: precision, recall and F1 of the head's decision (available is the
argmax of the five classes, or p(available) >= a given threshold), and average precision (AP);
accuracy and per-class precision/recall of the argmax; the confusion matrix; the precision-recall
curve; calibration (expected calibration error over 10 bins); the lowest threshold that reaches a
target precision (cyclic generation resamples until RFNet's p(available) passes it).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rfnet.model import CLASSES


@torch.no_grad()
def predict(model, loader, desc: str = "predict") -> tuple[list[str], np.ndarray, np.ndarray | None]:
    model.eval()
    keys, probs, targets = [], [], []
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        logits = model(batch["images"], model.tokenize(batch["captions"]))
        probs.append(torch.softmax(logits, dim=1).numpy())
        keys += batch["keys"]
        if "target" in batch:
            targets.append(batch["target"].numpy())
    p = np.concatenate(probs) if probs else np.zeros((0, len(CLASSES)))
    return keys, p, (np.concatenate(targets) if targets else None)


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    hits = y[order].astype(float)
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / hits.sum())


def pr_curve(y: np.ndarray, s: np.ndarray) -> list[dict]:
    out = []
    for t in np.unique(s)[::-1]:
        pred = s >= t
        tp = float((pred & y).sum())
        out.append({"threshold": float(t), "precision": tp / max(pred.sum(), 1), "recall": tp / max(y.sum(), 1)})
    return out


def threshold_for_precision(y: np.ndarray, s: np.ndarray, target: float) -> float | None:
    """The lowest threshold whose precision of `available` reaches `target` (None if none does)."""
    ok = [p["threshold"] for p in pr_curve(y, s) if p["precision"] >= target and p["recall"] > 0]
    return min(ok) if ok else None


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


def metrics(probs: np.ndarray, targets: np.ndarray, threshold: float | None = None,
            target_precision: float = 0.9) -> dict:
    y = targets[:, 0] > 0.5
    s = probs[:, 0]
    pred = probs.argmax(1) == 0 if threshold is None else s >= threshold
    tp, fp, fn = float((pred & y).sum()), float((pred & ~y).sum()), float((~pred & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    truth, guess = targets.argmax(1), probs.argmax(1)
    conf = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    for t, g in zip(truth, guess):
        conf[t, g] += 1
    per_class = {c: {"precision": float(conf[i, i] / conf[:, i].sum()) if conf[:, i].sum() else None,
                     "recall": float(conf[i, i] / conf[i].sum()) if conf[i].sum() else None, "support": int(conf[i].sum())}
                 for i, c in enumerate(CLASSES)}
    return {
        "n": int(len(y)), "available_rate": float(y.mean()) if len(y) else None,
        "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "ap": average_precision(y, s), "accuracy": float((truth == guess).mean()) if len(y) else None,
        "per_class": per_class, "confusion": {"classes": list(CLASSES), "matrix": conf.tolist()},
        "calibration": calibration(y, s), "decision": "argmax" if threshold is None else f"p >= {threshold}",
        f"threshold_at_precision_{target_precision}": threshold_for_precision(y, s, target_precision),
    }


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: str = "models/rfnet/best"
    release: str = "v0.1"
    releases: str = "releases"
    split: str = "test"
    batch_size: int = 16
    target_precision: float = 0.9
    out: str = "metrics/rfnet"


def run(cfg: EvalConfig) -> dict:
    """Metrics on a split, plus the files DVC shows: metrics json, PR curve and calibration plots."""
    from rfnet import checkpoint
    from rfnet.data import ReleaseSplit, collate

    model, meta = checkpoint.load(Path(cfg.checkpoint))
    ds = ReleaseSplit(cfg.release, cfg.split, cfg.releases, meta["model"]["image_size"])
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, collate_fn=collate)
    _, probs, targets = predict(model, loader, desc=f"evaluate {cfg.split}")
    m = metrics(probs, targets, target_precision=cfg.target_precision)
    m.update(model_version=meta["model_version"], release=cfg.release, split=cfg.split)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    y, s = targets[:, 0] > 0.5, probs[:, 0]
    (out / "metrics.json").write_text(json.dumps({k: v for k, v in m.items() if k not in ("confusion",)}, indent=1))
    (out / "confusion.json").write_text(json.dumps(m["confusion"], indent=1))
    with open(out / "pr_curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["threshold", "precision", "recall"])
        w.writeheader()
        w.writerows(pr_curve(y, s))
    with open(out / "calibration.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["bin", "n", "confidence", "accuracy"])
        w.writeheader()
        w.writerows(m["calibration"]["bins"])
    return {k: m[k] for k in ("n", "precision", "recall", "f1", "ap", "accuracy", "model_version")}
