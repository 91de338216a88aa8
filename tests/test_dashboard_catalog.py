"""The catalog views the dashboard reads (rf1m.catalog): the per-batch tables with their batch, and
empty views that carry every declared column, so a query binds before its stage has run."""

from __future__ import annotations

import pandas as pd
import pytest

from rf1m.catalog import Catalog


@pytest.mark.parametrize("sql", [
    "SELECT key, base_model, created_at, image_offset, batch_dir FROM samples",
    "SELECT annotator, lead_time, prediction_accepted, gold FROM labels",
    "SELECT version, label, reasons, split FROM releases",
    "SELECT batch_id, status, votes_available FROM consensus",
    "SELECT batch_id, p_available, threshold FROM predictions",
    "SELECT batch_id, attempt, accepted FROM attempts",
    "SELECT batch_id, verdict FROM gold",
])
def test_an_empty_catalog_answers_queries_written_for_the_data(tmp_path, sql):
    assert Catalog(tmp_path / "data", tmp_path / "releases").query(sql).num_rows == 0


def test_per_batch_tables_are_views_with_the_batch_from_the_path(tmp_path):
    from bench.bench_dashboard import build

    data = tmp_path / "data"
    build(data, tmp_path / "releases", batches=2, labels=80, seed=6)
    cat = Catalog(data, tmp_path / "releases")
    for view, pattern in (("consensus", "labels/*/consensus.parquet"), ("gold", "labels/*/gold.parquet"),
                          ("predictions", "predictions/*.parquet"), ("attempts", "attempts/*.parquet")):
        got = cat.query(f"SELECT batch_id, count(*) AS n FROM {view} GROUP BY ALL ORDER BY 1").to_pylist()
        files = sorted(data.glob(pattern))
        name = (lambda p: p.parent.name) if pattern.startswith("labels") else (lambda p: p.stem)
        assert got == [{"batch_id": name(f), "n": len(pd.read_parquet(f))} for f in files], view
