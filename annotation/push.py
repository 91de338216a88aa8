"""Push a batch to Label Studio: one project per batch, one task per sample, gold tasks mixed in.

A batch larger than `max_tasks_per_project` is cut into parts of about equal size, each its own
project (`RF1M batch <id>`, `RF1M batch <id> (part 2)`, ...), because Label Studio slows down as a
project grows (bench/RESULTS.md, 100,000 tasks). Pull, simulate and the ML backend read every part.

Idempotent by key: the projects are found by their titles, the keys already in each are listed
first, and only missing tasks are imported, in chunks. If an import chunk fails without an answer,
the keys are listed again before retrying, so a lost response never doubles a task.

A sample regenerated under its old key (a new generator, a reworded prompt) is not the sample its
task showed: every task carries `sample_sha`, a digest of what the annotator judges (the image's bytes,
the product image's sha, the title and the prompt), and its media files are named by it. A task whose
digest differs from its sample's is deleted and the new one imported like any missing task; the old
task's annotations, which judged an image the sample no longer has, go to `quarantine.jsonl` first
(reason `stale`, with the verdict, reasons and annotator), and its image stays in the media folder under
its digest. Pull then drops their labels as it does for any deleted task. (Retiring the task in place
does not work: each import re-deals the project's overlap, which puts the annotated tasks back into
the queue first.) Tasks imported before digests existed carry none and are taken as current.

Each distinct pre-label is checked against the project's labelling config with the SDK's
`LabelInterface` before it is sent: one that names a choice the config lacks is left off its task and
recorded in `<labels>/<batch>/quarantine.jsonl`, and the task goes out without it.

Images are served by Label Studio's local-files storage from `<data>/media/<batch>/`; push extracts
them from the shards by the sidecar offsets (no tar is unpacked). For scale, point the project at
cloud storage instead (S3/GCS import storage with the same relative paths).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from annotation.client import Client, LabelStudioUnavailable
from annotation.config import choice_result, instructions, label_interface, labeling_config
from rf1m import shards, tables
from rf1m.atomic import write_atomic
from rf1m.quarantine import Record

SAMPLE_SHA = "sample_sha"  # task data: digest of what the annotator judges (sample_sha())


@dataclass(frozen=True)
class PushConfig:
    batch_id: str = "demo"
    shards: str = "data/shards"
    labels: str = "data/labels"  # gold answers are read from <labels>/<batch>/gold.parquet
    media: str = "data/media"  # must lie under Label Studio's files root
    files_root: str = "data"
    predictions: str | None = None  # RFNet's predictions table (rf1m.tables.PREDICTIONS), from prelabel
    gold_rate: float = 0.05  # gold tasks per sample
    overlap_fraction: float = 0.3  # share of tasks that get >= 2 annotators
    overlap: int = 2
    chunk: int = 1000
    max_tasks_per_project: int = 50_000  # a bigger batch is cut into several projects (README: where to cut)
    seed: int = 0


def project_title(batch_id: str, part: int = 1) -> str:
    """Part 1 keeps the plain title, so a batch that grows past one project keeps its first one."""
    return f"RF1M batch {batch_id}" + (f" (part {part})" if part > 1 else "")


def find_projects(client: Client, batch_id: str) -> list[dict]:
    """The batch's projects, in part order (each {id, title, part})."""
    base = project_title(batch_id)
    parts = re.compile(re.escape(base) + r"(?: \(part (\d+)\))?")
    found: dict[int, dict] = {}
    for p in client.call("projects.list", lambda: list(client.ls.projects.list(search=base, page_size=100))):
        m = parts.fullmatch(p.title)  # search matches substrings: "RF1M batch t" also finds "RF1M batch t2"
        if m:
            part = int(m[1] or 1)
            found.setdefault(part, {"id": p.id, "title": p.title, "part": part})
    return [found[k] for k in sorted(found)]


def require_projects(client: Client, batch_id: str) -> list[dict]:
    """The batch's projects, for every step after push (simulate, pull, the ML backend)."""
    projects = find_projects(client, batch_id)
    if not projects:
        raise ValueError(f"no Label Studio project for batch {batch_id!r}: push it first")
    return projects


