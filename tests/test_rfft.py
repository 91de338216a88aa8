"""RFFT on the tiny test generator (64 px, 2 DDIM steps) and a tiny random RFNet: what trains, what
the regulariser measures, the saved ControlNet in the generate pipeline, and resume."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipelines import products, rfft
from pipelines.aux_maps import spectral_residual
from pipelines.conditions import LayoutConfig
from pipelines.generate import Prompt
from tests.test_cyclic import tiny_rfnet


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("rfft")
    # p00000 test, p00001-3 train, p00004 val (rfft.split_of)
    products.run(products.ProductsConfig(count=5, size=96, out=str(tmp / "products")))
    tiny_rfnet(tmp / "rfnet", threshold=0.2)
    return tmp


def config(tmp: Path, model: Path, out: str, **kw) -> rfft.RFFTConfig:
    base = dict(base_model=str(model), products=str(tmp / "products"), checkpoint=str(tmp / "rfnet"),
                out=str(tmp / out), metrics=str(tmp / out / "metrics"), steps=2, stop_last=2,
                layout=LayoutConfig(size=64), prompts=(Prompt("kitchen", "a product on a marble table"),),
                batch_size=2, lr=1e-2, max_steps=4, eval_every=100, save_every=2, patience=100, val_seeds=1,
                threads=1, regulariser="none")
    base.update(kw)
    return rfft.RFFTConfig(**base)


def checksum(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_only_controlnet_trains_and_lcc_grows_from_zero(setup_dir, tiny_model):
    cfg = config(setup_dir, tiny_model, "unit")
    gen, reward, _, optimizer, data = rfft.setup(cfg)
    frozen = rfft.frozen_modules(gen, reward)
    assert set(frozen) >= {"unet", "vae", "text_encoder", "rfnet"}
    assert all(not p.requires_grad for m in frozen.values() for p in m.parameters())
    before = {n: checksum(m) for n, m in frozen.items()}
    start = checksum(gen.controlnet)
    rng = np.random.default_rng(123)
    probe = rfft._draw(cfg, data["train"], rng, 2)  # a fixed batch the regulariser is measured on
    originals = rfft.originals_tensor(probe, reward.size, "cpu")

    def lcc():
        with torch.no_grad():
            return float(rfft.losses(gen, reward, probe, originals, stop=1)["cc"])

    seen = [lcc()]
    for step in range(4):
        rfft.train_step(cfg, gen, reward, optimizer, data["train"], step)
        seen.append(lcc())
    assert seen[0] == 0.0  # the fine-tuned model starts as its reference: no guidance drift at all
    assert seen[2] > 0 and seen[4] > seen[2]  # and drifts as F_AC alone (beta = 0) moves the weights
    assert {n: checksum(m) for n, m in frozen.items()} == before  # UNet, VAE, text encoder, RFNet untouched
    assert checksum(gen.controlnet) != start


def test_condition_embedding_is_reused_within_a_batch_and_never_stale(setup_dir, tiny_model):
    cfg = config(setup_dir, tiny_model, "embed")
    gen = rfft.Generator(cfg, "cpu")
    items = rfft._draw(cfg, rfft._products(cfg)["train"], np.random.default_rng(1), 2)
    conds, prompts, seeds = [c for *_, c in items], [p for _, p, _, _ in items], [s for _, _, s, _ in items]
    emb = gen.controlnet.controlnet_cond_embedding
    cached, plain = emb.forward, type(emb).forward.__get__(emb)

    def rollout(forward):
        emb.forward = forward
        return gen.rollout(gen.inputs(conds, prompts), seeds, cfg.steps)

    with torch.no_grad():
        for p in gen.controlnet.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # a ControlNet that acts (its zero-init start is a no-op)
    assert torch.equal(rollout(cached), rollout(plain))
    with torch.no_grad():  # weights move, as after an optimizer step: the next batch sees them
        for p in emb.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    assert torch.equal(rollout(cached), rollout(plain))


def test_regularisers_and_anchor_enter_the_loss(setup_dir, tiny_model):
    terms = {"f_ac": torch.tensor(1.0), "cc": torch.tensor(2.0), "kl": torch.tensor(3.0), "uncond": torch.tensor(5.0),
             "output": torch.tensor(7.0)}
    cfg = config(setup_dir, tiny_model, "x", beta=10.0)
    assert float(rfft.total(replace(cfg, regulariser="cc"), terms)) == 21.0
    assert float(rfft.total(replace(cfg, regulariser="kl"), terms)) == 31.0
    assert float(rfft.total(replace(cfg, regulariser="none", anchor="uncond", anchor_weight=2.0), terms)) == 11.0
    with pytest.raises(ValueError, match="regulariser"):
        replace(cfg, regulariser="l2")


def test_torch_saliency_matches_the_stored_map(small_batch):
    import io

    from PIL import Image

    from rf1m import shards

    tmp, gen_cfg, _ = small_batch
    batch = Path(gen_cfg.out) / gen_cfg.batch_id
    row = shards.read_sidecars(batch).to_pylist()[0]

    img = np.array(Image.open(io.BytesIO(shards.member_bytes(batch, row, "image"))).convert("RGB"))
    want = spectral_residual(img).astype(float)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float().requires_grad_(True)
    got = rfft.spectral_residual_torch(x / 255)[0]
    got.sum().backward()
    assert np.abs(got.detach().numpy() * 255 - want).max() <= 3.0
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0  # differentiable, no NaN from the phase


def test_killed_run_resumes_to_the_same_weights_and_the_controlnet_drops_into_generate(setup_dir, tiny_model):
    from pipelines import generate
    from tests.conftest import small_config

    whole = rfft.run(config(setup_dir, tiny_model, "whole"))
    assert whole["steps"] == 4 and [h["step"] for h in whole["history"]] == [0, 4]
    assert set(whole["history"][-1]) >= {"oracle_rate", "rfnet_rate", "judge_oracle_agreement", "train_cc"}

    def die(step):
        if step == 3:
            raise KeyboardInterrupt("killed on purpose")

    cut = config(setup_dir, tiny_model, "cut")
    with pytest.raises(KeyboardInterrupt):
        rfft.run(cut, on_step=die)  # its last checkpoint is step 2
    resumed = rfft.run(cut)
    assert resumed["steps"] == 4
    with pytest.raises(ValueError, match="regulariser"):  # a resume never mixes two recipes
        rfft.run(replace(cut, regulariser="kl"))
    from diffusers import ControlNetModel

    a = ControlNetModel.from_pretrained(setup_dir / "whole" / "last" / "controlnet").state_dict()
    b = ControlNetModel.from_pretrained(setup_dir / "cut" / "last" / "controlnet").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = ControlNetModel.from_pretrained(tiny_model / "controlnet").state_dict()
    assert not all(torch.equal(a[k], start[k]) for k in a)

    # the trained ControlNet (diffusers format) is a generate stage's controlnet_model
    out = setup_dir / "gen"
    out.mkdir()
    (out / "products").symlink_to(setup_dir / "products")
    base = generate.run(small_config(out, tiny_model, seeds=1, batch_id="base"))
    tuned = generate.run(small_config(out, tiny_model, seeds=1, batch_id="tuned",
                                      controlnet_model=str(setup_dir / "whole" / "last" / "controlnet")))
    assert tuned["samples"] == base["samples"] == 5
    from rf1m import shards

    def first_image(batch):
        d = out / "shards" / batch
        rows = sorted(shards.read_sidecars(d).to_pylist(), key=lambda r: r["product_id"])
        return shards.member_bytes(d, rows[0], "image")

    assert first_image("base") != first_image("tuned")  # the fine-tuned weights are the ones used


def test_a_new_judge_starts_a_round_that_continues_from_the_checkpoint(setup_dir, tiny_model):
    """The loop: RFFT, retrain RFNet, continue. A run given another judge resumes its ControlNet and
    optimizer (not a fresh start, not a recipe error), evaluates with the new judge where the round
    starts, and the history says which round each evaluation belongs to."""
    from pipelines import rfft_eval

    first = config(setup_dir, tiny_model, "rounds", max_steps=2)
    r1 = rfft.run(first)
    tiny_rfnet(setup_dir / "rfnet2", threshold=0.0, seed=1)  # calls every image available
    second = replace(first, checkpoint=str(setup_dir / "rfnet2"), max_steps=4)
    r2 = rfft.run(second)
    assert [(j["round"], j["from_step"], j["checkpoint"]) for j in r2["judges"]] == [
        (1, 0, first.checkpoint), (2, 2, second.checkpoint)]
    assert [(h["step"], h["round"]) for h in r2["history"]] == [(0, 1), (2, 1), (2, 2), (4, 2)]
    end1, start2 = r2["history"][1], r2["history"][2]
    assert end1 == r1["history"][-1]
    # the same generator at step 2 under both judges (resumed, not restarted): the oracle sees the same images
    assert start2["oracle_rate"] == end1["oracle_rate"] and start2["n"] == end1["n"]
    # but judged by the new RFNet, at its own threshold
    assert start2["rfnet_rate"] == 1.0 and start2["judge_oracle_agreement"] == start2["oracle_rate"]
    again = rfft.run(second)  # the same judge again: no new round, nothing re-run
    assert len(again["judges"]) == 2 and again["history"] == r2["history"]
    split = rfft_eval.rounds_of(r2)
    assert [[h["step"] for h in x["history"]] for x in split] == [[0, 2], [2, 4]]
    with pytest.raises(ValueError, match="regulariser"):  # a judge may change between rounds, the recipe may not
        rfft.run(replace(second, regulariser="kl", max_steps=6))
    done = rfft.run(replace(first, max_steps=4))  # an earlier judge with no steps left: nothing to do, no round
    assert len(done["judges"]) == 2 and done["history"] == r2["history"]

    # a run saved before rounds existed (no judges, the judge in its recipe) resumes as round 1
    old = config(setup_dir, tiny_model, "pre_rounds", max_steps=2)
    before = rfft.run(old)
    state_file = setup_dir / "pre_rounds" / "last" / "state.json"
    saved = json.loads(state_file.read_text())
    saved.pop("judges")
    saved["recipe"]["checkpoint"] = old.checkpoint
    for h in saved["history"]:
        h.pop("round")
    state_file.write_text(json.dumps(saved))
    after = rfft.run(old)
    assert after["judges"] == [{"round": 1, "from_step": 0, "checkpoint": old.checkpoint}]
    assert [h["step"] for h in after["history"]] == [h["step"] for h in before["history"]] == [0, 2]


def test_paired_difference_and_wilson_interval():
    from pipelines import rfft_eval

    base = np.array([0, 0, 1, 1, 0, 0], bool)
    arm = np.array([1, 1, 1, 0, 1, 1], bool)
    p = rfft_eval.paired(base, arm, ["a", "a", "b", "b", "c", "c"], boot=500)
    assert (p["fixed"], p["broken"], p["diff"]) == (4, 1, 0.5)
    # per product the differences are (1, 1), (0, -1), (1, 1): a resample of products spans -0.5 .. 1
    assert -0.5 <= p["ci95"][0] < 0.5 < p["ci95"][1] <= 1.0
    assert rfft_eval.wilson(50, 100) == [0.4038, 0.5962]
    lo, hi = rfft_eval.wilson(0, 20)  # the normal interval would say [0, 0]
    assert lo == 0.0 and 0.15 < hi < 0.17


def test_rfft_eval_pairs_every_arm_with_the_base_and_the_stage_reads_params(setup_dir, tiny_model, tmp_path):
    from diffusers import ControlNetModel

    from pipelines import params, rfft_eval

    cfg = config(setup_dir, tiny_model, "whole", prompts=(Prompt("kitchen", "a product on a marble table"),
                                                          Prompt("beach", "a product on a beach at sunset")))
    rfft.run(config(setup_dir, tiny_model, "whole"))  # trained by the resume test when it ran first
    same = tmp_path / "same"
    ControlNetModel.from_pretrained(tiny_model / "controlnet").save_pretrained(same)
    tuned = str(setup_dir / "whole" / "last" / "controlnet")
    res = rfft_eval.evaluate_arms(cfg, {"base": None, "same": str(same), "tuned": tuned}, seeds=3, boot=100)
    assert (res["test_products"], res["generations_per_arm"]) == (1, 6)  # p00000 x 2 prompts x 3 seeds
    base, copy, tuned_arm = (res["arms"][k] for k in ("base", "same", "tuned"))
    assert "paired_vs_base" not in base
    # the base's own ControlNet from a folder: same items, seeds and layout, so the same images and verdicts
    assert copy["paired_vs_base"] == {"fixed": 0, "broken": 0, "diff": 0.0, "ci95": [0.0, 0.0]}
    assert copy["diversity"]["change_vs_base"] == {"within_prompt": 0.0, "between_prompts": 0.0}
    assert copy["oracle"] == base["oracle"] and copy["rfnet"] == base["rfnet"]
    # the fine-tuned one paints other images (its weights are the ones used)
    assert tuned_arm["diversity"]["within_prompt"] != base["diversity"]["within_prompt"]
    pv = tuned_arm["paired_vs_base"]
    assert pv["fixed"] - pv["broken"] == round(pv["diff"] * 6)

    # the stage: the rfft section's products, generator and judge, derived from the top of params.yaml
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"data": str(tmp_path / "d"), "generate": {"base_model": "m1", "steps": 3},
                                 "rfft": {"checkpoint": "j1"}, "rfft_eval": {"seeds": 4}}))
    ec = params.load("rfft_eval", rfft_eval.RFFTEvalConfig, p)
    assert (ec.rfft.products, ec.rfft.base_model, ec.rfft.steps, ec.rfft.checkpoint, ec.seeds) == (
        str(tmp_path / "d" / "products"), "m1", 3, "j1", 4)
    with pytest.raises(FileNotFoundError, match="run `rf1m rfft` first"):
        rfft_eval.run(replace(ec, controlnet=str(tmp_path / "none")))
    # run() writes the file: base and rfft arms, the training history as round 1, the kept step
    out = tmp_path / "eval.json"
    rfft_eval.run(rfft_eval.RFFTEvalConfig(rfft=cfg, controlnet=tuned, seeds=1, out=str(out), boot=10))
    written = json.loads(out.read_text())
    trained = json.loads((setup_dir / "whole" / "metrics" / "train.json").read_text())
    assert set(written["arms"]) == {"base", "rfft"} and written["generations_per_arm"] == 2
    assert written["rounds"] == [{"round": 1, "from_step": 0, "checkpoint": cfg.checkpoint,
                                  "history": trained["history"]}]
    assert written["arms"]["rfft"]["kept_step"] == trained["best"]["step"]
