"""Train the offline generator: a tiny SD + ControlNet inpainting pipeline that paints the scene presets.

A pipeline with random weights paints the same static for every prompt, so nothing downstream
(labels, RFNet, cyclic generation, RFFT) would mean anything. This stage trains one from scratch on
the procedural corpus of `pipelines.scenes`, on a 2-core CPU in about 15 minutes, with the sizes
measured in research/tiny_generator.md:

1. render `images` scenes, each with a synthetic product placed by the generate stage's own layout;
2. train the VAE (f=8, 4 latent channels) on random crops: L1 + an edge (image-gradient) L1, which
   keeps more texture than L1 alone, + a tiny KL; set `scaling_factor` from the measured latent std;
3. encode every image and its masked copy once, exactly as the inpainting pipeline does;
4. train the 9-channel inpainting UNet (noisy latent, mask, masked latent) on the frozen project text
   encoder and BPE tokenizer; `prompt_dropout` of the prompts become the negative prompt's embedding,
   so classifier-free guidance with that negative prompt has a baseline to push away from;
5. ControlNet: NOT trained (about 1.3 s a step here, so a few minutes buy ~150 steps). It is a copy of
   the UNet's encoder with in_channels=4 (the pipeline feeds it the 4-channel noisy latents, so
   `ControlNetModel.from_unet` on a 9-channel UNet cannot be used) and zero output convolutions: an
   exact no-op that RFFT can start from;
6. fine-tune the VAE decoder alone on full frames with a colour term (`finetune_decoder`): the crop-trained
   decoder washes colour out and draws a frame, and a frozen encoder keeps the UNet's latent space valid.
   A model saved without this step gets only this step on a re-run (no UNet retraining).

The result is saved in diffusers format, so `generate` loads it with `base_model: <out>` exactly as
it loads the random tiny model or a hub model. Fixed step counts, not a time budget, keep the weights
a function of the config and seed (at a given thread count); timings and loss curves go to `metrics`.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipelines.conditions import LayoutConfig, draw_layout, make_conditions
from pipelines.products import KINDS, ProductsConfig, synthetic_kind, synthetic_products
from pipelines.scenes import CORPUS_VERSION, NEGATIVE, PROMPTS, corpus_preset, render


@dataclass(frozen=True)
class GeneratorConfig:
    out: str = "models/scene-generator"
    metrics: str = "metrics/generator"  # train.json: timings, loss curves, latent std
    seed: int = 0
    size: int = 128
    images: int = 3000  # rendered training scenes, cycling through the prompt presets
    scale_range: tuple[float, float] = (0.60, 0.90)  # product layout, as params.yaml's generate.layout
    jitter: float = 0.10
    vae_channels: tuple[int, ...] = (8, 16, 32, 64)
    vae_steps: int = 1600  # the green-magenta colour axis appears only past ~1,000 steps (RESULTS)
    vae_batch: int = 16
    vae_crop: int = 64
    vae_lr: float = 2e-3
    # GroupNorm groups in the VAE. At 8 groups the decoder's last norm (8 channels) normalised every channel
    # on its own: an instance norm, which erases each image's mean colour, so every scene decoded to the
    # same browns and greys (held-out L1 0.21, saturation kept 0.34). One group keeps the channels' ratios.
    vae_groups: int = 1
    vae_edge: float = 0.5  # weight of the image-gradient L1
    decoder_steps: int = 300  # fine-tune of the VAE decoder alone at full size (0: none); see finetune_decoder
    decoder_batch: int = 8
    decoder_lr: float = 5e-4
    decoder_colour: float = 2.0  # weight of the colour term (local mean colour and saturation)
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_steps: int = 1200
    unet_batch: int = 32
    unet_lr: float = 1e-3
    warmup: int = 50
    prompt_dropout: float = 0.15
    min_snr: float = 5.0
    threads: int = 2


def corpus(cfg: GeneratorConfig) -> dict[str, np.ndarray]:
    """Rendered scenes with products standing in them, their inpainting masks, prompt indices and product kinds."""
    layout = LayoutConfig(size=cfg.size, scale_range=cfg.scale_range, jitter=cfg.jitter)
    prods = synthetic_products(ProductsConfig(count=cfg.images, seed=cfg.seed + 1, size=2 * cfg.size,
                                              truncated_every=0))
    presets, prompt = list(PROMPTS), np.array([corpus_preset(i, len(KINDS)) for i in range(cfg.images)])
    images = np.zeros((cfg.images, cfg.size, cfg.size, 3), np.uint8)
    masks = np.zeros((cfg.images, cfg.size, cfg.size), np.uint8)
    kinds = []
    for i, (_, _, _, rgba) in enumerate(tqdm(prods, total=cfg.images, desc="render scenes", unit="img")):
        rng = np.random.default_rng([cfg.seed, i])
        c = make_conditions(rgba, layout, draw_layout(layout, rng))
        images[i] = render(presets[prompt[i]], cfg.seed * 1_000_003 + i, cfg.size, c.product).image
        masks[i] = c.mask
        kinds.append(synthetic_kind(i))
    return {"images": images, "masks": masks, "prompt": prompt, "kind": np.array(kinds)}


def _to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def build_vae(cfg: GeneratorConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(block_out_channels=list(cfg.vae_channels), in_channels=3, out_channels=3,
                         latent_channels=4, layers_per_block=1, norm_num_groups=cfg.vae_groups, mid_block_add_attention=False,
                         down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                         sample_size=cfg.size)


def _schedule(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine down to a tenth."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * p)))


def _edges(x):
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def _step(opt, params, loss, lr: float) -> None:
    """One optimiser step at `lr`, gradients clipped to norm 1 (every training loop here)."""
    import torch

    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def _log(curve: list, window: list, step: int, loss: float, bar) -> None:
    """Append [last step, mean loss] every 10 steps (fewer in short runs): a curve that neither lags nor jitters."""
    window.append(loss)
    if len(window) == max(1, min(10, bar.total // 10)) or step == bar.total - 1:
        curve.append([step, round(float(np.mean(window)), 5)])
        bar.set_postfix(loss=f"{curve[-1][1]:.4f}")
        window.clear()


def train_vae(cfg: GeneratorConfig, images: np.ndarray, g) -> tuple[object, list]:
    import torch
    import torch.nn.functional as F

    vae = build_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    n, s, c = len(images), cfg.size, cfg.vae_crop
    curve, window = [], []
    bar = tqdm(range(cfg.vae_steps), desc="train VAE", unit="step")
    for step in bar:
        idx = torch.randint(0, n, (cfg.vae_batch,), generator=g).numpy()
        ox, oy = torch.randint(0, s - c + 1, (2,), generator=g).tolist()
        x = _to_tensor(images[idx, oy:oy + c, ox:ox + c])
        if torch.rand((), generator=g) < 0.5:
            x = x.flip(-1)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        loss = F.l1_loss(rec, x) + 1e-6 * post.kl().mean()
        for a, b in zip(_edges(rec), _edges(x)):
            loss = loss + cfg.vae_edge * F.l1_loss(a, b)
        _step(opt, vae.parameters(), loss, _schedule(step, cfg.vae_steps, cfg.vae_lr, cfg.warmup))
        _log(curve, window, step, loss.item(), bar)
    return vae.eval().requires_grad_(False), curve


def _colour_terms(rec, x, pool: int = 8):
    """L1 of the local mean colour (pool x pool blocks) and of its saturation (max - min of R, G, B).

    Plain L1 on noisy textures lets a small decoder hedge towards grey; these two terms only see the
    block colours, so they push back the hue and saturation the scene presets differ by.
    """
    import torch.nn.functional as F

    a, b = F.avg_pool2d(rec, pool), F.avg_pool2d(x, pool)
    sat = lambda t: t.amax(1) - t.amin(1)  # noqa: E731
    return F.l1_loss(a, b) + F.l1_loss(sat(a), sat(b))


def finetune_decoder(cfg: GeneratorConfig, vae, images: np.ndarray, lat: dict, g) -> list:
    """Fine-tune `post_quant_conv` and the decoder on full frames; the encoder and `quant_conv` stay fixed.

    The first VAE is trained on crops, so its decoder washes out colour, draws a frame at the full-size
    border (zero padding it never saw there) and fringes the edges. A frozen encoder keeps the latent
    space, and with it the UNet trained on it, valid: only how latents become pixels changes. Latents
    are sampled from the stored posteriors, as the UNet was trained to produce.
    Loss: L1 + `vae_edge` x image-gradient L1 + `decoder_colour` x `_colour_terms`.
    """
    import torch
    import torch.nn.functional as F

    params = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    curve, window = [], []
    bar = tqdm(range(cfg.decoder_steps), desc="fine-tune VAE decoder", unit="step")
    for step in bar:
        idx = torch.randint(0, len(images), (cfg.decoder_batch,), generator=g)
        z = lat["mean"][idx] + lat["std"][idx] * torch.randn(lat["mean"][idx].shape, generator=g)
        x = _to_tensor(images[idx.numpy()])
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + cfg.decoder_colour * _colour_terms(rec, x)
        for a, b in zip(_edges(rec), _edges(x)):
            loss = loss + cfg.vae_edge * F.l1_loss(a, b)
        _step(opt, params, loss, _schedule(step, cfg.decoder_steps, cfg.decoder_lr, min(cfg.warmup, cfg.decoder_steps // 10)))
        _log(curve, window, step, loss.item(), bar)
    vae.requires_grad_(False)
    return curve


def encode(vae, data: dict, batch: int = 64) -> dict:
    """Latents of every image and of its masked copy, and the latent-size mask, as the pipeline makes them.

    The pipeline zeroes the image where the mask is set (`image * (mask < 0.5)` on the [-1, 1] scale),
    encodes that, and shrinks the binarised mask to the latent grid with nearest interpolation.
    Means and standard deviations are kept so that training samples latents like the pipeline does.
    """
    import torch
    import torch.nn.functional as F

    out = {k: [] for k in ("mean", "std", "mmean", "mstd", "mask")}
    with torch.no_grad():
        for i in tqdm(range(0, len(data["images"]), batch), desc="encode", unit="batch"):
            x = _to_tensor(data["images"][i:i + batch])
            m = torch.from_numpy(data["masks"][i:i + batch]).float()[:, None] / 255
            m = (m >= 0.5).float()
            d, md = vae.encode(x).latent_dist, vae.encode(x * (m < 0.5)).latent_dist
            out["mean"].append(d.mean)
            out["std"].append(d.std)
            out["mmean"].append(md.mean)
            out["mstd"].append(md.std)
            out["mask"].append(F.interpolate(m, size=d.mean.shape[-2:]))
    return {k: torch.cat(v) for k, v in out.items()}


def build_unet(cfg: GeneratorConfig):
    """The 9-channel inpainting UNet; no attention at the top (16x16) level, where it costs ~40% of a step."""
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    return UNet2DConditionModel(
        block_out_channels=cfg.unet_channels, layers_per_block=1, sample_size=cfg.size // 8, in_channels=9,
        out_channels=4, down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8)


def train_unet(cfg: GeneratorConfig, lat: dict, prompt_idx: np.ndarray, emb, neg, scaling: float, g):
    """Epsilon-prediction with min-SNR weighting; a prompt is replaced by the negative prompt's embedding
    with probability `prompt_dropout`."""
    import torch
    from diffusers import DDPMScheduler

    unet = build_unet(cfg)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000)
    ac = sched.alphas_cumprod
    snr = ac / (1 - ac)
    weight = torch.clamp(snr, max=cfg.min_snr) / snr
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.01)
    prompts = torch.from_numpy(prompt_idx)
    n, curve, window = len(prompts), [], []
    bar = tqdm(range(cfg.unet_steps), desc="train UNet", unit="step")
    for step in bar:
        idx = torch.randint(0, n, (cfg.unet_batch,), generator=g)
        x0 = (lat["mean"][idx] + lat["std"][idx] * torch.randn(lat["mean"][idx].shape, generator=g)) * scaling
        masked = (lat["mmean"][idx] + lat["mstd"][idx] * torch.randn(x0.shape, generator=g)) * scaling
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (len(idx),), generator=g)
        drop = torch.rand(len(idx), generator=g) < cfg.prompt_dropout
        cond = torch.where(drop[:, None, None], neg[None], emb[prompts[idx]])
        inp = torch.cat([sched.add_noise(x0, noise, t), lat["mask"][idx], masked], dim=1)
        pred = unet(inp, t, encoder_hidden_states=cond).sample
        loss = (weight[t] * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        _step(opt, unet.parameters(), loss, _schedule(step, cfg.unet_steps, cfg.unet_lr, cfg.warmup))
        _log(curve, window, step, loss.item(), bar)
    return unet.eval().requires_grad_(False), curve


def zero_controlnet(unet, cfg: GeneratorConfig):
    """A ControlNet whose encoder copies the UNet's and whose outputs are zero: adds exactly nothing."""
    import torch
    from diffusers import ControlNetModel

    cn = ControlNetModel(
        in_channels=4, conditioning_channels=3, block_out_channels=cfg.unet_channels, layers_per_block=1,
        down_block_types=unet.config.down_block_types, cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=8, conditioning_embedding_out_channels=(16, 32, 64, 128))
    src, dst = unet.state_dict(), cn.state_dict()
    with torch.no_grad():
        for k, v in dst.items():
            if k == "conv_in.weight":
                v.copy_(src[k][:, :4])
            elif k in src and src[k].shape == v.shape:
                v.copy_(src[k])
    return cn


