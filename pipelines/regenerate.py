"""`rf1m regenerate KEY`: rebuild one sample from its recipe alone and compare it with the stored image.

The sample is found through the catalog (the shard sidecars under the data root); its recipe.json
then supplies everything else: the product (by id, from the products table, refused when its bytes
no longer match the recorded sha256), the models (by recorded path or hub id, loaded at the recorded
commit; a local folder is refused when its content hash changed), the layout, the seed and the
sampler. The pixels come from `worker.diffuse`, the same function the generate stage uses, so what
is compared is the recipe, not two copies of the code. Library versions that differ from the
recorded ones do not stop it (the difference it prints shows their effect); they are listed.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.conditions import Layout, LayoutConfig, make_conditions
from pipelines.generate import GenerateConfig, Prompt
from pipelines.products import read_products
from pipelines.worker import diffuse
from rf1m import schema, shards
from rf1m.catalog import Catalog


@dataclass(frozen=True)
class RegenerateConfig:
    key: str
    data: str = "data"  # data root: <data>/shards/<batch>/*.parquet, <data>/products
    products: str | None = None  # products folder; default <data>/products
    out: str | None = None  # write the regenerated image here (PNG)
    threads: int = 1


def find_sample(data: str | Path, key: str) -> tuple[dict, np.ndarray]:
    """The recipe and the stored image of `key`, read by byte offset from its shard."""
    cat = Catalog(data)
    cur = cat.con.execute("SELECT * FROM samples WHERE key = ?", [key])
    found = cur.fetchone()
    if found is None:
        raise ValueError(f"unknown sample key {key!r}: no shard sidecar under {cat.root / 'shards'} holds it")
    row = dict(zip((d[0] for d in cur.description), found))
    recipe = json.loads(shards.member_bytes(row["batch_dir"], row, "recipe"))
    missing = [n for n in schema.REGENERATE_NAMES if n not in recipe]
    if missing:
        raise ValueError(f"sample {key!r} was generated before its recipe recorded {', '.join(missing)}: "
                         "it cannot be regenerated (generate the batch again)")
    image = np.asarray(Image.open(io.BytesIO(shards.member_bytes(row["batch_dir"], row, "image"))).convert("RGB"))
    return recipe, image


def product_pixels(products_dir: Path, recipe: dict) -> np.ndarray:
    """The product's RGBA pixels, refused when the file is not the one the sample was made from."""
    rows = [p for p in read_products(products_dir) if p["product_id"] == recipe["product_id"]]
    if not rows:
        raise ValueError(f"product {recipe['product_id']!r} is not in {products_dir / 'products.parquet'}")
    path = products_dir / rows[0]["image"]
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if sha != recipe["product_sha256"]:
        raise ValueError(f"product image {path} changed since the sample was made: sha256 {sha[:12]}..., "
                         f"recorded {recipe['product_sha256'][:12]}...")
    return np.asarray(Image.open(path).convert("RGBA"))


def check_model(model: str, recorded: str) -> None:
    """A local folder must hash as recorded; a hub id must be pinned to a commit (a branch moves)."""
    from pipelines.models import COMMIT, folder_hash

    if Path(model).exists():
        actual = folder_hash(Path(model))
        if actual != recorded:
            raise ValueError(f"model {model} changed since the sample was made: revision {actual[:19]}..., "
                             f"recorded {recorded[:19]}...")
    elif not COMMIT.fullmatch(recorded):
        raise ValueError(f"model {model!r} is recorded at revision {recorded!r}, not a commit: it cannot be pinned")


def config_from_recipe(recipe: dict) -> GenerateConfig:
    """The generate config the recipe's knobs describe (the inverse of `worker.config_knobs`)."""
    def pick(cls) -> dict:
        return {f.name: recipe[f.name] for f in fields(cls) if f.name in schema.REGENERATE_NAMES}

    knobs = pick(GenerateConfig)
    if knobs["controlnet_model"] == recipe["base_model"]:
        knobs["controlnet_model"] = None  # the ControlNet lives inside the base folder
    return GenerateConfig(**knobs, layout=LayoutConfig(**pick(LayoutConfig)), revision=recipe["model_revision"])


def run(cfg: RegenerateConfig) -> dict:
    import torch

    from pipelines.models import library_versions, load_pipeline

    torch.set_num_threads(cfg.threads)
    recipe, stored = find_sample(cfg.data, cfg.key)
    product = product_pixels(Path(cfg.products or Path(cfg.data) / "products"), recipe)
    check_model(recipe["base_model"], recipe["model_revision"])
    if recipe["controlnet_model"] != recipe["base_model"]:
        check_model(recipe["controlnet_model"], recipe["controlnet_revision"])
    gen = config_from_recipe(recipe)
    notes = []
    if gen.device.startswith("cuda") and not torch.cuda.is_available():
        notes.append(f"recorded on {gen.device}, regenerated on cpu (float32): expect larger differences")
        gen = replace(gen, device="cpu")
    now, then = library_versions().split(), recipe["library_versions"].split()
    if now != then:
        notes.append("library versions differ: " + ", ".join(sorted(set(then) - set(now))) + " recorded; "
                     + ", ".join(sorted(set(now) - set(then))) + " now")
    pipe = load_pipeline(gen.base_model, gen.controlnet_model, gen.revision, gen.device, gen.scheduler,
                         gen.controlnet_revision)
    dtype = str(pipe.unet.dtype).removeprefix("torch.")
    if dtype != recipe["dtype"]:
        notes.append(f"recorded in {recipe['dtype']}, regenerated in {dtype}")
    conds = make_conditions(product, gen.layout, Layout(recipe["scale"], recipe["offset_x"], recipe["offset_y"]))
    prompt = Prompt(recipe["prompt_id"], recipe["prompt"], recipe["negative_prompt"])
    image = diffuse(pipe, gen, [prompt], [recipe["seed"]], [conds])[0]
    diff = np.abs(image.astype(np.int16) - stored.astype(np.int16))
    result = {"key": cfg.key, "max_pixel_diff": int(diff.max()), "pixels_differing": int((diff.max(-1) > 0).sum()),
              "pixels": int(diff.shape[0] * diff.shape[1]), "notes": notes}
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "RGB").save(cfg.out)
        result["out"] = cfg.out
    return result
