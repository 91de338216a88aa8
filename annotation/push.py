"""Push a batch to Label Studio: one project per batch, one task per sample, gold tasks mixed in.

Idempotent by key: the project is found by its title (`RF1M batch <id>`), the keys already in it are
listed first, and only missing tasks are imported, in chunks. If an import chunk fails without an
answer, the keys are listed again before retrying, so a lost response never doubles a task.

Images are served by Label Studio's local-files storage from `<data>/media/<batch>/`; push extracts
them from the shards by the sidecar offsets (no tar is unpacked). For scale, point the project at
cloud storage instead (S3/GCS import storage with the same relative paths).
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from annotation.client import Client, LabelStudioUnavailable
from annotation.config import choice_result, instructions, labeling_config
from rf1m import schema, shards
from rf1m.decision import decide


@dataclass(frozen=True)
class PushConfig:
    batch_id: str = "demo"
    shards: str = "data/shards"
    labels: str = "data/labels"  # gold answers are read from <labels>/<batch>/gold.parquet
    media: str = "data/media"  # must lie under Label Studio's files root
    files_root: str = "data"
    predictions: str | None = None  # Parquet: key, model_version, p_<label> (RFNet's prelabel output)
    gold_rate: float = 0.05  # gold tasks per sample
    overlap_fraction: float = 0.3  # share of tasks that get >= 2 annotators
    overlap: int = 2
    chunk: int = 1000
    seed: int = 0


def project_title(batch_id: str) -> str:
    return f"RF1M batch {batch_id}"


def find_project(client: Client, batch_id: str) -> dict | None:
    for p in client.pages("/api/projects", "results"):
        if p["title"] == project_title(batch_id):
            return p
    return None


def ensure_project(client: Client, cfg: PushConfig) -> tuple[dict, bool]:
    """The batch's project, and whether it was created just now (then it has no tasks to list)."""
    project = find_project(client, cfg.batch_id)
    created = project is None
    if created:
        project = client.post("/api/projects", {
            "title": project_title(cfg.batch_id), "label_config": labeling_config(),
            "description": f"RF1M generation batch {cfg.batch_id}: is each candidate advert usable?",
            "expert_instruction": instructions(), "show_instruction": True,
            "maximum_annotations": cfg.overlap, "overlap_cohort_percentage": round(100 * cfg.overlap_fraction),
            "show_skip_button": False, "enable_empty_annotation": False,
        })
    media = (Path(cfg.media) / cfg.batch_id).resolve()
    media.mkdir(parents=True, exist_ok=True)
    storages = client.get("/api/storages/localfiles", project=project["id"])
    if not any(Path(s["path"]) == media for s in storages):
        client.post("/api/storages/localfiles", {"project": project["id"], "path": str(media),
                                                   "title": f"{cfg.batch_id} media", "use_blob_urls": False})
    return project, created


def existing_keys(client: Client, project_id: int) -> set[str]:
    return {t["data"]["task_key"] for t in client.pages("/api/tasks", "tasks", project=project_id,
                                                          fields="task_only") if "task_key" in t["data"]}


def read_predictions(path: str | None) -> dict[str, dict]:
    """key -> {model_version, score, verdict, reasons} from RFNet's predictions Parquet.

    The verdict is `rf1m.decision.decide` at the file's `threshold` (the checkpoint's validated one; files
    without the column get the default), over the reasons the file has a p_<reason> column for: the
    decision evaluation measured, not a copy of it."""
    if not path or not Path(path).exists():
        return {}
    out = {}
    for row in pq.read_table(path).to_pylist():
        p_reasons = {r: row[f"p_{r}"] for r in schema.REASON_NAMES if row.get(f"p_{r}") is not None}
        out[row["key"]] = {"model_version": row["model_version"],
                           **decide(row["p_available"], p_reasons, row.get("threshold"))}
    return out


def extract_media(jobs: list[tuple[Path, dict, str, Path]]) -> None:
    """Write each task's images where Label Studio serves them from (skipping those already there)."""
    for tar, row, member, target in jobs:
        if not target.exists():
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(shards.read_member(tar, row[f"{member}_offset"], row[f"{member}_size"]))
            tmp.replace(target)


