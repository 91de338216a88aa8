"""A tiny monocular depth network: the offline stand-in for DPT, trained by `pipelines.train_depth`.

RFNet's depth input must come from the generated image (a floating product or a wrong scale shows in
how the scene's depth runs under it), and offline there is no pretrained depth model to ask. The
procedural renderer knows every pixel's depth, so a small U-Net learns it from (render, depth) pairs.

It predicts normalised disparity, `t = 1 / (DISPARITY_MAX * z)` with z in the renderer's plane units
(camera 0.5 above the ground, focal length = the image side): disparity is bounded where depth is not
(the sky is at `FAR`), does not depend on the image size, and 255 = near matches the other methods.
The scale is fixed, not stretched per image, so maps of different images compare.

A y-coordinate channel is part of the input: the row is a strong cue for a ground plane, but the
network must still read the horizon and the product from the pixels (tests/test_depth.py checks it).
A folder holds `config.json` and `model.safetensors`, like a diffusers model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DISPARITY_MAX = 2.0  # 1/z of the nearest ground a scene shows (z = 0.5: the floor just below the camera)
CONFIG, WEIGHTS = "config.json", "model.safetensors"


@dataclass(frozen=True)
class DepthNetConfig:
    channels: tuple[int, ...] = (8, 16, 32, 48, 64)
    size: int = 32  # the side it sees: inputs are resized to it, outputs back to the image's size


def _block(ci: int, co: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ci, co, 3, stride, 1), nn.GroupNorm(4, co), nn.SiLU(),
                         nn.Conv2d(co, co, 3, 1, 1), nn.GroupNorm(4, co), nn.SiLU())


class TinyDepth(nn.Module):
    def __init__(self, cfg: DepthNetConfig = DepthNetConfig()):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.down = nn.ModuleList(_block(4 if i == 0 else ch[i - 1], c, 1 if i == 0 else 2) for i, c in enumerate(ch))
        self.up = nn.ModuleList(_block(ch[i + 1] + ch[i], ch[i], 1) for i in reversed(range(len(ch) - 1)))
        self.head = nn.Conv2d(ch[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N,3,S,S in [-1, 1] -> N,S,S normalised disparity (about 0..1, 1 = nearest)."""
        n, _, h, _ = x.shape
        rows = torch.linspace(-1, 1, h, device=x.device).view(1, 1, h, 1).expand(n, 1, h, x.shape[3])
        skips, y = [], torch.cat([x, rows], 1)
        for block in self.down:
            y = block(y)
            skips.append(y)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            y = block(torch.cat([F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False),
                                 skip], 1))
        return self.head(y)[:, 0]

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG).write_text(json.dumps(asdict(self.cfg), indent=1))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> TinyDepth:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
            raise FileNotFoundError(f"{folder} is not a depth network folder (needs {CONFIG} and {WEIGHTS}; "
                                    "train one with `rf1m models depth`)")
        cfg = json.loads((folder / CONFIG).read_text())
        model = cls(DepthNetConfig(channels=tuple(cfg["channels"]), size=cfg["size"]))
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
        return model.eval()


def to_input(images: list[np.ndarray], side: int) -> torch.Tensor:
    """uint8 HxWx3 images -> the network's N,3,side,side in [-1, 1] (area-resized, as in training)."""
    x = np.stack([cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA) for im in images])
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1


def target(depth: np.ndarray, side: int) -> np.ndarray:
    """A renderer's depth (HxW, plane units) -> the training target at `side`: normalised disparity."""
    return cv2.resize(1.0 / (DISPARITY_MAX * depth), (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)


@torch.no_grad()
def predict(model: TinyDepth, images: list[np.ndarray], device: str = "cpu") -> list[np.ndarray]:
    """uint8 depth maps (255 = disparity DISPARITY_MAX, 0 = infinitely far) at each image's own size."""
    pred = model(to_input(images, model.cfg.size).to(device)).clamp(0, 1).cpu().numpy()
    return [np.round(cv2.resize(p, (im.shape[1], im.shape[0]), interpolation=cv2.INTER_LINEAR) * 255).astype(np.uint8)
            for p, im in zip(pred, images)]
