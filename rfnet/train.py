"""Training RFNet: one readable loop.

AdamW on the trainable parameters, the paper's schedule (lr divided by 10 half-way), soft
cross-entropy weighted by inverse class frequency, fixed seeds (per epoch, so a resumed run sees the
same batches as an uninterrupted one). After every epoch: validation metrics appended to
`<out>/metrics.csv` (`dvc plots show`), the checkpoint `<out>/last` (weights + optimizer, for
`--resume`) and, when validation AP improves, `<out>/best`, which evaluation and prelabel use.
Each checkpoint carries its decision threshold: the lowest p(available) that reaches `target_precision`
on the validation split (rfnet.evaluate.choose_threshold), so evaluation reports it on test unchosen
there, and pre-labels show annotators the decision the metrics describe.
Samples with no five-way target are not trained on, but validation counts them as not available.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from rfnet import checkpoint
from rfnet.data import ReleaseSplit, collate
from rfnet.evaluate import choose_threshold, metrics, predict
from rfnet.model import CLASSES, RFNet, RFNetConfig


@dataclass(frozen=True)
class TrainConfig:
    release: str = "v0.1"
    releases: str = "releases"
    out: str = "models/rfnet"
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3  # the paper: 1e-4, fine-tuning everything; only the fusion trains here (frozen backbones)
    lr_drop_at: float = 0.5  # fraction of the epochs after which lr is divided by 10 (the paper: epoch 5 of 10)
    weight_decay: float = 0.01
    augment: bool = True
    seed: int = 0
    target_precision: float = 0.9  # the decision threshold is the lowest one reaching it on validation
    model: RFNetConfig = field(default_factory=RFNetConfig)
    cache_dir: str | None = None


def soft_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    per = -(target * weight * F.log_softmax(logits, dim=1)).sum(dim=1)
    return per.sum() / (target * weight).sum().clamp(min=1e-12)  # all-zero targets (no class) add nothing


def class_weights(targets: list[torch.Tensor]) -> torch.Tensor:
    """Square root of inverse class frequency: rare failures count more, without drowning `available`."""
    counts = torch.stack(targets).sum(0)
    w = torch.where(counts > 0, counts.sum() / (len(CLASSES) * counts.clamp(min=1e-6)), torch.zeros_like(counts))
    w = w.sqrt()
    return w / w[counts > 0].mean()


def _loader(ds, cfg: TrainConfig, epoch: int | None):
    g = torch.Generator().manual_seed(cfg.seed * 1000 + (epoch or 0))
    return torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=epoch is not None, generator=g,
                                       collate_fn=collate)


def train(cfg: TrainConfig, resume: bool = False, data: tuple | None = None) -> dict:
    """Train on the release's train split, validating on its validation split (or on `data`:
    a (train, validation) pair of ReleaseSplit, e.g. cross-validation folds)."""
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    size = cfg.model.image_size
    if data is None:
        data = (ReleaseSplit(cfg.release, "train", cfg.releases, size, cfg.augment, cfg.cache_dir),
                ReleaseSplit(cfg.release, "validation", cfg.releases, size, False, cfg.cache_dir))
    train_ds, val_ds = data[0].trainable(), data[1]
    if not len(train_ds):
        raise ValueError(f"release {cfg.release} has no trainable sample in its train split")
    weight = class_weights(train_ds.targets)
    resuming = resume and checkpoint.locate(out / "last") is not None
    model, meta = checkpoint.load(out / "last") if resuming else (RFNet(cfg.model), None)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    start, step, history, best = 0, 0, [], -math.inf
    if resuming:
        checkpoint.load_optimizer(out / "last", opt)
        start, step, history = meta["state"]["epoch"] + 1, meta["state"]["step"], meta["state"]["history"]
        best = max((h["val_ap"] for h in history if not math.isnan(h["val_ap"])), default=-math.inf)
    out.mkdir(parents=True, exist_ok=True)
    for epoch in range(start, cfg.epochs):
        lr = cfg.lr * (0.1 if epoch >= int(cfg.epochs * cfg.lr_drop_at) else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout and flips: the same whether resumed or not
        model.train()
        total, n = 0.0, 0
        for batch in tqdm(_loader(train_ds, cfg, epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch"):
            logits = model(batch["images"], model.tokenize(batch["captions"]))
            loss = soft_ce(logits, batch["target"], weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            total, n = total + loss.item() * len(batch["keys"]), n + len(batch["keys"])
        row = {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": total / n}
        decision = None
        if len(val_ds):
            _, probs, targets = predict(model, _loader(val_ds, cfg, None), desc="validate")
            decision = {**choose_threshold(probs, targets, cfg.target_precision), "release": cfg.release}
            m = metrics(probs, targets, decision["threshold"])
            val_loss = float(soft_ce(torch.log(torch.from_numpy(probs).clamp(min=1e-9)), torch.from_numpy(targets),
                                     weight))
            row.update(val_loss=val_loss, val_ap=m["ap"], val_accuracy=m["accuracy"], val_f1=m["f1"])
        else:
            row.update(val_loss=float("nan"), val_ap=float("nan"), val_accuracy=float("nan"), val_f1=float("nan"))
        history.append(row)
        state = {"epoch": epoch, "step": step, "history": history, "train": asdict(cfg)}
        checkpoint.save(out / "last", model, state, opt, decision)
        score = row["val_ap"] if not math.isnan(row["val_ap"]) else -row["train_loss"]
        if score > best or checkpoint.locate(out / "best") is None:
            best = score
            checkpoint.save(out / "best", model, state, decision=decision)
        with open(out / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, list(history[0]))
            w.writeheader()
            w.writerows(history)
    meta = checkpoint.read_meta(out / "best")
    return {"epochs": cfg.epochs, "steps": step, "best": str(out / "best"), "model_version": meta["model_version"],
            "last": history[-1] if history else None}
