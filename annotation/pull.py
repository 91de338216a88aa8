"""Pull a batch's annotations from Label Studio into `<labels>/<batch>/labels.parquet`.

A batch may span several projects (push's `max_tasks_per_project`); each is pulled on its own
watermark in `pull_state.json`, into the one labels file.

Incremental: the first pull of a project reads every task (the JSON export); later pulls ask Label
Studio (Data Manager filter `filter:tasks:updated_at` greater than a cut-off) for only the tasks
changed since the last pull. Creating, editing and deleting an annotation all bump its task's
`updated_at` (tests/test_labelstudio.py checks each against a real server), so a changed task brings
its whole current set of annotations: they are upserted on the annotation id (pulling twice
duplicates nothing), and the task's local labels that Label Studio no longer has are removed.

The cut-off: a write that commits late (an import chunk, a slow request) can carry an `updated_at`
older than the newest change the last pull saw. Such a write was in flight when that pull began, so it
is younger than `overlap_s` before that moment (the server's clock): the cut-off is there, but never
later than the newest change seen nor earlier than `overlap_s` before it. The tasks after the cut-off
are listed by id, `updated_at` and annotation count only, and just those new or changed since the
last pull (with annotations, or with labels here) are read with their annotations, so a pull right
after a burst of imports does not re-read the burst.

A task deleted in Label Studio takes its labels with it (deleting a task bumps nothing): the project's
task count, against the last pull's count plus the tasks created since (ids above the newest it saw),
shows a deletion; only then are the project's task ids listed, and the labels of tasks no longer there
removed (as are those of a project no longer in the batch).

The labels file is written and renamed into place first; only then does the state advance, so a pull
that dies half-way is simply redone. Label Studio down or answering 5xx: retries with backoff, then a
clear error, and nothing on disk changes. Annotations whose verdict or reasons are not in the
taxonomy go to `quarantine.jsonl` with the reason, and the rest of the batch goes on.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

from annotation.client import Client
from annotation.config import DEFECT, REASONS, SIMULATED_FIRST_NAME, VERDICT
from annotation.push import quarantine, require_projects
from rf1m import schema, tables
from rf1m.atomic import write_json
from rf1m.quarantine import Record

BY_ID = 500  # changed tasks read by id in one request (the ids travel in the URL); more: the filtered listing


@dataclass(frozen=True)
class PullConfig:
    batch_id: str = "demo"
    labels: str = "data/labels"
    overlap_s: float = 60.0  # re-read tasks changed this long before the cut-off (late commits)


def _ts(s: str | dt.datetime) -> dt.datetime:
    return s if isinstance(s, dt.datetime) else dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def _query(since: dt.datetime | None = None, ids: list[int] | None = None) -> str:
    """A Data Manager query: the tasks updated after `since`, or the tasks with these ids."""
    if ids is not None:
        return json.dumps({"selectedItems": {"all": False, "included": ids}})
    return json.dumps({"filters": {"conjunction": "and", "items": [
        {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime",
         "value": since.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}]}})  # the one format LS parses


def _task(t: dict) -> dict:
    return {"id": t["id"], "data": t["data"], "updated_at": _ts(t["updated_at"]),
            "annotations": t.get("annotations") or []}


def export_all(client: Client, project_id: int) -> list[dict]:
    """Every task with its annotations: the JSON export, one request (measured about 6x faster than
    listing every task with its annotations, which Label Studio serialises task by task)."""
    raw = client.call("projects.export", lambda: b"".join(
        client.ls.projects.exports.download_sync(project_id, export_type="JSON")))
    return [_task(t) for t in json.loads(raw)]


def server_now(client: Client) -> dt.datetime:
    """The server's clock (the Date header, whole seconds, so one second is taken off): `updated_at` is its time."""
    r = client.call("versions.get", client.ls.versions.with_raw_response.get)
    return parsedate_to_datetime(r.headers["date"]) - dt.timedelta(seconds=1)


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