def ensure_project(client: Client, cfg: PushConfig, part: int = 1, project: dict | None = None) -> tuple[dict, bool]:
    """The project of one part of the batch (`project` when the caller found it already), with the media
    storage registered, and whether it was created just now (then it has no tasks to list)."""
    title = project_title(cfg.batch_id, part)
    if project is None:
        project = next((p for p in find_projects(client, cfg.batch_id) if p["part"] == part), None)
    created = project is None
    if created:
        # not retried: a lost answer would make a second project; a re-run finds the first by its title
        p = client.call("projects.create", client.ls.projects.create, retry=False,
                        title=title, label_config=labeling_config(),
                        description=f"RF1M generation batch {cfg.batch_id}: is each candidate advert usable?",
                        expert_instruction=instructions(), show_instruction=True,
                        maximum_annotations=cfg.overlap, overlap_cohort_percentage=round(100 * cfg.overlap_fraction),
                        show_skip_button=False, enable_empty_annotation=False)
        project = {"id": p.id, "title": p.title, "part": part}
    media = (Path(cfg.media) / cfg.batch_id).resolve()
    media.mkdir(parents=True, exist_ok=True)
    local = client.ls.import_storage.local
    if not any(Path(s.path) == media for s in client.call("storages.list", local.list, project=project["id"])):
        client.call("storages.create", local.create, retry=False, project=project["id"], path=str(media),
                    title=f"{cfg.batch_id} media", use_blob_urls=False)
    return project, created


def existing_tasks(client: Client, project_id: int) -> dict[str, dict]:
    """task_key -> {id, data, total_annotations} of the project's tasks."""
    return {t["data"]["task_key"]: t for t in client.tasks(project_id) if "task_key" in (t["data"] or {})}


def sample_sha(image: bytes, row: dict) -> str:
    """What an annotator judges, as one digest: the generated image, the product, the caption and the prompt."""
    h = hashlib.sha256(image)
    for part in (row["product_sha256"], row["title"], row["prompt"]):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:16]


def stale_tasks(have: dict[str, dict], tasks: list[dict]) -> list[dict]:
    """The tasks in `have` whose `sample_sha` differs from the planned task's."""
    planned = {t["data"]["task_key"]: t["data"][SAMPLE_SHA] for t in tasks}
    return [old for key, old in have.items() if key in planned and
            (old["data"] or {}).get(SAMPLE_SHA) not in (None, planned[key])]


def stale_records(client: Client, old: dict) -> list[Record]:
    """A quarantine record for each annotation the task has now (read just before it is deleted, so that
    one submitted since the listing is recorded too): they judged an image the sample no longer has."""
    data, records = old["data"], []
    for ann in client.call("tasks.get", client.ls.tasks.get, old["id"]).annotations or []:
        choices = {r["from_name"]: r["value"].get("choices") for r in ann.get("result") or []}
        records.append(Record(
            "annotate_push", f"stale annotation {ann['id']} (task {old['id']})", "stale",
            f"judged an earlier image of sample {data['key']} ({data['image'].rsplit('/', 1)[-1]}), since "
            f"regenerated; the task was replaced. Annotator {ann.get('completed_by')}: {json.dumps(choices)}"))
    return records


def read_predictions(path: str | None) -> dict[str, dict]:
    """key -> {model_version, score, verdict, reasons} from RFNet's predictions table.

    The verdict and reasons are the file's own: prelabel decided them with `rf1m.decision.decide` at
    the checkpoint's validated threshold, the decision evaluation measured. A file that breaks the
    predictions contract stops here (tables.ContractError) rather than showing defaults."""
    if not path or not Path(path).exists():
        return {}
    return {r["key"]: {"model_version": r["model_version"], "score": r["p_available"], "verdict": r["verdict"],
                       "reasons": r["reasons"]} for r in tables.read(tables.PREDICTIONS, path).to_pylist()}


def extract_media(jobs: list[tuple[Path, dict, str, Path]]) -> None:
    """Write each task's images where Label Studio serves them from (skipping those already there: a file
    is named by its sample's digest, so one that exists holds these bytes)."""
    for batch_dir, row, member, target in jobs:
        if not target.exists():
            write_atomic(target, shards.member_bytes(batch_dir, row, member))


