"""Quarantine records: what a stage refused, and why, so the rest of the batch can go on.

One JSON object per line: {stage, item, reason, detail, at}, declared as `rf1m.tables.QUARANTINE` and
written with `tables.write` (a list of `Record`s). `reason` is a short machine word (`corrupt`, `huge`,
`tiny`, `fully_transparent`, ...); `detail` is the human sentence.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Rejected(Exception):
    """Raised by code that judges one item; the stage catches it and writes the record."""

    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass
class Record:
    stage: str
    item: str
    reason: str
    detail: str
    at: str = field(default_factory=_now)


def to_jsonl(records: list[Record]) -> str:
    return "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in records)
