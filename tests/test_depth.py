"""The offline depth network: it learns the renderer's depth from the pixels, not from the product mask."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipelines import train_depth
from pipelines.aux_maps import AuxConfig, AuxMaps, layout_prior
from pipelines.depthnet import TinyDepth, to_input
from pipelines.train_depth import HELD_OUT_SEED, DepthTrainConfig, evaluate, predict_at, renders

# Smaller than the stage's defaults so the suite stays quick, still enough to learn the scenes.
QUICK = DepthTrainConfig(images=240, held_out=48, steps=300, threads=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("depth") / "net"
    cfg = replace(QUICK, out=str(out), metrics=str(out.parent / "metrics"))
    report = train_depth.run(cfg)
    return cfg, report, renders(cfg, cfg.held_out, HELD_OUT_SEED)


def l1(model, data) -> float:
    with torch.no_grad():
        return float((model(to_input(list(data["images"]), model.cfg.size)) - torch.from_numpy(data["depth"]))
                     .abs().mean())


def test_a_few_steps_lower_the_loss_and_repeat_exactly():
    torch.set_num_threads(1)
    cfg = DepthTrainConfig(images=16, size=32, channels=(4, 8, 16), steps=30, batch=8, threads=1)
    data = renders(cfg, cfg.images, 0)
    torch.manual_seed(cfg.seed)  # train() starts from exactly this initialisation
    before = l1(TinyDepth(train_depth.DepthNetConfig(channels=cfg.channels, size=cfg.size)), data)
    model, curve = train_depth.train(cfg, data, progress=False)
    assert l1(model, data) < 0.7 * before
    again, _ = train_depth.train(cfg, data, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_depth_follows_the_true_depth_of_held_out_renders(trained):
    cfg, report, held = trained
    metrics = evaluate(predict_at(TinyDepth.from_pretrained(cfg.out), held), held)
    assert metrics["spearman_mean"] > 0.7
    assert report["spearman_mean"] == pytest.approx(metrics["spearman_mean"], abs=1e-3)  # what the stage reports


def test_depth_is_read_from_the_scene_not_the_product_mask(trained):
    """Beyond the average scene, the background's predicted depth follows each scene's own horizon and
    walls; the layout prior (a ramp with the product pasted on it) has nothing there."""
    cfg, _, held = trained
    net = evaluate(predict_at(TinyDepth.from_pretrained(cfg.out), held), held)
    prior = evaluate(np.stack([layout_prior(None, a) for a in held["alpha"]]), held)
    assert prior["background_pearson"] == 0.0
    assert net["background_pearson"] > 0.25


def test_aux_maps_use_the_depth_network_on_the_generated_image(trained):
    cfg, _, held = trained
    aux = AuxMaps(AuxConfig(depth=f"depthnet:{cfg.out}"))
    images = list(held["images"][:2])
    products = [np.zeros((*im.shape[:2], 4), np.uint8) for im in images]  # an empty mask: depth must still vary
    depth, _ = aux(images, products)
    assert depth[0].shape == images[0].shape[:2] and depth[0].dtype == np.uint8
    assert depth[0].std() > 10 and not np.array_equal(depth[0], depth[1])
    with pytest.raises(FileNotFoundError, match="not a depth network folder"):
        AuxMaps(AuxConfig(depth=f"depthnet:{cfg.out}/missing"))


def test_a_trained_network_is_reused_when_the_config_matches(trained):
    cfg, _, _ = trained
    assert train_depth.run(cfg)["trained_now"] is False


def test_a_network_trained_on_an_older_corpus_is_rebuilt(tmp_path):
    cfg = replace(QUICK, images=16, held_out=8, steps=4, out=str(tmp_path / "net"), metrics=str(tmp_path / "m"))
    train_depth.run(cfg)
    stamp = tmp_path / "net" / "train_config.json"
    stamp.write_text(json.dumps({k: v for k, v in json.loads(stamp.read_text()).items() if k != "corpus"},
                                sort_keys=True))
    assert train_depth.run(cfg)["trained_now"] is True
