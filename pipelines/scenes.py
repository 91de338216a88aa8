"""Procedural scenes: the offline generator's training corpus, with true depth.

Random weights paint static, so the offline generator is trained on scenes drawn here: eight prompt
presets, each a ground plane seen in perspective (a horizon or a table's back edge), a background,
a light direction and textures laid out in the plane's own coordinates, so tiles, planks and leaves
shrink with distance as a photo's do. Because the geometry is known, so is the depth of every pixel.
A product is composited standing on the surface: the surface always runs under its base, and a
contact shadow and a cast shadow tie it to the ground. Everything is numpy/OpenCV and follows from
(preset, seed, product), so the corpus is reproducible anywhere.

`PROMPTS` is the one list of prompt presets: the generate stage's default prompts should be built
from it, so the generator is trained on exactly the texts it is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

NEGATIVE = "low quality, blurry, distorted, deformed, watermark, text"

# id -> prompt. The first four keep the texts (and ids) the generate stage has always used.
PROMPTS: dict[str, str] = {
    "kitchen": "a product photo on a marble table in a bright kitchen, soft daylight, professional advertising photography",
    "living": "a product standing on a wooden shelf in a cozy living room, warm light, bokeh, high quality",
    "beach": "a product on a beach at sunset, sand and waves, golden hour, commercial photo",
    "studio": "a product on a clean studio podium, pastel background, minimal, soft shadows, product shot",
    "forest": "a product on a mossy forest floor with fallen leaves and tree trunks, dappled sunlight",
    "concrete": "a product on grey concrete in an industrial studio, hard light, minimal editorial photo",
    "tiles": "a product on white bathroom tiles, clean bright light, spa mood, product photography",
    "snow": "a product on a snowy table outdoors in winter, pine trees, cold blue light",
}

CORPUS_VERSION = 5  # in the stamps of the models trained on renders: a model stamped with another is rebuilt


def corpus_preset(i: int, kinds: int) -> int:
    """Index in `PROMPTS` of the i-th training scene, whose product is kind `i % kinds` (products cycle
    through their kinds). A Latin square: every kind stands in every preset equally often. Cycling the
    presets with i, as the products do, put one kind in each preset (every kitchen held a bottle), so a
    generator could read the scene off the product's silhouette instead of the prompt (`CORPUS_VERSION` 1)."""
    return (i + i // kinds) % len(PROMPTS)


FAR = 30.0  # depth of the sky and of anything past it (plane units; the camera is 0.5 above the ground)


@dataclass
class Scene:
    image: np.ndarray  # HxWx3 uint8
    depth: np.ndarray  # HxW float32, distance along the view axis; larger is farther
    surface: np.ndarray  # HxW bool, the ground/table plane the product stands on
    horizon: int  # first row of the surface
    base: int  # the product's (or the notional) contact row


@dataclass
class _Geo:
    """Perspective of the ground plane: rows below `horizon` are the surface."""
    size: int
    horizon: int
    vanish: float  # the plane's vanishing line (== horizon outdoors, above it in front of a wall)
    light: float  # -1 light from the left, +1 from the right
    base: int  # the product's contact row

    def __post_init__(self):
        s = self.size
        self.y, self.x = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
        dy = np.maximum(self.y - self.vanish, 0.5)
        self.z = np.minimum(0.5 * s / dy, FAR).astype(np.float32)  # focal length = side, camera height 0.5
        self.X = ((self.x - s / 2) * self.z / s).astype(np.float32)
        self.ground = self.y >= self.horizon
        self.wall_z = float(self.z[min(self.horizon, s - 1), 0])


# ----------------------------------------------------------------------------- texture helpers

def _noise(rng, h, w, cell, octaves=3):
    """Smooth value noise in [0,1]: random grids upsampled (bicubic), summed over octaves."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = max(1.0, cell / 2 ** o)
        g = rng.standard_normal((int(h / c) + 2, int(w / c) + 2)).astype(np.float32)
        out += amp * cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    out /= total
    return np.clip(out * 0.35 + 0.5, 0, 1)


def _on_plane(tex, geo, scale):
    """Look a tiling texture up in plane coordinates (X across, z away): perspective for free."""
    th, tw = tex.shape[:2]
    mx = (geo.X * scale * tw / 8) % tw
    my = (geo.z * scale * th / 8) % th
    return cv2.remap(tex, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_WRAP)


def _mix(a, b, t):
    t = np.asarray(t, np.float32)
    if t.ndim == 2:
        t = t[..., None]
    return a * (1 - t) + b * t


def _vgrad(s, top, bottom, y0=0, y1=None):
    """A vertical colour gradient from `top` (row y0) to `bottom` (row y1), clamped outside."""
    y1 = s if y1 is None else y1
    t = np.clip((np.arange(s, dtype=np.float32) - y0) / max(y1 - y0, 1), 0, 1)[:, None, None]
    return np.broadcast_to(_mix(np.float32(top), np.float32(bottom), t), (s, s, 3)).copy()


def _jit(rng, rgb, amount=0.06):
    return np.clip(np.float32(rgb) + rng.uniform(-amount, amount, 3), 0, 1).astype(np.float32)


def _grain(rng, s, amount):
    return rng.standard_normal((s, s, 1)).astype(np.float32) * amount


# ----------------------------------------------------------------------------- presets

def _beach(rng, g):
    s, h = g.size, g.horizon
    img = _vgrad(s, _jit(rng, (0.45, 0.30, 0.55)), _jit(rng, (1.0, 0.62, 0.25)), 0, h)
    sx, sy, sr = rng.uniform(0.2, 0.8) * s, h - rng.uniform(0.02, 0.2) * s, rng.uniform(0.05, 0.09) * s
    d = np.hypot(g.x - sx, g.y - sy)
    img = _mix(img, np.float32((1.0, 0.92, 0.55)), np.clip(1.4 - d / sr, 0, 1) + 0.25 * np.exp(-d / (3 * sr)))
    shore = h + int(rng.uniform(0.2, 0.6) * (s - h) * 0.5)
    sea = _mix(_jit(rng, (0.10, 0.18, 0.38)), _jit(rng, (0.18, 0.35, 0.55)),
               np.clip((g.y - h) / max(shore - h, 1), 0, 1))
    waves = _on_plane(_noise(rng, 64, 64, 4), g, 1.0)
    sea = sea * (0.8 + 0.4 * waves[..., None])
    glint = np.exp(-((g.x - sx) / (0.08 * s)) ** 2) * (waves > 0.55)
    sea = _mix(sea, np.float32((1.0, 0.8, 0.45)), 0.7 * glint)
    sand = _on_plane(_noise(rng, 64, 64, 6), g, 1.5)[..., None]
    sand = _mix(_jit(rng, (0.80, 0.62, 0.42)), _jit(rng, (0.93, 0.78, 0.55)), sand)
    sand = _mix(sand, sand * 0.7, np.clip(1 - (g.y - shore) / 4, 0, 1) * (g.y >= shore))  # wet edge
    ground = np.where((g.y < shore)[..., None], sea, sand)
    img = np.where(g.ground[..., None], ground, img)
    depth = np.where(g.ground, g.z, FAR)
    return img * _jit(rng, (1.0, 0.9, 0.8), 0.05), depth, g.ground & (g.y >= shore)


def _wall_scene(g, wall, floor):
    """Indoor: a wall at the plane's back edge, the surface in front of it."""
    img = np.where(g.ground[..., None], floor, wall)
    depth = np.where(g.ground, g.z, g.wall_z)
    return img, depth, g.ground


def _kitchen(rng, g):
    """White marble counter against sage cabinets: a dark band over a white one, which survives the blur
    that turns white-on-white marble into the same pale field as tiles, snow and the podium. Dark door
    seams and a brass pull either side of each, a door's height above the counter, so the renders say
    "cabinets" (the trained generator keeps the seams as stripes but not the pulls: RESULTS)."""
    s = g.size
    cab = _jit(rng, (0.42, 0.56, 0.46), 0.05) * (0.9 + 0.2 * _noise(rng, s, s, s / 4))[..., None]
    door = rng.uniform(0.18, 0.26) * s  # cabinet doors down to the counter: its back edge is the strongest step
    u = (g.x + rng.uniform(0, door)) % door
    to_seam = np.minimum(u, door - u)
    wall = np.where((to_seam < 1.1)[..., None], cab * 0.55, cab)
    pull_y = g.horizon - rng.uniform(0.10, 0.16) * s  # vertical pulls beside each seam, a door's height up
    pull = (np.abs(to_seam - 3.0) < 1.0) & (np.abs(g.y - pull_y) < 0.06 * s)
    wall = np.where(pull[..., None], _jit(rng, (0.85, 0.66, 0.30), 0.04), wall)
    vein = np.abs(_on_plane(_noise(rng, 128, 128, 12), g, 0.6) - 0.5)
    marble = np.float32((0.96, 0.96, 0.94)) - 0.35 * np.clip(1 - vein / 0.05, 0, 1)[..., None]
    marble = marble * (0.93 + 0.07 * _on_plane(_noise(rng, 64, 64, 3), g, 1.0))[..., None]
    return _wall_scene(g, wall, marble)


def _living(rng, g):
    s = g.size
    wall = _vgrad(s, _jit(rng, (0.55, 0.33, 0.20)), _jit(rng, (0.30, 0.16, 0.10)))
    for _ in range(rng.integers(6, 12)):  # out-of-focus lamps: bokeh
        cx, cy, r = rng.uniform(0, s), rng.uniform(0, g.horizon), rng.uniform(0.04, 0.12) * s
        c = _jit(rng, (1.0, 0.75, 0.35), 0.15)
        wall = _mix(wall, c, 0.55 * np.clip((r - np.hypot(g.x - cx, g.y - cy)) / 2, 0, 1))
    wall = cv2.GaussianBlur(wall, (0, 0), 1.5)
    grain = _on_plane(_noise(rng, 16, 128, 2, 2), g, 0.8)
    planks = (np.abs(((g.X * 3) % 1) - 0.5) > 0.47)
    wood = _mix(_jit(rng, (0.50, 0.30, 0.15)), _jit(rng, (0.72, 0.48, 0.26)), grain)
    wood = np.where(planks[..., None], wood * 0.6, wood)
    edge = g.y > s - rng.uniform(0.03, 0.07) * s  # the shelf's front face
    wood = np.where(edge[..., None], wood * 0.5, wood)
    return _wall_scene(g, wall, wood)


# Saturated enough that their mean (what a blurry generator draws when unsure) is still a pink, not white.
PASTELS = ((0.96, 0.66, 0.74), (0.98, 0.74, 0.60), (0.82, 0.66, 0.94))


def _studio(rng, g):
    s = g.size
    hue = np.float32(PASTELS[rng.integers(len(PASTELS))])
    wall = _vgrad(s, _jit(rng, hue * 1.02, 0.03), _jit(rng, hue * 0.88, 0.03))
    floor = _vgrad(s, hue * 0.95, hue * 0.8, g.horizon, s)
    img, depth, surface = _wall_scene(g, wall, floor)
    # The podium: a cylinder whose top the product stands on, in the top's front half; the top's back rim is the
    # scene's horizon, 0.12-0.45 of the side behind the base like every preset's surface edge, and the podium is
    # wider than the frame, so the rim runs across it. `CORPUS_VERSION` 4 stood the product at the centre of a
    # top 0.04-0.07 deep and 0.76-0.96 of the frame wide: the rim, which the wide products hid, was as near the base
    # as the panel's float margin and the rules called 68% of these renders floating (RESULTS "Which ground line").
    cx, w = s / 2 + rng.uniform(-0.05, 0.05) * s, rng.uniform(0.65, 0.85) * s
    eh = (g.base - g.horizon) / 1.3  # render() keeps the horizon at least 2 rows above the base
    top = g.base - 0.3 * eh
    inside_top = ((g.x - cx) / w) ** 2 + ((g.y - top) / eh) ** 2 <= 1
    front = (np.abs(g.x - cx) <= w) & (g.y > top) & (g.y <= s + 1) & ~inside_top
    shade = 0.75 + 0.2 * np.cos(np.clip((g.x - cx) / w, -1, 1) * np.pi / 2 + 0.6 * g.light)
    pod = _jit(rng, (0.97, 0.96, 0.95), 0.02)  # a white podium on the coloured set
    img = np.where(front[..., None], pod * shade[..., None], img)
    img = np.where(inside_top[..., None], np.minimum(pod * 1.05, 1), img)
    zfront = g.z[min(int(top + eh), s - 1), 0]  # the top is the ground plane raised; its front side is nearer
    depth = np.where(inside_top, g.z, np.where(front, np.minimum(depth, zfront), depth))
    return img, depth, inside_top | (surface & ~front)


def _forest(rng, g):
    s = g.size
    back = _vgrad(s, _jit(rng, (0.35, 0.55, 0.30)), _jit(rng, (0.10, 0.22, 0.10)), 0, g.horizon)
    back = back * (0.7 + 0.6 * _noise(rng, s, s, s / 6))[..., None]
    for _ in range(rng.integers(4, 9)):  # trunks, blurred by depth of field
        x, w = rng.uniform(0, s), rng.uniform(0.02, 0.08) * s
        back = np.where((np.abs(g.x - x) < w)[..., None], _jit(rng, (0.22, 0.15, 0.10), 0.05), back)
    back = cv2.GaussianBlur(back, (0, 0), 1.2)
    floor = _on_plane(_noise(rng, 128, 128, 6), g, 1.0)[..., None]
    floor = _mix(_jit(rng, (0.20, 0.30, 0.10)), _jit(rng, (0.42, 0.30, 0.14)), floor)
    leaves = _on_plane((_noise(rng, 128, 128, 1.5, 1) > 0.72).astype(np.float32), g, 1.2)
    floor = _mix(floor, _jit(rng, (0.70, 0.35, 0.10), 0.1), 0.8 * leaves)
    img = np.where(g.ground[..., None], floor, back)
    sun = _noise(rng, s, s, s / 8) > 0.55  # dappled light
    img = img * (0.75 + 0.55 * cv2.GaussianBlur(sun.astype(np.float32), (0, 0), 2))[..., None]
    depth = np.where(g.ground, g.z, FAR)
    return img, depth, g.ground


def _concrete(rng, g):
    """Board-formed concrete under a hard spot: dark panel seams and tie holes on a mid-grey wall, a
    floor dark enough that the wall's foot steps more than a seam (the panel's ground line); grey alone
    blurs into mud."""
    s = g.size
    grey = rng.uniform(0.42, 0.55)
    wall = np.full((s, s, 3), grey, np.float32) * np.float32((0.98, 1.0, 1.03))
    spot = np.exp(-((g.x - s / 2 + 0.3 * s * g.light) ** 2 + (g.y - 0.3 * s) ** 2) / (0.25 * s) ** 2)
    wall = wall * (0.7 + 0.7 * spot[..., None]) * (0.9 + 0.2 * _noise(rng, s, s, 10))[..., None]
    pw, ph = rng.uniform(0.3, 0.45) * s, rng.uniform(0.18, 0.26) * s
    ox, oy = rng.uniform(0, pw), rng.uniform(0, ph)
    u, v = (g.x + ox) % pw, (g.y + oy) % ph
    seam = (np.minimum(u, pw - u) < 1.2) | (np.minimum(v, ph - v) < 0.9)  # vertical seams wider: no row step
    holes = np.hypot(np.minimum(u, pw - u) - pw / 4, np.minimum(v, ph - v) - ph / 2) < 2.2
    wall = np.where((seam | holes)[..., None], wall * 0.6, wall)
    floor = _on_plane(_noise(rng, 128, 128, 8), g, 0.8)[..., None] * 0.12 + grey * 0.4
    specks = _on_plane((rng.random((128, 128)) > 0.97).astype(np.float32), g, 1.0)
    floor = floor * np.float32((1.0, 1.0, 1.02)) - 0.15 * specks[..., None]
    img, depth, surface = _wall_scene(g, wall, floor)
    return img + _grain(rng, s, 0.015), depth, surface


def _tiles(rng, g):
    """White wall tiles with grey grout, large enough for the grid to outlast the blur, over a dark
    blue-grey floor (white on white was a pale field); the grout is lighter than the floor is dark, so a
    grout row steps less than the floor's back edge (the panel's ground line)."""
    s = g.size
    tile = _jit(rng, (0.94, 0.96, 0.97), 0.03)
    t = rng.uniform(0.18, 0.26) * s  # wall tiles: a square grid facing the camera
    ox, oy = rng.uniform(0, t, 2)
    u, v = (g.x + ox) % t, (g.y + oy) % t
    grout = np.minimum(np.minimum(u, t - u), np.minimum(v, t - v)) < 1.3
    wall = np.where(grout[..., None], np.float32((0.50, 0.53, 0.56)), tile) * _vgrad(s, (1.0, 1.0, 1.0),
                                                                                      (0.88, 0.89, 0.9))
    floor_tile = _jit(rng, (0.30, 0.38, 0.50), 0.04)
    gt = rng.uniform(0.3, 0.5)  # floor tiles, in the plane
    fgrout = (np.minimum((g.X / gt) % 1, (g.z / gt) % 1) < 0.06)
    floor = np.where(fgrout[..., None], floor_tile * 0.6, floor_tile)
    floor = cv2.GaussianBlur(floor, (0, 0), 0.6)
    return _wall_scene(g, wall, floor)


def _snow(rng, g):
    s, h = g.size, g.horizon
    far_line = h - int(rng.uniform(0.08, 0.2) * s)  # the snowfield behind the table
    sky = _vgrad(s, _jit(rng, (0.55, 0.68, 0.88)), _jit(rng, (0.85, 0.90, 0.97)), 0, far_line)
    field = _vgrad(s, (0.92, 0.94, 0.98), (0.80, 0.86, 0.95), far_line, h)
    behind = g.y >= far_line  # the snowfield, and below the pines
    img = np.where(behind[..., None], field, sky)
    pine = _jit(rng, (0.10, 0.25, 0.18), 0.04)
    for _ in range(rng.integers(5, 11)):
        x, ph = rng.uniform(0, s), rng.uniform(0.12, 0.3) * s
        tri = (g.y < far_line + 2) & (g.y > far_line - ph) & (np.abs(g.x - x) < 0.3 * (g.y - far_line + ph))
        img = np.where(tri[..., None], pine, img)
        behind |= tri
    table = _on_plane(_noise(rng, 64, 64, 5), g, 1.0)[..., None]
    table = _mix(np.float32((0.84, 0.89, 0.97)), np.float32((0.98, 0.98, 1.0)), table)
    edge = g.y > s - rng.uniform(0.04, 0.08) * s  # the table's wooden front edge
    table = np.where(edge[..., None], _jit(rng, (0.45, 0.28, 0.15)), table)
    img = np.where(g.ground[..., None], table, img)
    flakes = cv2.GaussianBlur((rng.random((s, s)) > 0.985).astype(np.float32), (0, 0), 0.5)
    img = _mix(img, np.float32((1, 1, 1)), np.clip(flakes * 3, 0, 1))
    depth = np.where(g.ground, g.z, np.where(behind, min(FAR, 3 * g.wall_z), FAR))
    return img, depth, g.ground


PAINTERS = {"kitchen": _kitchen, "living": _living, "beach": _beach, "studio": _studio, "forest": _forest,
            "concrete": _concrete, "tiles": _tiles, "snow": _snow}
OUTDOOR = {"beach", "forest"}  # the plane runs to the horizon; elsewhere it ends at a wall or a table edge


# ----------------------------------------------------------------------------- composition

def _shadows(img, alpha, base, geo, rng):
    """Darken the surface under and beside the product: a soft contact blob and a cast shadow."""
    s = geo.size
    cols = np.nonzero(alpha[max(base - 3, 0): base + 1].max(axis=0) > 0.5)[0]
    if len(cols) == 0:
        return img
    cx, half = (cols[0] + cols[-1]) / 2, max((cols[-1] - cols[0]) / 2, 2)
    contact = np.exp(-(((geo.x - cx) / (half * 1.15)) ** 8) - ((geo.y - base) / max(2.0, 0.15 * half)) ** 2)
    k, shear = rng.uniform(0.2, 0.4), -geo.light * rng.uniform(0.3, 0.9)
    m = np.float32([[1, -shear, shear * base], [0, k, (1 - k) * base]])
    cast = cv2.warpAffine(alpha, m, (s, s), flags=cv2.INTER_LINEAR)
    cast = cv2.GaussianBlur(cast, (0, 0), rng.uniform(1.0, 2.5))
    shade = np.clip(0.75 * contact + rng.uniform(0.3, 0.5) * cast, 0, 0.85) * geo.ground
    return img * (1 - shade[..., None])


def product_base(alpha: np.ndarray) -> int:
    """The lowest opaque row of a placed product: where it touches the surface."""
    rows = np.nonzero((alpha > 127).any(axis=1))[0]
    return int(rows[-1]) if len(rows) else -1


def render(preset: str, seed: int, size: int = 128, product: np.ndarray | None = None) -> Scene:
    """One scene of `preset`, optionally with a placed RGBA product (size x size x 4) standing in it.

    The surface's back edge is put 0.12-0.45 of the side above the product's base (clamped to
    0.25-0.8 of the side) so the product always stands on the surface, not in the sky or on a wall.
    """
    if preset not in PAINTERS:
        raise ValueError(f"unknown scene preset {preset!r} (known: {', '.join(PAINTERS)})")
    rng = np.random.default_rng([seed, list(PAINTERS).index(preset)])
    base = product_base(product[..., 3]) if product is not None else -1
    if base < 0:
        base = int(rng.uniform(0.75, 0.95) * size)
    horizon = int(np.clip(base - rng.uniform(0.12, 0.45) * size, 0.25 * size, 0.8 * size))
    horizon = min(horizon, base - 2)
    vanish = horizon if preset in OUTDOOR else horizon - rng.uniform(0.08, 0.3) * size
    geo = _Geo(size, horizon, vanish, float(rng.choice((-1.0, 1.0)) * rng.uniform(0.3, 1.0)), base)
    img, depth, surface = PAINTERS[preset](rng, geo)
    img = img * (1 + 0.15 * geo.light * (geo.x / size - 0.5))[..., None]  # light falls off away from it
    if product is not None:
        a = product[..., 3].astype(np.float32) / 255
        img = _shadows(img, a, base, geo, rng)
        img = _mix(img, product[..., :3].astype(np.float32) / 255, a)
        # A standing product is as far away as the ground it stands on.
        depth = np.where(a > 0.5, geo.z[base, 0], depth)
    img = np.clip(img + _grain(rng, size, 0.012), 0, 1)
    return Scene((img * 255 + 0.5).astype(np.uint8), depth.astype(np.float32), surface, horizon, base)
