"""Where the dashboard's numbers come from: the catalog's views, folded into the read model once.

Read-only by construction: `rf1m.catalog.Catalog` opens an in-memory DuckDB whose views read the
Parquet files, so the dashboard holds no lock on any file a stage writes (a read-write connection to
data/catalog.duckdb would block `rf1m catalog snapshot`). The read model (dashboards.model) is built
in that in-memory database and rebuilt when a file the catalog reads changes (its path, size and
mtime are the cache key), so batches that land while the app runs appear on the next rerun. The data
root is an argument of every cached function (never a module constant), so a test can point the app
at a fixture (`RF1M_DATA`, `RF1M_RELEASES`) and get that fixture's numbers.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboards import model, queries
from rf1m.catalog import Catalog
from rf1m.paths import Layout


def roots() -> tuple[str, str]:
    """(data root, releases root): the environment's, else the repository's defaults."""
    return os.environ.get("RF1M_DATA", "data"), os.environ.get("RF1M_RELEASES", "releases")


@st.cache_data(ttl=5, show_spinner=False)
def fingerprint(root: str, releases: str) -> str:
    """A hash of every file the catalog reads (path, size, mtime): it changes when a stage writes."""
    layout, h = Layout(root), hashlib.sha256()
    places = [(layout.shards_root, "*/*.parquet"), (layout.shards_root, "*/quarantine.jsonl"),
              (layout.labels_root, "*/*.parquet"), (layout.labels_root, "*/quarantine.jsonl"),
              (layout.predictions_root, "*.parquet"), (layout.attempts("*").parent, "*.parquet"),
              (layout.products, "*"), (Path(releases), "*/labels/*.parquet")]
    for folder, pattern in places:
        for p in sorted(folder.glob(pattern)):
            s = p.stat()
            h.update(f"{p}\0{s.st_size}\0{s.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


@st.cache_resource(max_entries=2, show_spinner="Reading the catalog…")
def catalog(root: str, releases: str, version: str) -> Catalog:
    """The catalog with the read model built in it; `version` (the fingerprint) keys the cache."""
    cat = Catalog(root, releases)
    model.build(cat.con)
    return cat


@st.cache_data(max_entries=512, show_spinner=False)
def _frame(root: str, releases: str, version: str, sql: str, values: tuple) -> pd.DataFrame:
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values}
    return queries.run(catalog(root, releases, version).con, sql, **values)


def query(sql: str, values: dict) -> pd.DataFrame:
    """`sql` with exactly these parameters, over the current data (cached per data version)."""
    root, releases = roots()
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in values.items()))
    return _frame(root, releases, fingerprint(root, releases), sql, frozen)


def frame(sql: str, **values) -> pd.DataFrame:
    """`sql` (from dashboards.queries) with the sidebar's filters and `values` as its parameters."""
    return query(sql, {**filters(), **values})


def rows(table: str) -> int:
    """Rows in a catalog view or read-model table, unfiltered: tells a page a stage has not run yet."""
    return int(query(f"SELECT count(*) AS n FROM {table}", {}).iloc[0, 0])


def batches() -> list[str]:
    """Every batch with samples or labels (the sidebar's choices)."""
    df = query("SELECT batch_id FROM dash_samples UNION SELECT batch_id FROM dash_verdicts", {})
    return sorted(df["batch_id"].dropna())


def filters() -> dict:
    """The sidebar's filters as query parameters (app.py draws the widgets)."""
    return {"batches": list(st.session_state.get("batches") or []), "source": st.session_state.get("source", "all")}
