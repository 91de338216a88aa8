"""Every table two stages exchange, declared once, and the only way to write or read one.

A stage that reads another's file gets exactly the declared columns, cast to the declared types, or
a `ContractError` that names the file and the column: a renamed or retyped column stops the reader
instead of turning into defaults (`row.get(...) or 0.0`) that nobody notices. Columns that exist in
`rf1m.schema` (the recipe, the label rows) are taken from there, so a table is a projection of the
one schema, not a second copy of it. Writes are atomic (`rf1m.atomic`).

    products        <data>/products/products.parquet        products stage -> generate, regenerate
    gold            <data>/labels/<batch>/gold.parquet      answer key -> push (gold tasks), consensus
    oracle          <data>/oracle/<batch>.parquet           the panel's noise-free rules and features (evaluation only)
    labels          <data>/labels/<batch>/labels.parquet    pull -> consensus, catalog
    consensus       <data>/labels/<batch>/consensus.parquet consensus -> release
    predictions     <data>/predictions/<batch>.parquet      prelabel -> push, ML backend
    attempts        <data>/attempts/<batch>.parquet         cyclic generation (every try, kept or not)
    release_labels  releases/<version>/labels/<split>.parquet  release -> researchers, sticky splits
    quarantine      <stage folder>/quarantine.jsonl         every stage -> catalog (what was refused, why)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rf1m import schema
from rf1m.atomic import write_atomic
from rf1m.schema import Field


class ContractError(ValueError):
    """A file (or rows about to be written) breaks its table's declaration."""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Field, ...]
    description: str
    format: str = "parquet"  # or "jsonl": one JSON object per line

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow) for c in self.columns])

    def empty(self) -> pa.Table:
        return self.schema.empty_table()


def _from(fields: tuple[Field, ...], *names: str) -> tuple[Field, ...]:
    by_name = {f.name: f for f in fields}
    return tuple(by_name[n] for n in names)


def _col(name: str, arrow: pa.DataType, description: str) -> Field:
    return Field(name, arrow, description)


_recipe = lambda *n: _from(schema.RECIPE, *n)  # noqa: E731
_label = lambda *n: _from(schema.LABEL_ROWS, *n)  # noqa: E731

# RFNet's head: available and the failures a generator can cause (`unsuitable` is the product's fault)
PREDICTED_CLASSES = ("available", *(r.name for r in schema.REASONS if r.generation_failure))

PRODUCTS = Table("products", (
    *_recipe("product_id", "title", "category"),
    _col("source", pa.string(), "'synthetic', or the image's path relative to the products folder"),
    _col("image", pa.string(), "the RGBA product image, relative to the products folder"),
    _col("width", pa.int64(), "px"),
    _col("height", pa.int64(), "px"),
    replace(_recipe("product_truncated")[0], name="truncated"),
), "one row per product the generator may use")

GOLD = Table("gold", (*_recipe("key"), *_label("verdict", "reasons", "source")),
             "the answer key of gold tasks: the verdict and reasons a sample must get")

# The simulated panel's rules without noise, with what they measured (annotation.rules), for every
# sample: for evaluating generators, RFNet and the panel only; it never reaches a release or training.
ORACLE = Table("oracle", (
    *_recipe("key", "product_id", "prompt_id", "seed"), *_label("verdict", "reasons"),
    _col("base", pa.float64(), "the product's lowest row / side"),
    _col("height", pa.float64(), "the product's pixel height / side"),
    _col("ground", pa.float64(), "the ground line (horizon or table edge) detected in the image, row / side"),
    _col("ground_step", pa.float64(), "CIELAB step of the background's row profile at the ground line"),
    _col("implied_height_m", pa.float64(), "real height the perspective implies, m (null: no ground line above the base)"),
    _col("norm_height_m", pa.float64(), "the category's typical height, m (null: unknown category)"),
    _col("contrast", pa.float64(), "mean CIELAB distance of the ring around the product to its mean colour"),
    _col("busy", pa.float64(), "lightness std of that ring"),
    _col("halo", pa.float64(), "CIELAB distance of the thin halo / of the ring (< 1: the background grew the product)"),
    _col("banding", pa.float64(), "autocorrelation of the background's row or column profile (stripes: high)"),
    _col("clutter", pa.float64(), "mean lightness std of the background in small windows (annotation.rules.SCENE_CLUTTER)"),
), "the panel's noise-free verdict per sample and the features it came from (for evaluation only)")