def checked_prediction(p: dict, checked: dict) -> tuple[dict | None, str]:
    """The task's `predictions` entry, or None and why the labelling config refuses it.

    The answer depends only on the verdict and reasons, so each distinct pair is validated once
    (`checked` remembers them): validating every task would cost push about a tenth of its time."""
    pair = (p["verdict"], tuple(p["reasons"]))
    if pair not in checked:
        errors = label_interface().validate_prediction({"result": choice_result(*pair)}, return_errors=True)
        checked[pair] = "; ".join(errors) if errors is not True else ""
    if checked[pair]:
        return None, checked[pair]
    return {"model_version": p["model_version"], "score": p["score"],
            "result": choice_result(p["verdict"], p["reasons"])}, ""


def build_tasks(cfg: PushConfig, refused: list[Record] | None = None) -> tuple[list[dict], list]:
    """Every task of the batch (samples, then gold copies), deterministic by seed, and the media to write.
    Pre-labels the labelling config refuses are left off and appended to `refused`."""
    batch_dir = Path(cfg.shards) / cfg.batch_id
    rows = sorted(shards.read_sidecars(batch_dir).to_pylist(), key=lambda r: r["key"])
    if not rows:
        raise ValueError(f"no samples in {batch_dir}: run the generate stage first")
    media = (Path(cfg.media) / cfg.batch_id).resolve()
    media.mkdir(parents=True, exist_ok=True)
    prefix = "/data/local-files/?d=" + str(media.relative_to(Path(cfg.files_root).resolve())) + "/"
    preds = read_predictions(cfg.predictions)
    gold_file = Path(cfg.labels) / cfg.batch_id / "gold.parquet"
    gold = {g["key"]: g for g in tables.read(tables.GOLD, gold_file, missing_ok=True).to_pylist()}
    tasks, jobs, checked = [], [], {}
    for row in tqdm(rows, desc="read samples", unit="sample", leave=False):
        sha = sample_sha(shards.member_bytes(batch_dir, row, "image"), row)
        name = {m: f"{row['key']}.{sha}.{m}.png" for m in ("image", "product")}
        jobs += [(batch_dir, row, m, media / name[m]) for m in name]
        data = {"task_key": row["key"], "key": row["key"], SAMPLE_SHA: sha, "batch_id": cfg.batch_id, "gold": False,
                "image": prefix + name["image"], "product": prefix + name["product"],
                "title": row["title"], "prompt": row["prompt"]}
        task = {"data": data}
        if row["key"] in preds:
            p = preds[row["key"]]
            prediction, why = checked_prediction(p, checked)
            if prediction is None:
                if refused is not None:
                    refused.append(Record("annotate_push", f"prediction for {row['key']} ({p['model_version']})",
                                          "invalid_prediction", f"the labelling config refuses it: {why}"))
            else:
                data["prelabel"] = {"verdict": p["verdict"], "reasons": p["reasons"]}
                task["predictions"] = [prediction]
        tasks.append(task)
    by_key = {t["data"]["key"]: t["data"] for t in tasks}
    known = sorted(k for k in gold if k in by_key)
    for key in random.Random(cfg.seed).sample(known, min(len(known), round(cfg.gold_rate * len(rows)))):
        tasks.append({"data": {**by_key[key], "task_key": f"gold-{key}", "gold": True}})
    return tasks, jobs


def quarantine(qfile: Path, records: list[Record]) -> None:
    """Add records to a batch's quarantine file, each item once however often a stage re-runs."""
    old = tables.read(tables.QUARANTINE, qfile, missing_ok=True).to_pylist()
    seen = {r["item"] for r in old}
    tables.write(tables.QUARANTINE, old + [r for r in records if r.item not in seen], qfile)


