"""Generate stage: products x prompt presets x seeds -> candidate ads in WebDataset shards.

The batch is planned up front (every sample's key, seed and layout follow from the config), cut
into jobs of `maxcount` samples, and each job becomes one shard (`shard-NNNNNN`). A job whose stats
file carries the same fingerprint (samples, model revision, sampler settings, product bytes) is
skipped, so a re-run does only what is missing or stale and a killed run resumes with every sample
exactly once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipelines.aux_maps import AuxConfig, AuxMaps
from pipelines.conditions import Conditions, LayoutConfig, draw_layout, make_conditions, paste_back
from pipelines.engines import make_engine
from pipelines.products import read_products
from rf1m import schema, shards
from rf1m.quarantine import Record, Rejected, to_jsonl

SAFE_ID = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    negative: str = "low quality, blurry, distorted, deformed, watermark, text"


DEFAULT_PROMPTS = (
    Prompt("kitchen", "a product photo on a marble table in a bright kitchen, soft daylight, professional advertising photography"),
    Prompt("living", "a product standing on a wooden shelf in a cozy living room, warm light, bokeh, high quality"),
    Prompt("beach", "a product on a beach at sunset, sand and waves, golden hour, commercial photo"),
    Prompt("studio", "a product on a clean studio podium, pastel background, minimal, soft shadows, product shot"),
)


@dataclass(frozen=True)
class GenerateConfig:
    batch_id: str = "demo"
    products: str = "data/products"
    out: str = "data/shards"  # the batch lands in <out>/<batch_id>
    base_model: str = "models/tiny-sd-controlnet"  # or digiplay/majicMIX_realistic_v7
    controlnet_model: str | None = None  # None: the base folder holds it; or lllyasviel/control_v11p_sd15_canny
    revision: str | None = None  # hub revision (branch, tag or commit) of base_model; local folders are content-hashed
    controlnet_revision: str | None = None  # the same for controlnet_model
    device: str = "auto"
    scheduler: str = "DDIMScheduler"
    steps: int = 8
    guidance: float = 7.5
    eta: float = 0.0  # DDIM eta; 0 is deterministic
    controlnet_scale: float = 0.5  # controlnet_conditioning_scale (diffusers' default for this pipeline)
    seeds: int = 2  # seeds per product x prompt
    seed: int = 0
    prompts: tuple[Prompt, ...] = DEFAULT_PROMPTS
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    aux: AuxConfig = field(default_factory=AuxConfig)
    batch_size: int = 4
    maxcount: int = 50  # samples per shard
    maxsize: int = 1 << 30  # bytes per tar part
    durable: bool = False  # fsync every tar before its rename (power-cut safe; kill-safe either way)
    engine: str = "local"
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


def plan(cfg: GenerateConfig, products: list[dict]) -> list[dict]:
    """Every sample of the batch, in a fixed order: what it is, not yet how it looks."""
    specs = []
    for p in products:
        for prompt in cfg.prompts:
            for k in range(cfg.seeds):
                seed = sample_seed(cfg.seed, p["product_id"], prompt.id, k)
                specs.append({"key": f"{cfg.batch_id}-{p['product_id']}-{prompt.id}-s{seed}",
                              "product_id": p["product_id"], "prompt_id": prompt.id, "seed": seed})
    return specs


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_LOADED: dict = {}  # per process: the pipeline and aux models, loaded once per worker


def _models(cfg: GenerateConfig, revisions: tuple[str | None, str | None] | None = None):
    """The pipeline at `revisions` (base, ControlNet; resolved commits from `run`) and the aux models."""
    from pipelines.models import load_pipeline, pick_device

    revisions = revisions or (cfg.revision, cfg.controlnet_revision)
    key = (cfg.base_model, cfg.controlnet_model, revisions, cfg.device, cfg.scheduler, cfg.aux)
    if _LOADED.get("key") != key:
        pipe = load_pipeline(cfg.base_model, cfg.controlnet_model, revisions[0], cfg.device, cfg.scheduler,
                             revisions[1])
        _LOADED.update(key=key, pipe=pipe, aux=AuxMaps(cfg.aux, pick_device(cfg.device)))
    return _LOADED["pipe"], _LOADED["aux"]


def diffuse(pipe, cfg: GenerateConfig, prompts: list[Prompt], seeds: list[int],
            conds: list[Conditions]) -> list[np.ndarray]:
    """A batch's pixels, product pasted back: the one place generate and regenerate make them."""
    import torch

    out = pipe(
        prompt=[p.prompt for p in prompts], negative_prompt=[p.negative for p in prompts],
        image=[c.init_image() for c in conds], mask_image=[Image.fromarray(c.mask) for c in conds],
        control_image=[c.control_image() for c in conds], height=cfg.layout.size, width=cfg.layout.size,
        num_inference_steps=cfg.steps, guidance_scale=cfg.guidance, eta=cfg.eta,
        controlnet_conditioning_scale=cfg.controlnet_scale,
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds], output_type="np",
    ).images
    return [paste_back(np.round(o * 255).astype(np.uint8), c.product) for o, c in zip(out, conds)]


