"""Failures the generator causes, judged by the panel's oracle (issue 10.3/10.5). Outside CI.

Generates one batch with the trained scene generator (`--model`, default models/scene-generator)
under a separate data root (~/.cache/rf1m-bench-failures, kept: a re-run reuses finished shards):
the demo's products and layout settings (params.yaml), every prompt preset, `--seeds` seeds per
product x prompt. The first `--main` seeds are "the batch"; the others exist to ask whether a
not-available sample's failure depends on the seed or prompt: the layout is a function of
(batch seed, product) only, so every sample of a product has the same layout, and a not-available
sample counts as fixable when another seed of the same prompt (or another prompt) gives an available
sample of that product. Reported: the oracle's available rate (target 40-75%), each reason's count
(every reason must occur), per prompt x reason rates, the fixable share (target >= 0.5), and the
simulated panel's agreement with the oracle (Krippendorff's alpha on the verdict, and pairwise), and
how many verdicts the caption's noun alone decides (the same pixels judged under the kind's other nouns),
and what the banding rule does (`banding`): the main samples with horizontal stripes (RFFT's hack) added
to their background, judged with and without it, and how often it fires on the samples as generated;
and the same for the clutter rule (`clutter`): the scene norms re-measured on renders against the table in
annotation.rules, and the rule on the samples as generated and on any `--hacked` batch (shard folders, e.g.
an RFFT run's round samples under ~/.cache/rf1m-bench-rfft-rounds-v4/rfft/rounds/shards/round3).

    nice -n 5 .venv/bin/python bench/bench_failures.py [--products 25] [--seeds 8] [--main 2] [--hacked DIR ...]
Writes bench/results/failures.json.
"""

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from annotation import panel  # noqa: E402
from annotation import rules as rules_module  # noqa: E402
from annotation.consensus import cohen_kappa, krippendorff_alpha  # noqa: E402
from annotation.rules import REASON_ORDER, features, ground_line, judge  # noqa: E402
from bench.timing import Record  # noqa: E402
from pipelines import generate, params, products  # noqa: E402
from pipelines.conditions import draw_layout, make_conditions  # noqa: E402
from pipelines.generate import GenerateConfig, Prompt  # noqa: E402
from pipelines.scenes import PROMPTS, render  # noqa: E402
from rf1m import shards  # noqa: E402

ROOT = Path.home() / ".cache" / "rf1m-bench-failures"
BATCH = "failures"


def make_batch(model: str, n_products: int, seeds: int) -> GenerateConfig:
    """The bench batch (cached): the demo's products and layout, every prompt, `seeds` seeds."""
    pcfg = params.load("products", products.ProductsConfig, overrides={"out": str(ROOT / "products"),
                                                                       "count": n_products})
    products.run(pcfg)
    gcfg = params.load("generate", GenerateConfig, overrides={
        "base_model": model, "controlnet_model": None, "batch_id": BATCH, "seeds": seeds,
        "products": str(ROOT / "products"), "out": str(ROOT / "shards"),
        "aux": {"depth": "layout_prior"}, "threads": int(os.environ.get("THREADS", "1"))})
    gcfg = GenerateConfig(**{**vars(gcfg), "prompts": tuple(Prompt(k, v) for k, v in PROMPTS.items())})
    t = time.perf_counter()
    out = generate.run(gcfg)
    print(f"generate: {out} in {time.perf_counter() - t:.0f} s")
    return gcfg


def detector_error(gcfg: GenerateConfig, per_preset: int = 20) -> dict:
    """Ground-line detector vs the renderer's true horizon, on rendered scenes with a product placed
    by the batch's layout settings (the truth a generated image lacks)."""
    items = list(products.synthetic_products(products.ProductsConfig(count=16, seed=11, truncated_every=0)))
    out, errors = {}, []
    for i, preset in enumerate(PROMPTS):
        e = []
        for j in range(per_preset):
            c = make_conditions(items[(i + j) % len(items)][3], gcfg.layout,
                                draw_layout(gcfg.layout, np.random.default_rng([i, j])))
            sc = render(preset, 5000 + 100 * i + j, gcfg.layout.size, c.product)
            e.append(ground_line(sc.image, c.product[..., 3])[0] - sc.horizon)
        a = np.abs(e) / gcfg.layout.size
        out[preset] = {"median_abs_error": round(float(np.median(a)), 3), "within_3px": round(float(np.mean(
            np.abs(e) <= 3)), 2), "median_signed_px": float(np.median(e))}
        errors += e
    a = np.abs(errors)
    return {"all": {"median_abs_error": round(float(np.median(a) / gcfg.layout.size), 3),
                    "within_3px": round(float(np.mean(a <= 3)), 2), "scenes": len(a)}, "per_preset": out}


