"""The machinery behind bench/bench_rfnet.py: grouped folds, the product bootstrap, cached features."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from rfnet.cv import bootstrap_diff, grouped_folds, grouped_split, mean_sd
from rfnet.evaluate import average_precision


def _groups(n_groups=23, seed=0):
    rng = np.random.default_rng(seed)
    return [f"p{g:03d}" for g in range(n_groups) for _ in range(int(rng.integers(1, 9)))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_folds_never_share_a_product_and_test_every_sample_once(seed):
    groups = _groups(seed=seed)
    folds = grouped_folds(groups, 5, seed)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(groups)))
    for test in folds:
        train = np.setdiff1d(np.arange(len(groups)), test)
        assert not {groups[i] for i in test} & {groups[i] for i in train}
        rest, val = grouped_split(groups, train, 0.2, seed)
        assert sorted(np.concatenate([rest, val]).tolist()) == train.tolist()
        assert val.size and not {groups[i] for i in val} & {groups[i] for i in rest}
    sizes = [len({groups[i] for i in f}) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    assert [f.tolist() for f in grouped_folds(groups, 5, seed + 10)] != [f.tolist() for f in folds]


def test_too_few_products_for_the_folds_is_an_error():
    with pytest.raises(ValueError, match="2 groups cannot make 5 folds"):
        grouped_folds(["a", "a", "b"], 5, 0)


def _scores(rng, y, groups, noise):
    """Scores with a per-product offset (samples of a product are correlated, as in the bench)."""
    names = sorted(set(groups))
    offset = dict(zip(names, rng.normal(0, 0.5, len(names))))
    return y + np.array([offset[g] for g in groups]) + rng.normal(0, noise, len(y))


def _data(rng, n_groups, per=6):
    groups = [f"p{g}" for g in range(n_groups) for _ in range(per)]
    return groups, (rng.random(len(groups)) < 0.4).astype(float)


def test_bootstrap_interval_covers_a_known_difference():
    """A better scorer (less noise) against a worse one: the interval from 120 products must hold the
    difference measured on 20,000 products drawn the same way, and exclude zero."""
    rng = np.random.default_rng(0)
    big_groups, big_y = _data(rng, 20_000)
    truth = (average_precision(big_y, _scores(rng, big_y, big_groups, 0.6))
             - average_precision(big_y, _scores(rng, big_y, big_groups, 1.2)))
    groups, y = _data(rng, 120)
    a = np.stack([_scores(rng, y, groups, 0.6) for _ in range(3)])
    b = np.stack([_scores(rng, y, groups, 1.2) for _ in range(3)])
    out = bootstrap_diff(y, a, b, groups, n_boot=400, seed=0)
    lo, hi = out["ci95"]
    assert 0 < lo <= truth <= hi, (truth, out)
    assert lo < out["diff"] < hi


def test_bootstrap_resamples_products_not_samples():
    """Samples of a product share its label tendency and its scoring error, as in the bench: the
    product bootstrap must be clearly wider than a sample bootstrap (every sample its own product)."""
    rng = np.random.default_rng(1)
    groups = [f"p{g}" for g in range(60) for _ in range(10)]
    rate = {g: rng.choice([0.1, 0.9]) for g in sorted(set(groups))}
    y = (rng.random(len(groups)) < np.array([rate[g] for g in groups])).astype(float)
    a, b = _scores(rng, y, groups, 0.6), _scores(rng, y, groups, 1.0)
    by_product = bootstrap_diff(y, a, b, groups, n_boot=300, seed=0)["ci95"]
    by_sample = bootstrap_diff(y, a, b, [str(i) for i in range(len(y))], n_boot=300, seed=0)["ci95"]
    assert by_product[1] - by_product[0] > 1.25 * (by_sample[1] - by_sample[0])


def test_mean_sd_leaves_out_folds_without_a_positive():
    assert mean_sd([1.0, 2.0, 3.0]) == {"mean": 2.0, "sd": 1.0, "n": 3}
    assert mean_sd([1.0, float("nan"), 3.0]) == {"mean": 2.0, "sd": 2 ** 0.5, "n": 2, "undefined": 1}


def test_cached_fusion_is_rfnet(small_batch, tmp_path):
    """The fusion trained on cached features computes exactly what RFNet computes from the images,
    for both flips, and the last-stage cut reproduces the encoder."""
    from PIL import Image

    from rf1m import shards
    from rfnet.data import MEMBER_OF, sample
    from rfnet.features import cached_inputs, encode_batch, fusion_model
    from rfnet.model import RFNet, RFNetConfig

    tmp, cfg, _ = small_batch
    batch_dir = tmp / "shards" / "t"
    mcfg = RFNetConfig(image_size=64, dim=32, heads=2)
    cache = encode_batch(batch_dir, mcfg, tmp_path)
    files = {f: f.stat().st_mtime_ns for f in tmp_path.glob("*.pt")}
    assert len(files) == len(list(batch_dir.glob("shard-*.parquet"))) == 3  # one cache file per shard
    again = encode_batch(batch_dir, mcfg, tmp_path)  # read back, nothing re-encoded
    assert torch.equal(again["image"], cache["image"]) and again["keys"] == cache["keys"]
    assert {f: f.stat().st_mtime_ns for f in tmp_path.glob("*.pt")} == files
    torch.manual_seed(0)
    real = RFNet(mcfg).eval()
    fused = fusion_model(mcfg, cache).eval()
    fused.load_state_dict({k: v for k, v in real.state_dict().items() if not k.startswith(("encoder.", "text."))})
    rows = {r["key"]: r for r in shards.read_sidecars(batch_dir).to_pylist()}
    n = len(cache["keys"])
    for flip in (False, True):
        items = [sample({m: Image.open(io.BytesIO(shards.member_bytes(batch_dir, rows[k], MEMBER_OF[m])))
                         for m in MEMBER_OF}, rows[k]["title"], 64, flip) for k in cache["keys"]]
        images = {m: torch.stack([it["images"][m] for it in items]) for m in items[0]["images"]}
        with torch.no_grad():
            want = real(images, real.tokenize([it["caption"] for it in items]))
            got = fused(*cached_inputs(cache, torch.arange(n), torch.full((n,), int(flip))))
        assert torch.allclose(want, got, atol=2e-2), (want - got).abs().max()  # float16 cache
    with torch.no_grad():
        tuned = fusion_model(mcfg, cache, last_stage=True).eval()
        pre, _ = cached_inputs(cache, torch.arange(n), last_stage=True)
        assert torch.allclose(tuned.encoder(pre["image"]), cache["image"][:, 0, 1].float(), atol=2e-2)
    trainable = [p.requires_grad for p in tuned.encoder.parameters()]
    assert trainable and all(trainable)


def test_the_bench_picks_epochs_on_validation_and_trains_with_them(monkeypatch):
    """Epochs are a hyper-parameter like the learning rate: tune() must choose them on validation and
    every later fit must use the chosen value, not the base --epochs (the run that underfitted)."""
    from types import SimpleNamespace

    from bench import bench_rfnet
    from rfnet.train import TrainConfig

    groups = _groups(seed=3)
    n = len(groups)
    labels = [("available", []) if i % 3 else ("not_available", ["size_mismatch"]) for i in range(n)]
    y = np.array([v == "available" for v, _ in labels], dtype=float)
    used = []

    def fit(cache, idx, targets, tcfg, variant, lr, seed, last_stage=False):
        used.append((variant.get("drop", ()), tcfg.epochs, lr))
        return tcfg.epochs

    def predict(epochs, cache, idx, swap=None, last_stage=False):  # 12 epochs: a perfect ranking; 4: a useless one
        s = y[idx] if epochs == 12 else np.zeros(len(idx))
        return np.stack([s, 1 - s], axis=1)

    monkeypatch.setattr(bench_rfnet, "fit", fit)
    monkeypatch.setattr(bench_rfnet, "predict", predict)
    a = SimpleNamespace(folds=5, tune_folds=2, boot=10)
    bench = bench_rfnet.Bench(a, TrainConfig(epochs=4, lr=1e-3), {"product_id": groups},
                              {"test": labels, "train": labels, "oracle": labels})
    tuned = bench.tune()
    assert tuned["full"]["epochs"] == tuned["image_only"]["epochs"] == 12
    assert {e for _, e, _ in used} == {4, 12}
    used.clear()
    hps = {k: {"lr": v["lr"], "epochs": v["epochs"]} for k, v in tuned.items()}
    out = bench.cross_validate({"full": {}, "image_only": {"drop": bench_rfnet.IMAGE_ONLY}}, 1, hps)
    assert used and {e for _, e, _ in used} == {12}
    assert np.mean(out["fold_ap"]["full"]) == pytest.approx(1.0)
