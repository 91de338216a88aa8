"""The catalog: DuckDB views over the files the stages leave behind (no database to keep in sync).

Views:
  samples     every generated sample (the shard sidecars of every batch), with `batch_dir`
  products    the products table of the products stage
  quarantine  everything any stage refused, with its reason
  labels      every pulled judgement (data/labels/<batch>/labels.parquet)
  releases    which sample is in which release version and split, with its released label

Queries always see the files as they are now. `snapshot()` materialises the views into a
`.duckdb` file (written under a temporary name, then swapped in) for readers such as the dashboard
that want many read-only connections.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _files(paths: list[Path]) -> str:
    """A DuckDB list literal of file paths."""
    return "[" + ", ".join(map(_quote, paths)) + "]"


class Catalog:
    def __init__(self, data_root: Path | str = "data", releases: Path | str = "releases"):
        self.root = Path(data_root).resolve()
        self.releases = Path(releases).resolve()
        self.con = duckdb.connect()
        self._define_views()

    def _view(self, name: str, paths: list[Path], select: str, empty: str) -> None:
        """`select` over the files when there are any (`{files}` is their list), else an empty view."""
        sql = select.format(files=_files(paths)) if paths else f"SELECT {empty} WHERE false"
        self.con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")

    def _define_views(self) -> None:
        shards, labels = self.root / "shards", self.root / "labels"
        self._view("samples", sorted(shards.glob("*/*.parquet")),
                   "SELECT *, parse_dirpath(filename) AS batch_dir FROM read_parquet({files}, filename=true)",
                   "NULL::VARCHAR AS key, NULL::VARCHAR AS batch_id, NULL::VARCHAR AS product_id, "
                   "NULL::VARCHAR AS prompt_id")
        self._view("products", [p for p in [self.root / "products" / "products.parquet"] if p.exists()],
                   "SELECT * FROM read_parquet({files})", "NULL::VARCHAR AS product_id")
        self._view("labels", sorted(labels.glob("*/labels.parquet")), "SELECT * FROM read_parquet({files})",
                   "NULL::VARCHAR AS key, NULL::VARCHAR AS annotator, NULL::VARCHAR AS verdict")
        self._view("releases", sorted(self.releases.glob("*/labels/*.parquet")),
                   "SELECT regexp_extract(filename, '([^/]+)/labels/[^/]+$', 1) AS version, "
                   "* EXCLUDE (filename) FROM read_parquet({files}, filename=true)",
                   "NULL::VARCHAR AS version, NULL::VARCHAR AS key, NULL::VARCHAR AS split")
        candidates = [self.root / "products" / "quarantine.jsonl", *sorted(shards.glob("*/quarantine.jsonl")),
                      *sorted(labels.glob("*/quarantine.jsonl"))]
        self._view("quarantine", [p for p in candidates if p.exists() and p.stat().st_size > 0],
                   "SELECT * FROM read_json_auto({files}, union_by_name=true)",
                   "NULL::VARCHAR AS stage, NULL::VARCHAR AS item, NULL::VARCHAR AS reason, NULL::VARCHAR AS detail")

    def query(self, sql: str):
        """Run SQL against the views; returns a pyarrow Table."""
        return self.con.sql(sql).to_arrow_table()

    def summary(self) -> dict:
        """Headline counts (the catalog stage's DVC metrics)."""
        one = lambda sql: self.con.execute(sql).fetchall()[0][0]  # noqa: E731
        return {
            "samples": one("SELECT count(*) FROM samples"),
            "products": one("SELECT count(DISTINCT product_id) FROM samples"),
            "prompts": one("SELECT count(DISTINCT prompt_id) FROM samples"),
            "batches": one("SELECT count(DISTINCT batch_id) FROM samples"),
            "quarantined": one("SELECT count(*) FROM quarantine"),
        }

    def snapshot(self, path: Path | str) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        self.con.execute(f"ATTACH {_quote(tmp)} AS snap")
        views = [r[0] for r in self.con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal AND database_name = 'memory'").fetchall()]
        for v in views:
            self.con.execute(f"CREATE TABLE snap.{v} AS SELECT * FROM {v}")
        self.con.execute("DETACH snap")
        os.replace(tmp, path)
        return path
