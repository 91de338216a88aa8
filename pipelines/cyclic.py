"""Cyclic (the paper's "recurrent") generation: resample a product x prompt until RFNet accepts it.

Every product x prompt is a slot with up to K candidate seeds, the seeds and layout `generate.plan`
gives its first K samples, so attempt 1 is the plain generator's first sample and a comparison with a
plain batch is paired. Attempts run in rounds: every open slot gets its n-th
candidate, all of them are generated, given their aux maps and scored by RFNet in one batch, and
decided by `rf1m.decision.decide` at the checkpoint's validated threshold (the rule people see).

Each round chunk is committed in this order: the accepted samples' shard (a normal generate shard,
so push, prelabel and release read the batch as any other), then the attempts table
(`rf1m.tables.ATTEMPTS`, every try with its score, kept or not, rewritten atomically). A re-run reads
the table and continues each slot at its next attempt; a chunk killed between the two writes is
redone under the same shard name, so no sample and no attempt is ever recorded twice. Shards whose
samples the table does not list as accepted (left by such a kill) are removed before work starts.
A batch whose attempts were made from other inputs (`inputs_fingerprint`) starts over instead.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipelines import generate, worker
from pipelines.conditions import Layout, make_conditions
from pipelines.products import read_products
from rf1m import paths, shards, tables
from rf1m.atomic import write_atomic, write_json
from rf1m.decision import decide
from rf1m.quarantine import Record, Rejected, to_jsonl


@dataclass(frozen=True)
class CyclicConfig:
    # The batch this stage makes, its own: the top-level batch_id is generate's (which removes shards it
    # did not plan from its batch folder), so the two never share a folder.
    batch: str = "cyclic"
    data: str = "data"  # attempts go to <data>/attempts/<batch>.parquet (rf1m.paths.Layout)
    checkpoint: str = "models/rfnet/best"  # the judge; its validated threshold decides
    max_attempts: int = 4  # K
    chunk: int = 50  # slots per committed chunk (one shard each)
    metrics: str = "metrics/cyclic"  # <metrics>/<batch>.json
    # model, sampler, layout, aux maps and prompts: params.yaml's `generate` section unless overridden
    # here; its batch_id and seeds are replaced by this stage's batch and max_attempts
    generate: generate.GenerateConfig = field(default_factory=generate.GenerateConfig)

    def __post_init__(self):
        if not generate.SAFE_ID.match(self.batch):
            raise ValueError(f"cyclic batch {self.batch!r} may hold only letters, digits and _")
        if self.max_attempts < 1 or self.chunk < 1:
            raise ValueError("cyclic max_attempts and chunk must be >= 1")


class RFNetJudge:
    """RFNet on in-memory samples, exactly as prelabel feeds it from shards (rfnet.data.sample)."""

    def __init__(self, checkpoint_dir: str, aux=None, device: str = "cpu"):
        """`aux` (an AuxConfig): also own the aux maps, for callers that have no generate worker."""
        from pipelines.aux_maps import AuxMaps
        from rfnet import checkpoint

        self.maps = AuxMaps(aux, device) if aux is not None else None
        self.model, meta = checkpoint.load(Path(checkpoint_dir))
        self.model_version, self.size = meta["model_version"], meta["model"]["image_size"]
        self.threshold = float(meta["decision"]["threshold"])

    def __call__(self, images, products_original, depth, saliency, titles) -> np.ndarray:
        """Probabilities over rfnet.model.CLASSES (N x 5) for uint8 images and their members."""
        from rfnet.data import collate, sample
        from rfnet.evaluate import predict

        items = [{**sample({"product": Image.fromarray(p, "RGBA"), "image": Image.fromarray(im),
                            "depth": Image.fromarray(d), "saliency": Image.fromarray(s)}, t, self.size), "key": str(i)}
                 for i, (im, p, d, s, t) in enumerate(zip(images, products_original, depth, saliency, titles))]
        return predict(self.model, [collate(items)], desc="rfnet judge")[1]


def _slots(gen: generate.GenerateConfig, products: list[dict]) -> list[list[dict]]:
    """Per product x prompt (plan order), its K candidate specs: `plan` with seeds = K."""
    specs = generate.plan(gen, products)
    k = gen.seeds
    return [specs[i: i + k] for i in range(0, len(specs), k)]


def metrics_of(rows: list[dict], n_slots: int, k: int) -> dict:
    """The numbers the issue asks for, from the attempts table alone."""
    per_slot: dict[tuple, list[dict]] = {}
    for r in rows:
        per_slot.setdefault((r["product_id"], r["prompt_id"]), []).append(r)
    won = [min(x["attempt"] for x in rs if x["accepted"]) for rs in per_slot.values() if any(x["accepted"] for x in rs)]
    closed = sum(1 for rs in per_slot.values() if any(x["accepted"] for x in rs) or len(rs) >= k)
    never = closed - len(won)
    first = [r for r in rows if r["attempt"] == 1]
    dist = Counter(won)
    return {
        "slots": n_slots, "finished_slots": closed, "attempts": len(rows), "max_attempts": k,
        "usable": len(won),
        "first_try_available_rate": sum(r["accepted"] for r in first) / len(first) if first else None,
        "mean_attempts_per_usable": float(np.mean(won)) if won else None,
        # every attempt spent (the failures' too) per usable image: what cyclic generation costs
        "attempts_spent_per_usable": len(rows) / len(won) if won else None,
        "attempts_distribution": {str(a): dist.get(a, 0) for a in range(1, k + 1)} | {"never": never},
        "never_within_k_share": never / closed if closed else None,
        "model_versions": sorted({r["model_version"] for r in rows}),
    }


def _drop_orphans(directory: Path, accepted: set[str]) -> None:
    """Shards holding a sample the attempts table does not list as accepted: a chunk killed after its
    shard and before its table rows; it is redone, so its shard goes."""
    import pyarrow.parquet as pq

    for stats in directory.glob("shard-*.stats.json"):
        stem = stats.name.removesuffix(".stats.json")
        keys = [k for f in directory.glob(f"{stem}-*.parquet") for k in pq.read_table(f, columns=["key"])
                .column("key").to_pylist()]
        if not set(keys) <= accepted:
            shards.remove_job(directory, stem)
    for tmp in directory.glob("shard-*.tmp"):
        tmp.unlink()


def inputs_fingerprint(gen: generate.GenerateConfig, revisions: tuple[str, str], by_id: dict, judge) -> str:
    """What every attempt is made from: generate's output settings (seeds aside: they grow with K), the
    models' revisions, the products' bytes and metadata, and the judge with its threshold. K is left
    out, so a run with a larger K continues the slots that never succeeded."""
    return generate.fingerprint(replace(gen, seeds=1), revisions, [{"judge": judge.model_version,
                                                                    "threshold": judge.threshold}],
                                {k: [v[f] for f in generate.PRODUCT_FIELDS] for k, v in by_id.items()})


def _start_over_if_stale(directory: Path, table_path: Path, rows: list[dict], fp: str, batch: str) -> list[dict]:
    """Attempts made from other inputs (a retrained judge or generator, retitled products) describe
    another experiment: resuming would mix them into this one, and with every slot decided a re-run
    would change nothing at all (what DVC's persisted outs did before). The batch starts over, and says so."""
    stamp = directory / "inputs.json"
    old = json.loads(stamp.read_text()).get("fingerprint") if stamp.exists() else None
    if rows and old != fp:
        print(f"cyclic {batch}: its {len(rows)} attempts were made from other inputs (generator, products, "
              "judge or settings): starting the batch over")
        for f in [*directory.glob("shard-*"), directory / "quarantine.jsonl", directory / "batch.json", table_path]:
            f.unlink(missing_ok=True)
        rows = []
    write_json(stamp, {"fingerprint": fp})
    return rows


def run(cfg: CyclicConfig, judge=None) -> dict:
    """`judge`: callable like RFNetJudge (with model_version and threshold); default: cfg.checkpoint's RFNet."""
    import torch

    from pipelines.models import resolve_revision

    gen = replace(cfg.generate, batch_id=cfg.batch, seeds=cfg.max_attempts)
    products = read_products(gen.products)
    if not products:
        raise ValueError(f"no products in {gen.products}: run the products stage first")
    judge = judge or RFNetJudge(cfg.checkpoint)
    root = Path(gen.products)
    by_id = {p["product_id"]: {**p, "path": str(root / p["image"]),
                               "sha": generate._file_sha(root / p["image"])} for p in products}
    base = resolve_revision(gen.base_model, gen.revision)
    revisions = (base, resolve_revision(gen.controlnet_model, gen.controlnet_revision) if gen.controlnet_model else base)
    slots = _slots(gen, products)
    table_path = paths.Layout(cfg.data).attempts(cfg.batch)
    directory = Path(gen.out) / cfg.batch
    directory.mkdir(parents=True, exist_ok=True)
    rows = tables.read(tables.ATTEMPTS, table_path, missing_ok=True).to_pylist()
    rows = _start_over_if_stale(directory, table_path, rows, inputs_fingerprint(gen, revisions, by_id, judge), cfg.batch)
    planned = {(s["product_id"], s["prompt_id"], a + 1): s for slot in slots for a, s in enumerate(slot)}
    for r in rows:
        spec = planned.get((r["product_id"], r["prompt_id"], r["attempt"]))
        if spec is None or spec["seed"] != r["seed"] or r["batch_id"] != cfg.batch:
            raise ValueError(f"{table_path} was made with another plan (attempt {r['attempt']} of {r['key']}); "
                             "use a new cyclic batch or delete the batch's attempts and shards")
    _drop_orphans(directory, {r["key"] for r in rows if r["accepted"]})

    torch.set_num_threads(gen.threads)
    pipe, aux = worker.load_models(gen, revisions)
    shared = worker.batch_recipe(gen, pipe, revisions)
    prompts = {p.id: p for p in gen.prompts}
    quarantined = [Record(**q) for q in _read_jsonl(directory / "quarantine.jsonl")]
    refused = {q.item for q in quarantined}
    pixels: dict[str, np.ndarray] = {}

    tried = Counter((r["product_id"], r["prompt_id"]) for r in rows)
    won = {(r["product_id"], r["prompt_id"]) for r in rows if r["accepted"]}
    slot_id = lambda i: (slots[i][0]["product_id"], slots[i][0]["prompt_id"])  # noqa: E731
    total = len(slots) * cfg.max_attempts
    with tqdm(total=total, initial=len(rows), desc=f"cyclic {cfg.batch}", unit="try") as bar:
        for attempt in range(1, cfg.max_attempts + 1):
            open_idx = [i for i, slot in enumerate(slots) if tried[slot_id(i)] == attempt - 1
                        and slot_id(i) not in won and slot[attempt - 1]["key"] not in refused]
            for c in range(0, len(open_idx), cfg.chunk):
                idx = open_idx[c: c + cfg.chunk]
                specs, conds = [], []
                for i in idx:
                    s = slots[i][attempt - 1]
                    if s["product_id"] not in pixels:
                        pixels[s["product_id"]] = np.asarray(Image.open(by_id[s["product_id"]]["path"]).convert("RGBA"))
                    try:
                        conds.append(make_conditions(pixels[s["product_id"]], gen.layout, Layout(**s["layout"])))
                        specs.append(s)
                    except Rejected as e:  # the product, not the seed, is at fault: the slot stops here
                        quarantined.append(Record("cyclic", s["key"], e.reason, e.detail))
                        refused.add(s["key"])
                stem = f"shard-a{attempt:02d}-{idx[0]:06d}"
                new = _attempt_chunk(gen, pipe, aux, judge, shared, prompts, by_id, pixels, specs, conds,
                                     attempt, directory, stem)
                rows += new
                tried.update((r["product_id"], r["prompt_id"]) for r in new)
                won |= {(r["product_id"], r["prompt_id"]) for r in new if r["accepted"]}
                tables.write(tables.ATTEMPTS, rows, table_path)
                write_atomic(directory / "quarantine.jsonl", to_jsonl(quarantined).encode())
                bar.update(len(idx))
    result = metrics_of(rows, len(slots), cfg.max_attempts)
    stems = sorted({p.name.removesuffix(".stats.json") for p in directory.glob("shard-*.stats.json")})
    count = sum(json.loads(shards.job_stats_path(directory, s).read_text())["count"] for s in stems)
    write_json(directory / "batch.json", {"batch_id": cfg.batch, "samples": count, "shards": len(stems),
                                          "quarantined": len(quarantined), "model_revision": revisions[0],
                                          "controlnet_revision": revisions[1], "cyclic": True})
    result.update(batch_id=cfg.batch, attempts_table=str(table_path), samples=count,
                  threshold=judge.threshold, quarantined=len(quarantined))
    write_json(Path(cfg.metrics) / f"{cfg.batch}.json", result)
    return result


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _attempt_chunk(gen, pipe, aux, judge, shared, prompts, by_id, pixels, specs, conds, attempt, directory,
                   stem) -> list[dict]:
    """Generate, score and decide one chunk; write its accepted samples as one shard; return its rows."""
    from rfnet.model import CLASSES

    images = []
    for i in range(0, len(specs), gen.batch_size):
        images += worker.diffuse(pipe, gen, [prompts[s["prompt_id"]] for s in specs[i: i + gen.batch_size]],
                                 [s["seed"] for s in specs[i: i + gen.batch_size]], conds[i: i + gen.batch_size])
    depth, saliency = aux(images, [c.product for c in conds]) if specs else ([], [])
    originals = [worker.fit_original(pixels[s["product_id"]], gen.layout.size) for s in specs]
    probs = judge(images, originals, depth, saliency, [by_id[s["product_id"]]["title"] for s in specs]) \
        if specs else np.zeros((0, len(CLASSES)))
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    shards.remove_job(directory, stem)
    writer = shards.ShardWriter(directory, stem, maxcount=max(1, len(specs)), maxsize=gen.maxsize, durable=gen.durable)
    rows = []
    for s, c, img, d, sal, orig, p in zip(specs, conds, images, depth, saliency, originals, probs):
        verdict = decide(p[0], dict(zip(CLASSES[1:], p[1:].tolist())), judge.threshold)
        ok = verdict["verdict"] == "available"
        rows.append({"key": s["key"], "batch_id": gen.batch_id, "product_id": s["product_id"],
                     "prompt_id": s["prompt_id"], "attempt": attempt, "seed": s["seed"], "score": float(p[0]),
                     "decision": verdict["verdict"], "threshold": judge.threshold, "accepted": ok,
                     "model_version": judge.model_version, "created_at": now})
        if not ok:
            continue
        prod, prompt = by_id[s["product_id"]], prompts[s["prompt_id"]]
        recipe = worker.recipe_of({
            **shared, "key": s["key"], "product_id": s["product_id"], "product_sha256": prod["sha"],
            "title": prod["title"], "category": prod["category"], "product_truncated": prod["truncated"],
            "prompt_id": prompt.id, "prompt": prompt.prompt, "negative_prompt": prompt.negative, "seed": s["seed"],
            "scale": c.layout.scale, "offset_x": c.layout.offset_x, "offset_y": c.layout.offset_y, "created_at": now})
        writer.write(s["key"], worker.members_of({"image": img, "product": c.product, "product_original": orig,
                                                  "mask": c.mask, "canny": c.canny, "depth": d, "saliency": sal}),
                     recipe)
    parts = writer.close()
    if parts:
        shards.finish_job(directory, stem, "cyclic", parts, planned=len(specs), attempt=attempt)
    return rows