def _prompt_embeddings(pipe):
    import torch

    with torch.no_grad():
        emb, neg = pipe.encode_prompt(list(PROMPTS.values()), "cpu", 1, True, [NEGATIVE] * len(PROMPTS))
    return emb, neg[0]


def reconstruction_stats(vae, images: np.ndarray) -> dict:
    """decode(encode(x)) against x at full size (posterior means): mean |error| on the [-1, 1] scale, and
    the saturation kept: mean (max - min of R, G, B) of the reconstruction / that of the images."""
    import torch

    with torch.no_grad():
        x = _to_tensor(images)
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    sat = lambda t: float((t.amax(1) - t.amin(1)).mean())  # noqa: E731
    return {"l1": round(float((rec - x).abs().mean()), 4), "saturation_ratio": round(sat(rec) / sat(x), 3)}


DECODER_KNOBS = ("decoder_steps", "decoder_batch", "decoder_lr", "decoder_colour")


def _settings(stamp: dict, decoder: bool = True) -> dict:
    """What the weights depend on, not where they are written (older stamps also hold `out` and `metrics`);
    without the decoder fine-tune's knobs unless `decoder`."""
    skip = {"out", "metrics"} | (set() if decoder else set(DECODER_KNOBS))
    return {k: v for k, v in stamp.items() if k not in skip}


