"""RFNet, the Reliable Feedback Network of the paper, as one module.

Four images (product, generated, depth, saliency) go through one shared image encoder and the
caption through a text encoder. The feature filter module (FFM) lets the caption select what matters
in the product: cross-attention with the product tokens as query and the caption as key/value, then
    e_f = Conv(Conv(CrossAttn(e_o, e_c)) * Conv(e_o)) + e_o
Self-attention layers run over the concatenated tokens [e_f, e_g, e_d, e_s] (with a learned modality
embedding each), and a linear head classifies the mean token into `CLASSES`. Caption padding (most
of a short title's tokens) is masked wherever the caption goes, in attention and in the mean: padding
is an artefact of batching, and a prediction must not depend on how long the other titles were.

`unsuitable` is not a class: it is the product photo's fault, no generator can change it, and the
paper's head has five classes; such samples are left out of training.
Dropping a modality (`drop`) removes its tokens; dropping the caption (or the product) removes the
FFM, which needs both. The image-only baseline is `drop=("product", "depth", "saliency", "caption")`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from rf1m import tables
from rfnet.backbones import image_encoder, text_encoder

CLASSES = tables.PREDICTED_CLASSES  # its predictions table has one p_<class> column per class
IMAGES = ("product", "image", "depth", "saliency")  # member names; "image" is the generated advert
MODALITIES = ("product", "depth", "saliency", "caption")  # what `drop` may name


@dataclass(frozen=True)
class RFNetConfig:
    image_backbone: str = "efficientnet_lite0"
    text_backbone: str = "minilm"
    pretrained: bool = True
    freeze_backbones: bool = True  # train only the fusion on CPU; the paper fine-tunes everything
    image_size: int = 128  # the paper: 384
    dim: int = 128  # the paper: 384
    heads: int = 4  # the paper: 8
    ffm_blocks: int = 1  # N1
    attn_layers: int = 2  # N2 (the paper: 3)
    dropout: float = 0.1
    drop: tuple[str, ...] = ()

    def __post_init__(self):
        bad = set(self.drop) - set(MODALITIES)
        if bad:
            raise ValueError(f"cannot drop {sorted(bad)}: choose from {MODALITIES}")


class FFMBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.conv_attn = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv_gate = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv_out = nn.Conv2d(dim, dim, 1)

    def forward(self, e_o: torch.Tensor, e_c: torch.Tensor, text_pad: torch.Tensor) -> torch.Tensor:
        b, d, h, w = e_o.shape
        q = e_o.flatten(2).transpose(1, 2)
        a, _ = self.attn(q, e_c, e_c, key_padding_mask=text_pad)
        a = a.transpose(1, 2).reshape(b, d, h, w)
        return self.conv_out(self.conv_attn(a) * self.conv_gate(e_o)) + e_o


class RFNet(nn.Module):
    def __init__(self, cfg: RFNetConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = image_encoder(cfg.image_backbone, cfg.pretrained)
        self.proj = nn.Conv2d(self.encoder.out_channels, cfg.dim, 1)
        self.use_text = "caption" not in cfg.drop
        # no FFM blocks (the -FFM ablation) means the caption joins as tokens, as when the product is dropped
        self.use_ffm = self.use_text and "product" not in cfg.drop and cfg.ffm_blocks > 0
        if self.use_text:
            self.text = text_encoder(cfg.text_backbone)
            self.text_proj = nn.Linear(self.text.dim, cfg.dim)
        self.ffm = nn.ModuleList(FFMBlock(cfg.dim, cfg.heads) for _ in range(cfg.ffm_blocks if self.use_ffm else 0))
        self.images = [m for m in IMAGES if m not in cfg.drop]
        self.modality = nn.Parameter(torch.zeros(len(self.images) + (self.use_text and not self.use_ffm), cfg.dim))
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 2 * cfg.dim, cfg.dropout, batch_first=True)
        # no nested-tensor fast path: a prototype that would give eval a different code path than training
        self.fusion = nn.TransformerEncoder(layer, cfg.attn_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, len(CLASSES)))
        if cfg.freeze_backbones:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
            if self.use_text:
                for p in self.text.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        # A frozen encoder keeps its ImageNet BatchNorm statistics: mixing the four image kinds
        # (photos, depth, saliency) into them would wreck the features.
        if self.cfg.freeze_backbones:
            self.encoder.eval()
            if self.use_text:
                self.text.eval()
        return self

    def tokenize(self, captions: list[str]) -> dict:
        return self.text.tokenize(captions) if self.use_text else {}

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.freeze_backbones):
            f = self.encoder(x)
        return self.proj(f)

    def forward(self, images: dict[str, torch.Tensor], text: dict) -> torch.Tensor:
        """images: member -> B x 3 x S x S normalised; text: tokenizer output. Returns logits B x |CLASSES|."""
        feats = {m: self.encode_image(images[m]) for m in self.images}
        tokens = []
        if self.use_text:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.freeze_backbones):
                t = self.text(**text)
            e_c = self.text_proj(t)
            pad = text["attention_mask"] == 0
            pad = pad & ~pad.all(dim=1, keepdim=True)  # an empty caption: attend to its tokens, not to nothing (NaN)
        if self.use_ffm:
            for block in self.ffm:
                feats["product"] = block(feats["product"], e_c, pad)
        for i, m in enumerate(self.images):
            tokens.append(feats[m].flatten(2).transpose(1, 2) + self.modality[i])
        x = torch.cat(tokens, dim=1)
        mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        if self.use_text and not self.use_ffm:  # the caption joins as tokens of its own, its padding masked
            x = torch.cat([x, e_c + self.modality[-1]], dim=1)
            mask = torch.cat([mask, pad], dim=1)
        x = self.fusion(x, src_key_padding_mask=mask)
        keep = (~mask).unsqueeze(-1).to(x.dtype)
        return self.head((x * keep).sum(dim=1) / keep.sum(dim=1))
