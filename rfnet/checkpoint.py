"""Checkpoints as safetensors + JSON (never pickle), checked by hash before use.

A checkpoint folder holds `model.safetensors`, `config.json` (model config, classes, sha256 of the
weights, model_version, training state) and, for resuming, `optimizer.safetensors`. Frozen pretrained
backbones are not stored: they are rebuilt from their named source, which keeps a checkpoint a few MB.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rfnet.model import CLASSES, RFNet, RFNetConfig

BACKBONES = ("encoder.", "text.")


class CorruptCheckpoint(ValueError):
    pass


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stored(model: RFNet) -> dict[str, torch.Tensor]:
    skip = model.cfg.freeze_backbones and model.cfg.pretrained
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()
            if not (skip and k.startswith(BACKBONES))}


def save(directory: Path, model: RFNet, state: dict | None = None, optimizer=None) -> Path:
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_stored(model), str(tmp / "model.safetensors"))
    meta = {"model": asdict(model.cfg), "classes": list(CLASSES), "sha256": _sha(tmp / "model.safetensors"),
            "state": state or {}}
    meta["model_version"] = "rfnet-" + meta["sha256"][:12]
    if optimizer is not None:
        sd = optimizer.state_dict()
        flat = {f"{pid}.{name}": t.contiguous() for pid, st in sd["state"].items() for name, t in st.items()
                if torch.is_tensor(t)}
        save_file(flat, str(tmp / "optimizer.safetensors"))
        meta["optimizer"] = {"param_groups": sd["param_groups"], "sha256": _sha(tmp / "optimizer.safetensors")}
    (tmp / "config.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def read_meta(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CorruptCheckpoint(f"checkpoint {directory}: unreadable config.json ({e})") from None


def load(directory: Path) -> tuple[RFNet, dict]:
    """The model (eval mode) and the checkpoint's metadata; refuses a checkpoint whose bytes changed."""
    directory = Path(directory)
    meta = read_meta(directory)
    weights = directory / "model.safetensors"
    if not weights.exists() or _sha(weights) != meta.get("sha256"):
        raise CorruptCheckpoint(f"checkpoint {directory} is corrupt: model.safetensors does not match its sha256")
    if tuple(meta["classes"]) != CLASSES:
        raise CorruptCheckpoint(f"checkpoint {directory} was trained for classes {meta['classes']}")
    cfg = RFNetConfig(**{**meta["model"], "drop": tuple(meta["model"]["drop"])})
    model = RFNet(cfg)
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    if unexpected or any(not k.startswith(BACKBONES) for k in missing):
        raise CorruptCheckpoint(f"checkpoint {directory} does not fit the model: missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]}")
    return model.eval(), meta


def load_optimizer(directory: Path, optimizer) -> None:
    meta = read_meta(directory)
    path = Path(directory) / "optimizer.safetensors"
    if _sha(path) != meta["optimizer"]["sha256"]:
        raise CorruptCheckpoint(f"checkpoint {directory} is corrupt: optimizer.safetensors does not match")
    flat = load_file(str(path))
    state: dict = {}
    for k, t in flat.items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = t
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