def _reload_vae(cfg: GeneratorConfig, out: Path, tmp: Path, data: dict, times: dict):
    """Copy the saved model to `tmp` and load its VAE and the latents of `data`, for a decoder-only update."""
    from safetensors.torch import load_file

    shutil.copytree(out, tmp)
    vae = build_vae(cfg).requires_grad_(False)  # not from_pretrained: its config would record the path
    vae.load_state_dict(load_file(tmp / "vae" / "diffusion_pytorch_model.safetensors"))
    vae.register_to_config(scaling_factor=json.loads((tmp / "vae" / "config.json").read_text())["scaling_factor"])
    t = time.perf_counter()
    lat = encode(vae, data)
    times["encode_s"] = time.perf_counter() - t
    metrics = Path(cfg.metrics) / "train.json"  # keep the VAE and UNet curves of the run that made them
    report = {**(json.loads(metrics.read_text()) if metrics.exists() else {}), "trained_now": True,
              "decoder_only": True, "latent_std": round(1 / vae.config.scaling_factor, 4)}
    return vae, lat, report


def _train_base(cfg: GeneratorConfig, tmp: Path, data: dict, g, times: dict):
    """Train the VAE and the UNet, add the no-op ControlNet and save the pipeline to `tmp`."""
    from diffusers import StableDiffusionControlNetInpaintPipeline

    from pipelines.models import build_tiny, load_pipeline

    with tempfile.TemporaryDirectory() as tiny:  # the project's tokenizer, text encoder and scheduler
        base = load_pipeline(str(build_tiny(Path(tiny) / "tiny", seed=cfg.seed, size=cfg.size)), device="cpu")
    t = time.perf_counter()
    vae, vae_curve = train_vae(cfg, data["images"], g)
    times["vae_s"] = time.perf_counter() - t
    t = time.perf_counter()
    lat = encode(vae, data)
    std = float(lat["mean"].std())
    vae.register_to_config(scaling_factor=1.0 / std)
    times["encode_s"] = time.perf_counter() - t
    emb, neg = _prompt_embeddings(base)
    t = time.perf_counter()
    unet, unet_curve = train_unet(cfg, lat, data["prompt"], emb, neg, 1.0 / std, g)
    times["unet_s"] = time.perf_counter() - t
    pipe = StableDiffusionControlNetInpaintPipeline(
        unet=unet, controlnet=zero_controlnet(unet, cfg), vae=vae, scheduler=base.scheduler,
        text_encoder=base.text_encoder, tokenizer=base.tokenizer, safety_checker=None, feature_extractor=None,
        image_encoder=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp, safe_serialization=True)
    return vae, lat, {"trained_now": True, "latent_std": round(std, 4), "vae_loss": vae_curve, "unet_loss": unet_curve}


