"""Shared fixtures: one tiny model and one tiny batch per test session (64 px, 2 steps, 1 thread)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from pipelines.models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("models") / "tiny", seed=0, size=64)


def small_config(tmp: Path, model: Path, **kw):
    from pipelines.conditions import LayoutConfig
    from pipelines.generate import GenerateConfig, Prompt

    base = dict(batch_id="t", products=str(tmp / "products"), out=str(tmp / "shards"), base_model=str(model),
                steps=2, seeds=2, batch_size=2, maxcount=2, layout=LayoutConfig(size=64),
                prompts=(Prompt("kitchen", "a product on a marble table"),))
    base.update(kw)
    return GenerateConfig(**base)


@pytest.fixture(scope="session")
def small_batch(tmp_path_factory, tiny_model):
    """3 synthetic products x 1 prompt x 2 seeds = 6 samples in 3 shards."""
    from pipelines import generate, products

    tmp = tmp_path_factory.mktemp("batch")
    products.run(products.ProductsConfig(count=3, size=96, out=str(tmp / "products")))
    cfg = small_config(tmp, tiny_model)
    summary = generate.run(cfg)
    return tmp, cfg, summary


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def label_studio(request, tmp_path_factory):
    """A real Label Studio (the project's .venv-ls), started once per test session and database on a free
    port: on sqlite, then on a private PostgreSQL cluster (tests/pg.py), as a team runs it.

    Its files root is the session's temporary folder, where the test batches and their media live.
    `RF1M_LS_DBS=sqlite` limits the run to one database."""
    from contextlib import ExitStack

    from annotation import server
    from annotation.client import Client
    from tests import pg

    if request.param not in os.environ.get("RF1M_LS_DBS", "sqlite,postgresql").split(","):
        pytest.skip(f"Label Studio on {request.param}: not in RF1M_LS_DBS")
    repo = Path(__file__).resolve().parents[1]
    for k, v in {"LABEL_STUDIO_USERNAME": "admin@rf1m.test", "LABEL_STUDIO_PASSWORD": "test-pass-123456",
                 "LABEL_STUDIO_API_KEY": "0123456789abcdef0123456789abcdef01234567"}.items():
        os.environ[k] = v
    cfg = server.ServerConfig(url=f"http://127.0.0.1:{free_port()}", venv=str(repo / ".venv-ls"),
                              data_dir=str(tmp_path_factory.mktemp(f"ls-{request.param}")),
                              files_root=str(tmp_path_factory.getbasetemp()), db=request.param)
    with ExitStack() as stack:
        if cfg.db == "postgresql":
            settings = stack.enter_context(pg.cluster(free_port()))
            os.environ.update(settings)  # up passes its environment to the server
            stack.callback(lambda: [os.environ.pop(k, None) for k in settings])
        server.up(cfg)
        stack.callback(server.down, cfg)
        yield cfg, Client(cfg.url, retries=2, backoff=0.2)


def write_consensus(labels: Path, batch: str, keys: list[str], flip=(), low: str | None = None, undecided=()):
    """A consensus.parquet as `annotate consensus` writes it: alternating verdicts, optional changes
    (`flip` and `undecided` are collections of keys; an undecided sample is a 1-1 tie)."""
    from rf1m import tables

    rows = []
    for i, k in enumerate(sorted(keys)):
        verdict = "available" if i % 2 else "not_available"
        if k in flip:
            verdict = "available" if verdict == "not_available" else "not_available"
        n = 1 + i % 2
        votes = {"votes_available": n * (verdict == "available"), "votes_not_available": n * (verdict != "available")}
        if k in undecided:
            verdict, n, votes = "not_available", 2, {"votes_available": 1, "votes_not_available": 1}
        reasons = ["size_mismatch", "shape_hallucination"] if verdict == "not_available" else []
        rows.append({"key": k, "verdict": verdict, "reasons": reasons, "confidence": 0.1 if k == low else 0.9,
                     "status": "undecided" if k in undecided else "decided", **votes,
                     "majority_verdict": verdict, "majority_confidence": 1.0, "n_annotators": n,
                     "annotators": ["a@x"], "source": "simulated"})
    tables.write(tables.CONSENSUS, rows, labels / batch / "consensus.parquet")


@pytest.fixture(scope="session")
def released(small_batch, tmp_path_factory):
    """The small batch labelled by a constructed consensus and compiled as release v0.1 (2/2/2 by product)."""
    from pipelines import release
    from rf1m import shards

    tmp, gen, _ = small_batch
    root = tmp_path_factory.mktemp("rel")
    keys = shards.read_sidecars(Path(gen.out) / gen.batch_id).column("key").to_pylist()
    write_consensus(root / "labels", gen.batch_id, keys)
    cfg = release.ReleaseConfig(version="v0.1", batches=(gen.batch_id,), shards=gen.out, labels=str(root / "labels"),
                                out=str(root / "releases"), splits=(0.34, 0.33, 0.33))
    release.compile_release(cfg)
    return root, cfg, keys
