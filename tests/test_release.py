import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import release as stage
from rf1m import release, schema, shards
from tests.conftest import write_consensus


def written_splits(out, version) -> dict[str, dict[str, set[str]]]:
    """{"tar": {product_id: splits}, "parquet": {...}, "keys": {key: splits}}, from the files alone:
    the split of a tar is in its name, a sample's product in its recipe.json; the labels Parquet's
    split is its file name (what `load_dataset` uses) and must equal its `split` column."""
    d = Path(out) / version
    found = {"tar": defaultdict(set), "parquet": defaultdict(set), "keys": defaultdict(set)}
    for path in sorted((d / "data").glob("*.tar")):
        split = path.name.rsplit("-", 1)[0]
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".recipe.json"):
                    recipe = json.loads(tar.extractfile(m).read())
                    found["tar"][recipe["product_id"]].add(split)
                    found["keys"][recipe["key"]].add(split)
    for split in release.SPLITS:
        for r in pq.read_table(d / "labels" / f"{split}.parquet").to_pylist():
            assert r["split"] == split
            found["parquet"][r["product_id"]].add(split)
    return {k: dict(v) for k, v in found.items()}


def product_splits(out, version) -> dict[str, str]:
    """product_id -> its one split, after checking that tars and Parquet agree and no product is in two."""
    found = written_splits(out, version)
    assert found["tar"] == found["parquet"]
    assert all(len(v) == 1 for v in found["tar"].values()), found["tar"]
    return {pid: next(iter(v)) for pid, v in found["tar"].items()}


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


def test_split_rule_keeps_earlier_splits_and_deals_new_products_by_hash():
    products = {f"p{i}": "abc"[i % 3] for i in range(50)}
    first = stage.split_products(products, (0.8, 0.1, 0.1), seed=0)
    assert first == stage.split_products(dict(reversed(products.items())), (0.8, 0.1, 0.1), seed=0)
    assert Counter(first.values()) == {"train": 40, "validation": 5, "test": 5}
    for cat in "abc":  # every category reaches the training split
        assert any(first[p] == "train" for p, c in products.items() if c == cat)
    # later: five products gone, ten new; fractions that would want everything elsewhere change nothing old
    later = {**{p: c for p, c in products.items() if p not in {"p0", "p1", "p2", "p3", "p4"}},
             **{f"q{i}": "d" for i in range(10)}}
    second = stage.split_products(later, (0.1, 0.1, 0.8), seed=0, earlier=first)
    assert all(second[p] == first[p] for p in later if p in first)
    # new products are stratified among themselves, whatever the old products' splits
    assert Counter(second[f"q{i}"] for i in range(10)) == {"train": 1, "validation": 1, "test": 8}
    all_train = stage.split_products(later, (0.1, 0.1, 0.8), seed=0, earlier=dict.fromkeys(first, "train"))
    assert all(all_train[f"q{i}"] == second[f"q{i}"] for i in range(10))


def test_released_products_never_cross_splits(released):
    root, cfg, keys = released
    found = written_splits(cfg.out, "v0.1")
    assert sorted(found["keys"]) == sorted(keys)
    assert set(product_splits(cfg.out, "v0.1").values()) == set(release.SPLITS)


