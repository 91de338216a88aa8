import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from rf1m import schema, shards


def recipe(i):
    r = {f.name: i if pa.types.is_int64(f.arrow) else 0.5 if pa.types.is_float64(f.arrow)
         else False if pa.types.is_boolean(f.arrow) else f"v{i}" for f in schema.RECIPE}
    r["key"] = f"k{i}"
    return r


def members(n):
    return {m.wds_name: bytes([m.name.__len__()]) * n for m in schema.MEMBERS}


def test_parts_roll_over_at_maxcount_and_maxsize(tmp_path):
    w = shards.ShardWriter(tmp_path, "shard-000000", maxcount=3)
    for i in range(7):
        w.write(f"k{i}", members(10), recipe(i))
    assert [p["count"] for p in w.close()] == [3, 3, 1]
    w = shards.ShardWriter(tmp_path / "b", "shard-000000", maxsize=20_000)
    for i in range(6):
        w.write(f"k{i}", members(3000), recipe(i))
    parts = w.close()
    assert len(parts) > 1 and sum(p["count"] for p in parts) == 6
    assert not list(tmp_path.rglob("*.tmp"))


def test_sidecar_offsets_point_at_the_members(tmp_path):
    w = shards.ShardWriter(tmp_path, "shard-000000")
    for i in range(4):
        w.write(f"k{i}", {**members(5 + i)}, recipe(i))
    (part,) = w.close()
    tar = tmp_path / part["tar"]
    side = pq.read_table(tar.with_suffix(".parquet")).to_pylist()
    with tarfile.open(tar) as t:
        for row in side:
            for m in schema.MEMBERS:
                want = t.extractfile(f"{row['key']}.{m.wds_name}").read()
                got = shards.read_member(tar, row[f"{m.name}_offset"], row[f"{m.name}_size"])
                assert got == want
            assert all(info.mtime == 0 for info in t.getmembers())


def test_dotted_key_is_refused(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="dot"):
        shards.ShardWriter(tmp_path, "s").write("a.b", members(1), recipe(0))
