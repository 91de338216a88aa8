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


def tarfile_bytes(items) -> bytes:
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tarstream_writes_the_bytes_tarfile_writes():
    """Names up to 100 bytes (ASCII and not), sizes around the 512-byte blocks, none at all, and a name
    over 100 bytes that USTAR splits at a slash (or refuses, as tarfile does)."""
    import io
    import random

    import pytest

    rng = random.Random(0)
    for n in range(60):
        items = [("".join(rng.choice("ab-_é0/") for _ in range(rng.randint(1, 95))) + ".png",
                  rng.randbytes(rng.choice([0, 1, 511, 512, 513, 5000]))) for _ in range(n % 9)]
        if n == 7:
            items.append(("d" * 60 + "/" + "e" * 60 + ".png", b"x"))
        out = io.BytesIO()
        stream = shards.TarStream(out)
        offsets = [stream.add(name, data) for name, data in items]
        stream.close()
        assert out.getvalue() == tarfile_bytes(items)
        assert [out.getvalue()[o: o + len(d)] for o, (_, d) in zip(offsets, items)] == [d for _, d in items]
    with pytest.raises(ValueError, match="name is too long"):
        shards.TarStream(io.BytesIO()).add("x" * 101, b"")


def test_a_writer_that_dies_mid_part_leaves_only_tmp_files(tmp_path, monkeypatch):
    import pytest

    w = shards.ShardWriter(tmp_path, "shard-000000", maxcount=2)
    for i in range(3):
        w.write(f"k{i}", members(10), recipe(i))
    real = shards.TarStream.add
    monkeypatch.setattr(shards.TarStream, "add", lambda self, *a: (_ for _ in ()).throw(OSError("disk died")))
    with pytest.raises(OSError):
        w.write("k3", members(10), recipe(3))
    monkeypatch.setattr(shards.TarStream, "add", real)
    finals = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".tmp"))
    assert finals == ["shard-000000-00.parquet", "shard-000000-00.tar"]  # the first part, whole
    with tarfile.open(tmp_path / "shard-000000-00.tar") as t:
        assert len(t.getmembers()) == 2 * (len(schema.MEMBERS) + 1)