def fake_batch(shards_root: Path, batch: str, product_ids: list[str], reverse: bool = False) -> list[str]:
    """Two samples per product with made-up recipes and a 1-pixel PNG for every member: release
    compiling reads only sidecars and member bytes, so no diffusion is needed to exercise it.
    `reverse`: members written in the reverse of the schema's order."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    defaults = {pa.int64(): 0, pa.float64(): 0.7, pa.bool_(): False, pa.string(): "x"}
    w = shards.ShardWriter(shards_root / batch, "shard-000000")
    keys = []
    for pid in product_ids:
        for k in range(2):
            key = f"{batch}-{pid}-s{k}"
            recipe = {f.name: defaults[f.arrow] for f in schema.RECIPE}
            recipe.update(key=key, batch_id=batch, product_id=pid, category=f"c{int(pid[1:]) % 3}", seed=k,
                          created_at="2026-01-01T00:00:00+00:00")
            members = [(m.wds_name, buf.getvalue() + m.name.encode()) for m in schema.MEMBERS]
            w.write(key, dict(reversed(members) if reverse else members), recipe)
            keys.append(key)
    w.close()
    return keys


def test_products_keep_their_split_in_a_later_release(tmp_path):
    """v0.1: 20 products. v0.2, compiled through the CLI with --parent v0.1: one product relabelled
    (all its samples available), one dropped, five new ones in a second batch."""
    from pipelines.cli import main

    old, added = [f"p{i:02d}" for i in range(20)], [f"p{i:02d}" for i in range(20, 25)]
    keys = fake_batch(tmp_path / "shards", "b1", old)
    write_consensus(tmp_path / "labels1", "b1", keys)
    cfg = stage.ReleaseConfig(version="v0.1", batches=("b1",), shards=str(tmp_path / "shards"),
                                labels=str(tmp_path / "labels1"), out=str(tmp_path / "releases"),
                                splits=(0.6, 0.2, 0.2))
    stage.compile_release(cfg)
    relabelled, dropped = "p03", "p11"
    write_consensus(tmp_path / "labels2", "b1", [k for k in keys if f"-{dropped}-" not in k],
                    flip={f"b1-{relabelled}-s0"})  # s0 was not available: now both samples are
    write_consensus(tmp_path / "labels2", "b2", fake_batch(tmp_path / "shards", "b2", added))
    (tmp_path / "params.yaml").write_text(json.dumps({"release": {
        "batches": ["b1", "b2"], "shards": cfg.shards, "labels": str(tmp_path / "labels2"), "out": cfg.out,
        "splits": [0.6, 0.2, 0.2]}}))
    assert main(["--params", str(tmp_path / "params.yaml"), "release", "compile", "v0.2", "--parent", "v0.1"]) == 0

    v1, v2 = product_splits(cfg.out, "v0.1"), product_splits(cfg.out, "v0.2")
    assert sorted(v1) == old and sorted(v2) == sorted(set(old + added) - {dropped})
    assert Counter(v1.values()) == {"train": 12, "validation": 4, "test": 4}
    assert {p: v2[p] for p in v1 if p in v2} == {p: v1[p] for p in v1 if p in v2}
    assert release.diff("v0.1", "v0.2", cfg.out)["relabelled"] == [f"b1-{relabelled}-s0"]


def test_releases_that_disagree_on_a_split_are_refused(tmp_path):
    from rf1m import tables

    row = {c: None for c in tables.RELEASE_LABELS.names}
    for version, split in (("v0.1", "train"), ("v0.2", "test")):
        d = tmp_path / version
        (d / "manifest.json").parent.mkdir(parents=True)
        (d / "manifest.json").write_text("{}")
        for s in release.SPLITS:
            rows = [{**row, "product_id": "p7", "split": s}] if s == split else []
            tables.write(tables.RELEASE_LABELS, rows, d / "labels" / f"{s}.parquet")
    with pytest.raises(ValueError, match=r"'p7' is in train in release v0.1 but in test in release v0.2"):
        stage.earlier_splits(tmp_path)


def test_undecided_samples_are_left_out_and_counted(released, tmp_path):
    root, cfg, keys = released
    tie = sorted(keys)[1]
    write_consensus(tmp_path / "labels", cfg.batches[0], keys, undecided={tie})
    base = replace(cfg, labels=str(tmp_path / "labels"), out=str(tmp_path / "releases"))
    summary = stage.compile_release(base)
    assert summary["excluded"] == {"undecided": 1} and summary["samples"] == len(keys) - 1
    assert tie not in written_splits(base.out, "v0.1")["keys"]
    assert "Labelled samples left out, by the first rule that applies:\n1 undecided." in (
        Path(base.out) / "v0.1" / "README.md").read_text()
    with pytest.raises(ValueError, match="undecided must be exclude or not_available"):
        stage.compile_release(replace(base, version="v0.3", policy=stage.Policy(undecided="keep")))
    kept = replace(base, version="v0.2", policy=stage.Policy(undecided="not_available"))
    assert stage.compile_release(kept)["excluded"] == {}
    assert [r["label"] for r in release.read_labels("v0.2", base.out) if r["key"] == tie] == [1]


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
        stage.compile_release(cfg)
    assert (Path(cfg.out) / "v0.1" / "manifest.json").read_bytes() == before


def test_diff_on_a_constructed_pair(released):
    root, cfg, keys = released
    ks = sorted(keys)
    write_consensus(root / "labels2", cfg.batches[0], ks, flip={ks[2]}, low=ks[4])
    v2 = replace(cfg, version="v0.2", parent="v0.1", labels=str(root / "labels2"),
                 policy=stage.Policy(min_confidence=0.5))
    stage.compile_release(v2)
    d = release.diff("v0.1", "v0.2", cfg.out)
    assert d["removed"] == [ks[4]] and d["added"] == [] and d["relabelled"] == [ks[2]]
    # v0.1: ks[1,3,5] available, ks[0,2,4] not (2 reasons each); v0.2 drops ks[4], flips ks[2] to available
    assert d["label_deltas"] == {"available": 1, "not_available": -2, "size_mismatch": -2,
                                 "shape_hallucination": -2}
    assert json.loads((Path(cfg.out) / "v0.2" / "manifest.json").read_text())["parent"] == "v0.1"


def test_same_name_different_release_never_shares_a_cache(released, tmp_path):
    root, cfg, keys = released
    other = replace(cfg, out=str(tmp_path / "elsewhere"), policy=stage.Policy(min_annotators=2))
    stage.compile_release(other)
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


def _compile_fake(tmp_path, out: str, workers: int, products: int = 30, maxcount: int = 4) -> stage.ReleaseConfig:
    if not (tmp_path / "labels").exists():
        keys = fake_batch(tmp_path / "shards", "b1", [f"p{i:02d}" for i in range(products)])
        write_consensus(tmp_path / "labels", "b1", keys)
    cfg = stage.ReleaseConfig(version="v0.1", batches=("b1",), shards=str(tmp_path / "shards"),
                              labels=str(tmp_path / "labels"), out=str(tmp_path / out), splits=(0.6, 0.2, 0.2),
                              maxcount=maxcount, workers=workers)
    stage.compile_release(cfg)
    return cfg


def release_files(out) -> dict[str, bytes]:
    """Every file of release v0.1 under `out`; the manifest without the two entries that must differ
    between compiles (its creation time and the compile's own params)."""
    d = Path(out) / "v0.1"
    files = {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
    manifest = json.loads(files.pop("manifest.json"))
    files["manifest.json"] = json.dumps({k: v for k, v in manifest.items() if k not in ("created_at", "params")})
    return files


def test_parallel_compile_writes_the_same_bytes_as_a_serial_one(tmp_path):
    """Parts written by two processes equal the parts one process writes, byte for byte (15 parts of
    4 samples here), and the release verifies. The serial compile equals the old tarfile compiler's
    output on the same input (checked once by hand against commit ab4e72e; tests/test_shards.py checks
    the tar bytes against tarfile)."""
    serial = _compile_fake(tmp_path, "serial", workers=1)
    parallel = _compile_fake(tmp_path, "parallel", workers=2)
    a, b = release_files(serial.out), release_files(parallel.out)
    assert len([f for f in a if f.endswith(".tar")]) >= 10
    assert a == b
    assert release.verify("v0.1", parallel.out)["ok"]
    import webdataset as wds

    tars = sorted(str(p) for p in (Path(parallel.out) / "v0.1" / "data").glob("train-*.tar"))
    got = [s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False)]
    assert got == sorted(r["key"] for r in release.read_labels("v0.1", parallel.out) if r["split"] == "train")


def _dies_midway(task):
    """write_part in a worker that is killed (os._exit: no cleanup runs, as with SIGKILL) when it is
    about to write its part's third sample, with two samples of a tar on disk."""
    import itertools
    import os

    calls, write = itertools.count(), shards.TarStream._write

    def dying_write(self, data):
        if next(calls) == 2:
            self.file.flush()
            os._exit(9)
        return write(self, data)

    shards.TarStream._write = dying_write
    return stage.write_part(task)


def test_a_killed_worker_leaves_nothing_under_a_final_name(tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "write_part", _dies_midway)  # the pool pickles it by name: tests.test_release
    with pytest.raises(RuntimeError, match="release writer process died"):
        _compile_fake(tmp_path, "releases", workers=2)
    assert not (tmp_path / "releases").exists() or not any((tmp_path / "releases").iterdir())
    monkeypatch.undo()
    again = _compile_fake(tmp_path, "releases", workers=2)
    assert release_files(again.out) == release_files(_compile_fake(tmp_path, "serial", workers=1).out)


def test_a_truncated_source_shard_is_named(tmp_path):
    """The tarfile compiler released the short reads of a truncated shard as members, silently."""
    keys = fake_batch(tmp_path / "shards", "b1", [f"p{i:02d}" for i in range(20)])
    write_consensus(tmp_path / "labels", "b1", keys)
    tar = tmp_path / "shards" / "b1" / "shard-000000-00.tar"
    tar.write_bytes(tar.read_bytes()[:30_000])
    cfg = stage.ReleaseConfig(version="v0.1", batches=("b1",), shards=str(tmp_path / "shards"),
                              labels=str(tmp_path / "labels"), out=str(tmp_path / "releases"))
    with pytest.raises(ValueError, match=r"shard-000000-00.tar ends before the members its sidecar records"):
        stage.compile_release(cfg)
    assert not (tmp_path / "releases" / "v0.1").exists() and not (tmp_path / "releases" / "v0.1.tmp").exists()


def test_a_release_with_an_empty_split_compiles_and_loads(tmp_path):
    """Three products at 0.8/0.1/0.1 all go to train. The tarfile compiler died on the empty splits'
    labels Parquet (`Dataset.from_list([])`: "Keys mismatch"); now they are empty files of the declared
    schema and `load_dataset` sees the train split only."""
    keys = fake_batch(tmp_path / "shards", "b1", ["p00", "p01", "p02"])
    write_consensus(tmp_path / "labels", "b1", keys)
    cfg = stage.ReleaseConfig(version="v0.1", batches=("b1",), shards=str(tmp_path / "shards"),
                              labels=str(tmp_path / "labels"), out=str(tmp_path / "releases"))
    assert stage.compile_release(cfg)["splits"] == {"train": 6, "validation": 0, "test": 0}
    assert [r["split"] for r in release.read_labels("v0.1", cfg.out)] == ["train"] * 6
    ds = release.load("v0.1", root=cfg.out, cache_dir=tmp_path / "cache")
    assert {k: len(v) for k, v in ds.items()} == {"train": 6}


def test_members_in_another_order_are_copied_one_by_one_to_the_same_bytes(tmp_path):
    """A source whose members are not laid out in the schema's order cannot be copied as one block per
    sample; they are copied member by member with headers built here, and the release is the same."""
    for name, reverse in (("usual", False), ("reversed", True)):
        keys = fake_batch(tmp_path / name / "shards", "b1", [f"p{i:02d}" for i in range(6)], reverse=reverse)
        write_consensus(tmp_path / name / "labels", "b1", keys)
        stage.compile_release(stage.ReleaseConfig(
            version="v0.1", batches=("b1",), shards=str(tmp_path / name / "shards"),
            labels=str(tmp_path / name / "labels"), out=str(tmp_path / name / "releases"), workers=1))
    usual, other = (Path(tmp_path / n / "releases" / "v0.1" / "data") for n in ("usual", "reversed"))
    assert sorted(p.name for p in usual.iterdir()) == sorted(p.name for p in other.iterdir())
    for f in usual.iterdir():  # tars and sidecars (offsets)
        assert f.read_bytes() == (other / f.name).read_bytes()
    for tar in usual.glob("*.tar"):
        with tarfile.open(tar) as t:  # the members are the source's bytes, in the schema's order
            names = [m.name.split(".", 1)[1] for m in t.getmembers()]
            assert names[:len(schema.MEMBERS)] == [m.wds_name for m in schema.MEMBERS]
            assert t.extractfile(t.getmembers()[1]).read().endswith(b"product")
