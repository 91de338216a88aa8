"""The Ray engine: the same shards as the local engine, one model load per actor, and every sample
exactly once after an actor is killed mid-shard; prelabel writes the local engine's table.

Ray runs in a loopback-only network namespace (`unshare -n`, `lo` up): on a normal host it listens
on every interface and probes cloud-metadata addresses. That needs root or user namespaces; where
neither is allowed the tests skip and say so (CI runs as root, so they run there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the Ray engine needs the cluster extra: pip install -e '.[cluster]'")

from pipelines import generate, products  # noqa: E402
from tests.conftest import small_config  # noqa: E402
from tests.test_prelabel import uneven_setup  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# a network namespace with loopback only, and a PID namespace, so every Ray process ends (and is
# reaped) when the scenario script does, or when unshare itself is killed (a timeout)
UNSHARE = ["unshare", "-n", "-p", "-f", "--kill-child", "--mount-proc"]


def netns_prefix() -> list[str]:
    """The command prefix that runs a program with loopback only, or a skip saying why not."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("Ray tests need `unshare` and `ip` (util-linux, iproute2) for a loopback-only namespace")
    probe = subprocess.run([*UNSHARE, "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"`unshare -n` is not permitted here ({probe.stderr.strip()}): Ray would listen on every "
                    "interface, so its tests run only in a private network namespace (root or user namespaces)")
    return [*UNSHARE, "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def run_scenarios(tmp: Path, args: dict) -> dict:
    """`tests.ray_scenarios` with `args` in a loopback-only namespace; the report it wrote."""
    ray_tmp = tempfile.mkdtemp(prefix="rf1m-ray-")  # short: Ray's socket paths must fit in 107 bytes
    args = {**args, "tmp": str(tmp), "report": str(tmp / "report.json")}
    (tmp / "args.json").write_text(json.dumps(args))
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled",  # no one else can reach it
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([*netns_prefix(), sys.executable, "-m", "tests.ray_scenarios", str(tmp / "args.json")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp / "report.json").read_text())


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory, tiny_model):
    """The local engine's batch, then every generate scenario in one namespace and one Ray session."""
    tmp = tmp_path_factory.mktemp("ray")
    products.run(products.ProductsConfig(count=3, size=96, out=str(tmp / "products")))
    local = generate.run(small_config(tmp, tiny_model, out=str(tmp / "local-shards")))
    return tmp, local, run_scenarios(tmp, {"model": str(tiny_model)})


def members(batch: Path) -> dict[tuple[str, str], bytes]:
    """Every member of every tar, by (key, member); the recipe without its wall-clock `created_at`."""
    out = {}
    for tar in sorted(batch.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                key, name = m.name.split(".", 1)
                data = t.extractfile(m).read()
                if name == "recipe.json":
                    recipe = json.loads(data)
                    assert recipe.pop("created_at")
                    data = json.dumps(recipe, sort_keys=True).encode()
                assert (key, name) not in out, f"{key}.{name} twice"
                out[key, name] = data
    return out


def test_ray_engine_writes_the_local_engines_shards_byte_for_byte(ray_run):
    tmp, local, report = ray_run
    assert report["identical"]["samples"] == local["samples"] == 6
    here, there = members(tmp / "local-shards" / "t"), members(tmp / "ray-shards" / "t")
    assert sorted(here) == sorted(there) and len(here) == 6 * 8
    differ = [k for k in here if here[k] != there[k]]
    assert not differ, f"members that differ between engines: {differ[:5]}"
    assert sorted(p.name for p in (tmp / "ray-shards" / "t").iterdir()) == \
        sorted(p.name for p in (tmp / "local-shards" / "t").iterdir())


def test_each_actor_loads_its_model_once(ray_run):
    loads = ray_run[2]["loads"]
    assert sorted(r["job"] for r in loads) == list(range(6))
    pids = Counter(r["pid"] for r in loads)
    assert 1 <= len(pids) <= 2 and sum(pids.values()) == 6
    assert {r["loads"] for r in loads} == {1}, "an actor loaded its model more than once"


def test_killed_actor_is_restarted_and_every_sample_is_written_once(ray_run):
    tmp, _, report = ray_run
    assert report.get("killed"), "the actor was never killed: the scenario did not test anything"
    assert 1 <= report["stats_before_kill"] < 3 and report["tmp_at_kill"], "the kill should land mid-shard"
    batch = tmp / "killed-shards" / "t"
    assert report["killed_run"]["samples"] == 6 and report["rerun"]["generated_now"] == 0
    keys = Counter(k for k, name in members(batch) if name == "recipe.json")
    assert len(keys) == 6 and set(keys.values()) == {1}
    assert not list(batch.glob("*.tmp")), "a temporary of the killed attempt was left behind"


@pytest.fixture(scope="module")
def ray_prelabel(small_batch, tmp_path_factory):
    """Prelabel of the uneven batch (tests/test_prelabel.py) on two Ray actors, and on one local process."""
    from pipelines import prelabel

    root, ck = uneven_setup(small_batch, tmp_path_factory.mktemp("prelabel"))
    local = prelabel.run(prelabel.PrelabelConfig(checkpoint=str(ck), batch_id="u", shards=str(root / "shards"),
                                                 out=str(root / "local")))
    return root, local, run_scenarios(root, {"scenario": "prelabel", "checkpoint": str(ck)})


def test_prelabel_on_ray_writes_the_local_table_with_one_model_load_per_actor(ray_prelabel):
    from rf1m import tables

    root, local, report = ray_prelabel
    got = report["prelabel"]
    assert got["samples"] == local["samples"] == 32 and got["shards"] == 3
    # the same bytes in every column: shards put back in name order (the first one finishes last)
    assert tables.read(tables.PREDICTIONS, got["predictions"]).equals(tables.read(tables.PREDICTIONS, local["predictions"]))
    # three shards on two actors: one load per actor, not one per shard
    assert got["processes"] == 2 and got["model_loads"] == 2
