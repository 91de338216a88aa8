"""Prelabel stage on an engine: one job per shard tar, scored where the engine runs it.

`rfnet.predict` knows how RFNet scores shards and makes the predictions rows; this module only cuts
the batch into jobs (one per shard, named by its file, so a retried job redoes that shard alone) and
hands them to `pipelines.engines` (local processes or Ray actors). Each worker process loads the
checkpoint once, on its first job, and reuses it for every later shard; the driver puts the scored
shards back in shard-name order, so the table lists the same rows in the same order whichever engine
and however many workers ran them, and writes it once, through `rfnet.predict.write_predictions`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipelines.engines import RayConfig, make_engine
from rfnet import checkpoint, predict

_LOADED: dict = {}  # per process: the checkpoint last loaded (key, model, meta)


@dataclass(frozen=True)
class PrelabelConfig(predict.PrelabelConfig):
    engine: str = "local"  # or ray (settings in `ray`); neither changes a prediction
    workers: int = 1  # local engine: processes, each scoring whole shards with its own copy of the model
    threads: int = 1  # torch threads per worker (the same in every engine, so the same floats)
    device: str = "cpu"  # auto: cuda where the worker has one (a Ray actor with num_gpus), else cpu
    ray: RayConfig = field(default_factory=RayConfig)


def load_model(path: str, device: str = "cpu") -> tuple:
    """(model, meta, loaded now?): the checkpoint at `path`, loaded once per process and reloaded when
    its config.json changes (it holds the weights' sha256 and the threshold), so a retrained `best` is
    never judged with the old weights."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    key = (str(Path(path).resolve()), json.dumps(checkpoint.read_meta(Path(path)), sort_keys=True), device)
    loaded = _LOADED.get("key") != key
    if loaded:
        model, meta = checkpoint.load(Path(path))
        model = model.to(device)
        _LOADED.update(key=key, model=model, meta=meta)
    return _LOADED["model"], _LOADED["meta"], loaded


def score_shard(job: dict, progress=None) -> dict:
    """Score one shard tar. Top-level so a process pool or a Ray actor can run it."""
    import torch

    cfg: PrelabelConfig = job["cfg"]
    torch.set_num_threads(cfg.threads)
    model, meta, loaded = load_model(cfg.checkpoint, cfg.device)
    keys, probs = predict.score(model, meta, [job["url"]], cfg.batch_size, 0, f"prelabel {Path(job['url']).name}")
    if progress:
        progress(len(keys))
    return {"url": job["url"], "count": len(keys), "keys": keys, "probs": probs,
            "model_version": meta["model_version"], "pid": os.getpid(), "loaded": loaded}


def run(cfg: PrelabelConfig) -> dict:
    """Score every shard of the batch on the configured engine; write the predictions table."""
    import numpy as np

    meta = checkpoint.read_meta(Path(cfg.checkpoint))
    urls = predict.batch_shards(cfg)
    done: dict[str, dict] = {}
    with tqdm(desc=f"prelabel {cfg.batch_id}", unit="img") as bar:
        for r in make_engine(cfg.engine, cfg.workers, cfg.ray).map(score_shard, [{"cfg": cfg, "url": u} for u in urls],
                                                                   bar.update):
            done[r["url"]] = r
    versions = {r["model_version"] for r in done.values()}
    if versions != {meta["model_version"]}:
        raise RuntimeError(f"checkpoint {cfg.checkpoint} changed during the run (scored by {sorted(versions)}, "
                           f"expected {meta['model_version']}): run prelabel again")
    keys = [k for u in urls for k in done[u]["keys"]]
    probs = np.concatenate([done[u]["probs"] for u in urls])
    return {**predict.write_predictions(meta, cfg, keys, probs), "shards": len(urls),
            "model_loads": sum(r["loaded"] for r in done.values()),  # one per worker process, not per shard
            "processes": len({r["pid"] for r in done.values()})}
