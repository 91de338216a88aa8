"""Depth and saliency maps, RFNet's extra inputs, behind one small interface.

Methods (params.yaml `generate.aux`):
  saliency  spectral_residual   Hou & Zhang 2007, the log-spectrum's residual (offline default)
            frequency_tuned     Achanta et al. 2009, distance to the mean Lab colour (offline)
            u2net:<file.onnx>   a U2-Net saliency model in ONNX through onnxruntime (e.g. the u2net.onnx
                                that rembg distributes; download it yourself, nothing is fetched here)
  depth     depthnet:<folder>   the tiny monocular depth network (pipelines/depthnet.py) trained on the
                                renderer's true depth by `pipelines.train_depth` (offline default):
                                it reads the generated image, so a horizon or a product that moved
                                moves the map; fixed scale, 255 = the nearest floor a scene shows
            layout_prior        NOT a measurement: a ground-plane prior (far at the top, near at the
                                bottom) with the product standing on the plane at its base row.
                                It knows only where the product is (the generated pixels are unused).
            dpt:<id or path>    a DPT depth model through transformers (e.g. dpt:Intel/dpt-hybrid-midas,
                                which needs the hub; a local folder works offline): the GPU option
Both maps are computed from the generated image (the paper's RFNet inputs), never from the product
or its mask; only layout_prior is the exception its name declares.
Every map is uint8 HxW with 255 = near / most salient. The method string is recorded in the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AuxConfig:
    depth: str = "layout_prior"
    saliency: str = "spectral_residual"


def _to_u8(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    lo, hi = x.min(), x.max()
    if hi - lo < 1e-12:
        return np.zeros(x.shape, np.uint8)
    return np.round((x - lo) / (hi - lo) * 255).astype(np.uint8)


def spectral_residual(rgb: np.ndarray, work: int = 64) -> np.ndarray:
    gray = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (work, work), interpolation=cv2.INTER_AREA)
    spectrum = np.fft.fft2(gray.astype(np.float64))
    log_amp = np.log1p(np.abs(spectrum))  # log(|F|+1): exact spectral zeros must not become spikes
    residual = log_amp - cv2.blur(log_amp, (3, 3))
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    sal = cv2.GaussianBlur(sal, (0, 0), 3.0)
    h, w = rgb.shape[:2]
    return _to_u8(cv2.resize(sal, (w, h), interpolation=cv2.INTER_LINEAR))


def frequency_tuned(rgb: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float64)
    blurred = cv2.GaussianBlur(lab, (5, 5), 0)
    return _to_u8(np.linalg.norm(blurred - lab.reshape(-1, 3).mean(axis=0), axis=2))


def layout_prior(rgb: np.ndarray, product_alpha: np.ndarray) -> np.ndarray:
    h, w = product_alpha.shape
    plane = np.repeat(np.linspace(0.0, 1.0, h)[:, None], w, axis=1)
    rows = np.nonzero((product_alpha > 0).any(axis=1))[0]
    if len(rows):
        base = plane[rows.max(), 0]
        plane = np.where(product_alpha > 127, base, plane)
    return np.round(plane * 255).astype(np.uint8)


class AuxMaps:
    """Computes (depth, saliency) for a batch; loads a DPT model once when one is named."""

    def __init__(self, cfg: AuxConfig, device: str = "cpu"):
        if cfg.saliency not in ("spectral_residual", "frequency_tuned") and not cfg.saliency.startswith("u2net:"):
            raise ValueError(f"unknown saliency method {cfg.saliency!r} "
                             "(spectral_residual, frequency_tuned, u2net:<file.onnx>)")
        if cfg.depth != "layout_prior" and not cfg.depth.startswith(("dpt:", "depthnet:")):
            raise ValueError(f"unknown depth method {cfg.depth!r} (depthnet:<folder>, layout_prior, dpt:<model>)")
        self.cfg, self.device, self._dpt, self._u2net, self._net = cfg, device, None, None, None
        if cfg.depth.startswith("depthnet:"):
            from pipelines.depthnet import TinyDepth

            self._net = TinyDepth.from_pretrained(cfg.depth.removeprefix("depthnet:")).to(device)
        if cfg.saliency.startswith("u2net:"):
            import onnxruntime

            self._u2net = onnxruntime.InferenceSession(cfg.saliency[6:], providers=["CPUExecutionProvider"])
        if cfg.depth.startswith("dpt:"):
            from pathlib import Path

            from transformers import DPTForDepthEstimation

            name = cfg.depth[4:]
            self._dpt = DPTForDepthEstimation.from_pretrained(
                name, local_files_only=Path(name).exists()).to(device).eval()

    def _dpt_depth(self, images: list[np.ndarray]) -> list[np.ndarray]:
        import torch
        import torch.nn.functional as F

        side = self._dpt.config.image_size
        x = np.stack([cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA) for im in images])
        x = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(self.device)
        with torch.no_grad():
            pred = self._dpt(pixel_values=x).predicted_depth  # inverse depth: larger = nearer
        h, w = images[0].shape[:2]
        pred = F.interpolate(pred[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        return [_to_u8(p.cpu().numpy()) for p in pred]

    def _u2net_saliency(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """U2-Net's own preprocessing: 320 px, scaled by the max, ImageNet mean/std; output d1."""
        x = np.stack([cv2.resize(im, (320, 320), interpolation=cv2.INTER_AREA) for im in images]).astype(np.float32)
        x = x / np.maximum(x.reshape(len(images), -1).max(axis=1), 1e-6)[:, None, None, None]
        x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        feed = {self._u2net.get_inputs()[0].name: x.transpose(0, 3, 1, 2).astype(np.float32)}
        d1 = self._u2net.run(None, feed)[0][:, 0]
        h, w = images[0].shape[:2]
        return [_to_u8(cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)) for m in d1]

    def __call__(self, images: list[np.ndarray], products: list[np.ndarray]):
        if self._u2net is not None:
            saliency = self._u2net_saliency(images)
        else:
            sal_fn = spectral_residual if self.cfg.saliency == "spectral_residual" else frequency_tuned
            saliency = [sal_fn(im) for im in images]
        if self._net is not None:
            from pipelines.depthnet import predict

            depth = predict(self._net, images, self.device)
        elif self._dpt is not None:
            depth = self._dpt_depth(images)
        else:
            depth = [layout_prior(im, p[..., 3]) for im, p in zip(images, products)]
        return depth, saliency
