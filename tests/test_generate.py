import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipelines import generate, products
from rf1m import schema, shards
from rf1m.catalog import Catalog
from tests.conftest import small_config


def keys_in(batch: Path) -> Counter:
    c = Counter()
    for tar in batch.glob("*.tar"):
        with tarfile.open(tar) as t:
            c.update(n.split(".", 1)[0] for n in t.getnames() if n.endswith(".recipe.json"))
    return c


def test_shards_read_with_plain_webdataset(small_batch):
    tmp, cfg, summary = small_batch
    batch = Path(cfg.out) / cfg.batch_id
    assert summary["samples"] == 6 and summary["shards"] == 3
    urls = [str(p) for p in sorted(batch.glob("*.tar"))]
    seen = 0
    for s in wds.WebDataset(urls, shardshuffle=False).decode("pil"):
        seen += 1
        assert set(schema.wds_member_names()) <= set(s)
        assert s["image.png"].size == (64, 64) and s["depth.png"].size == (64, 64)
        r = s["recipe.json"]
        assert r["key"] == s["__key__"] and r["steps"] == 2 and r["model_revision"].startswith("sha256:")
        # the recipe says how to regenerate: seed, layout, models
        assert 0.70 <= r["scale"] <= 0.78 and r["base_model"] == cfg.base_model
    assert seen == 6


def test_catalog_counts_and_random_access(small_batch):
    tmp, cfg, _ = small_batch
    cat = Catalog(tmp)
    rows = cat.query("SELECT product_id, prompt_id, count(*) AS n FROM samples GROUP BY ALL ORDER BY ALL").to_pylist()
    assert [r["n"] for r in rows] == [2, 2, 2] and {r["prompt_id"] for r in rows} == {"kitchen"}
    row = cat.query("SELECT * FROM samples ORDER BY key LIMIT 1").to_pylist()[0]
    tar = Path(cfg.out) / cfg.batch_id / row["shard"]
    data = shards.read_member(tar, row["recipe_offset"], row["recipe_size"])
    assert json.loads(data)["key"] == row["key"]
    assert cat.summary()["samples"] == 6
    snap = cat.snapshot(tmp / "catalog.duckdb")
    import duckdb

    assert duckdb.connect(str(snap), read_only=True).execute("SELECT count(*) FROM samples").fetchone()[0] == 6


def test_rerun_skips_and_stale_shards_are_rebuilt(tmp_path, tiny_model):
    products.run(products.ProductsConfig(count=2, size=96, out=str(tmp_path / "products")))
    cfg = small_config(tmp_path, tiny_model, seeds=1)
    assert generate.run(cfg)["generated_now"] == 2
    assert generate.run(cfg)["generated_now"] == 0
    again = generate.run(replace(cfg, guidance=3.0))  # a recipe change makes every shard stale
    assert again["generated_now"] == 2
    assert set(keys_in(tmp_path / "shards" / "t").values()) == {1}


def test_a_retitled_product_rebuilds_its_shards(tmp_path, tiny_model):
    """The recipe carries the title (RFNet's caption, the panel's size norm): a product retitled by
    new metadata must not keep its old caption. Before, only the product's bytes were fingerprinted,
    so the re-run skipped every shard and the sidecar kept the old title."""
    products.run(products.ProductsConfig(count=2, size=96, out=str(tmp_path / "products")))
    cfg = small_config(tmp_path, tiny_model, seeds=1, maxcount=1)
    generate.run(cfg)
    table = tmp_path / "products" / "products.parquet"
    rows = pq.read_table(table).to_pylist()
    rows[0]["title"] = "Vela red thermos"
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(table)), table)
    assert generate.run(cfg)["generated_now"] == 1  # the other product's shard is untouched
    titles = {r["product_id"]: r["title"] for r in shards.read_sidecars(tmp_path / "shards" / "t").to_pylist()}
    assert titles[rows[0]["product_id"]] == "Vela red thermos"
    assert set(keys_in(tmp_path / "shards" / "t").values()) == {1}


