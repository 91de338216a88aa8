"""Generate-stage throughput as a ratio to calling the bare diffusers pipeline on the same batches
(same prompts, conditions, seeds) in the same process. Target >= 0.9: conditions, paste-back, aux maps,
PNG encoding and shard writing must cost little next to diffusion.

    .venv/bin/python bench/bench_generate.py [--products 4] [--size 128] [--steps 8]
"""

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines import generate, products  # noqa: E402
from pipelines.conditions import LayoutConfig, draw_layout, make_conditions  # noqa: E402
from pipelines.models import build_tiny  # noqa: E402


def bare(cfg, specs, prods):
    pipe, _ = generate._models(cfg)
    prompts = {p.id: p for p in cfg.prompts}
    pixels = {pid: np.asarray(Image.open(p["path"]).convert("RGBA")) for pid, p in prods.items()}
    conds = [make_conditions(pixels[s["product_id"]], cfg.layout,
                             draw_layout(cfg.layout, np.random.default_rng(s["seed"]))) for s in specs]
    t = time.perf_counter()
    for i in range(0, len(specs), cfg.batch_size):
        b, c = specs[i: i + cfg.batch_size], conds[i: i + cfg.batch_size]
        pipe(prompt=[prompts[s["prompt_id"]].prompt for s in b],
             negative_prompt=[prompts[s["prompt_id"]].negative for s in b],
             image=[x.init_image() for x in c], mask_image=[Image.fromarray(x.mask) for x in c],
             control_image=[x.control_image() for x in c], height=cfg.layout.size, width=cfg.layout.size,
             num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
             generator=[torch.Generator().manual_seed(s["seed"]) for s in b], output_type="np")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny(tmp / "tiny", size=a.size)
        products.run(products.ProductsConfig(count=a.products, out=str(tmp / "products")))
        cfg = generate.GenerateConfig(products=str(tmp / "products"), base_model=str(model), steps=a.steps,
                                      layout=LayoutConfig(size=a.size), out=str(tmp / "shards"))
        rows = products.read_products(cfg.products)
        specs = generate.plan(cfg, rows)
        prods = {p["product_id"]: {"path": str(tmp / "products" / p["image"])} for p in rows}
        bare(cfg, specs[:4], prods)  # warm-up: model load and first-call costs
        base, ours = [], []
        for r in range(a.repeats):
            base.append(bare(cfg, specs, prods))
            run_cfg = replace(cfg, batch_id=f"r{r}")
            t = time.perf_counter()
            generate.run(run_cfg)
            ours.append(time.perf_counter() - t)
    n = len(specs)
    print(f"bare pipeline  : {n / min(base):6.2f} img/s")
    print(f"generate stage : {n / min(ours):6.2f} img/s (conditions, aux maps, PNGs, shards)")
    print(f"ratio          : {min(base) / min(ours):.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
