"""The prelabel stage on the local engine: one job per shard, the same table as one process.

The batch is uneven on purpose: its first shard holds 30 samples and the two others one each, so on
two workers the first shard finishes last and a driver that wrote shards in the order they finished
(not in name order) would write a different table. tests/test_ray.py runs the same batch on Ray.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines import prelabel
from rf1m import tables
from rfnet import predict
from tests.test_cyclic import tiny_rfnet


def uneven_batch(src: Path, dst: Path) -> Path:
    """The small batch's samples re-packed: shard-000000 = 5 renamed copies of all 6, the others one each."""
    samples: dict[str, list[tuple[str, bytes]]] = {}
    for tar in sorted(src.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                key, name = m.name.split(".", 1)
                samples.setdefault(key, []).append((name, t.extractfile(m).read()))
    keys = sorted(samples)
    parts = [[(f"{k}-c{i}", k) for i in range(5) for k in keys], [(keys[0], keys[0])], [(keys[1], keys[1])]]
    dst.mkdir(parents=True)
    for n, part in enumerate(parts):
        with tarfile.open(dst / f"shard-{n:06d}.tar", "w") as t:
            for new, old in part:
                for name, data in samples[old]:
                    info = tarfile.TarInfo(f"{new}.{name}")
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))
    return dst


@pytest.fixture(scope="module")
def uneven(small_batch, tmp_path_factory):
    """(shards root, checkpoint, the summary of today's single-process `rfnet.predict.run`)."""
    root, ck = uneven_setup(small_batch, tmp_path_factory.mktemp("prelabel"))
    today = predict.run(predict.PrelabelConfig(checkpoint=str(ck), batch_id="u", shards=str(root / "shards"),
                                               out=str(root / "today")))
    return root, ck, today


def uneven_setup(small_batch, root: Path) -> tuple[Path, Path]:
    """`root`/shards/u: the uneven batch; and a tiny RFNet checkpoint."""
    tmp, gen, _ = small_batch
    uneven_batch(Path(gen.out) / gen.batch_id, root / "shards" / "u")
    return root, tiny_rfnet(root / "rfnet", threshold=0.5)


def config(root: Path, ck: Path, out: str, **kw) -> prelabel.PrelabelConfig:
    return prelabel.PrelabelConfig(checkpoint=str(ck), batch_id="u", shards=str(root / "shards"),
                                   out=str(root / out), **kw)


def test_two_local_workers_write_todays_table_and_load_the_model_once_each(uneven):
    root, ck, today = uneven
    one = prelabel.run(config(root, ck, "w1"))
    two = prelabel.run(config(root, ck, "w2", workers=2))
    assert one["samples"] == two["samples"] == today["samples"] == 32 and one["shards"] == 3
    # today's rows in today's order; a probability may move by an ulp, as RFNet's float32 sums depend
    # on which samples share a batch (today a batch spans shards, a job's never does)
    expected = pq.read_table(today["predictions"])
    for got in (one, two):
        table = tables.read(tables.PREDICTIONS, got["predictions"])
        assert table.column_names == expected.column_names
        for c in expected.column_names:
            if c.startswith("p_"):
                assert np.allclose(table[c].to_numpy(), expected[c].to_numpy(), rtol=0, atol=1e-6), c
            else:
                assert table.column(c).equals(expected.column(c)), f"column {c} differs from today's table"
    # one worker or two: the same bytes in every column
    a, b = (tables.read(tables.PREDICTIONS, r["predictions"]) for r in (one, two))
    assert a.equals(b) and Path(one["predictions"]).read_bytes() == Path(two["predictions"]).read_bytes()
    # in-process: one load for three shards; two processes: one each (one of them ran two shards)
    assert one["model_loads"] == one["processes"] == 1
    assert two["model_loads"] == two["processes"] and 1 <= two["processes"] <= 2


def test_a_replaced_checkpoint_is_reloaded_and_bad_input_is_refused(uneven, tmp_path):
    root, ck, _ = uneven
    here = tmp_path / "best"
    shutil.copytree(ck, here)
    assert prelabel.load_model(str(here))[2] and prelabel.load_model(str(here))[2] is False
    tiny_rfnet(here, threshold=0.9)  # retrained in place: a cache keyed by the path alone would keep 0.5
    _, meta, loaded = prelabel.load_model(str(here))
    assert loaded and meta["decision"]["threshold"] == 0.9
    with pytest.raises(ValueError, match="no shards for batch 'nope'"):
        prelabel.run(prelabel.PrelabelConfig(checkpoint=str(ck), batch_id="nope", shards=str(root / "shards")))
    with pytest.raises(ValueError, match="unknown engine 'spark'"):
        prelabel.run(config(root, ck, "x", engine="spark"))
