"""Generate stage, the planning half: products x prompt presets x seeds -> jobs -> shards.

The batch is planned up front (every sample's key, seed and layout follow from the config), cut
into jobs of `maxcount` samples, and each job becomes one shard (`shard-NNNNNN`) made by a worker
(`pipelines.worker`, which owns the models). A job whose stats file carries the same fingerprint is
skipped, so a re-run does only what is missing or stale and a killed run resumes with every sample
exactly once. The fingerprint holds only the config fields marked `affects_output`: a field is
operational (workers, threads, paths) unless it says otherwise, so adding a setting of that kind
never invalidates finished shards, and a test keeps every recipe knob marked.

`products` and `out` may be fsspec URLs (`s3://bucket/prefix`, `rf1m.storage`): planning reads the
products and the finished shards' stats through it, each worker publishes its own shard to the
bucket (so Ray nodes need no shared disk), and the batch files follow the last shard.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipelines import worker
from pipelines.aux_maps import AuxConfig
from pipelines.conditions import LayoutConfig, draw_layout
from pipelines.engines import RayConfig, make_engine
from pipelines.scenes import NEGATIVE, PROMPTS
from rf1m import schema, storage, tables
from rf1m.quarantine import Record, to_jsonl

SAFE_ID = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    negative: str = NEGATIVE


# The prompt presets are the scene renderer's (pipelines.scenes.PROMPTS: the trained generator learned
# exactly these texts). The demo asks for the first four, which keeps its batch at 200 samples.
DEFAULT_PROMPTS = tuple(Prompt(i, t) for i, t in list(PROMPTS.items())[:4])


AFFECTS_OUTPUT = "affects_output"


def output(default=MISSING, *, default_factory=MISSING):
    """A config field that changes what a shard holds: part of the shard fingerprint."""
    return field(default=default, default_factory=default_factory, metadata={AFFECTS_OUTPUT: True})


@dataclass(frozen=True)
class GenerateConfig:
    batch_id: str = output("demo")  # in every key
    products: str = "data/products"  # the product bytes are fingerprinted, not the folder
    out: str = "data/shards"  # the batch lands in <out>/<batch_id>
    base_model: str = output("models/tiny-sd-controlnet")  # or digiplay/majicMIX_realistic_v7
    controlnet_model: str | None = output(None)  # None: the base folder holds it; or lllyasviel/control_v11p_sd15_canny
    revision: str | None = output(None)  # hub revision (branch, tag or commit) of base_model; local folders are content-hashed
    controlnet_revision: str | None = output(None)  # the same for controlnet_model
    # cpu or cuda: recorded per sample (device, dtype) but not fingerprinted, as before this split
    device: str = "auto"
    scheduler: str = output("DDIMScheduler")
    steps: int = output(8)
    guidance: float = output(7.5)
    eta: float = output(0.0)  # DDIM eta; 0 is deterministic
    controlnet_scale: float = output(0.5)  # controlnet_conditioning_scale (diffusers' default for this pipeline)
    seeds: int = output(2)  # seeds per product x prompt
    seed: int = output(0)
    prompts: tuple[Prompt, ...] = output(DEFAULT_PROMPTS)
    layout: LayoutConfig = output(default_factory=LayoutConfig)
    aux: AuxConfig = output(default_factory=AuxConfig)
    # Batched diffusion is not bit-identical to one image at a time, but within the one grey level
    # that `rf1m regenerate` accepts (it rebuilds one image alone): a throughput knob, not an output.
    batch_size: int = 4
    maxcount: int = output(50)  # samples per shard
    maxsize: int = output(1 << 30)  # bytes per tar part
    durable: bool = False  # fsync every tar before its rename (power-cut safe; kill-safe either way)
    engine: str = "local"  # or ray (settings in `ray`)
    ray: RayConfig = field(default_factory=RayConfig)
    workers: int = 1
    threads: int = 1  # torch threads per worker

    def __post_init__(self):
        if not SAFE_ID.match(self.batch_id):
            raise ValueError(f"batch_id {self.batch_id!r} may hold only letters, digits and _")
        for p in self.prompts:
            if not SAFE_ID.match(p.id):
                raise ValueError(f"prompt id {p.id!r} may hold only letters, digits and _")
        if len({p.id for p in self.prompts}) != len(self.prompts):
            raise ValueError("prompt ids must be unique")
        if self.maxcount < 1 or self.batch_size < 1 or self.seeds < 1 or self.steps < 1:
            raise ValueError("maxcount, batch_size, seeds and steps must be >= 1")


def sample_seed(base: int, product_id: str, prompt_id: str, k: int) -> int:
    digest = hashlib.sha256(f"{base}/{product_id}/{prompt_id}/{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def layout_seed(base: int, product_id: str) -> int:
    """The seed of a product's layout: the batch seed and the product, not the prompt or diffusion seed.

    So every prompt and every seed of a product places it identically, and whatever differs between
    them (a floating product, a wrong scale against the scene) is the generator's doing, which a new
    seed or a better model can fix; the layout itself is recorded in each recipe for `regenerate`."""
    digest = hashlib.sha256(f"{base}/{product_id}/layout".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def plan(cfg: GenerateConfig, products: list[dict]) -> list[dict]:
    """Every sample of the batch, in a fixed order: what it is and where its product goes, not yet
    how it looks. The layout is part of the spec, so the shard fingerprint covers it."""
    specs = []
    for p in products:
        lay = draw_layout(cfg.layout, np.random.default_rng(layout_seed(cfg.seed, p["product_id"])))
        for prompt in cfg.prompts:
            for k in range(cfg.seeds):
                seed = sample_seed(cfg.seed, p["product_id"], prompt.id, k)
                specs.append({"key": f"{cfg.batch_id}-{p['product_id']}-{prompt.id}-s{seed}",
                              "product_id": p["product_id"], "prompt_id": prompt.id, "seed": seed,
                              "layout": asdict(lay)})
    return specs


def _file_sha(path: str | Path) -> str:
    return hashlib.sha256(storage.read_bytes(path)).hexdigest()


def output_settings(cfg: GenerateConfig) -> dict:
    """The config fields marked as changing what a shard holds; the rest (where it runs, how fast,
    where files live) can change without touching a finished shard."""
    values = asdict(cfg)
    return {f.name: values[f.name] for f in fields(cfg) if f.metadata.get(AFFECTS_OUTPUT)}


PRODUCT_FIELDS = ("sha", "title", "category", "truncated")  # what a shard records of its products


def fingerprint(cfg: GenerateConfig, revisions: tuple[str, str], specs: list[dict], products: dict) -> str:
    """What a shard was made from: schema version, output settings, resolved model revisions, its
    samples, and the bytes and metadata of their products (`PRODUCT_FIELDS`: a retitled product's
    recipes must carry the new caption). A shard whose stats carry it is skipped."""
    return hashlib.sha256(json.dumps(
        [schema.SCHEMA_VERSION, output_settings(cfg), revisions, specs, products],
        sort_keys=True, default=str).encode()).hexdigest()


def cut(cfg: GenerateConfig, specs: list[dict], products: dict[str, dict], revisions: tuple[str, str],
        directory: str) -> list[dict]:
    """The plan cut into jobs of `maxcount` samples, one shard each, with the products they use."""
    jobs = []
    for j in range(0, len(specs), cfg.maxcount):
        chunk = specs[j: j + cfg.maxcount]
        used = {s["product_id"]: products[s["product_id"]] for s in chunk}
        jobs.append({"cfg": cfg, "dir": directory, "stem": f"shard-{j // cfg.maxcount:06d}", "specs": chunk,
                     "products": used, "revisions": revisions,
                     "fingerprint": fingerprint(cfg, revisions, chunk,
                                                  {k: [v[f] for f in PRODUCT_FIELDS] for k, v in used.items()})})
    return jobs


def finished(directory: str, names: list[str], job: dict) -> bool:
    """The job's stats (its completion marker) carry its fingerprint and every part they name is
    there. It reads a listing, so it holds for a bucket prefix as for a folder."""
    marker = f"{job['stem']}.stats.json"
    if marker not in names:
        return False
    try:
        stats = json.loads(storage.read_bytes(storage.join(directory, marker)))
    except (OSError, ValueError):
        return False
    return stats.get("fingerprint") == job["fingerprint"] and all(p["tar"] in names for p in stats["parts"])


def run(cfg: GenerateConfig) -> dict:
    """Plan the batch, let the engine's workers make the missing shards, sum up their stats."""
    from pipelines.models import resolve_revision

    products = storage.read_table(tables.PRODUCTS, storage.join(cfg.products, "products.parquet")).to_pylist()
    if not products:
        raise ValueError(f"no products in {cfg.products}: run the products stage first")
    by_id = {p["product_id"]: {"title": p["title"], "category": p["category"], "truncated": p["truncated"],
                               "path": storage.join(cfg.products, p["image"]),
                               "sha": _file_sha(storage.join(cfg.products, p["image"]))}
             for p in products}
    base_revision = resolve_revision(cfg.base_model, cfg.revision)
    revisions = (base_revision, resolve_revision(cfg.controlnet_model, cfg.controlnet_revision)
                 if cfg.controlnet_model else base_revision)
    directory = storage.join(cfg.out, cfg.batch_id)
    if storage.is_url(directory):
        storage.sweep_tmp(directory)  # what a killed upload left; no worker runs yet
    names = storage.list_names(directory)
    specs = plan(cfg, products)
    jobs = cut(cfg, specs, by_id, revisions, directory)
    todo = [j for j in jobs if not finished(directory, names, j)]
    # Shards left from a bigger earlier plan would duplicate nothing but would be stale: remove them.
    stems = [j["stem"] for j in jobs]
    for name in names:
        if name.startswith("shard-") and name[:12] not in stems:
            storage.remove(storage.join(directory, name))
    done = len(specs) - sum(len(t["specs"]) for t in todo)
    with tqdm(total=len(specs), initial=done, desc=f"generate {cfg.batch_id}", unit="img") as bar:
        for _ in make_engine(cfg.engine, cfg.workers, cfg.ray).map(worker.run_job, todo, bar.update):
            pass
    quarantined, count = [], 0
    for stem in stems:
        stats = json.loads(storage.read_bytes(storage.join(directory, f"{stem}.stats.json")))
        quarantined += [Record(**r) for r in stats.get("quarantined", [])]
        count += stats["count"]
    # the batch files after every shard: batch.json is the batch's completion marker
    storage.put_atomic(storage.join(directory, "quarantine.jsonl"), to_jsonl(quarantined).encode())
    summary = {"batch_id": cfg.batch_id, "samples": count, "shards": len(stems),
               "quarantined": len(quarantined), "model_revision": base_revision,
               "controlnet_revision": revisions[1]}
    storage.put_atomic(storage.join(directory, "batch.json"),
                       json.dumps(summary, indent=1, sort_keys=True, ensure_ascii=False).encode())
    return {**summary, "generated_now": len(specs) - done}
