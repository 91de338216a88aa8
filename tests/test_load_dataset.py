"""`datasets.load_dataset("rf1m")` from a repository root, as researchers are promised.

Each load runs in a subprocess whose cwd is a repository-like folder (`rf1m/` with an `__init__.py`,
as the package is, and `releases/`), with its own HF cache and the Hub switched off: the bare name
must resolve to that folder, never to the Hub or to a cache left by another release."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import release as stage
from pipelines.cli import main
from rf1m import release
from tests.conftest import write_consensus
from tests.test_release import fake_batch

REPO = Path(__file__).resolve().parents[1]
LOAD = """
import json
from datasets import load_dataset
ds = load_dataset("rf1m")
f = ds["train"].features
print(json.dumps({
    "types": {k: type(v).__name__ for k, v in f.items() if k in ("image.png", "label.cls")},
    "label_names": f["label.cls"].names, "reason_names": f["labels.json"]["reasons"].feature.names,
    "rows": {s: {r["key"]: [c, j["reasons"]] for r, c, j in zip(d["recipe.json"], d["label.cls"], d["labels.json"])}
             for s, d in ds.items()},
    "cache": sorted({c["filename"].split("/rf1m/")[1].split("/")[2] for d in ds.values() for c in d.cache_files}),
}))
"""


def load_rf1m(repo: Path, hf: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf), "HF_DATASETS_CACHE": str(hf / "datasets"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", LOAD], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)


def loaded(repo: Path, hf: Path) -> dict:
    p = load_rf1m(repo, hf)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def expected(root: Path, version: str) -> dict:
    """split -> key -> [label, reasons] from the release's own labels Parquet."""
    out = {}
    for r in release.read_labels(version, root):
        out.setdefault(r["split"], {})[r["key"]] = [r["label"], r["reasons"]]
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A repository-like folder with releases v0.1 (10 products) and v0.2 (one relabel, 3 new products)."""
    d = tmp_path_factory.mktemp("repo")
    (d / "rf1m").mkdir()
    (d / "rf1m" / "__init__.py").write_text("")
    keys = fake_batch(d / "shards", "b1", [f"p{i:02d}" for i in range(10)])
    write_consensus(d / "labels1", "b1", keys)
    cfg = stage.ReleaseConfig(version="v0.1", batches=("b1",), shards=str(d / "shards"), labels=str(d / "labels1"),
                              out=str(d / "releases"), splits=(0.6, 0.2, 0.2))
    assert stage.compile_release(cfg)["current"] is True
    write_consensus(d / "labels2", "b1", keys, flip={sorted(keys)[0]})
    write_consensus(d / "labels2", "b2", fake_batch(d / "shards", "b2", ["p10", "p11", "p12"]))
    v2 = stage.compile_release(stage.ReleaseConfig(**{**cfg.__dict__, "version": "v0.2", "parent": "v0.1",
                                                      "batches": ("b1", "b2"), "labels": str(d / "labels2")}))
    assert v2["current"] is True and release.current(d / "releases") == "v0.2"
    return d


def test_load_dataset_rf1m_gives_the_current_release_typed_and_split(repo, tmp_path):
    (tmp_path / "params.yaml").write_text(json.dumps({"release": {"out": str(repo / "releases")}}))
    assert main(["--params", str(tmp_path / "params.yaml"), "release", "promote", "v0.1"]) == 0
    got = loaded(repo, tmp_path / "hf")
    assert got["types"] == {"image.png": "Image", "label.cls": "ClassLabel"}
    assert got["label_names"] == ["available", "not_available"]
    assert got["reason_names"] == list(release.schema.REASON_NAMES)
    assert got["rows"] == expected(repo / "releases", "v0.1")
    assert {s: len(r) for s, r in got["rows"].items()} == {"train": 12, "validation": 4, "test": 4}


def test_two_releases_never_share_a_cache(repo, tmp_path):
    """Same cwd, same name, same cache folder: promoting v0.2 must give v0.2's rows, not v0.1's cache."""
    hf = tmp_path / "hf"
    stage.promote("v0.1", repo / "releases")
    first = loaded(repo, hf)
    stage.promote("v0.2", repo / "releases")
    second = loaded(repo, hf)
    assert first["rows"] == expected(repo / "releases", "v0.1")
    assert second["rows"] == expected(repo / "releases", "v0.2") != first["rows"]
    assert sum(map(len, second["rows"].values())) == 26 and first["cache"] != second["cache"]
    assert [r["current"] for r in release.list_releases(repo / "releases")] == [False, True]


def test_an_older_version_compiled_later_is_not_promoted(repo, tmp_path):
    keys = fake_batch(tmp_path / "shards", "b1", [f"p{i:02d}" for i in range(10)])
    write_consensus(tmp_path / "labels", "b1", keys)
    out = tmp_path / "releases"
    shutil.copytree(repo / "releases" / "v0.2", out / "v0.2")
    summary = stage.compile_release(stage.ReleaseConfig(version="v0.1.1", batches=("b1",), shards=str(tmp_path / "shards"),
                                                        labels=str(tmp_path / "labels"), out=str(out)))
    assert summary["current"] is False and release.current(out) is None  # nothing promoted v0.2 in this copy


def test_promote_refuses_a_release_that_fails_verification(repo, tmp_path):
    out = tmp_path / "releases"
    shutil.copytree(repo / "releases", out)
    stage.promote("v0.1", out)
    card = release.current_card(out).read_bytes()
    tar = sorted((out / "v0.2" / "data").glob("*.tar"))[0]
    tar.write_bytes(tar.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ValueError, match=r"v0.2 fails verification: changed data/"):
        stage.promote("v0.2", out)
    assert release.current_card(out).read_bytes() == card and release.current(out) == "v0.1"


def test_a_fresh_clone_says_to_compile_or_promote(tmp_path):
    """The committed rf1m/README.md (no release promoted) makes the call fail with what to do."""
    (tmp_path / "rf1m").mkdir()
    shutil.copy(REPO / "rf1m" / "README.md", tmp_path / "rf1m" / "README.md")
    assert release.current(tmp_path / "releases") is None
    p = load_rf1m(tmp_path, tmp_path / "hf")
    assert p.returncode != 0
    assert "rf1m release compile" in p.stderr and "rf1m release promote" in p.stderr, p.stderr[-2000:]
