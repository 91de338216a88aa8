"""RFFT evaluation: base / rfft / no_constraint / kl / rfft_anchor on held-out products, paired, by the oracle.

Each trained arm runs `rf1m rfft` (pipelines.rfft.run) from the same base ControlNet with the same
training seed and steps; then every arm samples the SAME test products x prompts x seeds (the test
split of `rfft.split_of`, never seen in training or validation); the figures per arm are
pipelines/rfft_eval.py's (the rfft_eval stage's): oracle and RFNet rates with Wilson intervals,
judge-oracle agreement, paired fixed/broken vs the base with a product-bootstrap interval, diversity
within and between prompts, expected cyclic attempts.
The trained arms are evaluated with their final weights (`last`) and, when early stopping kept
another checkpoint, with the kept one (`<out>/controlnet`) too.

`--rounds R` runs the loop of issue 12 for each arm: `--steps` of RFFT per round; between rounds the
fine-tuned generator samples every train + val product (never a test one) x prompt, real shards through
`generate` with their aux maps; the oracle labels them (standing in for people: the round-2 stages
show the same labels going through Label Studio; here they skip it); RFNet is retrained from the cached
features of bench_rfnet's batch (its 1-2-vote panel labels) plus every round's samples so far, and RFFT
continues from its checkpoint with that judge. `rounds` holds each round's validation history and judge.

    .venv/bin/python bench/bench_rfft.py --products ~/.cache/rf1m-bench-rfnet/products_cv \
        --checkpoint ~/.cache/rf1m-bench-rfnet/judge --out ~/.cache/rf1m-bench-rfft-rounds \
        --arms rfft rfft_anchor --rounds 4 --steps 40 --lr 1e-3 --seeds 6 --threads 2 --name rfft_rounds
    # on another generator: bench_rfnet.py --root R (same --base-model) first, then --rfnet-root R here
(bench/RESULTS.md "RFFT in rounds" ran each arm on its own, with --name rfft_rounds / rfft_rounds_anchor.)
`--arms --evaluate NAME=DIR ...` trains nothing and evaluates earlier runs' ControlNets against the base, e.g.
under an oracle that has changed since.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_rfnet import ROOT as RFNET_ROOT  # noqa: E402
from bench.timing import Record  # noqa: E402

ARMS = {"rfft": {"regulariser": "cc", "anchor": "none"}, "no_constraint": {"regulariser": "none", "anchor": "none"},
        "kl": {"regulariser": "kl", "anchor": "none"},
        # L_CC leaves free a change added equally to both branches (a texture over every prompt): the
        # anchor on the unconditional branch is what prices it (research/rfft_feasibility.md)
        "rfft_anchor": {"regulariser": "cc", "anchor": "uncond"}}


def retrain_judge(a, cfg, out: Path, r: int, pool: dict | None) -> tuple[dict, dict]:
    """Between rounds r and r + 1: sample the train + val products with the fine-tuned ControlNet, label
    by the oracle, retrain RFNet on everything labelled so far. Returns (the pool of cached samples and
    targets, what was trained)."""
    import numpy as np

    from annotation import panel
    from bench import bench_rfnet as br
    from pipelines import generate, params, rfft
    from pipelines.products import read_products
    from rf1m import tables
    from rfnet.data import target
    from rfnet.train import TrainConfig

    tcfg = params.load("rfnet", TrainConfig, "params.yaml", {"batch_size": 64, "epochs": a.judge_epochs})
    if pool is None:  # bench_rfnet's batch and its 1-2-vote labels: what the first judge was trained on
        cache = br.encode_batch(a.rfnet_root / "shards" / "cv", tcfg.model, a.rfnet_root / "features")
        t, ok = br.as_targets(br.panel_labels(a.rfnet_root, "cv", cache["keys"])["train"])
        pool = {"cache": cache, "targets": t, "ok": ok}
    seen = out / "rounds" / "products"  # train + val products only: the test ones stay unseen by the judge
    if not (seen / "products.parquet").exists():
        rows = [x for x in read_products(cfg.products) if rfft.split_of(x["product_id"], cfg.split_salt) != "test"]
        (seen / "images").mkdir(parents=True, exist_ok=True)
        for x in rows:
            shutil.copyfile(Path(cfg.products) / x["image"], seen / x["image"])
        tables.write(tables.PRODUCTS, rows, seen / "products.parquet")
    batch, root = f"round{r}", out / "rounds" / "shards"
    gcfg = generate.GenerateConfig(batch_id=batch, products=str(seen), out=str(root), base_model=cfg.base_model,
                                   controlnet_model=str(out / "last" / "controlnet"), steps=cfg.steps,
                                   guidance=cfg.guidance, controlnet_scale=cfg.controlnet_scale, seeds=1, seed=1000 + r,
                                   prompts=cfg.prompts, layout=cfg.layout, aux=cfg.aux, batch_size=8, threads=a.threads)
    generate.run(gcfg)
    new = br.encode_batch(root / batch, tcfg.model, a.rfnet_root / "features")
    pcfg = params.load("panel", panel.PanelConfig, "params.yaml", {"batch_id": batch, "shards": str(root)})
    feats = panel.sample_features(pcfg)
    verdicts = [panel.judge(feats[k], pcfg.rules) for k in new["keys"]]
    cache = {k: (torch.cat([pool["cache"][k], new[k]]) if isinstance(new[k], torch.Tensor)
                 else None if new[k] is None else pool["cache"][k] + new[k]) for k in new}
    pool = {"cache": cache, "targets": torch.cat([pool["targets"], torch.stack([target(*v) for v in verdicts])]),
            "ok": np.concatenate([pool["ok"], np.ones(len(verdicts), bool)])}
    info = br.train_judge(cache, pool["targets"], pool["ok"], cache["product_id"], tcfg, a.judge_lr,
                          out / "rounds" / f"judge{r + 1}", cfg.split_salt)
    info.update(new_samples=len(verdicts), new_oracle_available=round(float(np.mean([v[0] == "available" for v in verdicts])), 4),
                pool_samples=len(cache["keys"]))
    print(f"round {r}: judge retrained {info}", flush=True)
    return pool, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--products", default="/tmp/h6/data/products")
    ap.add_argument("--count", type=int, default=60, help="synthetic products made when --products is empty")
    ap.add_argument("--out", default="/tmp/h6/bench")
    ap.add_argument("--base-model", default="models/scene-generator")
    ap.add_argument("--checkpoint", default="models/rfnet/best")
    ap.add_argument("--steps", type=int, default=40, help="RFFT optimizer steps per arm")
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=2, help="seeds per test product x prompt")
    ap.add_argument("--beta", type=float, default=100.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--anchor-weight", type=float, default=10.0, help="the rfft_anchor arm's weight on the uncond anchor")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--evaluate", nargs="+", default=[], metavar="NAME=DIR",
                    help="also evaluate these trained ControlNets (e.g. an earlier run's, under today's oracle); "
                         "with --arms and nothing after it, only these and the base")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the loop per arm (relabel, retrain RFNet, continue)")
    ap.add_argument("--name", default="rfft", help="bench/results/<name>.json")
    ap.add_argument("--rfnet-root", type=Path, default=RFNET_ROOT,
                    help="bench_rfnet's --root, made with the same --base-model: its batch and 1-2-vote labels "
                         "start the judge's pool, and the rounds' features are cached beside its own")
    ap.add_argument("--judge-lr", type=float, default=1e-3 / 3, help="RFNet retraining (bench_rfnet's CV choice)")
    ap.add_argument("--judge-epochs", type=int, default=12, help="RFNet retraining (bench_rfnet's CV choice; "
                    "4 before 2026-12-07)")
    a = ap.parse_args()
    evaluate = {}  # checked before any training, so a typo does not surface hours in
    for spec in a.evaluate:
        name, eq, folder = spec.partition("=")
        taken = {"base", *evaluate, *(f"{arm}{tail}" for arm in a.arms for tail in ("", "_kept"))}
        if not eq or not name or name in taken or any(name.startswith(f"{arm}_seed") for arm in a.arms):
            ap.error(f"--evaluate {spec!r}: want NAME=DIR with a new NAME (not base, a trained arm's or a repeat)")
        if not (Path(folder) / "config.json").exists():
            ap.error(f"--evaluate {spec!r}: no ControlNet (config.json) in {folder!r}")
        evaluate[name] = folder
    if not a.arms and not evaluate:
        ap.error("nothing to evaluate but the base: name --arms or --evaluate")
    torch.set_num_threads(a.threads)
    rec = Record(a.name, vars(a))

    from pipelines import params, products, rfft, rfft_eval

    if not (Path(a.products) / "products.parquet").exists():
        products.run(products.ProductsConfig(count=a.count, out=a.products))
    cfg = params.load("rfft", rfft.RFFTConfig, overrides={
        "base_model": a.base_model, "products": a.products, "checkpoint": a.checkpoint, "max_steps": a.steps,
        "eval_every": a.eval_every, "save_every": a.eval_every, "patience": 10 ** 6, "lr": a.lr, "beta": a.beta, "batch_size": a.batch_size,
        "threads": a.threads, "val_seeds": 1})
    data = rfft._products(cfg)
    print(f"{len(data['train'])} train / {len(data['val'])} val / {len(data['test'])} test products", flush=True)
    controlnets, rounds, training = {"base": None}, [], {}
    for name in a.arms:
        for seed in a.train_seeds:
            key = name if seed == 0 else f"{name}_seed{seed}"  # a seed's own folder: runs of other seeds stay
            out = Path(a.out) / key
            arm_cfg = replace(cfg, **ARMS[name], seed=seed, out=str(out), metrics=str(out / "metrics"),
                              anchor_weight=a.anchor_weight if ARMS[name]["anchor"] != "none" else 0.0)
            t = time.time()
            judge, pool, made = a.checkpoint, None, {}
            for r in range(1, a.rounds + 1):
                trained = rfft.run(replace(arm_cfg, checkpoint=judge, max_steps=r * a.steps))
                if r < a.rounds:
                    pool, made[r + 1] = retrain_judge(a, arm_cfg, out, r, pool)
                    judge = made[r + 1]["checkpoint"]
            training[key] = {"steps": trained["steps"], "seconds": round(time.time() - t, 1),
                             "kept_step": trained["best"]["step"]}
            controlnets[key] = str(out / "last" / "controlnet")  # the final weights
            if trained["best"]["step"] not in (0, trained["steps"]):  # early stopping kept another
                controlnets[f"{key}_kept"] = str(out / "controlnet")
            rounds += [{"arm": key, **x, **({"judge_made_from": made[x["round"]]} if x["round"] in made else {})}
                       for x in rfft_eval.rounds_of(trained)]
    controlnets.update(evaluate)
    arms = {}

    def save(name, res):  # after every arm: a long run keeps what it measured
        arms[name] = {**res, **({"training": training[name]} if name in training else {})}
        print(name, {k: res[k] for k in ("oracle", "rfnet", "judge_oracle_agreement")}, flush=True)
        rec.data.update(arms=arms, rounds=rounds)  # issue 12 names the keys at the top level of rfft.json
        rec.save()

    res = rfft_eval.evaluate_arms(cfg, controlnets, a.seeds, on_arm=save)
    rec.data.update(test_products=res["test_products"], generations_per_arm=res["generations_per_arm"])
    rec.save()


if __name__ == "__main__":
    main()
