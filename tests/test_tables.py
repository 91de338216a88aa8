"""File contracts: a stage that meets a file breaking its table's declaration stops and names the file and
the column; what a writer writes, a reader reads back; an atomic write never leaves a partial file."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotation import consensus, push
from rf1m import atomic, tables
from rf1m.quarantine import Record

UTC = dt.timezone.utc


def label_row(i: int, annotator: str, verdict: str) -> dict:
    t = dt.datetime(2026, 1, 1, tzinfo=UTC)
    return {"annotation_id": i, "task_id": i, "project_id": 1, "key": f"k{i // 2}", "batch_id": "b", "gold": False,
            "annotator": annotator, "source": "human", "verdict": verdict,
            "reasons": [] if verdict == "available" else ["size_mismatch"], "regions": "[]", "lead_time": 1.0,
            "prediction_accepted": False, "created_at": t, "updated_at": t}


@pytest.fixture
def labels_dir(tmp_path):
    rows = [label_row(i, f"a{i % 2}@x", "available" if i % 3 else "not_available") for i in range(8)]
    d = tmp_path / "labels" / "b"
    d.mkdir(parents=True)
    return d, pa.Table.from_pylist(rows, schema=tables.LABELS.schema)


@pytest.mark.parametrize("change", ["drop", "retype"])
def test_consensus_names_the_file_and_column_of_a_broken_labels_file(labels_dir, change):
    d, table = labels_dir
    i = table.schema.get_field_index("verdict")
    table = table.remove_column(i) if change == "drop" else \
        table.set_column(i, "verdict", pa.array(range(len(table)), pa.int64()))
    pq.write_table(table, d / "labels.parquet")
    with pytest.raises(ValueError) as e:
        consensus.run(consensus.ConsensusConfig(batch_id="b", labels=str(d.parent)))
    assert str(d / "labels.parquet") in str(e.value) and "'verdict'" in str(e.value)
    assert not (d / "consensus.parquet").exists()


def test_consensus_reads_what_pull_writes(labels_dir):
    d, table = labels_dir
    tables.write(tables.LABELS, table, d / "labels.parquet")
    consensus.run(consensus.ConsensusConfig(batch_id="b", labels=str(d.parent)))
    out = tables.read(tables.CONSENSUS, d / "consensus.parquet")
    assert out.num_rows == 4 and out.schema == tables.CONSENSUS.schema


def test_push_refuses_predictions_without_a_column_rfnet_writes(tmp_path):
    """No silent default: a predictions file that lost a probability column stops push."""
    import numpy as np

    from rfnet.predict import predictions_rows

    rows = predictions_rows(["k0", "k1"], np.array([[0.2, 0.5, 0.1, 0.1, 0.1], [0.9, 0.0, 0.05, 0.05, 0.0]]),
                            "rfnet-x", 0.6)
    good = tables.write(tables.PREDICTIONS, rows, tmp_path / "good.parquet")
    shown = push.read_predictions(str(good))
    assert [shown[k]["verdict"] for k in ("k0", "k1")] == ["not_available", "available"]
    assert shown["k0"]["reasons"] == ["space_mismatch"]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pq.read_table(good).drop_columns(["p_shape_hallucination"]), bad)
    with pytest.raises(tables.ContractError, match=r"bad\.parquet: column 'p_shape_hallucination' is missing"):
        push.read_predictions(str(bad))


def example(field: pa.DataType):
    for test, value in ((pa.types.is_string, "x"), (pa.types.is_boolean, True), (pa.types.is_integer, 3),
                        (pa.types.is_floating, 0.25), (pa.types.is_timestamp, dt.datetime(2026, 1, 2, tzinfo=UTC))):
        if test(field):
            return value
    return [example(field.value_type)]


@pytest.mark.parametrize("table", tables.TABLES, ids=lambda t: t.name)
def test_round_trip(tmp_path, table):
    rows = [{c.name: example(c.arrow) for c in table.columns}]
    path = tables.write(table, [{**rows[0], "extra": 1}], tmp_path / f"t.{table.format}")
    assert tables.read(table, path).to_pylist() == rows  # exactly the declared columns come back
    assert tables.read(table, tmp_path / "none", missing_ok=True).num_rows == 0


def test_compatible_encodings_are_read_and_wrong_types_are_not(tmp_path):
    p = tmp_path / "g.parquet"
    pq.write_table(pa.table({"key": pa.array(["k"], pa.large_string()), "verdict": ["available"],
                             "reasons": pa.array([[]], pa.list_(pa.string())), "source": ["human"]}), p)
    assert tables.read(tables.GOLD, p).schema == tables.GOLD.schema
    pq.write_table(pa.table({"key": ["k"], "verdict": ["available"], "reasons": ["size_mismatch"],
                             "source": ["human"]}), p)
    with pytest.raises(tables.ContractError, match=r"column 'reasons' is string, the gold table declares list"):
        tables.read(tables.GOLD, p)


def test_writer_refuses_a_row_without_a_column(tmp_path):
    with pytest.raises(tables.ContractError, match="row 2 has no column 'source'"):
        tables.write(tables.GOLD, [{"key": "a", "verdict": "available", "reasons": [], "source": "human"},
                                   {"key": "b", "verdict": "available", "reasons": []}], tmp_path / "g.parquet")
    assert not list(tmp_path.iterdir())


def test_quarantine_records_fit_their_declaration(tmp_path):
    path = tables.write(tables.QUARANTINE, [Record("products", "a.png", "corrupt", "not an image")], tmp_path / "q.jsonl")
    assert tables.read(tables.QUARANTINE, path).to_pylist()[0]["reason"] == "corrupt"


def test_release_labels_declaration_matches_the_release_features(tmp_path):
    from datasets import Dataset

    from rf1m.release import labels_features

    row = {c.name: example(c.arrow) for c in tables.RELEASE_LABELS.columns}
    row.update(label=1, reasons=[0, 2])
    Dataset.from_list([row], features=labels_features()).to_parquet(str(tmp_path / "train.parquet"))
    assert tables.read(tables.RELEASE_LABELS, tmp_path / "train.parquet").to_pylist()[0]["reasons"] == [0, 2]


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "consensus.parquet"
    target.write_bytes(b"old")

    def half(tmp):
        tmp.write_bytes(b"half a file")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.write_atomic(target, half)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["consensus.parquet"]
    atomic.write_atomic(tmp_path / "new" / "x.bin", b"whole")
    assert (tmp_path / "new" / "x.bin").read_bytes() == b"whole" and not list(tmp_path.rglob("*.tmp"))