def run(cfg: GeneratorConfig) -> dict:
    import torch

    out = Path(cfg.out)
    stamp = _settings(json.loads(json.dumps({**asdict(cfg), "corpus": CORPUS_VERSION})))
    stamp_file = out / "generator_config.json"
    saved = json.loads(stamp_file.read_text()) if stamp_file.exists() else None
    if saved is not None and _settings(saved) == stamp:
        print(f"{out} is already trained with this config: reusing it")
        return {"out": str(out), "trained_now": False}
    # A model trained with the same settings but no decoder fine-tune yet needs only that fine-tune: the UNet
    # (36 min on a loaded 2-core machine) is kept, and the weights equal a full run's (same seed, threads).
    decoder_only = saved is not None and _settings(saved, False) == _settings(stamp, False) \
        and not saved.get("decoder_steps", 0) and cfg.decoder_steps > 0
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    g = torch.Generator().manual_seed(cfg.seed)
    times, t0 = {}, time.perf_counter()
    data = corpus(cfg)
    times["render_s"] = time.perf_counter() - t0
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if decoder_only:
        print(f"{out}: same UNet settings, no decoder fine-tune yet: fine-tuning only the VAE decoder")
        vae, lat, report = _reload_vae(cfg, out, tmp, data, times)
    else:
        vae, lat, report = _train_base(cfg, tmp, data, g, times)
    report["out"] = str(out)
    # Held-out renders (another seed), to measure what the decoder fine-tune changes.
    held = corpus(replace(cfg, images=64, seed=cfg.seed + 1000))["images"]
    report["vae_heldout"] = reconstruction_stats(vae, held)
    if cfg.decoder_steps > 0:
        t = time.perf_counter()
        report["decoder_loss"] = finetune_decoder(cfg, vae, data["images"], lat,
                                                  torch.Generator().manual_seed(cfg.seed + 1))
        times["decoder_s"] = time.perf_counter() - t
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        report["vae_heldout_finetuned"] = reconstruction_stats(vae, held)
    (tmp / "generator_config.json").write_text(json.dumps(stamp, sort_keys=True))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    times["total_s"] = time.perf_counter() - t0
    report.update(seconds={**report.get("seconds", {}), **{k: round(v, 1) for k, v in times.items()}},
                  threads=cfg.threads)
    Path(cfg.metrics).mkdir(parents=True, exist_ok=True)
    (Path(cfg.metrics) / "train.json").write_text(json.dumps(report, indent=1))
    return report
