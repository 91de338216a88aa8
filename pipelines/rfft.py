"""RFFT: fine-tune the ControlNet with RFNet's gradient (the paper's Reliable Feedback Fine-Tuning).

Only the ControlNet trains; the UNet, VAE, text encoder and RFNet are frozen (requires_grad off,
checked at start). One step, per micro-batch of training products x prompts:
  1. a no-grad DDIM rollout (T steps, CFG, the inpainting inputs the diffusers pipeline builds) with
     the current ControlNet, down to a stop step drawn among the last `stop_last`;
  2. at the stop step one CFG evaluation with gradient; the predicted clean latent x0 is decoded by
     the VAE, the product pasted back, depth (the tiny depth net) and saliency (a torch.fft copy of
     `aux_maps.spectral_residual`) computed differentiably from it, and RFNet's cross-entropy toward
     `available` (F_AC) back-propagated;
  3. plus a regulariser against a frozen copy of the starting ControlNet at the same step:
       cc    L_CC = mean(((eps_c - eps_u) - (ref_c - ref_u))^2): the paper's, on the text-guidance
             direction only (a change added to both branches is free: research/rfft_feasibility.md)
       kl    mean((eps_c - ref_c)^2 + (eps_u - ref_u)^2): the KL between the two models' Gaussian
             DDIM transitions up to a constant factor, on both branches (the KL-style baseline)
       none  no constraint (ReFL-like)
     and an optional anchor: `uncond` mean((eps_u - ref_u)^2), or `output` on the guided noise
     prediction (what x0 is made from); total = F_AC + beta * reg + anchor_weight * anchor.
Validation is on held-out products labelled by the oracle (the panel's noise-free rules,
`annotation.panel.judge`), never on the judge's own score: the judge is what is being fooled.
Every evaluation records the oracle's and RFNet's available rates and their agreement (its fall is
the sign that reward hacking has started); the best oracle rate is kept as `<out>/controlnet`
(diffusers format: `generate.controlnet_model: <out>/controlnet`), and training stops after
`patience` evaluations without a gain.
Randomness is a function of (seed, step): the batch drawn, the noise and the stop step. A resumed run
(`<out>/last`: ControlNet, optimizer, step, history) therefore repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipelines.aux_maps import AuxConfig, AuxMaps
from pipelines.conditions import LayoutConfig, draw_layout, make_conditions, paste_back
from pipelines.generate import DEFAULT_PROMPTS, Prompt
from pipelines.products import read_products
from rf1m.atomic import fsync_path, write_json
from rf1m.quarantine import Rejected

REGULARISERS = ("cc", "kl", "none")
# Settings a resumed run may change: where and how fast it runs, and how long it goes on.
OPERATIONAL = ("out", "metrics", "device", "threads", "max_steps", "patience", "eval_every", "save_every",
               "gradient_checkpointing")
# A new judge starts a new round of the loop (relabel, retrain RFNet, continue from the checkpoint).
ROUND = ("checkpoint",)
ANCHORS = ("none", "uncond", "output")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RFFTConfig:
    base_model: str = "models/scene-generator"
    controlnet_model: str | None = None  # the ControlNet to start from (default: the base folder's)
    products: str = "data/products"
    checkpoint: str = "models/rfnet/best"  # the judge (frozen)
    out: str = "models/rfft"  # <out>/controlnet: the best by validation oracle rate; <out>/last: resume
    metrics: str = "metrics/rfft"  # <metrics>/train.json: the history of every evaluation
    device: str = "auto"
    steps: int = 8  # DDIM steps T
    stop_last: int = 3  # the gradient step is drawn among the last `stop_last` steps
    guidance: float = 7.5
    controlnet_scale: float = 0.5
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    aux: AuxConfig = field(default_factory=AuxConfig)
    prompts: tuple[Prompt, ...] = DEFAULT_PROMPTS
    regulariser: str = "cc"
    beta: float = 100.0
    anchor: str = "none"
    anchor_weight: float = 0.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    clip: float = 1.0
    batch_size: int = 8  # samples per micro-batch
    accumulate: int = 1  # micro-batches per optimizer step
    max_steps: int = 200  # optimizer steps
    eval_every: int = 25
    patience: int = 3  # evaluations without a better validation oracle rate before stopping
    save_every: int = 25  # resume checkpoint (<out>/last)
    val_seeds: int = 2  # validation: every val product x prompt x this many seeds
    split_salt: str = "rfft"  # products are split train/val/test (60/20/20) by a hash of id and salt
    gradient_checkpointing: bool = False
    bf16: bool = True  # autocast to bfloat16 on CUDA only; CPU runs fp32
    seed: int = 0
    threads: int = 2

    def __post_init__(self):
        if self.regulariser not in REGULARISERS:
            raise ValueError(f"rfft regulariser {self.regulariser!r}: choose from {REGULARISERS}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"rfft anchor {self.anchor!r}: choose from {ANCHORS}")
        if not 1 <= self.stop_last <= self.steps:
            raise ValueError("rfft stop_last must be between 1 and steps")
        if min(self.batch_size, self.accumulate, self.eval_every, self.save_every) < 1:
            raise ValueError("rfft batch_size, accumulate, eval_every and save_every must be >= 1")


def split_of(product_id: str, salt: str = "rfft") -> str:
    """train (60%), val (20%) or test (20%): fixed per product, so evaluation products stay unseen."""
    h = int.from_bytes(hashlib.sha256(f"{salt}/{product_id}".encode()).digest()[:4], "little") % 10
    return SPLITS[0] if h < 6 else SPLITS[1] if h < 8 else SPLITS[2]


# ---------------------------------------------------------------- differentiable aux maps

def _reflect_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """OpenCV's default border (BORDER_REFLECT_101) is torch's "reflect"."""
    return F.pad(x, (p, p, p, p), mode="reflect")


def _gauss_kernel(sigma: float) -> torch.Tensor:
    k = int(round(sigma * 4 * 2 + 1)) | 1  # cv2.GaussianBlur's size for a float image and ksize (0, 0)
    x = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).float()


def spectral_residual_torch(rgb: torch.Tensor, work: int = 64) -> torch.Tensor:
    """`aux_maps.spectral_residual` in torch: N,3,H,W in [0,1] -> N,H,W in [0,1], differentiable.

    The uint8 rounding of the stored map is left out (it has no gradient); tests/test_rfft.py checks
    the two agree within a few grey levels."""
    w = torch.tensor([0.299, 0.587, 0.114], device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    gray = (rgb * 255 * w).sum(1, keepdim=True)
    gray = F.interpolate(gray, size=(work, work), mode="area")[:, 0].float()
    spec = torch.fft.fft2(gray)
    amp = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-12)
    log_amp = torch.log1p(amp)
    residual = log_amp - F.avg_pool2d(_reflect_pad(log_amp[:, None], 1), 3, stride=1)[:, 0]
    sal = torch.fft.ifft2(torch.exp(residual) * spec / amp)
    sal = (sal.real ** 2 + sal.imag ** 2)[:, None]
    g = _gauss_kernel(3.0).to(sal.device)
    p = len(g) // 2
    sal = F.conv2d(_reflect_pad(sal, p), g.view(1, 1, 1, -1))
    sal = F.conv2d(sal, g.view(1, 1, -1, 1))
    sal = F.interpolate(sal, size=rgb.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo = sal.amin(dim=(1, 2), keepdim=True)
    hi = sal.amax(dim=(1, 2), keepdim=True)
    return (sal - lo) / (hi - lo).clamp_min(1e-12)


def depth_torch(net, rgb: torch.Tensor) -> torch.Tensor:
    """`depthnet.predict` in torch: N,3,H,W in [0,1] -> N,H,W in [0,1], differentiable."""
    x = F.interpolate(rgb, size=(net.cfg.size, net.cfg.size), mode="area") * 2 - 1
    d = net(x).clamp(0, 1)[:, None]
    return F.interpolate(d, size=rgb.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


# ---------------------------------------------------------------- the generator, frozen but its ControlNet

def _embed_condition_once(controlnet) -> None:
    """The Canny map's embedding (full-resolution convolutions, most of a ControlNet call at 128 px)
    depends on neither the step nor the prompt: under no_grad it is computed once per condition
    tensor (`inputs()` makes a new one per batch, so it never outlives the weights that made it);
    with a gradient it is always recomputed, since it trains."""
    emb = controlnet.controlnet_cond_embedding
    plain, memo = emb.forward, {}

    def forward(cond):
        if torch.is_grad_enabled():
            return plain(cond)
        if memo.get("in") is not cond:
            memo.update({"in": cond, "out": plain(cond)})
        return memo["out"]

    emb.forward = forward


class Generator:
    """The inpainting pipeline's parts and its DDIM loop, written out so one step can carry a gradient.

    Inputs follow StableDiffusionControlNetInpaintPipeline: 9-channel UNet input (latents, mask at
    latent size, VAE latents of the masked init image), the Canny map in [0, 1] for the ControlNet,
    CFG over [negative, prompt]. Differences: the masked image's latents are the VAE posterior's
    mean, not a sample (deterministic; the pipeline's draw is within its noise)."""

    def __init__(self, cfg: RFFTConfig, device: str):
        from diffusers import DDIMScheduler

        from pipelines.models import load_pipeline

        pipe = load_pipeline(cfg.base_model, cfg.controlnet_model, device="cpu")  # fp32 master weights
        self.cfg, self.device = cfg, device
        self.vae, self.unet, self.text_encoder = pipe.vae.to(device), pipe.unet.to(device), pipe.text_encoder.to(device)
        self.controlnet = pipe.controlnet.to(device)
        self.reference = copy.deepcopy(self.controlnet)
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.scheduler.set_timesteps(cfg.steps)
        self.pipe = pipe
        for m in (self.vae, self.unet, self.text_encoder, self.reference):
            m.requires_grad_(False).eval()
        self.controlnet.requires_grad_(True).train()
        for net in (self.controlnet, self.reference):
            _embed_condition_once(net)
        if cfg.gradient_checkpointing:
            self.controlnet.enable_gradient_checkpointing()
            self.unet.enable_gradient_checkpointing()
        self._embeds: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def autocast(self):
        on = self.device.startswith("cuda") and self.cfg.bf16
        return torch.autocast("cuda" if on else "cpu", dtype=torch.bfloat16, enabled=on)

    @torch.no_grad()
    def embeds(self, prompts: list[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        for p in prompts:
            if (p.prompt, p.negative) not in self._embeds:
                c, u = self.pipe.encode_prompt(p.prompt, self.device, 1, True, p.negative)
                self._embeds[p.prompt, p.negative] = (c[0], u[0])
        return (torch.stack([self._embeds[p.prompt, p.negative][0] for p in prompts]),
                torch.stack([self._embeds[p.prompt, p.negative][1] for p in prompts]))

    @torch.no_grad()
    def inputs(self, conds, prompts: list[Prompt]) -> dict:
        dev = self.device
        init = torch.from_numpy(np.stack([np.asarray(c.init_image()) for c in conds])).permute(0, 3, 1, 2)
        init = init.float().to(dev) / 127.5 - 1
        mask = (torch.from_numpy(np.stack([c.mask for c in conds])).float().to(dev)[:, None] / 255 >= 0.5).float()
        masked = self.vae.encode(init * (mask < 0.5)).latent_dist.mode() * self.vae.config.scaling_factor
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        size = conds[0].mask.shape[0]
        product = torch.from_numpy(np.stack([c.product for c in conds])).permute(0, 3, 1, 2).float().to(dev) / 255
        cond, uncond = self.embeds(prompts)
        return {"mask": F.interpolate(mask, size=(size // f, size // f)), "masked": masked,
                "control": torch.from_numpy(np.stack([c.canny for c in conds])).float().to(dev)[:, None]
                .repeat(2, 3, 1, 1) / 255, "cond": cond, "uncond": uncond,
                "product": product, "latent_shape": (len(conds), 4, size // f, size // f)}

    def eps(self, controlnet, x: torch.Tensor, t, inp: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(unconditional, conditional) noise predictions, one batched call as the pipeline makes it."""
        x2 = torch.cat([x, x])
        emb = torch.cat([inp["uncond"], inp["cond"]])
        with self.autocast():
            down, mid = controlnet(x2, t, encoder_hidden_states=emb, controlnet_cond=inp["control"],  # both halves
                                   conditioning_scale=self.cfg.controlnet_scale, return_dict=False)
            full = torch.cat([x2, torch.cat([inp["mask"]] * 2), torch.cat([inp["masked"]] * 2)], dim=1)
            out = self.unet(full, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                            mid_block_additional_residual=mid, return_dict=False)[0]
        u, c = out.float().chunk(2)
        return u, c

    def guided(self, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return u + self.cfg.guidance * (c - u)

    def noise(self, inp: dict, seeds: list[int]) -> torch.Tensor:
        """Initial latents, one generator per sample: a sample's noise does not depend on its batch."""
        shape = inp["latent_shape"][1:]
        x = torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])
        return x.to(self.device) * self.scheduler.init_noise_sigma

    @torch.no_grad()
    def rollout(self, inp: dict, seeds: list[int], stop: int) -> torch.Tensor:
        """Latents after the first `stop` DDIM steps with the current ControlNet (stop = T: the sample)."""
        x = self.noise(inp, seeds)
        for t in self.scheduler.timesteps[:stop]:
            x = self.scheduler.step(self.guided(*self.eps(self.controlnet, x, t, inp)), t, x, eta=0.0).prev_sample
        return x

    def x0(self, x: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        a = self.scheduler.alphas_cumprod[int(t)].to(x.device)
        return (x - (1 - a).sqrt() * eps) / a.sqrt()

    def decode(self, latents: torch.Tensor, product: torch.Tensor) -> torch.Tensor:
        """Latents -> N,3,H,W in [0,1], the product pasted back by its alpha."""
        with self.autocast():
            img = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        img = (img.float() / 2 + 0.5).clamp(0, 1)
        a = product[:, 3:4]
        return product[:, :3] * a + img * (1 - a)

    @torch.no_grad()
    def sample(self, conds, prompts: list[Prompt], seeds: list[int]) -> list[np.ndarray]:
        """Finished uint8 images (product pasted back exactly), one seed per sample."""
        inp = self.inputs(conds, prompts)
        x = self.rollout(inp, seeds, self.cfg.steps)
        with self.autocast():
            img = self.vae.decode(x / self.vae.config.scaling_factor, return_dict=False)[0]
        img = ((img.float() / 2 + 0.5).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return [paste_back(i, c.product) for i, c in zip(img, conds)]


# ---------------------------------------------------------------- the judge, differentiable

class Reward:
    """RFNet's log p(available) for images that carry a gradient. Its parameters are frozen; its
    backbones are run with autograd on (RFNet runs a frozen backbone under no_grad, which would cut
    the gradient to the image): a config flag on this loaded copy, not a change to RFNet."""

    def __init__(self, model, aux: AuxConfig, device: str):
        from rfnet.backbones import IMAGENET_MEAN, IMAGENET_STD

        self.model = model.to(device).eval().requires_grad_(False)
        self.model.cfg = replace(model.cfg, freeze_backbones=False)
        self.size, self.aux, self.device = model.cfg.image_size, aux, device
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.depth_net = None
        if aux.depth.startswith("depthnet:"):
            from pipelines.depthnet import TinyDepth

            self.depth_net = TinyDepth.from_pretrained(aux.depth.removeprefix("depthnet:")).to(device).requires_grad_(False)
        self.maps = None if self.depth_net is not None and aux.saliency == "spectral_residual" else AuxMaps(aux)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def log_p_available(self, image: torch.Tensor, originals: torch.Tensor, products: list[np.ndarray],
                        titles: list[str]) -> torch.Tensor:
        """image: N,3,H,W in [0,1] (product pasted); originals: RFNet's product input, already normalised.
        Maps the torch path cannot make (u2net, dpt, frequency_tuned) come from the detached image: the
        gradient then flows through the generated image alone (layout_prior has none to give)."""
        depth = saliency = None
        if self.maps is not None:
            u8 = (image.detach() * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            d, s = self.maps(list(u8), products)
            depth = torch.from_numpy(np.stack(d)).float().to(self.device)[:, None] / 255
            saliency = torch.from_numpy(np.stack(s)).float().to(self.device)[:, None] / 255
        if self.depth_net is not None:
            depth = depth_torch(self.depth_net, image)[:, None]
        if self.aux.saliency == "spectral_residual":
            saliency = spectral_residual_torch(image)[:, None]
        images = {"product": originals, "image": self._norm(image), "depth": self._norm(depth),
                  "saliency": self._norm(saliency)}
        logits = self.model(images, self.model.tokenize(titles))
        return torch.log_softmax(logits.float(), dim=1)[:, 0]


# ---------------------------------------------------------------- data

def _products(cfg: RFFTConfig) -> dict[str, list[dict]]:
    from PIL import Image

    rows = read_products(cfg.products)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for p in rows:
        p = {**p, "pixels": np.asarray(Image.open(Path(cfg.products) / p["image"]).convert("RGBA"))}
        out[split_of(p["product_id"], cfg.split_salt)].append(p)
    if not out["train"] or not out["val"]:
        raise ValueError(f"rfft needs train and val products; {cfg.products} splits into "
                         f"{ {k: len(v) for k, v in out.items()} } (add products or change split_salt)")
    return out


def _draw(cfg: RFFTConfig, products: list[dict], rng: np.random.Generator, n: int) -> list[tuple]:
    """n (product, prompt, seed, conditions) drawn for one micro-batch; a product that cannot be placed is skipped."""
    out = []
    for _ in range(100 * n):
        if len(out) == n:
            return out
        p = products[int(rng.integers(len(products)))]
        prompt = cfg.prompts[int(rng.integers(len(cfg.prompts)))]
        seed = int(rng.integers(2 ** 31))
        try:
            c = make_conditions(p["pixels"], cfg.layout, draw_layout(cfg.layout, np.random.default_rng(seed)))
        except Rejected:  # a product that cannot be placed (generate quarantines it): draw another
            continue
        out.append((p, prompt, seed, c))
    if len(out) < n:
        raise ValueError(f"rfft: only {len(out)} of {100 * n} draws gave a placeable product")
    return out


def originals_tensor(items: list[tuple], size: int, device: str) -> torch.Tensor:
    """RFNet's product input, exactly as the shards feed it (rfnet.data.to_tensor of product_original)."""
    from PIL import Image

    from pipelines.worker import fit_original
    from rfnet.data import to_tensor

    return torch.stack([to_tensor(Image.fromarray(fit_original(p["pixels"], size), "RGBA"), size)
                        for p, *_ in items]).to(device)


# ---------------------------------------------------------------- evaluation

def oracle_features(image: np.ndarray, product: np.ndarray, info: dict, prompt_id: str) -> dict:
    """What the oracle judges: the panel's measurements of the image plus what the rules read from the recipe;
    `info`: the product row (truncated, title, category); `prompt_id`: the preset whose scene the clutter rule
    compares with."""
    from annotation import panel

    return {**panel.features(image, product), "truncated": bool(info["truncated"]), "title": info["title"],
            "category": info["category"], "prompt_id": prompt_id}


def oracle(image: np.ndarray, product: np.ndarray, info: dict, prompt_id: str) -> str:
    """The panel's rules without noise (annotation.panel), standing in for people."""
    from annotation import panel

    return panel.judge(oracle_features(image, product, info, prompt_id), panel.Rules())[0]


def judged(gen: Generator, judge, items: list[tuple]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Sample fixed (product, prompt, seed, conditions) items; (images, oracle available, RFNet available,
    RFNet's p(available))."""
    from pipelines.worker import fit_original
    from rfnet.evaluate import decisions

    images, verdicts, decided, p_avail = [], [], [], []
    for i in range(0, len(items), gen.cfg.batch_size):
        chunk = items[i: i + gen.cfg.batch_size]
        imgs = gen.sample([c for *_, c in chunk], [pr for _, pr, _, _ in chunk], [s for _, _, s, _ in chunk])
        verdicts += [oracle(im, c.product, p, pr.id) for im, (p, pr, _, c) in zip(imgs, chunk)]
        depth, sal = judge.maps(imgs, [c.product for *_, c in chunk])
        probs = judge(imgs, [fit_original(p["pixels"], gen.cfg.layout.size) for p, *_ in chunk], depth, sal,
                      [p["title"] for p, *_ in chunk])
        decided += [d["verdict"] for d in decisions(probs, judge.threshold)]
        p_avail += list(probs[:, 0])
        images += imgs
    return (images, np.array([v == "available" for v in verdicts]), np.array([v == "available" for v in decided]),
            np.array(p_avail, dtype=float))


def evaluate(gen: Generator, judge, items: list[tuple]) -> dict:
    """Oracle and RFNet available rates, their agreement at the judge's threshold, and how well RFNet's
    p(available) ranks the oracle's verdicts (AP: threshold-free, so it stays informative where a strict
    threshold makes the judge say `not available` to nearly everything)."""
    from rfnet.evaluate import average_precision

    _, o, r, p = judged(gen, judge, items)
    return {"n": len(o), "oracle_rate": float(o.mean()), "rfnet_rate": float(r.mean()),
            "judge_oracle_agreement": float((o == r).mean()), "judge_oracle_ap": average_precision(o, p) if o.any() else None}


def fixed_items(cfg: RFFTConfig, products: list[dict], seeds: int) -> list[tuple]:
    """Every product x prompt x seed, with the seeds and layout `generate` gives them (paired comparisons)."""
    from pipelines.generate import layout_seed, sample_seed

    out = []
    for p in products:
        lay = draw_layout(cfg.layout, np.random.default_rng(layout_seed(cfg.seed, p["product_id"])))
        try:
            c = make_conditions(p["pixels"], cfg.layout, lay)
        except Rejected:
            continue
        out += [(p, prompt, sample_seed(cfg.seed, p["product_id"], prompt.id, k), c)
                for prompt in cfg.prompts for k in range(seeds)]
    return out


# ---------------------------------------------------------------- checkpoints

def _commit_dir(tmp: Path, final: Path) -> None:
    """Replace a folder so that a killed save leaves the old one or the new one (as rfnet.checkpoint)."""
    for f in tmp.rglob("*"):
        if f.is_file():
            fsync_path(f)
    aside = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(tmp, final)
    fsync_path(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _locate(final: Path) -> Path | None:
    for p in (final, final.with_name(final.name + ".old")):
        if (p / "state.json").exists():
            return p
    return None


def save_controlnet(controlnet, final: Path) -> Path:
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    controlnet.save_pretrained(tmp, safe_serialization=True)
    _commit_dir(tmp, final)
    return final


def save_state(final: Path, controlnet, optimizer, state: dict) -> None:
    """ControlNet (diffusers format), optimizer (safetensors + JSON, never pickle) and the step."""
    from safetensors.torch import save_file

    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    controlnet.save_pretrained(tmp / "controlnet", safe_serialization=True)
    sd = optimizer.state_dict()
    save_file({f"{pid}.{k}": v.contiguous().cpu() for pid, st in sd["state"].items() for k, v in st.items()
               if torch.is_tensor(v)}, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "param_groups": sd["param_groups"]}, indent=1))
    _commit_dir(tmp, final)


def load_state(final: Path, controlnet, optimizer) -> dict | None:
    from diffusers import ControlNetModel
    from safetensors.torch import load_file

    where = _locate(final)
    if where is None:
        return None
    saved = ControlNetModel.from_pretrained(where / "controlnet")
    controlnet.load_state_dict(saved.state_dict())
    state = json.loads((where / "state.json").read_text())
    opt: dict = {}
    for k, v in load_file(str(where / "optimizer.safetensors")).items():
        pid, name = k.split(".", 1)
        opt.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": opt, "param_groups": state.pop("param_groups")})
    return state


# ---------------------------------------------------------------- training

def losses(gen: Generator, reward: Reward, items: list[tuple], originals: torch.Tensor,
           stop: int) -> dict[str, torch.Tensor]:
    """F_AC and every regulariser for one micro-batch, the gradient through step `stop` only."""
    conds = [c for *_, c in items]
    inp = gen.inputs(conds, [pr for _, pr, _, _ in items])
    x = gen.rollout(inp, [s for _, _, s, _ in items], stop)
    t = gen.scheduler.timesteps[stop]
    u, c = gen.eps(gen.controlnet, x, t, inp)
    with torch.no_grad():
        ru, rc = gen.eps(gen.reference, x, t, inp)
    eps = gen.guided(u, c)
    image = gen.decode(gen.x0(x, t, eps), inp["product"])
    logp = reward.log_p_available(image, originals, [c.product for c in conds], [p["title"] for p, *_ in items])
    return {"f_ac": -logp.mean(), "p_available": logp.detach().exp().mean(),
            "cc": ((c - u) - (rc - ru)).pow(2).mean(), "kl": ((c - rc).pow(2) + (u - ru).pow(2)).mean(),
            "uncond": (u - ru).pow(2).mean(), "output": (eps - gen.guided(ru, rc)).pow(2).mean()}


def total(cfg: RFFTConfig, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    loss = terms["f_ac"]
    if cfg.regulariser != "none":
        loss = loss + cfg.beta * terms[cfg.regulariser]
    if cfg.anchor != "none":
        loss = loss + cfg.anchor_weight * terms[cfg.anchor]
    return loss


def frozen_modules(gen: Generator, reward: Reward) -> dict[str, torch.nn.Module]:
    return {"unet": gen.unet, "vae": gen.vae, "text_encoder": gen.text_encoder, "reference": gen.reference,
            "rfnet": reward.model, **({"depth_net": reward.depth_net} if reward.depth_net is not None else {})}


def train_step(cfg: RFFTConfig, gen: Generator, reward: Reward, optimizer, products: list[dict],
               step: int) -> dict[str, float]:
    """One optimizer step over `accumulate` micro-batches, all drawn from (seed, step, micro)."""
    trainable = [p for p in gen.controlnet.parameters() if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    log: dict[str, float] = {}
    for micro in range(cfg.accumulate):
        rng = np.random.default_rng([cfg.seed, step, micro])
        items = _draw(cfg, products, rng, cfg.batch_size)
        stop = cfg.steps - 1 - int(rng.integers(cfg.stop_last))
        terms = losses(gen, reward, items, originals_tensor(items, reward.size, gen.device), stop)
        (total(cfg, terms) / cfg.accumulate).backward()
        for k, v in terms.items():
            log[k] = log.get(k, 0.0) + float(v.detach()) / cfg.accumulate
    torch.nn.utils.clip_grad_norm_(trainable, cfg.clip)
    optimizer.step()
    return log


def setup(cfg: RFFTConfig):
    """(generator, reward, judge, optimizer, products by split), every frozen part checked frozen."""
    from pipelines.cyclic import RFNetJudge
    from pipelines.models import pick_device

    device = pick_device(cfg.device)
    data = _products(cfg)
    gen = Generator(cfg, device)
    judge = RFNetJudge(cfg.checkpoint, cfg.aux, device)
    reward = Reward(judge.model, cfg.aux, device)
    for name, m in frozen_modules(gen, reward).items():
        if any(p.requires_grad for p in m.parameters()):
            raise RuntimeError(f"rfft: {name} must be frozen")
    optimizer = torch.optim.AdamW([p for p in gen.controlnet.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    return gen, reward, judge, optimizer, data


def run(cfg: RFFTConfig, on_step=None) -> dict:
    """Train, evaluate and keep the best ControlNet. `on_step(step)`: a hook after each optimizer step
    (tests raise in it to kill a run on purpose)."""
    torch.set_num_threads(cfg.threads)
    gen, reward, judge, optimizer, data = setup(cfg)
    out, metrics = Path(cfg.out), Path(cfg.metrics)
    val = fixed_items(cfg, data["val"], cfg.val_seeds)
    recipe = json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in OPERATIONAL + ROUND}, default=str))
    state = load_state(out / "last", gen.controlnet, optimizer) or {"step": 0, "history": [], "best": None, "bad": 0,
                                                                      "recipe": recipe, "judges": []}
    if "judges" not in state:  # saved before rounds: its one judge is round 1's
        state["judges"] = [{"round": 1, "from_step": 0, "checkpoint": state["recipe"].get("checkpoint", cfg.checkpoint)}]
    state["recipe"] = {k: v for k, v in state["recipe"].items() if k not in ROUND}
    if state["recipe"] != recipe:
        changed = sorted(k for k in recipe if recipe[k] != state["recipe"].get(k))
        raise ValueError(f"{out / 'last'} is a run with other settings ({', '.join(changed)}): "
                         "give this run its own out, or delete that folder to start over")
    judges = state["judges"]
    new_round = not judges or (judges[-1]["checkpoint"] != cfg.checkpoint and state["step"] < cfg.max_steps)
    if new_round:  # a new judge with steps left to train: evaluate where the round starts
        judges.append({"round": len(judges) + 1, "from_step": state["step"], "checkpoint": cfg.checkpoint})
        ev = {"step": state["step"], "round": len(judges), **evaluate(gen, judge, val)}
        state["history"].append(ev)
        if state["best"] is None:  # step 0: the base generator's validation numbers, kept until beaten
            state["best"] = ev
            save_controlnet(gen.controlnet, out / "controlnet")
        state["bad"] = 0  # patience counts within a round: a new judge may find gains the old one could not
        save_state(out / "last", gen.controlnet, optimizer, state)
    rnd = len(judges)
    t0 = time.time()
    log: dict[str, list[float]] = {}
    with tqdm(total=cfg.max_steps, initial=state["step"], desc="rfft", unit="step") as bar:
        while state["step"] < cfg.max_steps and state["bad"] < cfg.patience:
            step = state["step"]
            for k, v in train_step(cfg, gen, reward, optimizer, data["train"], step).items():
                log.setdefault(k, []).append(v)
            state["step"] = step + 1
            bar.update(1)
            bar.set_postfix(p=f"{log['p_available'][-1]:.2f}", cc=f"{log['cc'][-1]:.1e}")
            if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.max_steps:
                ev = {"step": state["step"], "round": rnd, **evaluate(gen, judge, val),
                      **{f"train_{k}": float(np.mean(v)) for k, v in log.items()}}
                log = {}
                state["history"].append(ev)
                if ev["oracle_rate"] > state["best"]["oracle_rate"]:
                    state.update(best=ev, bad=0)
                    save_controlnet(gen.controlnet, out / "controlnet")
                else:
                    state["bad"] += 1
            if state["step"] % cfg.save_every == 0 or state["step"] == cfg.max_steps or state["bad"] >= cfg.patience:
                save_state(out / "last", gen.controlnet, optimizer, state)
            if on_step:
                on_step(state["step"])
    result = {"controlnet": str(out / "controlnet"), "steps": state["step"], "best": state["best"],
              "stopped_early": state["bad"] >= cfg.patience, "history": state["history"],
              "judges": judges, "val_items": len(val), "seconds": round(time.time() - t0, 1), "device": gen.device,
              "config": {k: v for k, v in asdict(cfg).items() if k not in ("prompts",)}}
    write_json(metrics / "train.json", result)
    return result
