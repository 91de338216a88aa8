"""Diffusion models: the tiny offline SD + ControlNet inpainting pipeline, and loading by name.

`build_tiny` makes a real `StableDiffusionControlNetInpaintPipeline` from configs only: SD's latent
geometry (VAE scale factor 8, 4 latent channels, 9-channel inpainting UNet), random weights from a
fixed seed and a CLIP-layout byte-level BPE tokenizer whose merges are learned here. Everything is
deterministic, so two builds give byte-identical folders and the content hash recorded in every
sample's recipe can be rebuilt anywhere. GPU users name hub models in params.yaml instead
(`digiplay/majicMIX_realistic_v7` + `lllyasviel/control_v11p_sd15_canny`); the same loader runs both.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Words the tiny tokenizer learns merges from: the prompt presets' vocabulary plus product words.
CORPUS = """
a product photo on a marble table in a bright kitchen, soft daylight, professional advertising photography
a product standing on a wooden shelf in a cozy living room, warm light, bokeh, high quality
a product on a beach at sunset, sand and waves, golden hour, commercial photo
a product on a clean studio podium, pastel background, minimal, soft shadows, product shot
a product in a lush garden with green leaves and flowers, morning dew, natural light
low quality, blurry, distorted, deformed, watermark, text, ugly, cropped, worst quality
bottle box can jar shoe cup tube bag watch lamp perfume cosmetics drink food snack shampoo cream
red green blue yellow orange purple pink white black silver gold brown teal navy
beauty beverage footwear kitchen home electronics fashion personal care grocery
""".split("\n")

SPECIAL = ("<|startoftext|>", "<|endoftext|>")


@dataclass(frozen=True)
class TinyConfig:
    out: str = "models/tiny-sd-controlnet"
    seed: int = 0
    size: int = 128  # canvas side the UNet's sample_size is set for
CLIP_WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", re.IGNORECASE)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def learn_bpe(corpus: list[str], merges: int = 600) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE in CLIP's layout, with ties broken by the pair itself (so runs agree).

    `tokenizers`' trainer breaks frequency ties differently from run to run, which would make two
    builds of the tiny model hash differently; this loop is small enough to own.
    """
    enc = bytes_to_unicode()
    words = collections.Counter()
    for line in corpus:
        for w in CLIP_WORD.findall(line.lower()):
            chars = [enc[b] for b in w.encode()]
            words[tuple(chars[:-1] + [chars[-1] + "</w>"])] += 1
    learned: list[tuple[str, str]] = []
    for _ in range(merges):
        pairs = collections.Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                pairs[a, b] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        learned.append(best)
        merged = collections.Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    alphabet = list(enc.values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in learned] + list(SPECIAL)
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    return vocab, learned


def build_tokenizer(out_dir: Path):
    from transformers import CLIPTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # e.g. "requires torchvision": irrelevant to a tokenizer and a text encoder
    vocab, merges = learn_bpe(CORPUS)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer.from_pretrained(str(out_dir), model_max_length=77)


def build_tiny(out: Path, seed: int = 0, size: int = 128) -> Path:
    """Build, save (diffusers format) and return the tiny SD-geometry ControlNet inpainting pipeline."""
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDIMScheduler,
        StableDiffusionControlNetInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out)
    with tempfile.TemporaryDirectory() as tok_dir:
        tok = build_tokenizer(Path(tok_dir))
    torch.manual_seed(seed)
    down = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64, 64), layers_per_block=1, sample_size=size // 8, in_channels=9,
        out_channels=4, down_block_types=down,
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=4)
    controlnet = ControlNetModel(
        in_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1, cross_attention_dim=32,
        down_block_types=down, conditioning_embedding_out_channels=(16, 32, 64, 128), attention_head_dim=4)
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 64, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        sample_size=size)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, max_position_embeddings=77, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, layer_norm_eps=1e-5))
    pipe = StableDiffusionControlNetInpaintPipeline(
        unet=unet, controlnet=controlnet, vae=vae, scheduler=scheduler, text_encoder=text_encoder,
        tokenizer=tok, safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def folder_hash(path: Path) -> str:
    """sha256 over a model folder's relative paths and bytes: the revision of a local model."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


COMMIT = re.compile(r"[0-9a-f]{40}")
# The libraries whose code makes a sample's pixels; their versions go into every recipe.
PIXEL_LIBRARIES = ("torch", "diffusers", "transformers", "numpy", "PIL", "cv2")


def resolve_revision(model: str, revision: str | None = None) -> str:
    """The revision a recipe records so the model can be found again, never a moving name.

    A local folder is its sha256 content hash. A hub id is the commit sha its revision (branch, tag,
    default `main`) points at: from the local hub cache when it holds the model (offline works), else
    from the hub's `model_info`. A branch name is refused by `regenerate` because it moves.
    """
    if Path(model).exists():
        return folder_hash(Path(model))
    if revision and COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import constants, model_info, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, revision=revision, local_files_only=True)).name
    except LocalEntryNotFoundError:
        pass
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"model {model!r} is neither a local folder nor in the hub cache "
                         f"({constants.HF_HUB_CACHE}), and the hub is offline (HF_HUB_OFFLINE)")
    return model_info(model, revision=revision).sha


def library_versions() -> str:
    """`name==version ...` of PIXEL_LIBRARIES: a regenerated image may differ when these do."""
    import importlib

    return " ".join(f"{m}=={importlib.import_module(m).__version__}" for m in PIXEL_LIBRARIES)


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(base_model: str, controlnet_model: str | None = None, revision: str | None = None,
                  device: str = "auto", scheduler: str = "DDIMScheduler", controlnet_revision: str | None = None):
    """Load the inpainting pipeline from a local folder or the hub (hub needs network and a GPU to be useful).

    A local folder made by `build_tiny` holds its ControlNet; a hub base model takes a separate
    ControlNet id. Revisions apply to hub ids only (generate passes the resolved commits, so what is
    loaded is what the recipe records). fp16 on CUDA, fp32 elsewhere.
    """
    import diffusers
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetInpaintPipeline

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    device = pick_device(device)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32

    def source(model: str, rev: str | None) -> dict:
        local = Path(model).exists()
        return {"local_files_only": True} if local else {"revision": rev} if rev else {}

    kw = {"dtype": dtype, **source(base_model, revision)}
    if controlnet_model:
        kw["controlnet"] = ControlNetModel.from_pretrained(
            controlnet_model, dtype=dtype, **source(controlnet_model, controlnet_revision))
    if not Path(base_model).exists():
        kw.update(safety_checker=None, requires_safety_checker=False)
    pipe = StableDiffusionControlNetInpaintPipeline.from_pretrained(base_model, **kw)
    if type(pipe.scheduler).__name__ != scheduler:
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
