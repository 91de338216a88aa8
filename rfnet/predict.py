"""Pre-labelling: RFNet over a batch's shards -> a predictions Parquet that `annotate push` attaches
to Label Studio tasks, and a predictor the ML backend serves from the same checkpoint.

The predictions table (`rf1m.tables.PREDICTIONS`): key, model_version, threshold (the checkpoint's
validated decision threshold), p_<class> for every class of RFNet's head, and the verdict and reasons
`rf1m.decision.decide` gives at that threshold, the rule evaluation measured. Push and the ML backend
show that decision as it is.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rf1m import shards, tables
from rfnet import checkpoint
from rfnet.data import MEMBER_OF, collate, sample, shard_samples
from rfnet.evaluate import decisions, predict
from rfnet.model import CLASSES, IMAGES


@dataclass(frozen=True)
class PrelabelConfig:
    checkpoint: str = "models/rfnet/best"
    batch_id: str = "demo"
    shards: str = "data/shards"
    out: str = "data/predictions"  # writes <out>/<batch_id>.parquet
    batch_size: int = 32
    workers: int = 1  # loader processes decoding shards while the model runs


def predictions_rows(keys: list[str], probs: np.ndarray, model_version: str, threshold: float) -> list[dict]:
    """Rows of the predictions table (probability columns in CLASSES order)."""
    return [{"key": k, "model_version": model_version, "threshold": float(threshold),
             **{f"p_{c}": float(p[i]) for i, c in enumerate(CLASSES)}, "verdict": d["verdict"], "reasons": d["reasons"]}
            for k, p, d in zip(keys, probs, decisions(probs, threshold))]


def run(cfg: PrelabelConfig) -> dict:
    model, meta = checkpoint.load(Path(cfg.checkpoint))
    return prelabel(model, meta, cfg)


def prelabel(model, meta: dict, cfg: PrelabelConfig) -> dict:
    keys, probs = score(model, meta, batch_shards(cfg), cfg.batch_size, cfg.workers, f"prelabel {cfg.batch_id}")
    return write_predictions(meta, cfg, keys, probs)


def batch_shards(cfg: PrelabelConfig) -> list[str]:
    """The batch's shard tars in name order, the order the predictions table lists their samples in."""
    urls = sorted(str(p) for p in (Path(cfg.shards) / cfg.batch_id).glob("*.tar"))
    if not urls:
        raise ValueError(f"no shards for batch {cfg.batch_id!r} in {cfg.shards}")
    return urls


def score(model, meta: dict, urls: list[str], batch_size: int, workers: int, desc: str) -> tuple[list[str], np.ndarray]:
    """Keys and class probabilities of the samples of `urls`, in shard order; `workers` loader processes
    decode (0: this process does)."""
    # one worker per shard list split: webdataset hands each worker its own shards, so nothing repeats
    loader = torch.utils.data.DataLoader(shard_samples(urls, meta["model"]["image_size"]),
                                         batch_size=batch_size, collate_fn=collate,
                                         num_workers=min(workers, len(urls)))
    keys, probs, _ = predict(model, loader, desc=desc)
    return keys, probs


def write_predictions(meta: dict, cfg: PrelabelConfig, keys: list[str], probs: np.ndarray) -> dict:
    """The predictions table of `cfg`'s batch from scored samples, and the run's summary."""
    threshold = meta["decision"]["threshold"]
    rows = predictions_rows(keys, probs, meta["model_version"], threshold)
    out = tables.write(tables.PREDICTIONS, rows, Path(cfg.out) / f"{cfg.batch_id}.parquet")
    shown = [r["verdict"] == "available" for r in rows]
    return {"predictions": str(out), "samples": len(keys), "model_version": meta["model_version"],
            "threshold": threshold, "predicted_available": float(np.mean(shown)) if shown else None}


class CheckpointPredictor:
    """For the ML backend: predicts Label Studio tasks by key, reading the samples from their shards."""

    def __init__(self, checkpoint_dir: str, shards_root: str = "data/shards"):
        self.model, meta = checkpoint.load(Path(checkpoint_dir))
        self.model_version, self.size = meta["model_version"], meta["model"]["image_size"]
        self.threshold = meta["decision"]["threshold"]
        self.root = Path(shards_root)
        self._rows: dict[str, dict] = {}

    def _row(self, key: str, batch_id: str) -> dict | None:
        if key not in self._rows:
            for r in shards.read_sidecars(self.root / batch_id).to_pylist():
                self._rows[r["key"]] = {**r, "_dir": self.root / batch_id}
        return self._rows.get(key)

    def predict(self, tasks: list[dict]) -> list[dict | None]:
        items, where = [], []
        for i, t in enumerate(tasks):
            d = t.get("data", {})
            row = self._row(d.get("key", ""), d.get("batch_id", "")) if d.get("key") else None
            if row is None:
                continue
            members = {m: Image.open(io.BytesIO(shards.member_bytes(row["_dir"], row, MEMBER_OF[m]))) for m in IMAGES}
            items.append({**sample(members, row["title"], self.size), "key": row["key"]})
            where.append(i)
        out: list[dict | None] = [None] * len(tasks)
        if items:
            _, probs, _ = predict(self.model, [collate(items)], desc="ml-backend")
            for i, d in zip(where, decisions(probs, self.threshold)):
                out[i] = {"model_version": self.model_version, **d}
        return out
