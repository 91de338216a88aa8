"""Pull a batch's annotations from Label Studio into `<labels>/<batch>/labels.parquet`.

Incremental: the first pull reads every task (the JSON export); later pulls ask Label Studio (Data Manager filter
`filter:tasks:updated_at` greater than the watermark) for only the tasks changed since the newest
task of the last pull, minus a safety overlap (`overlap_s`: a write that committed late still lands
in the window), and read only their annotations. Creating, editing and deleting an annotation all
bump its task's `updated_at` (tests/test_labelstudio.py checks each against a real server), so a
changed task brings its whole current set of annotations: they are upserted on the annotation id
(pulling twice duplicates nothing), and the task's local labels that Label Studio no longer has are
removed. The labels file is written and renamed into place first; only then does the watermark
advance, so a pull that dies half-way is simply redone. Label Studio down or answering 5xx: retries
with backoff, then a clear error, and nothing on disk changes. Annotations whose verdict or reasons
are not in the taxonomy go to `quarantine.jsonl` with the reason, and the rest of the batch goes on.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from annotation.client import Client
from annotation.config import DEFECT, REASONS, SIMULATED_FIRST_NAME, VERDICT
from annotation.push import quarantine, require_project
from rf1m import schema, tables
from rf1m.atomic import write_json
from rf1m.quarantine import Record


@dataclass(frozen=True)
class PullConfig:
    batch_id: str = "demo"
    labels: str = "data/labels"
    overlap_s: float = 60.0  # re-read tasks changed this long before the watermark (late commits)


def _ts(s: str | dt.datetime) -> dt.datetime:
    return s if isinstance(s, dt.datetime) else dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def changed_since(since: dt.datetime | None) -> str | None:
    """The Data Manager query for tasks updated after `since` (None: every task)."""
    if since is None:
        return None
    return json.dumps({"filters": {"conjunction": "and", "items": [
        {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime",
         "value": since.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}]}})  # the one format LS parses


def list_tasks(client: Client, project_id: int, since: dt.datetime | None) -> list[dict]:
    """The project's tasks changed after `since` (all when None), with their annotations.

    All: the JSON export, one request (measured about 6x faster than listing every task with its
    annotations, which Label Studio serialises task by task). Changed ones: the task list filtered
    on `updated_at`, which is cheap when few changed."""
    if since is None:
        raw = client.call("projects.export", lambda: b"".join(
            client.ls.projects.exports.download_sync(project_id, export_type="JSON")))
        tasks = json.loads(raw)
    else:
        tasks = [t.model_dump() for t in client.call("tasks.list", lambda: list(client.ls.tasks.list(
            project=project_id, fields="all", page_size=1000, query=changed_since(since))))]
    return [{"id": t["id"], "data": t["data"], "updated_at": _ts(t["updated_at"]), "annotations": t["annotations"] or []}
            for t in tasks]


def source(user: dict) -> str:
    return "simulated" if user.get("first_name") == SIMULATED_FIRST_NAME else "human"


def parse(task: dict, ann: dict, users: dict[int, dict], project_id: int) -> dict:
    """One annotation -> one labels row; raises ValueError (with the reason) for what the taxonomy lacks."""
    verdict, reasons, regions = None, [], []
    for r in ann.get("result", []):
        if r.get("from_name") == VERDICT:
            verdict = (r["value"].get("choices") or [None])[0]
        elif r.get("from_name") == REASONS:
            reasons = list(r["value"].get("choices") or [])
        elif r.get("from_name") == DEFECT:
            v = r["value"]
            regions.append({k: v.get(k) for k in ("x", "y", "width", "height", "rotation")})
    if verdict not in schema.VERDICTS:
        raise ValueError(f"unknown_verdict: {verdict!r}")
    unknown = [x for x in reasons if x not in schema.REASON_NAMES]
    if unknown:
        raise ValueError(f"unknown_reason: {', '.join(map(repr, unknown))}")
    data = task["data"]
    user = users.get(ann["completed_by"], {"email": str(ann["completed_by"])})  # a deleted user: its id
    pre = data.get("prelabel")
    accepted = bool(ann.get("parent_prediction")) and pre is not None and \
        (pre["verdict"], sorted(pre["reasons"])) == (verdict, sorted(reasons))
    return {"annotation_id": ann["id"], "task_id": task["id"], "project_id": project_id, "key": data["key"],
            "batch_id": data.get("batch_id", ""), "gold": bool(data.get("gold")), "annotator": user["email"],
            "source": source(user), "verdict": verdict,
            "reasons": reasons if verdict == "not_available" else [], "regions": json.dumps(regions),
            "lead_time": float(ann.get("lead_time") or 0.0), "prediction_accepted": accepted,
            "created_at": _ts(ann["created_at"]), "updated_at": _ts(ann["updated_at"])}


def run(cfg: PullConfig, client: Client | None = None) -> dict:
    client = client or Client()
    out = Path(cfg.labels) / cfg.batch_id
    out.mkdir(parents=True, exist_ok=True)
    state_file, labels_file = out / "pull_state.json", out / "labels.parquet"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    project = require_project(client, cfg.batch_id)
    if state.get("project_id") not in (None, project["id"]) or not labels_file.exists():
        state = {}  # pushed again to a new project, or the labels file is gone: read everything
    watermark = _ts(state["task_watermark"]) if state.get("task_watermark") else None
    since = watermark - dt.timedelta(seconds=cfg.overlap_s) if watermark else None
    tasks = list_tasks(client, project["id"], since)
    users = client.users() if tasks else {}
    fresh, rejected, newest, seen_tasks = {}, [], watermark, set()
    for task in tasks:
        seen_tasks.add(task["id"])
        newest = max(newest or task["updated_at"], task["updated_at"])
        for ann in task["annotations"]:
            if ann.get("was_cancelled"):
                continue
            try:
                fresh[ann["id"]] = parse(task, ann, users, project["id"])
            except ValueError as e:
                reason, detail = str(e).split(": ", 1)
                rejected.append(Record("annotate_pull", f"annotation {ann['id']} (task {task['id']})", reason,
                                       f"not in the taxonomy: {detail}"))
    old = tables.read(tables.LABELS, labels_file, missing_ok=True).to_pylist()
    before = {r["annotation_id"]: r["updated_at"] for r in old}
    changed = sum(before.get(i) != r["updated_at"] for i, r in fresh.items())
    # a re-read task brings all its annotations: its local rows missing from them were deleted (or cancelled,
    # or edited into something the taxonomy lacks, which is then quarantined)
    kept = [r for r in old if r["annotation_id"] not in fresh and r["task_id"] not in seen_tasks]
    rows = sorted(kept + list(fresh.values()), key=lambda r: r["annotation_id"])
    removed = len(old) - len(kept) - sum(r["annotation_id"] in before for r in fresh.values())
    if tasks or not labels_file.exists():
        tables.write(tables.LABELS, rows, labels_file)  # durable: on disk before the watermark may move
    if rejected:
        quarantine(out / "quarantine.jsonl", rejected)
    # only now, with the labels safely on disk, does the watermark move
    write_json(state_file, {"project_id": project["id"],
                            "task_watermark": newest.isoformat() if newest else None})
    return {"project_id": project["id"], "tasks_read": len(tasks), "new_or_changed": changed, "removed": removed,
            "labels": len(rows), "quarantined_now": len(rejected), "labels_file": str(labels_file)}