def pull_project(client: Client, project_id: int, state: dict | None, overlap: dt.timedelta,
                 labelled: set[int]) -> tuple[list[dict], set[int] | None, dict, int]:
    """One project's new or changed tasks with their annotations; the ids of all its tasks when they were
    all listed (a first pull, or a deletion was seen), else None; the project's next state; and how many
    tasks were listed (by id and `updated_at` only, unless a first pull). `labelled`: the ids of the
    project's tasks that have labels here (a changed one is read even when it has no annotation left)."""
    began = server_now(client)
    if state is None:
        tasks = export_all(client, project_id)  # the tasks with annotations: a labelled task not among them is gone
        listed = {t["id"]: t["updated_at"] for t in tasks}
        present = set(listed)
    else:
        since = _ts(state["cutoff"])
        brief = client.tasks(project_id, _query(since))
        listed = {t["id"]: _ts(t["updated_at"]) for t in brief}
        window = {int(k): _ts(v) for k, v in state["window"].items()}
        # skipped: a task read last time as it is now, and a task with no annotation that has no labels here
        changed = {t["id"] for t in brief if window.get(t["id"]) != listed[t["id"]] and
                   (t.get("total_annotations", 1) or t["id"] in labelled)}
        if len(changed) <= BY_ID:
            tasks = [_task(t) for t in client.tasks(project_id, _query(ids=sorted(changed)), "all")] if changed else []
        else:
            tasks = [t for t in map(_task, client.tasks(project_id, _query(since), "all")) if t["id"] in changed]
        present = None
    # after the listing, in one snapshot: how many tasks there are, and the newest (tasks created later have
    # higher ids, and are counted as new by the next pull)
    totals = client.totals(project_id)
    count, top = totals.total, (totals.tasks[0].id if totals.tasks else 0)
    if state is not None and count < state["tasks"] + sum(i > state["max_task_id"] for i in listed):
        present = {t["id"] for t in client.tasks(project_id)}  # a task was deleted: which ones are left
    newest = max(listed.values(), default=_ts(state["newest"]) if state and state["newest"] else None)
    # the window re-read next time: `overlap` before the newest change, but no earlier than needed to catch
    # what was in flight when this read began
    cutoff = began - overlap if newest is None else max(newest - overlap, min(newest, began - overlap))
    window = {str(i): u.isoformat() for i, u in listed.items() if u > cutoff}
    return tasks, present, {"newest": newest and newest.isoformat(), "cutoff": cutoff.isoformat(), "tasks": count,
                            "max_task_id": top, "window": window}, len(listed)


def run(cfg: PullConfig, client: Client | None = None) -> dict:
    client = client or Client()
    out = Path(cfg.labels) / cfg.batch_id
    out.mkdir(parents=True, exist_ok=True)
    state_file, labels_file = out / "pull_state.json", out / "labels.parquet"
    projects = require_projects(client, cfg.batch_id)
    # no labels file (deleted, or never written): read everything again
    known = json.loads(state_file.read_text()).get("projects", {}) if labels_file.exists() and state_file.exists() \
        else {}
    old = tables.read(tables.LABELS, labels_file, missing_ok=True).to_pylist()
    ids = {p["id"] for p in projects}
    rows = {r["annotation_id"]: r for r in old if r["project_id"] in ids}  # a project no longer the batch's: gone
    users, rejected, states, fresh, read, listed = None, [], {}, {}, 0, 0
    for p in projects:
        labelled = {r["task_id"] for r in rows.values() if r["project_id"] == p["id"]}
        tasks, present, states[str(p["id"])], n = pull_project(client, p["id"], known.get(str(p["id"])),
                                                               dt.timedelta(seconds=cfg.overlap_s), labelled)
        listed += n
        # a re-read task brings all its annotations: its local rows missing from them were deleted (or cancelled,
        # or edited into something the taxonomy lacks, which is then quarantined); a task no longer listed is gone
        seen = {t["id"] for t in tasks}
        rows = {i: r for i, r in rows.items() if r["project_id"] != p["id"] or
                (r["task_id"] not in seen and (present is None or r["task_id"] in present))}
        if tasks and users is None:
            users = client.users()
        for task in tasks:
            for ann in task["annotations"]:
                if ann.get("was_cancelled"):
                    continue
                try:
                    fresh[ann["id"]] = rows[ann["id"]] = parse(task, ann, users, p["id"])
                except ValueError as e:
                    reason, detail = str(e).split(": ", 1)
                    rejected.append(Record("annotate_pull", f"annotation {ann['id']} (task {task['id']})", reason,
                                           f"not in the taxonomy: {detail}"))
        read += len(tasks)
    before = {r["annotation_id"]: r["updated_at"] for r in old}
    changed = sum(before.get(i) != r["updated_at"] for i, r in fresh.items())
    removed = len(set(before) - set(rows))
    if read or removed or not labels_file.exists():
        tables.write(tables.LABELS, sorted(rows.values(), key=lambda r: r["annotation_id"]), labels_file)
    if rejected:
        quarantine(out / "quarantine.jsonl", rejected)
    # only now, with the labels safely on disk, does the state move
    write_json(state_file, {"projects": states})
    return {"project_id": projects[0]["id"], "projects": [p["id"] for p in projects], "tasks_listed": listed,
            "tasks_read": read, "new_or_changed": changed, "removed": removed, "labels": len(rows),
            "quarantined_now": len(rejected), "labels_file": str(labels_file)}
