import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq

from rf1m import schema


def test_projections_name_the_same_members_and_fields():
    members = schema.wds_member_names()
    assert set(schema.hf_features()) == set(members)
    assert set(schema.hf_features()[schema.RECIPE_MEMBER]) == set(schema.RECIPE_NAMES)
    cols = schema.sidecar_schema().names
    assert cols[: len(schema.RECIPE)] == list(schema.RECIPE_NAMES)
    for m in members:
        stem = m.split(".")[0]
        assert f"{stem}_offset" in cols and f"{stem}_size" in cols


def test_taxonomy_is_the_papers():
    assert schema.LABEL_NAMES == ("available", "unsuitable", "space_mismatch", "size_mismatch",
                                  "indistinctiveness", "shape_hallucination")
    assert all(r.definition for r in schema.LABELS)


def test_written_shards_follow_the_schema(small_batch):
    tmp, cfg, _ = small_batch
    batch = Path(cfg.out) / cfg.batch_id
    tar = sorted(batch.glob("*.tar"))[0]
    with tarfile.open(tar) as t:
        names = t.getnames()
        keys = sorted({n.split(".", 1)[0] for n in names})
        assert sorted(n.split(".", 1)[1] for n in names if n.startswith(keys[0] + ".")) == sorted(
            schema.wds_member_names())
        recipe = json.loads(t.extractfile(f"{keys[0]}.{schema.RECIPE_MEMBER}").read())
    assert set(recipe) == set(schema.RECIPE_NAMES)
    assert pq.read_schema(tar.with_suffix(".parquet")).remove_metadata() == schema.sidecar_schema()


def test_hf_features_load_a_shard(small_batch):
    from datasets import Image, load_dataset

    tmp, cfg, _ = small_batch
    tars = sorted(str(p) for p in (Path(cfg.out) / cfg.batch_id).glob("*.tar"))
    ds = load_dataset("webdataset", data_files={"train": tars}, features=schema.hf_features(),
                      split="train", cache_dir=str(tmp / "hf"))
    assert len(ds) == 6
    assert isinstance(ds.features["image.png"], Image)
    row = ds[0]
    assert row["image.png"].size == (64, 64)
    assert row["recipe.json"]["batch_id"] == "t"
