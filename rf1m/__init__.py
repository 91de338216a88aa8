"""RF1M: what a sample is and where it lives (schema, shards, catalog, releases). Imports nothing of ours."""

from rf1m.release import load
from rf1m.schema import LABEL_NAMES, REASON_NAMES, SCHEMA_VERSION

__all__ = ["LABEL_NAMES", "REASON_NAMES", "SCHEMA_VERSION", "load"]
