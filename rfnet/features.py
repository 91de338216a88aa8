"""RFNet's frozen encoders run once per sample, so that experiments train only the fusion.

With frozen backbones (the offline default) the encoders' outputs never change during training, and
they cost almost all of a forward pass. `encode_batch` computes them once for a batch of shards, for
both horizontal flips (the one augmentation, rfnet.data), and caches them, one file per shard, keyed by
the backbones, the image size and a fingerprint of every input member's bytes; `fusion_model` is RFNet
itself with its encoders replaced by stand-ins that pass the cached outputs through, so the fusion
being trained is exactly the network `rfnet train` trains.

For EfficientNet-Lite0 the cache also keeps the input of the last stage (the 192 -> 320 MBConv and
the 1280-channel head), so the same cache serves an arm that fine-tunes that stage (`last_stage=True`).
"""

from __future__ import annotations

import copy
import hashlib
import io
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
from PIL import Image
from tqdm import tqdm

from rf1m import shards
from rfnet.backbones import EfficientNetLite0, image_encoder, text_encoder
from rfnet.data import MEMBER_OF, to_tensor
from rfnet.model import IMAGES, RFNet, RFNetConfig

CACHE_VERSION = 1


def data_fingerprint(batch_dir: Path, rows: list[dict]) -> str:
    """sha256 over every sample's key, caption and input members' bytes: a regenerated image changes it."""
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r['key']}\0{r['title']}\0".encode())
        for m in IMAGES:
            h.update(hashlib.sha256(shards.member_bytes(batch_dir, r, MEMBER_OF[m])).digest())
    return h.hexdigest()


def _trunk_and_last(encoder: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """EfficientNet-Lite0 cut before its last stage: (trunk, last stage + head); None for other encoders."""
    if not isinstance(encoder, EfficientNetLite0):
        return None

    class Trunk(nn.Module):
        def forward(self, x):
            x = torch.clamp(encoder._bn0(encoder._conv_stem(x)), 0, 6)
            for b in encoder._blocks[:-1]:
                x = b(x)
            return x

    return Trunk(), LastStage(encoder)


class LastStage(nn.Module):
    """EfficientNet-Lite0's last MBConv and head, copied so that fine-tuning leaves the encoder alone.
    Its BatchNorm keeps the ImageNet statistics (eval mode): four image kinds share it."""

    out_channels = EfficientNetLite0.out_channels

    def __init__(self, encoder: EfficientNetLite0):
        super().__init__()
        self.block = copy.deepcopy(encoder._blocks[-1])
        self.head = copy.deepcopy(encoder._conv_head)
        self.bn = copy.deepcopy(encoder._bn1)

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x):
        return torch.clamp(self.bn(self.head(self.block(x))), 0, 6)


def encode_batch(batch_dir: str | Path, cfg: RFNetConfig, cache_dir: str | Path, batch_size: int = 32,
                 products: set[str] | None = None) -> dict:
    """Cached encoder outputs of every sample of a batch of shards (see the module docstring).

    One cache file per shard, so a batch that grows (or is still being generated) costs only its new
    shards. Returns keys, product_id, title (lists), image (N x 2 flips x 4 images x C x h x w, float16),
    text (N x L x D), text_mask (N x L) and, for EfficientNet-Lite0, pre_last (the last stage's input,
    N x 2 x 4 x 192 x h x w; else None). `products`: only the shards that hold one of them, and only
    their samples (a run on a subset)."""
    batch_dir = Path(batch_dir)
    rows = shards.read_sidecars(batch_dir).to_pylist()
    wanted = {r["shard"] for r in rows if products is None or r["product_id"] in products}
    by_shard = {s: [r for r in rows if r["shard"] == s] for s in wanted}  # whole shards: one cache file each
    encoders: list = []  # loaded at the first shard not in the cache
    parts = [_encode_shard(batch_dir, sorted(part, key=lambda r: r["key"]), cfg, Path(cache_dir), batch_size, encoders)
             for _, part in tqdm(sorted(by_shard.items()), desc=f"encode {batch_dir.name}", unit="shard")]
    out = {k: [x for p in parts for x in p[k]] for k in ("keys", "product_id", "title")}
    for k in ("image", "text", "text_mask", "pre_last"):
        out[k] = torch.cat([p[k] for p in parts]) if parts and parts[0][k] is not None else None
    if products is None:
        return out
    keep = [i for i, p in enumerate(out["product_id"]) if p in products]
    return {k: v if v is None else v[keep] if isinstance(v, torch.Tensor) else [v[i] for i in keep]
            for k, v in out.items()}