KILLED_RUN = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from tests.conftest import small_config
from pipelines import generate
from pathlib import Path
generate.run(small_config(Path({tmp!r}), Path({model!r}), batch_size=1, maxcount=2, steps=6))
"""


def test_sigkill_mid_run_then_rerun_gives_every_sample_once(tmp_path, tiny_model):
    products.run(products.ProductsConfig(count=3, size=96, out=str(tmp_path / "products")))
    batch = tmp_path / "shards" / "t"
    code = KILLED_RUN.format(root=str(Path(__file__).parents[1]), tmp=str(tmp_path), model=str(tiny_model))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(batch.glob("*.stats.json")):
        time.sleep(0.05)
    time.sleep(0.3)  # inside the second shard
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stats = list(batch.glob("*.stats.json"))
    assert 1 <= len(stats) < 3, "the kill should land mid-run"
    # what a reader sees now is whole: finished tars only, nothing half-written under the final name
    for tar in batch.glob("*.tar"):
        with tarfile.open(tar) as t:
            t.getmembers()
    summary = generate.run(small_config(tmp_path, tiny_model, batch_size=1, maxcount=2, steps=6))
    assert summary["generated_now"] == 6 - 2 * len(stats)
    counts = keys_in(batch)
    assert len(counts) == 6 and set(counts.values()) == {1}
    assert not list(batch.glob("*.tmp"))


def test_process_pool_engine_writes_the_same_samples(tmp_path, tiny_model):
    products.run(products.ProductsConfig(count=2, size=96, out=str(tmp_path / "products")))
    pooled = generate.run(small_config(tmp_path, tiny_model, seeds=2, workers=2, batch_id="pool"))
    serial = generate.run(small_config(tmp_path, tiny_model, seeds=2, batch_id="serial"))
    assert pooled["shards"] == serial["shards"] == 2

    def recipes(batch):
        rows = shards.read_sidecars(tmp_path / "shards" / batch).to_pylist()
        return sorted((r["product_id"], r["seed"], r["scale"], r["offset_x"]) for r in rows)

    assert recipes("pool") == recipes("serial")


def test_fingerprint_holds_only_the_fields_marked_as_output():
    """Operational settings (how fast, where, with how many workers) keep finished shards; what the
    pixels, keys or files depend on makes them stale."""
    from dataclasses import fields

    from pipelines.conditions import LayoutConfig

    cfg = generate.GenerateConfig()

    def fp(c):
        return generate.fingerprint(c, ("rev", "rev"), [{"key": "k", "seed": 1}], {"p": "sha"})

    operational = dict(workers=4, threads=2, batch_size=1, engine="local", durable=True, device="cpu",
                       out="elsewhere", products="elsewhere")
    for name, value in operational.items():
        assert fp(replace(cfg, **{name: value})) == fp(cfg), name
    outputs = dict(seed=1, steps=9, guidance=3.0, eta=0.5, controlnet_scale=1.0, scheduler="EulerDiscreteScheduler",
                   seeds=3, batch_id="other", base_model="m", revision="r", maxcount=7,
                   layout=LayoutConfig(dilate=7), prompts=(generate.Prompt("x", "y"),))
    for name, value in outputs.items():
        assert fp(replace(cfg, **{name: value})) != fp(cfg), name
    # every knob the recipe records as an input of the pixels is marked, except the device (cpu/cuda is
    # recorded per sample, and a re-run on another device keeps what is done, as before)
    unmarked = {f.name for f in fields(cfg) if not f.metadata.get(generate.AFFECTS_OUTPUT)}
    assert unmarked & set(schema.REGENERATE_NAMES) == {"device"}


def test_a_new_operational_setting_keeps_finished_shards(tmp_path, tiny_model):
    """Before the split, any field not on a hand-written exclusion list entered the fingerprint, so
    adding a setting such as a progress switch regenerated every shard of every batch."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class WithProgress(generate.GenerateConfig):
        progress: bool = True

    products.run(products.ProductsConfig(count=2, size=96, out=str(tmp_path / "products")))
    cfg = small_config(tmp_path, tiny_model, seeds=1)
    assert generate.run(cfg)["generated_now"] == 2
    later = WithProgress(**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__}, progress=False)
    assert generate.run(replace(later, threads=2, batch_size=1))["generated_now"] == 0
    assert generate.run(replace(later, seed=5))["generated_now"] == 2


def test_worker_writes_exactly_the_schema_members_and_recipe():
    from pipelines import worker

    arrays = {"image": np.zeros((4, 4, 3), np.uint8), "product": np.zeros((4, 4, 4), np.uint8),
              "product_original": np.zeros((4, 4, 4), np.uint8),
              **{m: np.zeros((4, 4), np.uint8) for m in ("mask", "canny", "depth", "saliency")}}
    assert list(worker.members_of(arrays)) == [m.wds_name for m in schema.MEMBERS]
    full = {n: 0 for n in schema.RECIPE_NAMES}
    assert list(worker.recipe_of(full)) == list(schema.RECIPE_NAMES)
    with pytest.raises(RuntimeError, match="missing \\['seed'\\]"):
        worker.recipe_of({k: v for k, v in full.items() if k != "seed"})
    with pytest.raises(RuntimeError, match="unknown \\['extra'\\]"):
        worker.recipe_of({**full, "extra": 1})
