"""Made-up sample recipes for the benches: every field of rf1m's RECIPE filled by its Arrow type, so a
field added to the schema needs no edit here."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import pyarrow as pa  # noqa: E402

from rf1m import schema  # noqa: E402


def recipe(i: int, **fields) -> dict:
    def value(t: pa.DataType):
        if pa.types.is_integer(t):
            return i
        if pa.types.is_floating(t):
            return 0.7
        if pa.types.is_boolean(t):
            return False
        if pa.types.is_list(t):
            return []
        return f"v{i}"

    return {**{f.name: value(f.arrow) for f in schema.RECIPE}, **fields}
