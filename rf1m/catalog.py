"""The catalog: DuckDB views over the files the stages leave behind (no database to keep in sync).

Views:
  samples     every generated sample (the shard sidecars of every batch), with `batch_dir`
  products    the products table of the products stage
  quarantine  everything any stage refused, with its reason
  labels      every pulled judgement (data/labels/<batch>/labels.parquet)
  releases    which sample is in which release version and split, with its released label
  consensus, gold, predictions, attempts   the declared per-batch tables (rf1m.tables), with batch_id

Queries always see the files as they are now. `snapshot()` materialises the views into a
`.duckdb` file (written under a temporary name, then swapped in) for readers such as the dashboard
that want many read-only connections.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from rf1m import schema, tables
from rf1m.atomic import write_atomic
from rf1m.paths import Layout


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _duck_type(t: pa.DataType) -> str:
    """The DuckDB type of a declared Arrow column."""
    if pa.types.is_list(t):
        return _duck_type(t.value_type) + "[]"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    return {"string": "VARCHAR", "int64": "BIGINT", "double": "DOUBLE", "bool": "BOOLEAN"}.get(str(t), "VARCHAR")


def _nulls(columns: pa.Schema) -> str:
    """A select list of typed NULLs: the empty view of a table has every declared column, so queries
    written for the data bind (and return nothing) before the stage has run."""
    return ", ".join(f'NULL::{_duck_type(f.type)} AS "{f.name}"' for f in columns)


def _with_batch(columns: pa.Schema, name: str = "batch_id") -> pa.Schema:
    return pa.schema([pa.field(name, pa.string()), *columns])


def _files(paths: list[Path]) -> str:
    """A DuckDB list literal of file paths."""
    return "[" + ", ".join(map(_quote, paths)) + "]"


class Catalog:
    def __init__(self, data_root: Path | str = "data", releases: Path | str = "releases"):
        self.root = Path(data_root).resolve()
        self.releases = Path(releases).resolve()
        self.con = duckdb.connect()
        self._define_views()

    def _view(self, name: str, paths: list[Path], select: str, empty: pa.Schema) -> None:
        """`select` over the files when there are any (`{files}` is their list), else an empty view."""
        sql = select.format(files=_files(paths)) if paths else f"SELECT {_nulls(empty)} WHERE false"
        self.con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")

    def _define_views(self) -> None:
        shards, labels = self.root / "shards", self.root / "labels"
        self._view("samples", sorted(shards.glob("*/*.parquet")),
                   "SELECT *, parse_dirpath(filename) AS batch_dir FROM read_parquet({files}, filename=true)",
                   schema.sidecar_schema().append(pa.field("batch_dir", pa.string())))
        self._view("products", [p for p in [self.root / "products" / "products.parquet"] if p.exists()],
                   "SELECT * FROM read_parquet({files})", tables.PRODUCTS.schema)
        self._view("labels", sorted(labels.glob("*/labels.parquet")), "SELECT * FROM read_parquet({files})",
                   tables.LABELS.schema)
        self._view("releases", sorted(self.releases.glob("*/labels/*.parquet")),
                   "SELECT regexp_extract(filename, '([^/]+)/labels/[^/]+$', 1) AS version, "
                   "* EXCLUDE (filename) FROM read_parquet({files}, filename=true)",
                   _with_batch(tables.RELEASE_LABELS.schema, "version"))
        candidates = [self.root / "products" / "quarantine.jsonl", *sorted(shards.glob("*/quarantine.jsonl")),
                      *sorted(labels.glob("*/quarantine.jsonl"))]
        self._view("quarantine", [p for p in candidates if p.exists() and p.stat().st_size > 0],
                   "SELECT * FROM read_json_auto({files}, union_by_name=true)",
                   tables.QUARANTINE.schema)
        self._define_batch_tables()

    def _define_batch_tables(self) -> None:
        """consensus, gold, predictions, attempts: one file per batch, the batch named by its path (the
        dashboard reads them)."""
        layout = Layout(self.root)
        files = lambda where: sorted(self.root.glob(str(where.relative_to(self.root))))  # noqa: E731
        per_batch = (
            (tables.CONSENSUS, files(layout.consensus("*")), "([^/]+)/[^/]+$"),
            (tables.GOLD, files(layout.gold("*")), "([^/]+)/[^/]+$"),
            (tables.PREDICTIONS, files(layout.predictions("*")), "([^/]+)\\.parquet$"),
            (tables.ATTEMPTS, files(layout.attempts("*")), None),  # has its own batch_id column
        )
        for table, paths, batch in per_batch:
            cols = ", ".join(f'"{n}"' for n in table.names)
            batch_col = f"regexp_extract(filename, '{batch}', 1) AS batch_id, " if batch else ""
            self._view(table.name, paths,
                       f"SELECT {batch_col}{cols} FROM read_parquet({{files}}, filename=true, union_by_name=true)",
                       _with_batch(table.schema) if batch else table.schema)

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
        def fill(tmp: Path) -> None:
            tmp.unlink(missing_ok=True)  # left by a killed snapshot: ATTACH would open it
            self.con.execute(f"ATTACH {_quote(tmp)} AS snap")
            try:
                views = [r[0] for r in self.con.execute(
                    "SELECT view_name FROM duckdb_views() WHERE NOT internal AND database_name = 'memory'").fetchall()]
                for v in views:
                    self.con.execute(f"CREATE TABLE snap.{v} AS SELECT * FROM {v}")
            finally:
                self.con.execute("DETACH snap")

        return write_atomic(path, fill)
