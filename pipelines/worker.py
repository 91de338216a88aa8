"""Generate worker: turns one planned job into one shard.

A worker process owns the loaded models (loaded once, reused by every job it runs) and knows how
a sample's pixels are made; it knows nothing of planning. Its members and recipe are built from the
schema (`rf1m.schema.MEMBERS`, `RECIPE`), so a member or recipe field the schema gains and the
worker does not make fails loudly here instead of writing a sample that lacks it.

A job whose folder is a URL (`generate.out: s3://...`) writes its shard exactly as into a local
folder, in a temporary one, and then publishes it (`publish`): no node needs a shared disk.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pipelines.aux_maps import AuxMaps
from pipelines.conditions import Conditions, Layout, make_conditions, paste_back
from rf1m import schema, shards, storage
from rf1m.quarantine import Record, Rejected

if TYPE_CHECKING:
    from pipelines.generate import GenerateConfig, Prompt

_LOADED: dict = {}  # per process: the pipeline and aux models of the last config


def load_models(cfg: GenerateConfig, revisions: tuple[str | None, str | None] | None = None):
    """The pipeline at `revisions` (base, ControlNet; resolved commits from the planner) and the aux models."""
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


def recipe_of(values: dict) -> dict:
    """Exactly the schema's recipe fields: one missing or one the schema does not know is a bug here."""
    names = set(schema.RECIPE_NAMES)
    if set(values) != names:
        raise RuntimeError(f"worker recipe does not match rf1m.schema.RECIPE: missing "
                           f"{sorted(names - set(values))}, unknown {sorted(set(values) - names)}")
    return {n: values[n] for n in schema.RECIPE_NAMES}


def fit_original(product: np.ndarray, side: int) -> np.ndarray:
    """The product image as given (HxWx4), scaled so its longest side is `side` and centred on a
    transparent square: every member has the canvas' size, but this one keeps the photo's own framing
    (a truncated product stays visibly cut) and carries nothing of the layout."""
    h, w = product.shape[:2]
    nw, nh = max(1, round(w * side / max(h, w))), max(1, round(h * side / max(h, w)))
    out = np.zeros((side, side, 4), np.uint8)
    x0, y0 = (side - nw) // 2, (side - nh) // 2
    out[y0: y0 + nh, x0: x0 + nw] = np.asarray(Image.fromarray(product, "RGBA").resize((nw, nh), Image.LANCZOS))
    return out


def members_of(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    """Every member the schema declares, encoded in its declared mode and format."""
    out = {}
    for m in schema.MEMBERS:
        buf = io.BytesIO()
        Image.fromarray(arrays[m.name], m.mode).save(buf, format=m.ext, compress_level=1)
        out[m.wds_name] = buf.getvalue()
    return out


def _remove_published(url: str, stem: str) -> None:
    """`shards.remove_job` on a bucket prefix, completion marker first: from the first delete on,
    no reader or planner takes what is left of the shard for a finished one."""
    mine = [n for n in storage.list_names(url) if n.startswith((f"{stem}-", f"{stem}."))]
    for name in sorted(mine, key=storage.marker_rank, reverse=True):
        storage.remove(storage.join(url, name))


def publish(local: Path, url: str, stem: str) -> None:
    """Put a finished local shard under `url`: what an earlier attempt left goes first, then every file
    through `storage.put_all` (all uploaded, then copied into place), each tar before its sidecar (as
    `ShardWriter` renames them) and the stats (the completion marker) last. A failure takes back what
    it put, so none of the shard's final names is left; a worker killed while uploading leaves only
    temporaries (swept by the next run's planner), one killed among the copies leaves parts without
    their marker, which the planner redoes and this removes."""
    files = sorted(local.iterdir(), key=lambda p: (storage.marker_rank(p.name), p.suffix != ".tar", p.name))
    _remove_published(url, stem)
    try:
        storage.put_all([(storage.join(url, p.name), p) for p in files])
    except BaseException:
        with contextlib.suppress(Exception):
            _remove_published(url, stem)
        raise


def run_job(job: dict, progress=None) -> dict:
    """Generate one shard. Top-level so a process pool can pickle it."""
    if not storage.is_url(job["dir"]):
        return write_shard(job, Path(job["dir"]), progress)
    with tempfile.TemporaryDirectory(prefix=f"rf1m-{job['stem']}-") as tmp:
        stats = write_shard(job, Path(tmp), progress)
        publish(Path(tmp), job["dir"], job["stem"])
    return stats


def write_shard(job: dict, directory: Path, progress=None) -> dict:
    """The job's shard in a local folder."""
    import torch

    cfg: GenerateConfig = job["cfg"]
    torch.set_num_threads(cfg.threads)
    pipe, aux = load_models(cfg, job["revisions"])
    shared = batch_recipe(cfg, pipe, job["revisions"])
    prompts = {p.id: p for p in cfg.prompts}
    stem = job["stem"]
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
                product_px[s["product_id"]] = np.asarray(
                    Image.open(io.BytesIO(storage.read_bytes(prod["path"]))).convert("RGBA"))
            try:
                c = make_conditions(product_px[s["product_id"]], cfg.layout, Layout(**s["layout"]))
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
                recipe = recipe_of({
                    **shared, "key": s["key"], "product_id": s["product_id"], "product_sha256": prod["sha"],
                    "title": prod["title"], "category": prod["category"],
                    "product_truncated": prod["truncated"], "prompt_id": prompt.id,
                    "prompt": prompt.prompt, "negative_prompt": prompt.negative, "seed": s["seed"],
                    "scale": c.layout.scale, "offset_x": c.layout.offset_x, "offset_y": c.layout.offset_y,
                    "created_at": now,
                })
                original = fit_original(product_px[s["product_id"]], cfg.layout.size)
                members = members_of({"image": img, "product": c.product, "product_original": original,
                                      "mask": c.mask, "canny": c.canny, "depth": d, "saliency": sal})
                writer.write(s["key"], members, recipe)
        if progress:
            progress(len(specs[i: i + cfg.batch_size]))
    parts = writer.close()
    return shards.finish_job(directory, stem, job["fingerprint"], parts,
                             quarantined=[asdict(r) for r in rejected], planned=len(specs))
