"""Shard-write throughput: rf1m's ShardWriter (tar + sidecar + offsets, fsync, renames) as a ratio to
writing the same members with plain `tarfile` in the same process. Target >= 0.9.

    .venv/bin/python bench/bench_shard_write.py [--samples 2000] [--repeats 3]
"""

import argparse
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import numpy as np  # noqa: E402

from rf1m import schema, shards  # noqa: E402


def payload(n: int, rng) -> list[tuple[str, dict, dict]]:
    out = []
    for i in range(n):
        members = {m.wds_name: rng.bytes(int(rng.integers(3000, 12000))) for m in schema.MEMBERS}
        recipe = {f.name: (i if f.arrow == schema.pa.int64() else 0.7 if f.arrow == schema.pa.float64()
                           else False if f.arrow == schema.pa.bool_() else f"value-{i}") for f in schema.RECIPE}
        recipe["key"] = f"bench-{i:06d}"
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
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    samples = payload(a.samples, np.random.default_rng(0))
    base, ours, durable = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        rf1m_writer(Path(tmp) / "warm-up", samples[:10])  # one-time imports (pyarrow's pandas shim)
        for r in range(a.repeats):  # interleaved so machine noise hits both alike
            t = time.perf_counter()
            plain_tarfile(Path(tmp) / f"plain{r}.tar", samples)
            base.append(time.perf_counter() - t)
            t = time.perf_counter()
            rf1m_writer(Path(tmp) / f"ours{r}", samples)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            rf1m_writer(Path(tmp) / f"durable{r}", samples, durable=True)
            durable.append(time.perf_counter() - t)
    b, o, d = min(base), min(ours), min(durable)
    print(f"plain tarfile : {a.samples / b:8.0f} samples/s")
    print(f"rf1m shards   : {a.samples / o:8.0f} samples/s (tar + sidecar with offsets, atomic rename)")
    print(f"  durable=True: {a.samples / d:8.0f} samples/s (plus fsync before each rename)")
    print(f"ratio         : {b / o:.3f}  (target >= 0.9; durable: {b / d:.3f})")


if __name__ == "__main__":
    main()
