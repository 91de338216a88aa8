"""A sample's recipe is enough to rebuild it: `rf1m regenerate KEY` (issue 8, item 8)."""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import cli, generate, products, worker
from pipelines.conditions import LayoutConfig
from pipelines.models import folder_hash
from rf1m import schema, shards
from tests.conftest import small_config

REPO = Path(__file__).resolve().parents[1]


def recipes(batch: Path) -> list[dict]:
    """Every recipe.json as written in the tars (not the sidecar the writer built from it)."""
    out = []
    for row in shards.read_sidecars(batch).to_pylist():
        out.append(json.loads(shards.read_member(batch / row["shard"], row["recipe_offset"], row["recipe_size"])))
    return sorted(out, key=lambda r: r["key"])


def stored_image(batch: Path, key: str) -> np.ndarray:
    row = next(r for r in shards.read_sidecars(batch).to_pylist() if r["key"] == key)
    data = shards.read_member(batch / row["shard"], row["image_offset"], row["image_size"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def regenerate(capsys, *args) -> tuple[int, dict | None, str]:
    capsys.readouterr()
    rc = cli.main(["regenerate", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


def test_recipe_records_every_input_of_the_pixels(small_batch, tiny_model):
    tmp, cfg, _ = small_batch
    rows = recipes(Path(cfg.out) / cfg.batch_id)
    image_of = {p["product_id"]: tmp / "products" / p["image"] for p in products.read_products(tmp / "products")}
    for r in rows:
        assert set(r) == set(schema.RECIPE_NAMES)
        assert r["product_sha256"] == hashlib.sha256(image_of[r["product_id"]].read_bytes()).hexdigest()
        assert (r["dilate"], r["canny_low"], r["canny_high"]) == (5, 100, 200)
        assert (r["eta"], r["controlnet_scale"]) == (0.0, 0.5)
        assert (r["device"], r["dtype"]) == ("cpu", "float32")
        assert f"torch=={torch.__version__}" in r["library_versions"].split()
        assert r["model_revision"] == r["controlnet_revision"] == folder_hash(tiny_model)


def test_every_regeneration_knob_round_trips_through_the_recipe():
    from pipelines.regenerate import config_from_recipe

    cfg = generate.GenerateConfig(base_model="m", steps=3, guidance=5.0, eta=0.3, controlnet_scale=0.8,
                                  scheduler="EulerDiscreteScheduler",
                                  layout=LayoutConfig(size=96, dilate=7, canny_low=50, canny_high=150))
    recipe = {**worker.config_knobs(cfg), "controlnet_model": "m", "model_revision": "r1",
              "controlnet_revision": "r2", "device": "cpu"}
    back = config_from_recipe(recipe)
    assert worker.config_knobs(back) == {**worker.config_knobs(cfg), "device": "cpu", "controlnet_revision": "r2"}
    assert back.layout == LayoutConfig(size=96, dilate=7, canny_low=50, canny_high=150)
    assert (back.controlnet_model, back.revision, back.controlnet_revision) == (None, "r1", "r2")
    # every regeneration field is a config knob or one of the per-sample / resolved values
    per_sample = {"product_id", "product_sha256", "prompt", "negative_prompt", "scale", "offset_x", "offset_y",
                  "model_revision", "dtype"}
    assert set(schema.REGENERATE_NAMES) - set(worker.config_knobs(cfg)) == per_sample


def test_regenerate_rebuilds_stored_images_within_one_grey_level(small_batch, tmp_path, capsys):
    tmp, cfg, _ = small_batch
    batch = Path(cfg.out) / cfg.batch_id
    rows = recipes(batch)
    first_product = [r["key"] for r in rows if r["product_id"] == rows[0]["product_id"]]
    assert len(first_product) == 2  # two seeds, generated together in one pipeline batch
    for key in first_product:
        rc, result, err = regenerate(capsys, key, "--data", tmp, "--out", tmp_path / f"{key}.png")
        assert rc == 0, err
        assert result["max_pixel_diff"] <= 1 and result["notes"] == []
        again = np.asarray(Image.open(tmp_path / f"{key}.png")).astype(int)
        assert np.abs(again - stored_image(batch, key)).max() <= 1
    # the tolerance means something: the other seed of the same product is far off
    other = stored_image(batch, first_product[1])
    assert np.abs(np.asarray(Image.open(tmp_path / f"{first_product[0]}.png")).astype(int) - other).max() > 20


def test_regenerate_refuses_unknown_key_changed_model_and_changed_product(tmp_path, tiny_model, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    products.run(products.ProductsConfig(count=1, size=96, out=str(tmp_path / "products")))
    generate.run(small_config(tmp_path, model, seeds=1))
    (key,) = [r["key"] for r in recipes(tmp_path / "shards" / "t")]

    rc, _, err = regenerate(capsys, "t-nope-kitchen-s1", "--data", tmp_path)
    assert rc == 2 and "unknown sample key 't-nope-kitchen-s1'" in err

    (model / "unet" / "extra.txt").write_text("changed")
    rc, _, err = regenerate(capsys, key, "--data", tmp_path)
    assert rc == 2 and f"model {model} changed" in err
    (model / "unet" / "extra.txt").unlink()

    (image,) = (tmp_path / "products").rglob("*.png")
    px = np.asarray(Image.open(image)).copy()
    px[0, 0, 0] ^= 1
    Image.fromarray(px).save(image)
    rc, _, err = regenerate(capsys, key, "--data", tmp_path)
    assert rc == 2 and "product image" in err and "changed since the sample was made" in err


HUB_RUN = """
import json, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from pathlib import Path
from pipelines import cli, generate, products
from rf1m import shards
from tests.conftest import small_config
tmp = Path({tmp!r})
products.run(products.ProductsConfig(count=1, size=96, out=str(tmp / "products")))
print(json.dumps(generate.run(small_config(tmp, "rf1m-test/tiny-sd", seeds=1))))
(key,) = shards.read_sidecars(tmp / "shards" / "t").column("key").to_pylist()
sys.exit(cli.main(["regenerate", key, "--data", str(tmp)]))
"""


def test_hub_model_is_pinned_to_the_commit_of_its_branch(tmp_path, tiny_model):
    """A real Hugging Face cache layout (refs/main -> snapshots/<commit>), read offline by huggingface_hub
    and diffusers themselves: no network, and nothing mocked."""
    commit = hashlib.sha1(b"rf1m-test/tiny-sd").hexdigest()
    repo = tmp_path / "hub" / "models--rf1m-test--tiny-sd"
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    code = HUB_RUN.format(root=str(REPO), tmp=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    summary, _, result = proc.stdout.partition("\n")
    assert json.loads(summary)["model_revision"] == commit, proc.stderr[-2000:]  # not "main"
    assert proc.returncode == 0, proc.stderr[-2000:]
    (r,) = recipes(tmp_path / "shards" / "t")
    assert (r["base_model"], r["model_revision"], r["controlnet_revision"]) == ("rf1m-test/tiny-sd", commit, commit)
    assert json.loads(result)["max_pixel_diff"] <= 1
    from pipelines.regenerate import check_model

    with pytest.raises(ValueError, match="not a commit"):  # a recipe naming a branch cannot be pinned
        check_model("rf1m-test/tiny-sd", "main")