def cached_features(pcfg) -> dict[str, dict]:
    """The panel's features of every sample, cached beside the shards under their fingerprints (the
    stats files), so a regenerated batch (another model) is measured again."""
    stats = "".join(p.read_text() for p in sorted((ROOT / "shards" / BATCH).glob("*.stats.json")))
    stats += Path(rules_module.__file__).read_text()  # new rules, new features
    path = ROOT / f"features-{hashlib.sha256(stats.encode()).hexdigest()[:16]}.json"
    if path.exists():
        return json.loads(path.read_text())
    feats = {k: {n: (v.item() if hasattr(v, "item") else v) for n, v in f.items()}
             for k, f in panel.sample_features(pcfg).items()}
    path.write_text(json.dumps(feats))
    return feats


def striped(image: np.ndarray, alpha: np.ndarray, period: int, amp: int, phase: int) -> np.ndarray:
    """Horizontal bands, alternately `amp` lighter and darker, over the background (not the product)."""
    rows = np.arange(image.shape[0])[:, None, None]
    wave = np.where(((rows + phase) // (period // 2)) % 2 == 0, amp, -amp)
    return np.clip(image.astype(int) + wave * (alpha[..., None] <= 127), 0, 255).astype(np.uint8)


def banding_check(pcfg, feats: dict, main_keys: list[str]) -> dict:
    """The main samples as generated, and with stripes of each (period px, amplitude) added: the oracle's
    available rate with the banding rule and without it (`rules.banding` = inf), both without the clutter
    rule that came after it, then with every rule; and how often banding fires."""
    alone = replace(pcfg.rules, clutter=float("inf"))
    without = replace(alone, banding=float("inf"))
    fired = [feats[k]["banding"] > pcfg.rules.banding for k in main_keys]
    out = {"as_generated": {"fires": round(float(np.mean(fired)), 4),
                            "flipped_to_not_available": sum(judge(feats[k], alone)[0] != judge(feats[k], without)[0]
                                                            for k in main_keys),
                            "samples": len(main_keys)}}
    batch_dir = Path(pcfg.shards) / pcfg.batch_id
    rows = {r["key"]: r for r in shards.read_sidecars(batch_dir).to_pylist()}
    rng = np.random.default_rng(0)
    for period, amp in ((8, 15), (12, 25), (16, 35), (24, 25)):
        with_rule, without_rule, every_rule, fires = [], [], [], []
        for k in main_keys:
            product = panel._member(batch_dir, rows[k], "product", "RGBA")
            image = striped(panel._member(batch_dir, rows[k], "image", "RGB"), product[..., 3], period, amp,
                            int(rng.integers(period)))
            f = {**feats[k], **features(image, product, pcfg.rules)}
            with_rule.append(judge(f, alone)[0] == "available")
            without_rule.append(judge(f, without)[0] == "available")
            every_rule.append(judge(f, pcfg.rules)[0] == "available")
            fires.append(f["banding"] > pcfg.rules.banding)
        out[f"stripes_{period}px_{amp}"] = {"available_without_rule": round(float(np.mean(without_rule)), 3),
                                            "available_with_rule": round(float(np.mean(with_rule)), 3),
                                            "available_every_rule": round(float(np.mean(every_rule)), 3),
                                            "fires": round(float(np.mean(fires)), 3)}
    out["available_as_generated"] = {"without_rule": round(float(np.mean(
        [judge(feats[k], without)[0] == "available" for k in main_keys])), 3),
        "with_rule": round(float(np.mean([judge(feats[k], alone)[0] == "available" for k in main_keys])), 3)}
    return out


def render_clutter(preset: str, seeds=range(1000, 1040)) -> list[float]:
    """`rules.clutter` of the preset's renders without a product: SCENE_CLUTTER is their median (seeds 1000-1039).
    Here, not in pipelines.scenes, so that the generator stages do not depend on the panel's rules; the table's
    test measures with it too."""
    out = []
    for seed in seeds:
        lightness = cv2.cvtColor(render(preset, seed).image, cv2.COLOR_RGB2LAB)[..., 0].astype(np.float64)
        out.append(rules_module.clutter(lightness, np.ones(lightness.shape, bool)))
    return out


def clutter_check(pcfg, feats: dict, main_keys: list[str], oracle: dict, hacked: list[str]) -> dict:
    """Each preset's clutter on 40 renders (`render_clutter`, as SCENE_CLUTTER was measured), and the rule with
    and without it (`rules.clutter` = inf) on the samples as generated and on each `hacked` batch."""
    norms = {}
    for preset in PROMPTS:
        v = render_clutter(preset)
        norms[preset] = {"measured": round(float(np.median(v)), 1), "table": rules_module.SCENE_CLUTTER[preset],
                         "min": round(min(v), 1), "max": round(max(v), 1)}
    without = replace(pcfg.rules, clutter=float("inf"))

    def effect(fs: dict, verdicts: dict) -> dict:
        ratio = [f["clutter"] / rules_module.SCENE_CLUTTER[f["prompt_id"]] for f in fs.values()
                 if f["prompt_id"] in rules_module.SCENE_CLUTTER]
        return {"samples": len(fs), "judged_on_clutter": len(ratio),
                "fires": round(float(np.mean(np.array(ratio) > pcfg.rules.clutter)), 3) if ratio else None,
                "max_ratio_to_scene": round(max(ratio), 2) if ratio else None,
                "available_without_rule": round(float(np.mean([judge(f, without)[0] == "available" for f in fs.values()])), 3),
                "available_with_rule": round(float(np.mean([verdicts[k][0] == "available" for k in fs])), 3)}

    out = {"scene_norms": norms, "as_generated": effect({k: feats[k] for k in main_keys}, oracle)}
    for d in map(Path, hacked):
        fs = panel.sample_features(replace(pcfg, shards=str(d.parent), batch_id=d.name))
        out[str(d)] = effect(fs, {k: judge(f, pcfg.rules) for k, f in fs.items()})
    return out


def rates(verdicts: list[tuple[str, list[str]]]) -> dict:
    n = len(verdicts)
    return {"samples": n, "available": round(sum(v == "available" for v, _ in verdicts) / max(n, 1), 3),
            **{x: round(sum(x in r for _, r in verdicts) / max(n, 1), 3) for x in REASON_ORDER}}


def dependence(feats: dict, oracle: dict, main_keys: list[str], seed_index: dict[int, int]) -> dict:
    """Share of the not-available main samples for which the same product and layout gives an available
    sample under another seed of the same prompt, or under any seed of another prompt; per reason too.
    `by_other_seeds`: the first share when only the first n other seeds (by seed index) are tried,
    n = 1 .. all: how the answer depends on how many seeds one asks."""
    groups = defaultdict(list)
    for k, f in feats.items():
        groups[f["product_id"], f["prompt_id"]].append(k)
    ok = {g: any(oracle[k][0] == "available" for k in ks) for g, ks in groups.items()}
    bad = [k for k in main_keys if oracle[k][0] != "available"]
    out = {"not_available": len(bad)}
    tests = (("all", lambda k: True), ("not_unsuitable", lambda k: "unsuitable" not in oracle[k][1]),
             *((x, lambda k, x=x: x in oracle[k][1]) for x in REASON_ORDER))
    for name, keep in tests:
        ks = [k for k in bad if keep(k)]
        f = [feats[k] for k in ks]
        by_seed = [any(oracle[o][0] == "available" for o in groups[x["product_id"], x["prompt_id"]] if o != k)
                   for k, x in zip(ks, f)]
        by_prompt = [s or any(v for (p, q), v in ok.items() if p == x["product_id"] and q != x["prompt_id"])
                     for s, x in zip(by_seed, f)]
        out[name] = {"samples": len(ks), "fixed_by_other_seed": round(float(np.mean(by_seed)), 3) if ks else None,
                     "fixed_by_other_seed_or_prompt": round(float(np.mean(by_prompt)), 3) if ks else None}
    others = {k: sorted((o for o in groups[feats[k]["product_id"], feats[k]["prompt_id"]] if o != k),
                        key=lambda o: seed_index[feats[o]["seed"]]) for k in bad}
    most = max((len(v) for v in others.values()), default=0)
    out["by_other_seeds"] = {n: round(float(np.mean([any(oracle[o][0] == "available" for o in others[k][:n])
                                                     for k in bad])), 3) for n in range(1, most + 1)} if bad else {}
    return out


def caption_dependence(feats: dict, oracle: dict, main_keys: list[str], rules) -> dict:
    """How much the verdict depends on the caption alone: each main sample judged again with its title's
    noun swapped for each other noun of its kind (`products.NOUNS`), pixels unchanged. `any_other_noun`:
    the share whose verdict differs under at least one; `mean_over_other_nouns`: averaged over them. What
    an image-only judge cannot know, however well it sees."""
    kind_of = {n: k for k, ns in products.NOUNS.items() for n in ns}
    any_change, mean_change = [], []
    for k in main_keys:
        f = feats[k]
        brand, colour, noun = f["title"].split(" ", 2)
        others = [n for n in products.NOUNS[kind_of[noun]] if n != noun]
        changed = [judge({**f, "title": f"{brand} {colour} {n}"}, rules)[0] != oracle[k][0] for n in others]
        any_change.append(any(changed))
        mean_change.append(np.mean(changed))
    return {"samples": len(main_keys), "any_other_noun": round(float(np.mean(any_change)), 3),
            "mean_over_other_nouns": round(float(np.mean(mean_change)), 3)}


def panel_agreement(pcfg, feats: dict, keys: list[str], oracle: dict) -> dict:
    """Every simulated annotator judges every main sample (its noise seeded per sample, as in Label
    Studio): verdict accuracy and Cohen's kappa against the oracle, Krippendorff's alpha among them."""
    annotators = panel.make_panel(pcfg)
    votes = {}
    for ann in annotators:
        v = []
        for k in keys:
            ann.rng.seed(f"{pcfg.seed}/{ann.email}/{k}")
            v.append(ann.label(feats[k])[0])
        votes[ann.email] = v
    truth = [oracle[k][0] for k in keys]
    per = {e: {"accuracy": round(float(np.mean([a == b for a, b in zip(v, truth)])), 3),
               "kappa_vs_oracle": round(cohen_kappa(v, truth)[0] or 0.0, 3)} for e, v in votes.items()}
    alpha = krippendorff_alpha([[v[i] for v in votes.values()] for i in range(len(keys))])[0]
    majority = [Counter(v[i] for v in votes.values()).most_common(1)[0][0] for i in range(len(keys))]
    return {"annotators": per, "krippendorff_alpha_panel": round(alpha, 3) if alpha is not None else None,
            "majority_accuracy_vs_oracle": round(float(np.mean([m == t for m, t in zip(majority, truth)])), 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/scene-generator")
    ap.add_argument("--products", type=int, default=25)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--main", type=int, default=2)
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--hacked", nargs="*", default=[], metavar="DIR",
                    help="shard folders of another generator (e.g. RFFT's round samples) to try the clutter rule on")
    a = ap.parse_args()
    for d in a.hacked:  # before the long run, not at its end
        if not list(Path(d).glob("*.parquet")):
            ap.error(f"--hacked {d}: no shards (*.parquet sidecars) there")
    torch.set_num_threads(1)
    rec = Record("failures", vars(a))
    gcfg = make_batch(a.model, a.products, a.seeds)
    if a.generate_only:
        return
    pcfg = params.load("panel", panel.PanelConfig, overrides={"batch_id": BATCH, "shards": str(ROOT / "shards")})
    feats = cached_features(pcfg)
    seed_index = {generate.sample_seed(gcfg.seed, f["product_id"], f["prompt_id"], k): k
                  for f in feats.values() for k in range(a.seeds)}
    oracle = {k: judge(f, pcfg.rules) for k, f in feats.items()}
    main_keys = sorted(k for k, f in feats.items() if seed_index[f["seed"]] < a.main)
    counts = Counter(x for k in main_keys for x in oracle[k][1])
    report = {
        "samples": len(main_keys), "all_samples": len(feats), "rules": vars(pcfg.rules),
        "oracle": rates([oracle[k] for k in main_keys]), "reason_counts": {x: counts[x] for x in REASON_ORDER},
        "per_prompt": {p: rates([oracle[k] for k in main_keys if feats[k]["prompt_id"] == p]) for p in PROMPTS},
        "dependence": dependence(feats, oracle, main_keys, seed_index),
        "caption_dependence": caption_dependence(feats, oracle, main_keys, pcfg.rules),
        "panel_vs_oracle": panel_agreement(pcfg, feats, main_keys, oracle),
        "banding": banding_check(pcfg, feats, main_keys),
        "clutter": clutter_check(pcfg, feats, main_keys, oracle, a.hacked),
        "ground_detector_vs_rendered_truth": detector_error(gcfg),
        "targets": {"available": [0.40, 0.75], "every_reason": True, "fixed_by_other_seed_or_prompt": 0.5},
    }
    print(json.dumps({k: report[k] for k in ("oracle", "reason_counts", "dependence", "caption_dependence",
                                                  "banding", "clutter")}, indent=1))
    rec.save(**report)


if __name__ == "__main__":
    main()