LABELS = Table("labels", schema.LABEL_ROWS, "one row per judgement pulled from Label Studio")

CONSENSUS = Table("consensus", (
    *_recipe("key"), *_label("verdict", "reasons"),
    _col("confidence", pa.float64(), "Dawid-Skene posterior of the verdict"),
    _col("status", pa.string(), "decided, or undecided (tied votes, or Dawid-Skene against the majority)"),
    *(_col(f"votes_{v}", pa.int64(), f"judgements saying {v}") for v in schema.VERDICTS),
    _col("majority_verdict", pa.string(), "the plain majority's verdict"),
    _col("majority_confidence", pa.float64(), "share of the votes the majority verdict got"),
    _col("n_annotators", pa.int64(), "judgements of the sample"),
    _col("annotators", pa.list_(pa.string()), "their e-mails"),
    _col("source", pa.string(), "simulated when every judgement is, else human"),
), "one label per sample (gold tasks excluded)")

PREDICTIONS = Table("predictions", (
    *_recipe("key"),
    _col("model_version", pa.string(), "the checkpoint: rfnet-<sha256 of its weights>"),
    _col("threshold", pa.float64(), "p(available) threshold of the decision (the checkpoint's validated one)"),
    *(_col(f"p_{c}", pa.float64(), f"RFNet's probability of {c}") for c in PREDICTED_CLASSES),
    *_label("verdict", "reasons"),  # rf1m.decision.decide at `threshold`: what annotators are shown
), "RFNet's pre-labels for a batch")

ATTEMPTS = Table("attempts", (
    *_recipe("key", "batch_id", "product_id", "prompt_id"),
    _col("attempt", pa.int64(), "1 for the first try of a product x prompt, then 2, 3, ..."),
    *_recipe("seed"),
    _col("score", pa.float64(), "RFNet's p(available)"),
    _col("decision", pa.string(), "available or not_available (rf1m.decision.decide)"),
    _col("threshold", pa.float64(), "threshold the decision used"),
    _col("accepted", pa.bool_(), "this attempt's image was kept"),
    _col("model_version", pa.string(), "the RFNet checkpoint that judged it"),
    *_recipe("created_at"),
), "cyclic generation: every attempt, accepted or not")

RELEASE_LABELS = Table("release_labels", (
    *_recipe("key"),
    _col("split", pa.string(), "train, validation or test (by product, sticky across releases)"),
    *_recipe("batch_id", "product_id", "category", "prompt_id", "seed", "scale"),
    _col("label", pa.int64(), "index into " + "/".join(schema.VERDICTS)),
    _col("reasons", pa.list_(pa.int64()), "indices into the taxonomy's reasons"),
    _col("confidence", pa.float64(), "consensus confidence"),
    _col("n_annotators", pa.int64(), "judgements of the sample"),
    *_label("source"),
    _col("created_at", pa.timestamp("s", tz="UTC"), "when the sample was generated"),
), "a release's labels, one file per split, without images")

QUARANTINE = Table("quarantine", (
    _col("stage", pa.string(), "the stage that refused the item"),
    _col("item", pa.string(), "what was refused: a file, a row, an annotation"),
    _col("reason", pa.string(), "a short machine word: corrupt, huge, unknown_reason, ..."),
    _col("detail", pa.string(), "the human sentence"),
    _col("at", pa.string(), "ISO-8601 UTC time"),
), "what a stage refused, and why, so that the rest of the batch could go on", format="jsonl")

