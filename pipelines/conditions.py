"""Conditions for ControlNet inpainting, as the reference code (ZhenbangDu/Reliable_AD) makes them.

The product is cropped to its alpha bounding box, scaled so that its longest side is a fraction of
the canvas (drawn per sample in `scale_range`), centred (with optional jitter), and pasted on an
empty canvas. The inpainting mask is the inverted alpha, dilated so the generator may blend the
product's edge; the ControlNet condition is the Canny edge map of the placed product only. After
generation the original product pixels are pasted back, so the product is never altered.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from rf1m.quarantine import Rejected


@dataclass(frozen=True)
class LayoutConfig:
    size: int = 128
    scale_range: tuple[float, float] = (0.70, 0.78)
    jitter: float = 0.0  # max centre shift, as a fraction of the canvas side
    dilate: int = 5  # mask dilation kernel (px, odd)
    canny_low: int = 100
    canny_high: int = 200


@dataclass(frozen=True)
class Layout:
    scale: float
    offset_x: int
    offset_y: int


@dataclass
class Conditions:
    product: np.ndarray  # HxWx4 uint8, the placed product
    mask: np.ndarray  # HxW uint8, 255 = generate
    canny: np.ndarray  # HxW uint8
    layout: Layout

    def init_image(self) -> Image.Image:
        """The inpainting input: the product on neutral grey (the masked area is regenerated)."""
        rgb = self.product[..., :3].astype(np.uint16)
        a = self.product[..., 3:4].astype(np.uint16)
        return Image.fromarray(((rgb * a + 127 * (255 - a) + 127) // 255).astype(np.uint8))

    def control_image(self) -> Image.Image:
        return Image.fromarray(np.repeat(self.canny[..., None], 3, axis=2))


def draw_layout(cfg: LayoutConfig, rng: np.random.Generator) -> Layout:
    lo, hi = cfg.scale_range
    scale = float(rng.uniform(lo, hi))
    shift = int(cfg.jitter * cfg.size)
    dx, dy = (int(v) for v in rng.integers(-shift, shift + 1, size=2)) if shift else (0, 0)
    return Layout(round(scale, 4), dx, dy)


def make_conditions(product: np.ndarray, cfg: LayoutConfig, layout: Layout) -> Conditions:
    """Place an RGBA product (HxWx4 uint8) on the canvas by `layout` and derive mask and edges."""
    alpha = product[..., 3]
    ys, xs = np.nonzero(alpha)
    if len(xs) == 0:
        raise Rejected("fully_transparent", "the product's alpha channel is empty")
    crop = product[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    h, w = crop.shape[:2]
    side = cfg.size
    f = layout.scale * side / max(h, w)
    nw, nh = max(1, round(w * f)), max(1, round(h * f))
    resized = np.asarray(Image.fromarray(crop, "RGBA").resize((nw, nh), Image.LANCZOS))
    # Keep the whole product on the canvas: clamp the jittered centre.
    x0 = min(max((side - nw) // 2 + layout.offset_x, 0), side - nw)
    y0 = min(max((side - nh) // 2 + layout.offset_y, 0), side - nh)
    placed = np.zeros((side, side, 4), np.uint8)
    placed[y0: y0 + nh, x0: x0 + nw] = resized
    layout = Layout(layout.scale, x0 - (side - nw) // 2, y0 - (side - nh) // 2)
    a = placed[..., 3]
    if not (a == 255).any():
        raise Rejected("fully_transparent", "no opaque product pixel is left after scaling")
    mask = 255 - a
    if cfg.dilate > 1:
        mask = cv2.dilate(mask, np.ones((cfg.dilate, cfg.dilate), np.uint8))
    mask = np.where(mask > 0, 255, 0).astype(np.uint8)
    edges = cv2.Canny(cv2.cvtColor(placed[..., :3], cv2.COLOR_RGB2GRAY), cfg.canny_low, cfg.canny_high)
    # Edges of the product only: inside its (slightly grown) silhouette, including the outline.
    region = cv2.dilate((a > 0).astype(np.uint8), np.ones((3, 3), np.uint8))
    outline = cv2.Canny(a, 50, 150)
    canny = np.where(region > 0, np.maximum(edges, outline), 0).astype(np.uint8)
    return Conditions(placed, mask, canny, layout)


def paste_back(generated: np.ndarray, product: np.ndarray) -> np.ndarray:
    """Composite the original product over the generated image; opaque product pixels are exact."""
    g = generated.astype(np.uint16)
    p = product[..., :3].astype(np.uint16)
    a = product[..., 3:4].astype(np.uint16)
    return ((p * a + g * (255 - a) + 127) // 255).astype(np.uint8)