@torch.no_grad()
def _encode_shard(batch_dir: Path, rows: list[dict], cfg: RFNetConfig, cache_dir: Path, batch_size: int,
                  encoders: list) -> dict:
    key = hashlib.sha256(repr((CACHE_VERSION, cfg.image_backbone, cfg.text_backbone, cfg.pretrained,
                               cfg.image_size, data_fingerprint(batch_dir, rows))).encode()).hexdigest()[:16]
    path = cache_dir / f"{batch_dir.name}-{Path(rows[0]['shard']).stem}-{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)  # plain tensors, strings and lists only
    if not encoders:
        encoder = image_encoder(cfg.image_backbone, cfg.pretrained).eval()
        encoders += [encoder, text_encoder(cfg.text_backbone).eval(), _trunk_and_last(encoder)]
    encoder, text, split = encoders
    image, pre_last, tfeat, tmask = [], [], [], []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i: i + batch_size]
        x = torch.stack([torch.stack([to_tensor(Image.open(io.BytesIO(shards.member_bytes(
            batch_dir, r, MEMBER_OF[m]))), cfg.image_size) for m in IMAGES]) for r in chunk])  # B x 4 x 3 x S x S
        x = torch.stack([x, x.flip(-1)], dim=1).flatten(0, 2)  # (B * 2 * 4) x 3 x S x S
        if split:
            pre = split[0](x)
            out = split[1](pre)
            pre_last.append(pre.unflatten(0, (len(chunk), 2, len(IMAGES))).half())
        else:
            out = encoder(x)
        image.append(out.unflatten(0, (len(chunk), 2, len(IMAGES))).half())
        t = text.tokenize([r["title"] for r in chunk])
        tfeat.append(text(**t).half())
        tmask.append(t["attention_mask"].bool())
    cache = {"keys": [r["key"] for r in rows], "product_id": [r["product_id"] for r in rows],
             "title": [r["title"] for r in rows], "image": torch.cat(image), "text": torch.cat(tfeat),
             "text_mask": torch.cat(tmask), "pre_last": torch.cat(pre_last) if pre_last else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(cache, tmp)
    tmp.rename(path)
    return cache


class _Given(nn.Module):
    """Stands in for an encoder whose output is already computed."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x):
        return x


class _GivenText(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, features, attention_mask):
        return features


def fusion_model(cfg: RFNetConfig, cache: dict, last_stage: bool = False) -> RFNet:
    """RFNet whose encoders read `cache` (inputs from `cached_inputs`). With `last_stage`, the image
    encoder is EfficientNet-Lite0's last stage, trainable, fed the cached `pre_last` features."""
    if last_stage and cache["pre_last"] is None:
        raise ValueError(f"fine-tuning the last stage needs efficientnet_lite0, not {cfg.image_backbone}")
    # cheap random encoders at construction, replaced at once: only their output sizes matter
    model = RFNet(replace(cfg, image_backbone="tiny", text_backbone="hash", pretrained=False,
                          freeze_backbones=not last_stage))
    model.cfg = replace(cfg, freeze_backbones=not last_stage)
    if last_stage:
        model.encoder = LastStage(image_encoder(cfg.image_backbone, cfg.pretrained))
    else:
        model.encoder = _Given(cache["image"].shape[3])
    model.proj = nn.Conv2d(model.encoder.out_channels, cfg.dim, 1)
    if model.use_text:
        model.text = _GivenText(cache["text"].shape[-1])
        model.text_proj = nn.Linear(model.text.dim, cfg.dim)
    return model


def cached_inputs(cache: dict, idx: torch.Tensor, flip: torch.Tensor | None = None, last_stage: bool = False,
                  swap: dict[str, torch.Tensor] | None = None) -> tuple[dict, dict]:
    """The (images, text) arguments of `fusion_model(...)(images, text)` for samples `idx`.

    `flip`: per sample, 1 for the mirrored copy. `swap`: input name ("product", "caption", ...) ->
    the sample indices to take that input from instead (a shuffle control)."""
    feats = cache["pre_last" if last_stage else "image"]
    flip = torch.zeros(len(idx), dtype=torch.long) if flip is None else flip
    swap = swap or {}
    images = {m: feats[swap.get(m, idx), flip, j].float() for j, m in enumerate(IMAGES)}
    t = swap.get("caption", idx)
    return images, {"features": cache["text"][t].float(), "attention_mask": cache["text_mask"][t].long()}
