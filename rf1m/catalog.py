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


def _sql_str(path: Path | str) -> str:
    return "'" + str(path).replace("'", "''") + "'"


class Catalog:
    def __init__(self, data_root: Path | str = "data", releases: Path | str = "releases"):
        self.root = Path(data_root).resolve()
        self.releases = Path(releases).resolve()
        self.con = duckdb.connect()
        self._define_views()

    def _define_views(self) -> None:
        shards = self.root / "shards"
        sidecars = sorted(shards.glob("*/*.parquet"))
        if sidecars:
            files = "[" + ", ".join(_sql_str(f) for f in sidecars) + "]"
            self.con.execute(
                f"CREATE OR REPLACE VIEW samples AS SELECT *, "
                f"parse_dirpath(filename) AS batch_dir FROM read_parquet({files}, filename=true)"
            )
        else:
            self.con.execute(
                "CREATE OR REPLACE VIEW samples AS SELECT NULL::VARCHAR AS key, NULL::VARCHAR AS batch_id,"
                " NULL::VARCHAR AS product_id, NULL::VARCHAR AS prompt_id WHERE false"
            )
        products = self.root / "products" / "products.parquet"
        if products.exists():
            self.con.execute(f"CREATE OR REPLACE VIEW products AS SELECT * FROM read_parquet({_sql_str(products)})")
        labels = sorted((self.root / "labels").glob("*/labels.parquet"))
        if labels:
            files = "[" + ", ".join(_sql_str(f) for f in labels) + "]"
            self.con.execute(f"CREATE OR REPLACE VIEW labels AS SELECT * FROM read_parquet({files})")
        released = sorted(self.releases.glob("*/labels/*.parquet"))
        if released:
            files = "[" + ", ".join(_sql_str(f) for f in released) + "]"
            self.con.execute(
                "CREATE OR REPLACE VIEW releases AS SELECT regexp_extract(filename, '([^/]+)/labels/[^/]+$', 1) AS version, "
                f"* EXCLUDE (filename) FROM read_parquet({files}, filename=true)")
        candidates = [self.root / "products" / "quarantine.jsonl", *sorted(shards.glob("*/quarantine.jsonl")),
                      *sorted((self.root / "labels").glob("*/quarantine.jsonl"))]
        quarantine = [p for p in candidates if p.exists() and p.stat().st_size > 0]
        if quarantine:
            files = "[" + ", ".join(_sql_str(f) for f in quarantine) + "]"
            self.con.execute(
                f"CREATE OR REPLACE VIEW quarantine AS SELECT * FROM read_json_auto({files}, union_by_name=true)"
            )
        else:
            self.con.execute(
                "CREATE OR REPLACE VIEW quarantine AS SELECT NULL::VARCHAR AS stage, NULL::VARCHAR AS item,"
                " NULL::VARCHAR AS reason, NULL::VARCHAR AS detail WHERE false"
            )

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
        self.con.execute(f"ATTACH {_sql_str(tmp)} AS snap")
        views = [r[0] for r in self.con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal AND database_name = 'memory'").fetchall()]
        for v in views:
            self.con.execute(f"CREATE TABLE snap.{v} AS SELECT * FROM {v}")
        self.con.execute("DETACH snap")
        os.replace(tmp, path)
        return path
