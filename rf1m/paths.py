"""Where every file the stages exchange lives, under one data root.

Stages meet in files; this is the one place that names them, so a stage never rebuilds another's
path by hand and params.yaml needs only a data root and a batch id. Releases and models live beside
the data root (`releases/`, `models/`), not inside it: DVC tracks them separately.

    <root>/products/                         products.parquet, images, quarantine.jsonl
    <root>/shards/<batch>/                   shard-*.tar + sidecar Parquet + stats.json
    <root>/media/<batch>/                    images Label Studio serves (local-files storage)
    <root>/labels/<batch>/gold.parquet       the answer key of the gold tasks
    <root>/oracle/<batch>.parquet            the simulated panel's noise-free rules (evaluation only)
    <root>/labels/<batch>/labels.parquet     one row per judgement (pulled)
    <root>/labels/<batch>/consensus.parquet  one row per sample, agreement.json beside it
    <root>/predictions/<batch>.parquet       RFNet's predictions for a batch
    <root>/attempts/<batch>.parquet          cyclic generation: every attempt, accepted or not
    <root>/catalog.duckdb                    the catalog snapshot
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATA_ROOT = "data"
RELEASES_ROOT = "releases"


@dataclass(frozen=True)
class Layout:
    root: str | Path = DATA_ROOT

    @property
    def base(self) -> Path:
        return Path(self.root)

    @property
    def products(self) -> Path:
        return self.base / "products"

    @property
    def catalog(self) -> Path:
        return self.base / "catalog.duckdb"

    # The folders that hold every batch: stage configs name these and add the batch themselves.
    @property
    def shards_root(self) -> Path:
        return self.base / "shards"

    @property
    def media_root(self) -> Path:
        return self.base / "media"

    @property
    def labels_root(self) -> Path:
        return self.base / "labels"

    @property
    def predictions_root(self) -> Path:
        return self.base / "predictions"

    def shards(self, batch: str) -> Path:
        return self.shards_root / batch

    def media(self, batch: str) -> Path:
        return self.media_root / batch

    def labels_dir(self, batch: str) -> Path:
        return self.labels_root / batch

    def gold(self, batch: str) -> Path:
        return self.labels_dir(batch) / "gold.parquet"

    def oracle(self, batch: str) -> Path:
        return self.base / "oracle" / f"{batch}.parquet"

    def labels(self, batch: str) -> Path:
        return self.labels_dir(batch) / "labels.parquet"

    def pull_state(self, batch: str) -> Path:
        return self.labels_dir(batch) / "pull_state.json"

    def consensus(self, batch: str) -> Path:
        return self.labels_dir(batch) / "consensus.parquet"

    def agreement(self, batch: str) -> Path:
        return self.labels_dir(batch) / "agreement.json"

    def predictions(self, batch: str) -> Path:
        return self.predictions_root / f"{batch}.parquet"

    def attempts(self, batch: str) -> Path:
        return self.base / "attempts" / f"{batch}.parquet"