TABLES = (PRODUCTS, GOLD, ORACLE, LABELS, CONSENSUS, PREDICTIONS, ATTEMPTS, RELEASE_LABELS, QUARANTINE)


def _kind(t: pa.DataType):
    """What a column holds, ignoring the encoding: string and large_string, int32 and int64 are alike."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_timestamp(t):
        return ("timestamp", t.tz is not None)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return ("list", _kind(t.value_type))
    return str(t)


def _fits(actual: pa.DataType, want: pa.DataType) -> bool:
    if pa.types.is_null(actual):  # no value at all: nothing contradicts the contract
        return True
    a, w = _kind(actual), _kind(want)
    if isinstance(a, tuple) and isinstance(w, tuple) and a[0] == w[0] == "list":
        return pa.types.is_null(actual.value_type) or _fits(actual.value_type, want.value_type)
    return a == w or (a, w) == ("int", "float")


def _check(table: Table, have: pa.Schema, source: str) -> None:
    for c in table.columns:
        i = have.get_field_index(c.name)
        if i < 0:
            raise ContractError(f"{source}: column {c.name!r} is missing (the {table.name} table needs "
                                f"{', '.join(table.names)})")
        if not _fits(have.field(i).type, c.arrow):
            raise ContractError(f"{source}: column {c.name!r} is {have.field(i).type}, "
                                f"the {table.name} table declares {c.arrow}")


def _conform(table: Table, data: pa.Table, source: str) -> pa.Table:
    """The declared columns of `data`, in order and cast to the declared types."""
    _check(table, data.schema, source)
    cols = []
    for c in table.columns:
        try:
            cols.append(data.column(c.name).cast(c.arrow))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ContractError(f"{source}: column {c.name!r} does not convert to {c.arrow}: {e}") from None
    return pa.Table.from_arrays(cols, schema=table.schema)


def _from_rows(table: Table, rows: list[dict], source: str) -> pa.Table:
    for n, row in enumerate(rows, 1):
        missing = [c for c in table.names if c not in row]
        if missing:
            raise ContractError(f"{source}: row {n} has no column {missing[0]!r} ({table.name} table)")
    cols = []
    for c in table.columns:
        try:
            cols.append(pa.array([r[c.name] for r in rows], type=c.arrow))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise ContractError(f"{source}: column {c.name!r} does not hold {c.arrow}: {e}") from None
    return pa.Table.from_arrays(cols, schema=table.schema)


def write(table: Table, data: pa.Table | Iterable[dict], path: str | Path) -> Path:
    """Write rows (dicts or dataclasses) or an Arrow table as `table`, atomically; refuses rows that
    break the declaration, so a writer's drift is caught where it happens, not by the next stage."""
    path = Path(path)
    source = f"writing {path}"
    if not isinstance(data, pa.Table):
        data = _from_rows(table, [asdict(r) if is_dataclass(r) else r for r in data], source)
    data = _conform(table, data, source)
    if table.format == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in data.to_pylist())
        return write_atomic(path, text.encode("utf-8"))
    return write_atomic(path, lambda tmp: pq.write_table(data, tmp))


def read(table: Table, path: str | Path, missing_ok: bool = False) -> pa.Table:
    """The file as `table` declares it (extra columns dropped). `missing_ok`: no file reads as no rows."""
    path = Path(path)
    if missing_ok and not path.exists():
        return table.empty()
    if table.format == "jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise ContractError(f"{path}: line {n} is not JSON ({e})") from None
        return _from_rows(table, rows, str(path))
    try:
        have = pq.read_schema(path)
    except FileNotFoundError:
        raise
    except (pa.ArrowInvalid, OSError) as e:
        raise ContractError(f"{path}: not a readable Parquet file ({e})") from None
    _check(table, have, str(path))
    return _conform(table, pq.read_table(path, columns=list(table.names)), str(path))