def config_knobs(cfg: GenerateConfig) -> dict:
    """The regeneration fields (rf1m.schema) named like a knob of the config or its layout, read by name."""
    values = {**asdict(cfg.layout), **{f.name: getattr(cfg, f.name) for f in fields(cfg)}}
    return {n: values[n] for n in schema.REGENERATE_NAMES if n in values}


def batch_recipe(cfg: GenerateConfig, pipe, revisions: tuple[str, str]) -> dict:
    """Recipe fields shared by every sample of a job; the per-sample ones are added in `run_job`."""
    from pipelines.models import library_versions, pick_device

    return {**config_knobs(cfg), "batch_id": cfg.batch_id, "device": pick_device(cfg.device),
            "dtype": str(pipe.unet.dtype).removeprefix("torch."), "library_versions": library_versions(),
            "controlnet_model": cfg.controlnet_model or cfg.base_model, "model_revision": revisions[0],
            "controlnet_revision": revisions[1], "depth_method": cfg.aux.depth, "saliency_method": cfg.aux.saliency}


def _png(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def run_job(job: dict, progress=None) -> dict:
    """Generate one shard. Top-level so a process pool can pickle it."""
    import torch

    cfg: GenerateConfig = job["cfg"]
    torch.set_num_threads(cfg.threads)
    pipe, aux = _models(cfg, job["revisions"])
    shared = batch_recipe(cfg, pipe, job["revisions"])
    prompts = {p.id: p for p in cfg.prompts}
    directory, stem = Path(job["dir"]), job["stem"]
    shards.remove_job(directory, stem)
    writer = shards.ShardWriter(directory, stem, cfg.maxcount, cfg.maxsize, cfg.durable)
    rejected: list[Record] = []
    product_px: dict[str, np.ndarray] = {}
    specs = job["specs"]
    for i in range(0, len(specs), cfg.batch_size):
        batch, conds = [], []
        for s in specs[i: i + cfg.batch_size]:
            prod = job["products"][s["product_id"]]
            if s["product_id"] not in product_px:
                product_px[s["product_id"]] = np.asarray(Image.open(prod["path"]).convert("RGBA"))
            rng = np.random.default_rng(s["seed"])
            try:
                c = make_conditions(product_px[s["product_id"]], cfg.layout, draw_layout(cfg.layout, rng))
            except Rejected as r:
                rejected.append(Record("generate", s["key"], r.reason, r.detail))
                continue
            batch.append(s)
            conds.append(c)
        if batch:
            images = diffuse(pipe, cfg, [prompts[s["prompt_id"]] for s in batch], [s["seed"] for s in batch], conds)
            depth, saliency = aux(images, [c.product for c in conds])
            now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            for s, c, img, d, sal in zip(batch, conds, images, depth, saliency):
                prod, prompt = job["products"][s["product_id"]], prompts[s["prompt_id"]]
                recipe = {
                    **shared, "key": s["key"], "product_id": s["product_id"], "product_sha256": prod["sha"],
                    "title": prod["title"], "category": prod["category"],
                    "product_truncated": prod["truncated"], "prompt_id": prompt.id,
                    "prompt": prompt.prompt, "negative_prompt": prompt.negative, "seed": s["seed"],
                    "scale": c.layout.scale, "offset_x": c.layout.offset_x, "offset_y": c.layout.offset_y,
                    "created_at": now,
                }
                members = {"image.png": _png(img, "RGB"), "product.png": _png(c.product, "RGBA"),
                           "mask.png": _png(c.mask, "L"), "canny.png": _png(c.canny, "L"),
                           "depth.png": _png(d, "L"), "saliency.png": _png(sal, "L")}
                writer.write(s["key"], members, recipe)
        if progress:
            progress(len(specs[i: i + cfg.batch_size]))
    parts = writer.close()
    return shards.finish_job(directory, stem, job["fingerprint"], parts,
                             quarantined=[asdict(r) for r in rejected], planned=len(specs))


def run(cfg: GenerateConfig) -> dict:
    from pipelines.models import resolve_revision

    products = read_products(cfg.products)
    if not products:
        raise ValueError(f"no products in {cfg.products}: run the products stage first")
    root = Path(cfg.products)
    by_id = {p["product_id"]: {"title": p["title"], "category": p["category"], "truncated": p["truncated"],
                               "path": str(root / p["image"]), "sha": _file_sha(root / p["image"])}
             for p in products}
    base_revision = resolve_revision(cfg.base_model, cfg.revision)
    revisions = (base_revision, resolve_revision(cfg.controlnet_model, cfg.controlnet_revision)
                 if cfg.controlnet_model else base_revision)
    directory = Path(cfg.out) / cfg.batch_id
    directory.mkdir(parents=True, exist_ok=True)
    specs = plan(cfg, products)
    recipe_cfg = {k: v for k, v in asdict(cfg).items()
                  if k not in ("batch_size", "engine", "workers", "threads", "device", "products", "out", "durable")}
    jobs, todo = [], []
    for j in range(0, len(specs), cfg.maxcount):
        chunk = specs[j: j + cfg.maxcount]
        stem = f"shard-{j // cfg.maxcount:06d}"
        used = {s["product_id"]: by_id[s["product_id"]] for s in chunk}
        fp = hashlib.sha256(json.dumps(
            [schema.SCHEMA_VERSION, recipe_cfg, revisions, chunk, {k: v["sha"] for k, v in used.items()}],
            sort_keys=True, default=str).encode()).hexdigest()
        jobs.append(stem)
        if shards.completed_job(directory, stem, fp) is None:
            todo.append({"cfg": cfg, "dir": str(directory), "stem": stem, "specs": chunk,
                         "products": used, "fingerprint": fp, "revisions": revisions})
    # Shards left from a bigger earlier plan would duplicate nothing but would be stale: remove them.
    for f in directory.glob("shard-*"):
        if f.name[:12] not in jobs:
            f.unlink()
    done = len(specs) - sum(len(t["specs"]) for t in todo)
    with tqdm(total=len(specs), initial=done, desc=f"generate {cfg.batch_id}", unit="img") as bar:
        for _ in make_engine(cfg.engine, cfg.workers).map(run_job, todo, bar.update):
            pass
    quarantined, count = [], 0
    for stem in jobs:
        stats = json.loads(shards.job_stats_path(directory, stem).read_text())
        quarantined += [Record(**r) for r in stats.get("quarantined", [])]
        count += stats["count"]
    (directory / "quarantine.jsonl").write_text(to_jsonl(quarantined), encoding="utf-8")
    summary = {"batch_id": cfg.batch_id, "samples": count, "shards": len(jobs),
               "quarantined": len(quarantined), "model_revision": base_revision,
               "controlnet_revision": revisions[1]}
    shards.write_json_atomic(directory / "batch.json", summary)
    return {**summary, "generated_now": len(specs) - done}
