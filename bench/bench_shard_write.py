"""Shard-write throughput: rf1m's ShardWriter (tar + sidecar + offsets, fsync, renames) as a ratio to
writing the same members with plain `tarfile` in the same process. Target >= 0.9. ShardWriter does
strictly more (sidecar, offsets, rename), so a ratio above 1 is noise. Each ratio is the median of
`--repeats` interleaved repeats, with min and max.

    .venv/bin/python bench/bench_shard_write.py [--samples 2000] [--repeats 5]
"""

import argparse
import io
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import numpy as np  # noqa: E402

from bench import fakes, timing  # noqa: E402
from rf1m import schema, shards  # noqa: E402


def payload(n: int, rng) -> list[tuple[str, dict, dict]]:
    out = []
    for i in range(n):
        members = {m.wds_name: rng.bytes(int(rng.integers(3000, 12000))) for m in schema.MEMBERS}
        recipe = fakes.recipe(i, key=f"bench-{i:06d}")
        out.append((recipe["key"], members, recipe))
    return out


def plain_tarfile(path: Path, samples) -> None:
    import json

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members, recipe in samples:
            entries = {**members, schema.RECIPE_MEMBER: json.dumps(recipe, sort_keys=True).encode()}
            for name, data in entries.items():
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                tar.addfile(info, io.BytesIO(data))


def rf1m_writer(directory: Path, samples, durable: bool = False) -> None:
    w = shards.ShardWriter(directory, "shard-000000", durable=durable)
    for key, members, recipe in samples:
        w.write(key, members, recipe)
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    rec = timing.Record("shard_write", vars(a))
    samples = payload(a.samples, np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as tmp:
        rf1m_writer(Path(tmp) / "warm-up", samples[:10])  # one-time imports (pyarrow's pandas shim)

        def plain(r: int) -> float:
            return timing.timed(plain_tarfile, Path(tmp) / f"plain{r}.tar", samples)[0]

        def ours(r: int, durable: bool = False) -> float:
            return timing.timed(rf1m_writer, Path(tmp) / f"ours{r}{durable}", samples, durable)[0]

        base, fast = timing.interleaved(plain, ours, a.repeats)
        base_d, slow = timing.interleaved(plain, lambda r: ours(r, durable=True), a.repeats)
    result = {"samples": a.samples, "plain_s": timing.spread(base), "shardwriter_s": timing.spread(fast),
              "durable_s": timing.spread(slow), "ratio": timing.ratio(base, fast, more_work=True),
              "ratio_durable": timing.ratio(base_d, slow, more_work=True)}
    med = {k: a.samples / result[k]["median"] for k in ("plain_s", "shardwriter_s", "durable_s")}
    print(f"plain tarfile : {med['plain_s']:8.0f} samples/s (median)")
    print(f"rf1m shards   : {med['shardwriter_s']:8.0f} samples/s (tar + sidecar with offsets, atomic rename)")
    print(f"  durable=True: {med['durable_s']:8.0f} samples/s (plus fsync before each rename)")
    print(f"ratio         : {timing.describe(result['ratio'])}  (target >= 0.9)")
    print(f"ratio durable : {timing.describe(result['ratio_durable'])}")
    rec.save(**result)


if __name__ == "__main__":
    main()
