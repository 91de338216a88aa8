"""Pull a batch's annotations from Label Studio into `<labels>/<batch>/labels.parquet`.

Incremental: only annotations created or changed after the watermark of the last pull are parsed and
merged (upserted on the annotation id, so pulling twice duplicates nothing). The labels file is
written and renamed into place first; only then does the watermark advance, so a pull that dies
half-way is simply redone. Label Studio down or answering 5xx: retries with backoff, then a clear
error, and nothing on disk changes. Annotations whose verdict or reasons are not in the taxonomy go
to `quarantine.jsonl` with the reason, and the rest of the batch goes on.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from annotation.client import Client
from annotation.config import DEFECT, REASONS, VERDICT
from annotation.panel import DOMAIN
from annotation.push import find_project
from rf1m import schema
from rf1m.quarantine import Record, to_jsonl
from rf1m.shards import commit_file, write_json_atomic


@dataclass(frozen=True)
class PullConfig:
    batch_id: str = "demo"
    labels: str = "data/labels"


def _ts(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def parse(task: dict, ann: dict, emails: dict[int, str], project_id: int) -> dict:
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
    email = emails.get(ann["completed_by"], str(ann["completed_by"]))
    pre = data.get("prelabel")
    accepted = bool(ann.get("parent_prediction")) and pre is not None and \
        (pre["verdict"], sorted(pre["reasons"])) == (verdict, sorted(reasons))
    return {"annotation_id": ann["id"], "task_id": task["id"], "project_id": project_id, "key": data["key"],
            "batch_id": data.get("batch_id", ""), "gold": bool(data.get("gold")), "annotator": email,
            "source": "simulated" if email.endswith("@" + DOMAIN) else "human", "verdict": verdict,
            "reasons": reasons if verdict == "not_available" else [], "regions": json.dumps(regions),
            "lead_time": float(ann.get("lead_time") or 0.0), "prediction_accepted": accepted,
            "created_at": _ts(ann["created_at"]), "updated_at": _ts(ann["updated_at"])}


def run(cfg: PullConfig, client: Client | None = None) -> dict:
    client = client or Client()
    out = Path(cfg.labels) / cfg.batch_id
    out.mkdir(parents=True, exist_ok=True)
    state_file, labels_file = out / "pull_state.json", out / "labels.parquet"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    project = find_project(client, cfg.batch_id)
    if project is None:
        raise ValueError(f"no Label Studio project for batch {cfg.batch_id!r}: push it first")
    watermark = _ts(state["watermark"]) if state.get("watermark") else None
    tasks = client.request("GET", f"/api/projects/{project['id']}/export", params={"exportType": "JSON"}).json()
    emails = {u["id"]: u["email"] for u in client.get("/api/users")}
    fresh, rejected, newest = {}, [], watermark
    for task in tasks:
        for ann in task.get("annotations", []):
            changed = _ts(ann["updated_at"])
            if ann.get("was_cancelled") or (watermark and changed < watermark):  # equal: re-read, upsert dedupes
                continue
            newest = max(newest or changed, changed)
            try:
                fresh[ann["id"]] = parse(task, ann, emails, project["id"])
            except ValueError as e:
                reason, detail = str(e).split(": ", 1)
                rejected.append(Record("annotate_pull", f"annotation {ann['id']} (task {task['id']})", reason,
                                       f"not in the taxonomy: {detail}"))
    old = pq.read_table(labels_file).to_pylist() if labels_file.exists() else []
    before = {r["annotation_id"]: r["updated_at"] for r in old}
    changed = sum(before.get(i) != r["updated_at"] for i, r in fresh.items())
    rows = [r for r in old if r["annotation_id"] not in fresh] + list(fresh.values())
    rows.sort(key=lambda r: r["annotation_id"])
    tmp = labels_file.with_name(labels_file.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema.labels_schema()), tmp)
    commit_file(tmp, labels_file)  # fsync + rename: on disk before the watermark may move
    qfile = out / "quarantine.jsonl"
    seen = {json.loads(line)["item"] for line in qfile.read_text().splitlines()} if qfile.exists() else set()
    with open(qfile, "a", encoding="utf-8") as f:
        f.write(to_jsonl([r for r in rejected if r.item not in seen]))
    # only now, with the labels safely on disk, does the watermark move
    write_json_atomic(state_file, {"project_id": project["id"],
                                   "watermark": newest.isoformat() if newest else None})
    return {"project_id": project["id"], "new_or_changed": changed, "labels": len(rows),
            "quarantined_now": len(rejected), "labels_file": str(labels_file)}
