import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from rf1m import release, schema
from tests.conftest import write_consensus


def test_load_dataset_gives_declared_types_and_three_splits(released, tmp_path):
    from datasets import ClassLabel, Image, List

    root, cfg, keys = released
    ds = release.load("v0.1", root=cfg.out, cache_dir=tmp_path)
    assert set(ds) == {"train", "validation", "test"} and sum(len(d) for d in ds.values()) == 6
    f = ds["train"].features
    assert isinstance(f["image.png"], Image) and isinstance(f["label.cls"], ClassLabel)
    assert f["label.cls"].names == ["available", "not_available"]
    assert isinstance(f["labels.json"]["reasons"], List)
    assert f["labels.json"]["reasons"].feature.names == list(schema.REASON_NAMES)
    row = ds["train"][0]
    assert row["image.png"].size == (64, 64) and row["recipe.json"]["key"] in keys
    for split in ("train", "validation", "test"):
        streamed = release.load("v0.1", split=split, root=cfg.out, streaming=True, cache_dir=tmp_path)
        assert [r["recipe.json"]["key"] for r in streamed] == [r["recipe.json"]["key"] for r in ds[split]]
        assert [r["label.cls"] for r in streamed] == ds[split]["label.cls"]


def test_no_product_crosses_splits_and_splits_are_deterministic():
    rows = [{"product_id": f"p{i % 50}", "category": ["a", "b", "c"][i % 3],
             "verdict": "available" if i % 7 < 3 else "not_available"} for i in range(400)]
    first = release.split_products(rows, (0.8, 0.1, 0.1), seed=0)
    assert first == release.split_products(rows, (0.8, 0.1, 0.1), seed=0)
    assert first != release.split_products(rows, (0.8, 0.1, 0.1), seed=1)
    counts = Counter(first.values())
    assert counts == {"train": 40, "validation": 5, "test": 5}
    for cat in "abc":  # stratified: every category reaches the training split
        assert any(first[r["product_id"]] == "train" for r in rows if r["category"] == cat)


def test_released_products_never_cross_splits(released):
    root, cfg, _ = released
    by_product = {}
    for r in release.read_labels("v0.1", cfg.out):
        assert by_product.setdefault(r["product_id"], r["split"]) == r["split"]


def test_card_numbers_equal_counts_from_the_data(released):
    root, cfg, _ = released
    card = (Path(cfg.out) / "v0.1" / "README.md").read_text()
    rows = release.read_labels("v0.1", cfg.out)
    for split in release.SPLITS:
        rs = [r for r in rows if r["split"] == split]
        line = re.search(rf"^\| {split} \| (.*) \|$", card, re.M).group(1).split(" | ")
        want = [len(rs), len({r["product_id"] for r in rs}), sum(r["label"] == 0 for r in rs),
                sum(r["label"] == 1 for r in rs),
                *[sum(i in r["reasons"] for r in rs) for i in range(len(schema.REASON_NAMES))]]
        assert [int(x) for x in line] == want
    assert "license: cc-by-nc-4.0" in card and "@inproceedings" in card


def test_verify_catches_a_flipped_byte_and_overwrite_is_refused(released, tmp_path):
    root, cfg, _ = released
    copy = tmp_path / "releases"
    shutil.copytree(Path(cfg.out), copy)
    assert release.verify("v0.1", copy)["ok"]
    tar = sorted((copy / "v0.1" / "data").glob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[700] ^= 0x01
    tar.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"changed data/.*\.tar"):
        release.verify("v0.1", copy)
    before = (Path(cfg.out) / "v0.1" / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match="immutable"):
        release.compile_release(cfg)
    assert (Path(cfg.out) / "v0.1" / "manifest.json").read_bytes() == before


def test_diff_on_a_constructed_pair(released):
    root, cfg, keys = released
    ks = sorted(keys)
    write_consensus(root / "labels2", cfg.batches[0], ks, flip=ks[2], low=ks[4])
    v2 = replace(cfg, version="v0.2", parent="v0.1", labels=str(root / "labels2"),
                 policy=release.Policy(min_confidence=0.5))
    release.compile_release(v2)
    d = release.diff("v0.1", "v0.2", cfg.out)
    assert d["removed"] == [ks[4]] and d["added"] == [] and d["relabelled"] == [ks[2]]
    # v0.1: ks[1,3,5] available, ks[0,2,4] not (2 reasons each); v0.2 drops ks[4], flips ks[2] to available
    assert d["label_deltas"] == {"available": 1, "not_available": -2, "size_mismatch": -2,
                                 "shape_hallucination": -2}
    assert json.loads((Path(cfg.out) / "v0.2" / "manifest.json").read_text())["parent"] == "v0.1"


def test_same_name_different_release_never_shares_a_cache(released, tmp_path):
    root, cfg, keys = released
    other = replace(cfg, out=str(tmp_path / "elsewhere"), policy=release.Policy(min_annotators=2))
    release.compile_release(other)
    cache = tmp_path / "cache"
    a = release.load("v0.1", root=cfg.out, cache_dir=cache)
    b = release.load("v0.1", root=other.out, cache_dir=cache)
    assert sum(map(len, a.values())) == 6 and sum(map(len, b.values())) == 3


def run(cmd, cwd):
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)


def test_dvc_push_and_pull_restore_a_release_bit_identical(released, tmp_path):
    root, cfg, _ = released
    dvc = str(Path(sys.executable).with_name("dvc"))
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.email", "t@x"], repo)
    run(["git", "config", "user.name", "t"], repo)
    run([dvc, "init", "-q"], repo)
    run([dvc, "config", "core.analytics", "false"], repo)
    shutil.copytree(Path(cfg.out) / "v0.1", repo / "releases" / "v0.1")
    run([dvc, "add", "-q", "releases/v0.1"], repo)
    run([dvc, "remote", "add", "-d", "local", str(tmp_path / "remote")], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "v0.1"], repo)
    run([dvc, "push", "-q"], repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run([dvc, "pull", "-q"], clone)
    assert release.verify("v0.1", clone / "releases")["ok"]

    def digest(d):
        return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
                if p.is_file()}

    assert digest(clone / "releases" / "v0.1") == digest(Path(cfg.out) / "v0.1")


def test_catalog_says_which_sample_is_in_which_release(released, small_batch):
    from rf1m.catalog import Catalog

    root, cfg, keys = released
    rows = Catalog(small_batch[0], releases=cfg.out).query(
        "SELECT version, split, count(*) AS n FROM releases WHERE version = 'v0.1' GROUP BY ALL").to_pylist()
    assert sum(r["n"] for r in rows) == len(keys) and {r["split"] for r in rows} == set(release.SPLITS)
    empty = Catalog(root / "nothing", releases=root / "nothing").query("SELECT count(*) AS n FROM releases")
    assert empty.to_pylist() == [{"n": 0}]
