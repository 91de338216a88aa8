import numpy as np
import pytest

from pipelines.conditions import LayoutConfig, draw_layout, make_conditions
from pipelines.products import ProductsConfig, synthetic_products
from pipelines.scenes import FAR, PAINTERS, PROMPTS, render

SIZE = 96


@pytest.fixture(scope="module")
def placed():
    """Three products placed by the generate stage's layout (scale and jitter as in params.yaml)."""
    layout = LayoutConfig(size=SIZE, scale_range=(0.6, 0.9), jitter=0.1)
    prods = [p[3] for p in synthetic_products(ProductsConfig(count=3, size=128, truncated_every=0))]
    return [make_conditions(p, layout, draw_layout(layout, np.random.default_rng(i))).product
            for i, p in enumerate(prods)]


def test_presets_are_the_prompts():
    assert list(PAINTERS) == list(PROMPTS) and len(PROMPTS) >= 8
    with pytest.raises(ValueError, match="unknown scene preset 'moon'"):
        render("moon", 0, SIZE)


@pytest.mark.parametrize("preset", list(PROMPTS))
def test_deterministic_per_seed_and_different_across_seeds(preset, placed):
    a, b = render(preset, 5, SIZE, placed[0]), render(preset, 5, SIZE, placed[0])
    assert np.array_equal(a.image, b.image) and np.array_equal(a.depth, b.depth)
    c = render(preset, 6, SIZE, placed[0])
    background = placed[0][..., 3] == 0
    assert np.abs(a.image.astype(int) - c.image.astype(int))[background].mean() > 4


@pytest.mark.parametrize("preset", list(PROMPTS))
def test_depth_ground_nearer_at_the_bottom(preset, placed):
    for seed in range(3):
        s = render(preset, seed, SIZE, placed[seed])
        free = np.nonzero(placed[seed][..., 3].max(axis=0) == 0)[0]  # columns the product does not cover
        col = s.depth[:, free]
        assert (np.diff(col, axis=0) <= 1e-4).all(), "depth must never grow towards the bottom of the frame"
        assert (col[-1] < col[s.horizon] - 0.5).all() and col[-1].max() < FAR / 4
        assert s.surface[s.horizon:].any() and not s.surface[: s.horizon].any()


@pytest.mark.parametrize("preset", list(PROMPTS))
def test_product_stands_on_the_surface_with_a_contact_shadow(preset, placed):
    darker = []
    for seed, prod in enumerate(placed):
        s = render(preset, seed, SIZE, prod)
        alpha = prod[..., 3] > 127
        cols = np.nonzero(alpha[s.base])[0]
        assert s.base > s.horizon and s.surface[min(s.base + 1, SIZE - 1), cols].all()
        # A standing product is as far as the ground under it, and nearer than the surface behind it.
        assert np.allclose(s.depth[alpha], s.depth[min(s.base + 1, SIZE - 1), cols].mean(), rtol=0.1)
        assert s.depth[alpha].max() < s.depth[s.horizon, 0]
        # The same scene with a one-pixel "product" at the same base row, far from this one, has the
        # same geometry, textures and light: only the shadows differ.
        probe = np.zeros_like(prod)
        probe[s.base, 0 if cols.mean() > SIZE / 2 else SIZE - 1] = 255
        plain = render(preset, seed, SIZE, probe)
        assert plain.horizon == s.horizon
        rows = slice(s.base + 2, s.base + 4)  # under the base, past its anti-aliased row
        if s.base + 4 > SIZE:
            continue
        under, level = (im[rows][:, cols].astype(float).mean() for im in (s.image, plain.image))
        darker.append(under / max(level, 1))
    assert darker and np.mean(darker) < 0.8


@pytest.mark.parametrize("preset", ["kitchen", "living", "beach", "forest", "concrete", "tiles"])
def test_the_panels_ground_line_finds_the_rendered_horizon(preset):
    """The panel judges space and size from the strongest row step of the background, so a preset must not
    draw a stronger one than its horizon (a redraw with cabinets over a white backsplash made the detector
    miss every kitchen). Studio (the podium top) and snow (the snowfield behind the table) are known misses."""
    from annotation.rules import ground_line

    layout = LayoutConfig(size=128, scale_range=(0.6, 0.9), jitter=0.1)
    prods = [p[3] for p in synthetic_products(ProductsConfig(count=4, seed=11, truncated_every=0))]
    errors = []
    for j in range(20):
        c = make_conditions(prods[j % 4], layout, draw_layout(layout, np.random.default_rng([7, j])))
        scene = render(preset, 6000 + j, 128, c.product)
        errors.append(abs(ground_line(scene.image, c.product[..., 3])[0] - scene.horizon))
    assert np.mean(np.array(errors) <= 3) >= 0.5, errors  # 0.70-1.00 per preset in bench_failures
