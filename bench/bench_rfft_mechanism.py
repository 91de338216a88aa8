"""How did an RFFT arm fix what it fixed? The base and the arm sample the same held-out items (as rfft_eval
does); for each pair the panel's measurements are compared. Reported: the space mismatches the arm fixed and
how many came with the ground line moving up the image by more than 3 px (a scene repainted around the
product, or a stronger edge higher up), the median line row and step of those, and the clutter ratio (the
background's clutter over its preset's norm; the rule fires above 1.4) at the 50th and 90th percentile, and a
sheet of fixed pairs (the base above the arm, the line in red) to look at.

    .venv/bin/python bench/bench_rfft_mechanism.py --products ~/.cache/rf1m-bench-rfnet-v5/products_cv \
        --arm lcc1_kept=~/.cache/rf1m-bench-rfft-rounds-v6/rfft_seed1/controlnet --name rfft_mechanism
Writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from annotation import panel  # noqa: E402
from annotation.rules import SCENE_CLUTTER  # noqa: E402
from pipelines import params, rfft, rfft_eval  # noqa: E402
from pipelines.models import pick_device  # noqa: E402

OUT = Path(__file__).parent / "results"


def measured(cfg, controlnet: str | None, items: list[tuple]) -> list[dict]:
    gen = rfft.Generator(replace(cfg, controlnet_model=controlnet), pick_device(cfg.device))
    out = []
    for i in tqdm(range(0, len(items), cfg.batch_size), desc=controlnet or "base", unit="batch"):
        chunk = items[i: i + cfg.batch_size]
        imgs = gen.sample([c for *_, c in chunk], [pr for _, pr, _, _ in chunk], [s for _, _, s, _ in chunk])
        for im, (p, pr, _, c) in zip(imgs, chunk):
            f = rfft.oracle_features(im, c.product, p, pr.id)
            out.append({**f, "reasons": panel.judge(f, panel.Rules())[1], "image": im})
    return out


def sheet(pairs: list[tuple[dict, dict]], side: int, path: Path) -> None:
    """Base over arm for each fixed pair, the panel's ground line drawn in red across each image."""
    from PIL import Image

    cols = []
    for b, x in pairs:
        ims = []
        for f in (b, x):
            im = f["image"].copy()
            im[min(int(f["ground"] * side), side - 1)] = (255, 0, 0)
            ims.append(im)
        cols.append(np.concatenate(ims, axis=0))
    Image.fromarray(np.concatenate(cols, axis=1)).save(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--products", required=True)
    ap.add_argument("--arm", required=True, action="append", metavar="NAME=DIR", help="a trained ControlNet")
    ap.add_argument("--base-model", default="models/scene-generator")
    ap.add_argument("--seeds", type=int, default=6, help="seeds per test product x prompt (rfft_eval's items)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="rfft_mechanism")
    ap.add_argument("--sheet", type=int, default=12, help="fixed pairs per arm drawn to <name>_<arm>.png (base above)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = params.load("rfft", rfft.RFFTConfig, overrides={"base_model": a.base_model, "products": a.products,
                                                          "threads": a.threads})
    items, _ = rfft_eval.test_items(cfg, a.seeds)
    base = measured(cfg, None, items)
    side = cfg.layout.size
    res = {"items": len(items), "rules_window": panel.Rules().window, "arms": {}}
    for spec in a.arm:
        name, _, folder = spec.partition("=")
        arm = measured(cfg, str(Path(folder).expanduser()), items)
        fixed = [(b, x) for b, x in zip(base, arm) if "space_mismatch" in b["reasons"] and "space_mismatch" not in x["reasons"]]
        up = [(b["ground"] - x["ground"]) * side > 3 for b, x in fixed]
        ratio = np.array([x["clutter"] / SCENE_CLUTTER[x["prompt_id"]] for x in arm])
        base_ratio = np.array([b["clutter"] / SCENE_CLUTTER[b["prompt_id"]] for b in base])
        res["arms"][name] = {
            "controlnet": folder, "space_mismatch": {"base": sum("space_mismatch" in b["reasons"] for b in base),
                                                     "arm": sum("space_mismatch" in x["reasons"] for x in arm)},
            "space_fixed": len(fixed), "fixed_with_line_up_over_3px": int(sum(up)),
            "fixed_by_prompt": dict(Counter(x["prompt_id"] for _, x in fixed).most_common()),
            "fixed_median_row_base_arm": [float(np.median([b["ground"] * side for b, _ in fixed] or [np.nan])),
                                          float(np.median([x["ground"] * side for _, x in fixed] or [np.nan]))],
            "fixed_median_step_base_arm": [float(np.median([b["ground_step"] for b, _ in fixed] or [np.nan])),
                                           float(np.median([x["ground_step"] for _, x in fixed] or [np.nan]))],
            "clutter_ratio_p50_p90": [round(float(np.percentile(ratio, q)), 3) for q in (50, 90)],
            "base_clutter_ratio_p50_p90": [round(float(np.percentile(base_ratio, q)), 3) for q in (50, 90)]}
        print(name, json.dumps(res["arms"][name]), flush=True)
        if a.sheet and fixed:
            sheet(fixed[:: max(1, len(fixed) // a.sheet)][: a.sheet], side, OUT / f"{a.name}_{name}.png")
    (OUT / f"{a.name}.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