def build_tasks(cfg: PushConfig) -> tuple[list[dict], list]:
    """Every task of the batch (samples, then gold copies), deterministic by seed, and the media to write."""
    batch_dir = Path(cfg.shards) / cfg.batch_id
    rows = sorted(shards.read_sidecars(batch_dir).to_pylist(), key=lambda r: r["key"])
    if not rows:
        raise ValueError(f"no samples in {batch_dir}: run the generate stage first")
    media = (Path(cfg.media) / cfg.batch_id).resolve()
    media.mkdir(parents=True, exist_ok=True)
    prefix = "/data/local-files/?d=" + str(media.relative_to(Path(cfg.files_root).resolve())) + "/"
    preds = read_predictions(cfg.predictions)
    gold_file = Path(cfg.labels) / cfg.batch_id / "gold.parquet"
    gold = {g["key"]: g for g in pq.read_table(gold_file).to_pylist()} if gold_file.exists() else {}
    tasks, jobs = [], []
    for row in rows:
        for member in ("image", "product"):
            jobs.append((batch_dir / row["shard"], row, member, media / f"{row['key']}.{member}.png"))
        data = {"task_key": row["key"], "key": row["key"], "batch_id": cfg.batch_id, "gold": False,
                "image": f"{prefix}{row['key']}.image.png", "product": f"{prefix}{row['key']}.product.png",
                "title": row["title"], "prompt": row["prompt"]}
        task = {"data": data}
        if row["key"] in preds:
            p = preds[row["key"]]
            data["prelabel"] = {"verdict": p["verdict"], "reasons": p["reasons"]}
            task["predictions"] = [{"model_version": p["model_version"], "score": p["score"],
                                    "result": choice_result(p["verdict"], p["reasons"])}]
        tasks.append(task)
    by_key = {t["data"]["key"]: t["data"] for t in tasks}
    known = sorted(k for k in gold if k in by_key)
    for key in random.Random(cfg.seed).sample(known, min(len(known), round(cfg.gold_rate * len(rows)))):
        tasks.append({"data": {**by_key[key], "task_key": f"gold-{key}", "gold": True}})
    return tasks, jobs


def import_tasks(client: Client, project_id: int, tasks: list[dict], chunk: int = 500, new: bool = False) -> int:
    """Import the tasks whose key the project lacks; returns how many were imported."""
    have = set() if new else existing_keys(client, project_id)
    todo = [t for t in tasks if t["data"]["task_key"] not in have]
    with tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc="import", unit="task") as bar:
        for i in range(0, len(todo), chunk):
            part = todo[i: i + chunk]
            for attempt in range(3):
                try:
                    client.post(f"/api/projects/{project_id}/import", part)
                    break
                except LabelStudioUnavailable:
                    if attempt == 2:
                        raise
                    # the import may have landed before the connection broke: import only what is missing
                    have = existing_keys(client, project_id)
                    part = [t for t in part if t["data"]["task_key"] not in have]
                    if not part:
                        break
            bar.update(len(todo[i: i + chunk]))
    return len(todo)


def run(cfg: PushConfig, client: Client | None = None) -> dict:
    client = client or Client()
    tasks, media_jobs = build_tasks(cfg)
    project, created = ensure_project(client, cfg)
    # Label Studio fetches images only when a task is opened: write them while the import runs
    with ThreadPoolExecutor(1) as pool:
        media = pool.submit(extract_media, media_jobs)
        imported = import_tasks(client, project["id"], tasks, cfg.chunk, new=created)
        media.result()  # a failed write (disk full, ...) fails the push
    n_gold = sum(t["data"]["gold"] for t in tasks)
    return {"project_id": project["id"], "url": f"{client.url}/projects/{project['id']}/data",
            "tasks": len(tasks), "samples": len(tasks) - n_gold, "gold": n_gold, "imported_now": imported,
            "with_predictions": sum("predictions" in t for t in tasks)}