def split(tasks: list[dict], limit: int) -> list[list[dict]]:
    """The batch's tasks cut into the fewest parts of equal size (within one) that stay within `limit`, the
    gold copies spread evenly through the samples first, so that every project has its share of them."""
    if limit < 1:
        raise ValueError(f"max_tasks_per_project must be at least 1, not {limit}")
    samples = [t for t in tasks if not t["data"]["gold"]]
    gold = [t for t in tasks if t["data"]["gold"]]
    spread = sorted([(float(i), t) for i, t in enumerate(samples)] +
                    [((j + 0.5) * len(samples) / len(gold), t) for j, t in enumerate(gold)], key=lambda x: x[0])
    n = max(1, -(-len(tasks) // limit))
    parts: list[list[dict]] = [[] for _ in range(n)]
    for k, (_, t) in enumerate(spread):
        parts[k * n // len(tasks)].append(t)
    return parts


def import_tasks(client: Client, project_id: int, tasks: list[dict], chunk: int = 500,
                 have: set[str] | None = None) -> int:
    """Import the tasks whose key the project lacks; returns how many were imported.
    `have`: the keys the project is known to hold (empty for a project created just now); None lists them."""
    have = set(existing_tasks(client, project_id)) if have is None else have
    todo = [t for t in tasks if t["data"]["task_key"] not in have]
    with tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc=f"import into project {project_id}",
              unit="task") as bar:
        for i in range(0, len(todo), chunk):
            part = todo[i: i + chunk]
            for attempt in range(3):
                try:  # tried once: a repeat after a lost answer would double the chunk
                    client.call("projects.import_tasks", client.ls.projects.import_tasks, project_id,
                                request=part, retry=False)
                    break
                except LabelStudioUnavailable:
                    if attempt == 2:
                        raise
                    # the import may have landed before the connection broke: import only what is missing
                    have = set(existing_tasks(client, project_id))
                    part = [t for t in part if t["data"]["task_key"] not in have]
                    if not part:
                        break
            bar.update(len(todo[i: i + chunk]))
    return len(todo)


def run(cfg: PushConfig, client: Client | None = None) -> dict:
    """Push the batch into as many projects as `max_tasks_per_project` asks for (README: where to cut).

    Idempotent across projects: the keys of every existing part are listed first, a task already in any
    of them stays where it is, and each missing one goes to its planned part, or the next part with room."""
    client = client or Client()
    refused: list[Record] = []
    tasks, media_jobs = build_tasks(cfg, refused)
    found = {p["part"]: p for p in find_projects(client, cfg.batch_id)}
    existing = {part: existing_tasks(client, p["id"]) for part, p in found.items()}
    gone = [old for e in existing.values() for old in stale_tasks(e, tasks)]
    qfile = Path(cfg.labels) / cfg.batch_id / "quarantine.jsonl"
    if refused:
        quarantine(qfile, refused)
    stale = 0
    with tqdm(total=len(gone), desc="replace regenerated samples' tasks", unit="task", disable=not gone) as bar:
        for i in range(0, len(gone), 100):  # annotations read just before their delete, recorded before it
            some = gone[i: i + 100]
            records = [r for old in some for r in stale_records(client, old)]
            if records:
                quarantine(qfile, records)  # a push that dies before the deletes below loses nothing
            for old in some:  # not retried: a re-run finds what is left
                client.call("tasks.delete", client.ls.tasks.delete, str(old["id"]), retry=False)
            stale += len(records)
            bar.update(len(some))
    replaced = {old["data"]["task_key"] for old in gone}
    have = {part: set(e) - replaced for part, e in existing.items()}
    placed = set().union(*have.values())
    todo = [[t for t in planned if t["data"]["task_key"] not in placed]
            for planned in split(tasks, cfg.max_tasks_per_project)]
    projects, imported, carry = [], 0, []
    # Label Studio fetches images only when a task is opened: write them while the import runs
    with ThreadPoolExecutor(1) as pool:
        media = pool.submit(extract_media, media_jobs)
        part = 0
        while carry or part < max(len(todo), max(found, default=0)):
            part += 1
            queue = carry + (todo[part - 1] if part <= len(todo) else [])
            room = max(0, cfg.max_tasks_per_project - len(have.get(part, ())))
            carry = queue[room:]  # a part fuller than planned (the batch grew) passes the rest on
            if part not in found and not queue:
                continue
            project, _ = ensure_project(client, cfg, part, found.get(part))
            imported += import_tasks(client, project["id"], queue[:room], cfg.chunk, have.get(part, set()))
            projects.append({"id": project["id"], "title": project["title"],
                             "tasks": len(have.get(part, ())) + len(queue[:room])})
        media.result()  # a failed write (disk full, ...) fails the push
    n_gold = sum(t["data"]["gold"] for t in tasks)
    return {"project_id": projects[0]["id"], "url": f"{client.url}/projects/{projects[0]['id']}/data",
            "projects": projects, "tasks": len(tasks), "samples": len(tasks) - n_gold, "gold": n_gold,
            "imported_now": imported, "replaced_now": len(gone),
            "stale_annotations": stale,
            "with_predictions": sum("predictions" in t for t in tasks),
            "predictions_refused": len(refused)}
