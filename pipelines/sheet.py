"""A contact sheet: one row of generated samples per prompt, to look at a generator as a person would.

Every row uses the same products, layouts and seeds (one per column), so what changes down a column
is the prompt alone and what changes along a row is the product and the seed. `sample_grid` is also
what the generator bench measures, so the sheet shows exactly the images that are scored.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pipelines.conditions import LayoutConfig, draw_layout, make_conditions, paste_back
from pipelines.products import ProductsConfig, synthetic_products
from pipelines.scenes import NEGATIVE, PROMPTS


def sample_grid(pipe, prompts: dict[str, str] = PROMPTS, columns: int = 6, size: int = 128, steps: int = 8,
                guidance: float = 7.5, seed: int = 0, layout: LayoutConfig | None = None, controlnet_scale: float = 0.5):
    """{prompt id: [(image HxWx3 uint8 with the product pasted back, mask HxW uint8), ...]}.

    Products come from the synthetic catalog with a seed the demo catalog does not use, so a trained
    generator is looked at on products it was not trained on.
    """
    import torch

    layout = layout or LayoutConfig(size=size)
    prods = [p[3] for p in synthetic_products(ProductsConfig(count=columns, seed=seed + 7919, size=2 * size,
                                                             truncated_every=0))]
    conds = [make_conditions(p, layout, draw_layout(layout, np.random.default_rng([seed, c])))
             for c, p in enumerate(prods)]
    rows = {}
    for pid, text in prompts.items():
        out = pipe(prompt=[text] * columns, negative_prompt=[NEGATIVE] * columns,
                   image=[c.init_image() for c in conds], mask_image=[Image.fromarray(c.mask) for c in conds],
                   control_image=[c.control_image() for c in conds], height=size, width=size,
                   num_inference_steps=steps, guidance_scale=guidance, controlnet_conditioning_scale=controlnet_scale,
                   output_type="np",
                   generator=[torch.Generator("cpu").manual_seed(seed * 1000 + c) for c in range(columns)]).images
        rows[pid] = [(paste_back(np.round(o * 255).astype(np.uint8), c.product), c.mask)
                     for o, c in zip(out, conds)]
    return rows


def write_sheet(rows: dict[str, list[np.ndarray]], path: str | Path, label_width: int = 72) -> Path:
    """Write the images of `rows` (prompt id -> list of HxWx3 uint8) as one PNG, the id left of each row."""
    lines = []
    for pid, images in rows.items():
        strip = np.concatenate(images, axis=1)
        label = np.full((strip.shape[0], label_width, 3), 255, np.uint8)
        cv2.putText(label, pid, (4, strip.shape[0] // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
        lines.append(np.concatenate([label, strip], axis=1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(lines, axis=0)).save(path)
    return path


def contact_sheet(base_model: str, path: str | Path, columns: int = 6, size: int = 128, steps: int = 8,
                  guidance: float = 7.5, seed: int = 0, device: str = "auto", controlnet_model: str | None = None,
                  controlnet_scale: float = 0.5) -> Path:
    """Load `base_model` (a local folder or a hub id) with `controlnet_model` (None: the folder's own) and
    write its contact sheet to `path`, at the ControlNet scale `generate` uses."""
    from pipelines.models import load_pipeline

    pipe = load_pipeline(base_model, controlnet_model, device=device)
    rows = sample_grid(pipe, PROMPTS, columns, size, steps, guidance, seed, controlnet_scale=controlnet_scale)
    return write_sheet({k: [im for im, _ in v] for k, v in rows.items()}, path)
