import numpy as np
import pytest

from pipelines.conditions import Layout, LayoutConfig, draw_layout, make_conditions, paste_back
from rf1m.quarantine import Rejected


def product(h=40, w=20):
    p = np.zeros((60, 60, 4), np.uint8)
    p[10: 10 + h, 5: 5 + w] = (200, 30, 40, 255)
    p[10: 10 + h, 5 + w // 2:5 + w, :3] = (20, 200, 40)  # an inner edge for Canny
    return p


def test_scale_within_range_and_recorded():
    cfg = LayoutConfig(size=128, scale_range=(0.70, 0.78))
    rng = np.random.default_rng(0)
    for _ in range(20):
        lay = draw_layout(cfg, rng)
        assert 0.70 <= lay.scale <= 0.78
        c = make_conditions(product(), cfg, lay)
        ys, xs = np.nonzero(c.product[..., 3])
        longest = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        assert abs(longest - lay.scale * 128) <= 1


def test_centred_and_jitter_stays_on_canvas():
    cfg = LayoutConfig(size=64, scale_range=(0.9, 0.9), jitter=0.5)
    c = make_conditions(product(), cfg, Layout(0.9, 0, 0))
    ys, xs = np.nonzero(c.product[..., 3])
    assert abs((ys.min() + ys.max()) / 2 - 31.5) <= 1 and abs((xs.min() + xs.max()) / 2 - 31.5) <= 1
    c = make_conditions(product(), cfg, Layout(0.9, 40, -40))  # asks to leave the canvas
    assert c.product[..., 3].sum() == make_conditions(product(), cfg, Layout(0.9, 0, 0)).product[..., 3].sum()
    assert c.layout.offset_x < 40 and c.layout.offset_y > -40  # the clamped shift is what is recorded


def test_mask_is_inverted_alpha_dilated():
    base = make_conditions(product(), LayoutConfig(size=64, dilate=1), Layout(0.7, 0, 0))
    grown = make_conditions(product(), LayoutConfig(size=64, dilate=5), Layout(0.7, 0, 0))
    opaque = base.product[..., 3] == 255
    assert (base.mask[~opaque & (base.product[..., 3] == 0)] == 255).all()
    assert (base.mask[opaque] == 0).all()
    # a 5x5 kernel eats 2 px into the product on every side
    assert (grown.mask == 255).sum() > (base.mask == 255).sum()
    ys, xs = np.nonzero(grown.mask == 0)
    ys0, xs0 = np.nonzero(base.mask == 0)
    assert ys.min() - ys0.min() == 2 and xs0.max() - xs.max() == 2


def test_canny_only_on_the_product():
    c = make_conditions(product(), LayoutConfig(size=64), Layout(0.7, 0, 0))
    import cv2

    region = cv2.dilate((c.product[..., 3] > 0).astype(np.uint8), np.ones((3, 3), np.uint8))
    assert c.canny.any()
    assert not c.canny[region == 0].any()


def test_paste_back_keeps_product_pixels_exactly():
    c = make_conditions(product(), LayoutConfig(size=64), Layout(0.7, 0, 0))
    gen = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = paste_back(gen, c.product)
    opaque = c.product[..., 3] == 255
    assert (out[opaque] == c.product[..., :3][opaque]).all()
    assert (out[c.product[..., 3] == 0] == gen[c.product[..., 3] == 0]).all()


def test_empty_alpha_is_rejected():
    with pytest.raises(Rejected) as e:
        make_conditions(np.zeros((10, 10, 4), np.uint8), LayoutConfig(), Layout(0.7, 0, 0))
    assert e.value.reason == "fully_transparent"
