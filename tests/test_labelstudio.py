"""Against a real Label Studio server (sqlite, then PostgreSQL): push, the simulated panel, pull, faults,
the ML backend. Tests that restart the server with other settings or drive the whole CLI run on sqlite only."""

import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import yaml

from annotation import consensus, ml_backend, panel, pull, push, server
from annotation.client import Client, LabelStudioError, LabelStudioUnavailable
from rf1m import shards, tables
from rfnet.predict import predictions_rows
from tests.conftest import free_port


@pytest.fixture(scope="module")
def pushed(small_batch, label_studio):
    tmp, gen, _ = small_batch
    cfg, client = label_studio
    pcfg = panel.PanelConfig(batch_id=gen.batch_id, shards=gen.out, annotators=3, failures=str(tmp / "failures.json"))
    panel.write_gold(pcfg, str(tmp))  # <tmp>/labels/<batch>/gold.parquet
    push_cfg = push.PushConfig(batch_id=gen.batch_id, shards=gen.out, labels=str(tmp / "labels"),
                               media=str(tmp / "media"), files_root=cfg.files_root, gold_rate=0.5,
                               overlap_fraction=0.5, chunk=4)
    first = push.run(push_cfg, client)
    return tmp, gen, push_cfg, pcfg, first


def list_tasks(client: Client, project_id: int, fields: str = "task_only") -> list:
    return list(client.ls.tasks.list(project=project_id, fields=fields, page_size=1000))


def count_tasks(client: Client, project_id: int) -> Counter:
    return Counter(t.data["task_key"] for t in list_tasks(client, project_id))


def sqlite_only(cfg, why: str) -> None:
    if cfg.db != "sqlite":
        pytest.skip(f"sqlite only: {why}")


def test_push_is_idempotent_and_mixes_in_gold(pushed, label_studio):
    tmp, gen, push_cfg, _, first = pushed
    _, client = label_studio
    assert first["samples"] == 6 and first["gold"] == 3 and first["tasks"] == 9 and first["imported_now"] == 9
    again = push.run(push_cfg, client)
    assert again["imported_now"] == 0 and again["project_id"] == first["project_id"]
    counts = count_tasks(client, first["project_id"])
    assert sum(counts.values()) == 9 and set(counts.values()) == {1}
    project = client.ls.projects.get(first["project_id"])
    assert project.title == "RF1M batch t" and project.maximum_annotations == 2
    # the images are served by Label Studio's local-files storage, to an authenticated client
    task = list_tasks(client, first["project_id"])[0]
    r = requests.get(client.url + task.data["image"], timeout=30,
                     headers={"Authorization": f"Token {os.environ['LABEL_STUDIO_API_KEY']}"})
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"


def test_panel_labels_and_pull_returns_exactly_that(pushed, label_studio):
    tmp, gen, push_cfg, pcfg, first = pushed
    _, client = label_studio
    done = panel.run(pcfg, first["project_id"], client)
    overlaps = [t.overlap for t in list_tasks(client, first["project_id"])]
    assert done["annotations_posted"] == sum(overlaps) and max(overlaps) == 2
    assert panel.run(pcfg, first["project_id"], client)["annotations_posted"] == 0  # nothing twice
    pcfg_pull = pull.PullConfig(batch_id=gen.batch_id, labels=str(tmp / "labels"))
    got = pull.run(pcfg_pull, client)
    assert got["new_or_changed"] == got["labels"] == done["annotations_posted"]
    rows = pq.read_table(tmp / "labels" / gen.batch_id / "labels.parquet").to_pylist()
    pulled = sorted((("gold-" + r["key"]) if r["gold"] else r["key"], r["annotator"], r["verdict"],
                     tuple(r["reasons"])) for r in rows)
    sent = sorted((p["task_key"], p["annotator"], p["verdict"], tuple(p["reasons"])) for p in done["posted"])
    assert pulled == sent
    assert {r["source"] for r in rows} == {"simulated"}
    again = pull.run(pcfg_pull, client)
    assert again["new_or_changed"] == 0 and again["labels"] == got["labels"]
    summary = consensus.run(consensus.ConsensusConfig(batch_id=gen.batch_id, labels=str(tmp / "labels")))
    assert summary["samples"] == 6
    agreement = json.loads((tmp / "labels" / gen.batch_id / "agreement.json").read_text())
    assert sum(v["gold_tasks"] for v in agreement["gold_accuracy"].values()) == sum(r["gold"] for r in rows)
    # Gold copies carry their sample's key, so the number of samples cannot show a leak; the votes can.
    # Each consensus row must hold exactly the judges the panel posted on the regular task, none from its gold copy.
    regular, gold_posts = defaultdict(list), 0
    for p in done["posted"]:
        if p["task_key"].startswith("gold-"):
            gold_posts += 1
        else:
            regular[p["task_key"]].append(p["annotator"])
    assert gold_posts > 0  # else this check could not fail
    rows = pq.read_table(tmp / "labels" / gen.batch_id / "consensus.parquet").to_pylist()
    assert {r["key"]: (r["n_annotators"], r["annotators"]) for r in rows} == {
        k: (len(v), sorted(v)) for k, v in regular.items()}
    assert summary["judgements"] == sum(map(len, regular.values()))


def post(client, task_id, choices, reasons) -> dict:
    result = [{"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": choices}}]
    if reasons:
        result.append({"from_name": "reasons", "to_name": "image", "type": "choices", "value": {"choices": reasons}})
    return client.ls.annotations.create(task_id, result=result, lead_time=1.0).model_dump()


def test_unknown_reason_is_quarantined(pushed, label_studio):
    tmp, gen, *_ , first = pushed
    _, client = label_studio
    task = list_tasks(client, first["project_id"])[0]
    bad = post(client, task.id, ["not_available"], ["size_mismatch", "too_shiny"])
    cfg = pull.PullConfig(batch_id=gen.batch_id, labels=str(tmp / "labels"))
    got = pull.run(cfg, client)
    assert got["quarantined_now"] == 1
    lines = [json.loads(x) for x in (tmp / "labels" / gen.batch_id / "quarantine.jsonl").read_text().splitlines()]
    assert [q["reason"] for q in lines if q["item"].startswith(f"annotation {bad['id']} ")] == ["unknown_reason"]
    assert "too_shiny" in lines[-1]["detail"]
    ids = pq.read_table(tmp / "labels" / gen.batch_id / "labels.parquet").column("annotation_id").to_pylist()
    assert bad["id"] not in ids
    pull.run(cfg, client)  # pulling again does not quarantine it twice
    assert len((tmp / "labels" / gen.batch_id / "quarantine.jsonl").read_text().splitlines()) == len(lines)


def api(client, method: str, path: str, body=None):
    """A plain REST call, as a user's script or the web UI makes it (outside the code under test)."""
    r = requests.request(method, client.url + path, json=body, timeout=60,
                         headers={"Authorization": f"Token {os.environ['LABEL_STUDIO_API_KEY']}"})
    r.raise_for_status()
    return r.json() if r.content else None


def test_pull_reflects_edits_and_deletions_and_reads_only_changed_tasks(pushed, label_studio):
    """An annotation edited, one deleted and one added in Label Studio: the next pull has the edit, drops
    the deleted label and adds the new one, reading only those tasks; a pull with nothing new reads none."""
    tmp, gen, *_, first = pushed
    _, client = label_studio
    labels = tmp / "labels" / gen.batch_id / "labels.parquet"
    cfg = pull.PullConfig(batch_id=gen.batch_id, labels=str(tmp / "labels"))
    pull.run(cfg, client)
    before = {r["annotation_id"]: r for r in pq.read_table(labels).to_pylist()}
    edit = next(r for r in before.values() if r["verdict"] == "available")
    gone = next(r for r in before.values() if r["task_id"] != edit["task_id"])
    result = [{"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": ["not_available"]}},
              {"from_name": "reasons", "to_name": "image", "type": "choices", "value": {"choices": ["size_mismatch"]}}]
    api(client, "PATCH", f"/api/annotations/{edit['annotation_id']}", {"result": result})
    api(client, "DELETE", f"/api/annotations/{gone['annotation_id']}")
    tasks = api(client, "GET", f"/api/tasks?project={first['project_id']}&page_size=1000")["tasks"]
    third = next(t["id"] for t in tasks if t["id"] not in (edit["task_id"], gone["task_id"]))
    new = api(client, "POST", f"/api/tasks/{third}/annotations", {
        "result": [{**result[0], "value": {"choices": ["available"]}}], "lead_time": 1.0})
    got = pull.run(cfg, client)
    after = {r["annotation_id"]: r for r in pq.read_table(labels).to_pylist()}
    assert gone["annotation_id"] not in after  # deleted in Label Studio, so gone here too
    assert (after[edit["annotation_id"]]["verdict"], after[edit["annotation_id"]]["reasons"]) == (
        "not_available", ["size_mismatch"])
    assert set(after) == set(before) - {gone["annotation_id"]} | {new["id"]}
    assert got["new_or_changed"] == 2 and got["removed"] == 1
    # with no overlap window, only the three touched tasks are read, and nothing once nothing changed
    quiet = replace(cfg, overlap_s=0.0)
    api(client, "PATCH", f"/api/annotations/{new['id']}", {"lead_time": 2.0})  # one more change to read
    assert pull.run(quiet, client)["tasks_read"] == 1
    again = pull.run(quiet, client)
    assert (again["tasks_read"], again["new_or_changed"], again["removed"]) == (0, 0, 0)
    assert {r["annotation_id"] for r in pq.read_table(labels).to_pylist()} == set(after)


def copy_batch(gen, tmp: Path, batch: str) -> None:
    """The small batch again under another id (its samples keep their keys), with its gold answers."""
    shutil.copytree(Path(gen.out) / gen.batch_id, Path(gen.out) / batch, dirs_exist_ok=True)
    (tmp / "labels" / batch).mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp / "labels" / gen.batch_id / "gold.parquet", tmp / "labels" / batch / "gold.parquet")


def labelled_batch(pushed, client, batch: str) -> tuple[int, pull.PullConfig, dict]:
    """A copy of the small batch pushed and labelled by the panel: its project id, a pull config for it, and
    the first pull (straight after that burst of changes), which reads every task."""
    tmp, gen, push_cfg, pcfg, _ = pushed
    copy_batch(gen, tmp, batch)
    pid = push.run(replace(push_cfg, batch_id=batch), client)["project_id"]
    posted = panel.run(replace(pcfg, batch_id=batch), pid, client)["annotations_posted"]
    cfg = pull.PullConfig(batch_id=batch, labels=str(tmp / "labels"))
    first = pull.run(cfg, client)
    assert first["tasks_read"] == 9 and first["labels"] == posted
    return pid, cfg, first


def test_the_pull_after_a_burst_rereads_nothing(pushed, label_studio):
    """The pull after the first, with nothing new, must not re-read the burst, though every task changed
    within the 60 s overlap before the newest change."""
    _, client = label_studio
    _, cfg, first = labelled_batch(pushed, client, "t_burst")
    again = pull.run(cfg, client)
    assert (again["tasks_read"], again["new_or_changed"], again["removed"], again["labels"]) == (
        0, 0, 0, first["labels"])


def test_a_task_deleted_in_label_studio_takes_its_labels(pushed, label_studio):
    """A labelled task is deleted in Label Studio while another is imported (so the task count stays as it
    was): the next pull notices, and drops that task's labels and only those."""
    tmp = pushed[0]
    _, client = label_studio
    pid, cfg, _ = labelled_batch(pushed, client, "t_deleted")
    labels = tmp / "labels" / "t_deleted" / "labels.parquet"
    rows = pq.read_table(labels).to_pylist()
    doomed = rows[0]["task_id"]
    api(client, "DELETE", f"/api/tasks/{doomed}")
    extra = {"task_key": "extra", "key": rows[0]["key"], "batch_id": "t_deleted", "gold": False, "image": "",
             "product": "", "title": "t", "prompt": "p"}
    client.ls.projects.import_tasks(pid, request=[{"data": extra}])
    got = pull.run(cfg, client)
    after = pq.read_table(labels).to_pylist()
    assert {r["annotation_id"] for r in after} == {r["annotation_id"] for r in rows if r["task_id"] != doomed}
    assert got["removed"] == sum(r["task_id"] == doomed for r in rows) > 0


def served(client, uri: str) -> bytes:
    r = requests.get(client.url + uri, timeout=30, headers={"Authorization": f"Token {os.environ['LABEL_STUDIO_API_KEY']}"})
    r.raise_for_status()
    return r.content


def test_a_sample_regenerated_under_its_key_replaces_its_task_and_stales_its_labels(pushed, label_studio):
    """A batch is regenerated under the same keys and prompt (another guidance scale: only the pixels
    change) after one of its tasks was annotated. Push must show the new images: until 2026-12-07 it kept every old task and media file,
    so a release paired new images with labels made on the old ones. Now every task is replaced, the
    annotation of the old one goes to quarantine (`stale`), its old image stays served, and pull drops
    its label."""
    from pipelines import generate

    tmp, gen, push_cfg, pcfg, _ = pushed
    _, client = label_studio
    batch = "t_regen"
    old_gen = replace(gen, batch_id=batch)
    generate.run(old_gen)
    cfg = replace(push_cfg, batch_id=batch)
    first = push.run(cfg, client)
    pid = first["project_id"]
    judged = list_tasks(client, pid)[0]
    old_image = served(client, judged.data["image"])
    ann = post(client, judged.id, ["available"], [])
    pcfg_pull = pull.PullConfig(batch_id=batch, labels=str(tmp / "labels"))
    assert pull.run(pcfg_pull, client)["labels"] == 1

    generate.run(replace(old_gen, guidance=old_gen.guidance + 2.0))
    again = push.run(cfg, client)
    assert (again["replaced_now"], again["stale_annotations"], again["imported_now"]) == (first["tasks"], 1, first["tasks"])
    tasks = list_tasks(client, pid)
    assert Counter(t.data["task_key"] for t in tasks) == Counter(t["data"]["task_key"] for t in push.build_tasks(cfg)[0])
    rows = {r["key"]: r for r in shards.read_sidecars(Path(gen.out) / batch).to_pylist()}
    for t in tasks:  # every task shows its sample's current image
        assert served(client, t.data["image"]) == shards.member_bytes(Path(gen.out) / batch, rows[t.data["key"]], "image")
    assert old_image != served(client, next(t for t in tasks if t.data["key"] == judged.data["key"]).data["image"])
    assert served(client, judged.data["image"]) == old_image  # what the quarantined annotation judged
    quarantined = [json.loads(x) for x in (tmp / "labels" / batch / "quarantine.jsonl").read_text().splitlines()]
    [q] = [q for q in quarantined if q["item"].startswith(f"stale annotation {ann['id']} ")]
    assert q["reason"] == "stale" and '"available"' in q["detail"] and judged.data["sample_sha"] in q["detail"]

    got = pull.run(pcfg_pull, client)
    assert (got["labels"], got["removed"]) == (0, 1)
    again = push.run(cfg, client)  # a repeat changes nothing
    assert (again["replaced_now"], again["imported_now"]) == (0, 0)
    assert len((tmp / "labels" / batch / "quarantine.jsonl").read_text().splitlines()) == len(quarantined)


class Killed(BaseException):
    """The push process dies (not an error any handler would catch)."""


class DiesMidway(Client):
    """Fault injection on imports: the `lose`-th one lands but its answer is lost; the `die`-th never starts
    (the process is killed)."""

    def __init__(self, url, lose=0, die=0, **kw):
        super().__init__(url, **kw)
        self.lose, self.die, self.imports = lose, die, 0

    def call(self, what, fn, *args, **kw):
        if what == "projects.import_tasks":
            self.imports += 1
            if self.imports == self.die:
                raise Killed
            if self.imports == self.lose:
                fn(*args, **{k: v for k, v in kw.items() if k != "retry"})
                raise LabelStudioUnavailable("the answer was lost")
        return super().call(what, fn, *args, **kw)


def test_push_cuts_a_batch_into_projects_and_every_step_reads_them_all(pushed, label_studio):
    """max_tasks_per_project=3: the 9 tasks go to projects of at most 3, each with its share of gold tasks. A
    push whose import answer is lost, then killed, and run again leaves every task exactly once; simulate and
    pull cover every project, and consensus sees every sample."""
    tmp, gen, push_cfg, pcfg, _ = pushed
    cfg, client = label_studio
    copy_batch(gen, tmp, "t_parts")
    parts = replace(push_cfg, batch_id="t_parts", max_tasks_per_project=3, chunk=2)
    with pytest.raises(Killed):
        push.run(parts, DiesMidway(cfg.url, lose=2, die=3, retries=0))
    done = push.run(parts, client)
    assert push.run(parts, client)["imported_now"] == 0
    projects = push.find_projects(client, "t_parts")
    assert [p["title"] for p in projects] == ["RF1M batch t_parts"] + [
        f"RF1M batch t_parts (part {k})" for k in range(2, len(projects) + 1)]
    assert [p["id"] for p in projects] == [p["id"] for p in done["projects"]]
    counts = [count_tasks(client, p["id"]) for p in projects]
    assert all(sum(c.values()) <= 3 for c in counts) and len(projects) == 3
    assert sum(counts, Counter()) == Counter(t["data"]["task_key"] for t in push.build_tasks(parts)[0])
    assert all(any(k.startswith("gold-") for k in c) for c in counts)  # gold spread over the projects
    posted = sum(panel.run(replace(pcfg, batch_id="t_parts"), p["id"], client)["annotations_posted"] for p in projects)
    got = pull.run(pull.PullConfig(batch_id="t_parts", labels=str(tmp / "labels")), client)
    assert got["labels"] == posted and sorted(got["projects"]) == sorted(p["id"] for p in projects)
    rows = pq.read_table(tmp / "labels" / "t_parts" / "labels.parquet").to_pylist()
    assert {r["project_id"] for r in rows} == {p["id"] for p in projects}
    summary = consensus.run(consensus.ConsensusConfig(batch_id="t_parts", labels=str(tmp / "labels")))
    assert summary["samples"] == 6


class StopsDuringPull(Client):
    """Fault injection: the server is really stopped right before the task listing."""

    def __init__(self, cfg, **kw):
        super().__init__(cfg.url, **kw)
        self.cfg = cfg

    def call(self, what, fn, *args, **kw):
        if what == "tasks.list" and server.healthy(self.cfg.url):
            server.down(self.cfg)
        return super().call(what, fn, *args, **kw)


def test_label_studio_stopped_during_pull(pushed, label_studio):
    tmp, gen, *_, first = pushed
    cfg, client = label_studio
    out = tmp / "labels" / gen.batch_id
    pcfg = pull.PullConfig(batch_id=gen.batch_id, labels=str(tmp / "labels"))
    pull.run(pcfg, client)
    state, labels = (out / "pull_state.json").read_bytes(), (out / "labels.parquet").read_bytes()
    with pytest.raises(LabelStudioUnavailable, match="did not answer tasks.list after 3 tries"):
        pull.run(pcfg, StopsDuringPull(cfg, retries=2, backoff=0.1))
    assert (out / "pull_state.json").read_bytes() == state and (out / "labels.parquet").read_bytes() == labels
    server.up(cfg)  # a restart on the migrated data dir
    task = list_tasks(client, first["project_id"])[0]
    new = post(client, task.id, ["available"], [])
    got = pull.run(pcfg, client)
    assert got["new_or_changed"] == 1
    ids = pq.read_table(out / "labels.parquet").column("annotation_id").to_pylist()
    assert new["id"] in ids and len(ids) == len(set(ids))


def test_push_leaves_off_a_prelabel_the_labelling_config_refuses(small_batch, tmp_path):
    """RFNet's file names a reason the taxonomy lacks for one sample: that task goes out without a pre-label,
    the refusal is quarantined with the SDK's reason, and every other task keeps its pre-label."""
    tmp, gen, _ = small_batch
    keys = sorted(shards.read_sidecars(Path(gen.out) / gen.batch_id).column("key").to_pylist())
    rows = predictions_rows(keys, np.array([[0.2, 0.7, 0.1, 0.0, 0.0]] * len(keys)), "rfnet-test", 0.5)
    rows[0]["reasons"] = ["too_shiny"]
    preds = tmp_path / "predictions.parquet"
    tables.write(tables.PREDICTIONS, rows, preds)
    cfg = push.PushConfig(batch_id=gen.batch_id, shards=gen.out, labels=str(tmp_path / "labels"),
                          media=str(tmp_path / "media"), files_root=str(tmp_path), predictions=str(preds))
    refused = []
    tasks, _ = push.build_tasks(cfg, refused)
    by_key = {t["data"]["key"]: t for t in tasks if not t["data"]["gold"]}
    assert "predictions" not in by_key[keys[0]] and "prelabel" not in by_key[keys[0]]["data"]
    assert all(by_key[k]["predictions"][0]["model_version"] == "rfnet-test" for k in keys[1:])
    assert [(r.reason, r.item) for r in refused] == [("invalid_prediction", f"prediction for {keys[0]} (rfnet-test)")]
    assert "too_shiny" in refused[0].detail


class CountingPredictor(ml_backend.FilePredictor):
    """The file predictor, noting the keys Label Studio asked it about."""

    def __init__(self, path):
        super().__init__(path)
        self.asked = []

    def predict(self, tasks):
        self.asked += [t["data"]["key"] for t in tasks]
        return super().predict(tasks)


def test_label_studio_stores_the_backends_predictions_only_when_loopback_is_allowed(pushed, label_studio, tmp_path):
    """A default `up` keeps SSRF protection and the local-IP block on: Label Studio refuses a backend on
    127.0.0.1. Restarted with allow_loopback_ml_backend, it connects, calls /predict for every task, and
    stores the answers, under the RFNet model version."""
    tmp, gen, push_cfg, _, first = pushed
    cfg, client = label_studio
    sqlite_only(cfg, "restarts the server with other settings")
    pid = first["project_id"]
    keys = sorted(shards.read_sidecars(Path(gen.out) / gen.batch_id).column("key").to_pylist())
    preds = tmp_path / "predictions.parquet"
    # as prelabel writes them (classes: available, space, size, indistinct, shape); default threshold 0.5
    probs = np.array([[0.9 if i % 2 else 0.2, 0.7, 0.1, 0.0, 0.0] for i in range(len(keys))])
    tables.write(tables.PREDICTIONS, predictions_rows(keys, probs, "rfnet-test", 0.5), preds)
    want = {r["key"]: (r["verdict"], r["reasons"]) for r in tables.read(tables.PREDICTIONS, preds).to_pylist()}
    predictor = CountingPredictor(str(preds))
    port = free_port()
    srv = ml_backend.serve(predictor, port=port, background=True)
    url = f"http://127.0.0.1:{port}"
    try:
        res = requests.post(url + "/predict", json={"tasks": [{"id": 2, "data": {"key": "unknown"}}]}, timeout=10)
        assert res.json()["results"][0]["result"] == []  # a task the file lacks: no pre-label
        with pytest.raises(LabelStudioError, match="ml.create: HTTP 4"):
            ml_backend.connect(client, pid, url)
        assert not client.ls.ml.list(project=pid)
        server.down(cfg)
        server.up(replace(cfg, allow_loopback_ml_backend=True))
        predictor.asked.clear()
        (attached,) = ml_backend.attach(client, [pid], url)  # what `ml-backend --connect` does
        assert attached["state"] == "CO" and ml_backend.connect(client, pid, url)["id"] == attached["backend_id"]
        tasks = list_tasks(client, pid, "all")
        assert attached["predictions"] == attached["tasks"] == len(tasks)  # not 0 straight after connecting
        assert sorted(predictor.asked) == sorted(t.data["key"] for t in tasks)  # Label Studio called the backend
        for t in tasks:
            (p,) = t.model_dump()["predictions"]  # pushed without pre-labels: this one is the backend's
            got = {r["from_name"]: r["value"]["choices"] for r in p["result"]}
            verdict, reasons = want[t.data["key"]]
            assert p["model_version"] == "rfnet-test" and got["verdict"] == [verdict]
            assert got.get("reasons", []) == (reasons if verdict == "not_available" else [])
    finally:
        srv.shutdown()
        server.down(cfg)
        server.up(cfg)  # the default again, for the tests that follow
    # push attaches the same predictions as pre-labels to a new batch's tasks
    other = replace(push_cfg, batch_id="t_pred", predictions=str(preds))
    shutil.copytree(Path(gen.out) / gen.batch_id, Path(gen.out) / "t_pred", dirs_exist_ok=True)
    got = push.run(other, client)
    assert got["with_predictions"] == 6
    task = next(t for t in list_tasks(client, got["project_id"], "all") if not t.data["gold"])
    assert task.model_dump()["predictions"][0]["model_version"] == "rfnet-test"


REPO = Path(__file__).resolve().parents[1]
SECRETS = ("LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_API_KEY")


def rf1m(params: Path, *args, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: its own process, its own working folder (so no .env of ours is read)."""
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "--params", str(params), *args], env=env,
                          cwd=params.parent, capture_output=True, text=True, timeout=timeout)


def listening(port: int) -> set[str]:
    """The local addresses with a socket in LISTEN state on `port` (from the kernel's own tables)."""
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:  # 0A = LISTEN
                raw = b"".join(bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, len(host), 8))
                found.add(socket.inet_ntop(family, raw))
    return found


def test_up_refuses_a_non_loopback_bind(tmp_path):
    """`LABEL_STUDIO_URL=http://0.0.0.0:PORT rf1m labelstudio up` must not put the server on every interface."""
    port = free_port()
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"labelstudio": {"venv": str(REPO / ".venv-ls"), "data_dir": str(tmp_path / "ls"),
                                                      "files_root": str(tmp_path), "start_timeout": 5}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    r = rf1m(params, "labelstudio", "up", env={**env, "LABEL_STUDIO_URL": f"http://0.0.0.0:{port}"})
    assert r.returncode == 2
    assert r.stderr.startswith("rf1m: error: refusing to bind Label Studio to 0.0.0.0") and "--allow-remote-bind" in r.stderr
    assert not listening(port) and not (tmp_path / ".env").exists()  # refused before anything was made
    assert all(map(server.is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "localhost"]))
    assert not any(map(server.is_loopback, ["0.0.0.0", "::", "192.0.2.2", "fd00::2", "no-such-host.invalid"]))


def test_made_up_credentials_go_to_an_owner_only_env_file(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")})
    made = server.credentials(tmp_path / ".env")
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    assert set((tmp_path / ".env").read_text().splitlines()) == {f"{k}={v}" for k, v in made.items()}
    # a .env the user wrote with the usual 644 gets the made-up password appended: it must not stay world-readable
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")})
    (tmp_path / "user.env").write_text("LABEL_STUDIO_USERNAME=lead@example.com\n")
    (tmp_path / "user.env").chmod(0o644)
    made = server.credentials(tmp_path / "user.env")
    assert made["LABEL_STUDIO_USERNAME"] == "lead@example.com"
    assert (tmp_path / "user.env").stat().st_mode & 0o777 == 0o600


def test_default_up_keeps_ssrf_protection_and_the_local_ip_block_on(label_studio, tmp_path):
    """The fixture's server was started by a plain `up`: Label Studio got both protections on. Only the flag
    (or the params setting) turns them off."""
    cfg, _ = label_studio
    pid = int((Path(cfg.data_dir) / "server.pid").read_text())
    env = dict(x.split("=", 1) for x in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in x)
    assert (env["SSRF_PROTECTION_ENABLED"], env["ML_BLOCK_LOCAL_IP"]) == ("true", "true")
    from pipelines import cli

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"labelstudio": {"url": cfg.url}}))
    parse = lambda *args: cli._ls_config(cli.build_parser().parse_args(["--params", str(params), *args]))  # noqa: E731
    assert not parse("labelstudio", "up").allow_loopback_ml_backend
    assert parse("labelstudio", "up", "--allow-loopback-ml-backend").allow_loopback_ml_backend


def test_server_listens_on_loopback_only(label_studio):
    cfg, _ = label_studio
    assert listening(cfg.port) == {"127.0.0.1"}
    others = ["127.0.0.2"] + [a for a in socket.gethostbyname_ex(socket.gethostname())[2] if a != "127.0.0.1"]
    for addr in others:  # a server on 0.0.0.0 would answer on every one of these
        with pytest.raises(OSError):
            socket.create_connection((addr, cfg.port), timeout=3).close()


def test_cli_never_prints_or_logs_the_secrets(small_batch, label_studio, tmp_path):
    """up, push, simulate, pull and down through the CLI, as a user runs them: neither their output, nor any
    file the project writes (the server's log, pull state, quarantine), nor the server's command line holds
    the password or the API token."""
    tmp, gen, _ = small_batch
    cfg, _ = label_studio
    sqlite_only(cfg, "the CLI does not depend on the database; one run of it is enough")
    batch, labels = "t_cli", tmp_path / "labels"
    shutil.copytree(Path(gen.out) / gen.batch_id, Path(gen.out) / batch, dirs_exist_ok=True)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "labelstudio": {"url": cfg.url, "venv": cfg.venv, "data_dir": cfg.data_dir, "files_root": cfg.files_root},
        "annotate_push": {"batch_id": batch, "shards": gen.out, "labels": str(labels), "media": str(tmp_path / "media"),
                          "files_root": cfg.files_root, "overlap_fraction": 0.5},
        "panel": {"batch_id": batch, "shards": gen.out, "annotators": 3},
        "annotate_pull": {"batch_id": batch, "labels": str(labels)}}))
    env = {**os.environ, "LABEL_STUDIO_URL": cfg.url}
    secrets = [os.environ[k] for k in SECRETS]
    server.down(cfg)  # so that `up` really starts it (and prints what a start prints)
    said = []
    for args in (["labelstudio", "up"], ["annotate", "push"], ["annotate", "simulate"], ["annotate", "pull"],
                 ["labelstudio", "status"]):
        r = rf1m(params, *args, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        said.append(r.stdout + r.stderr)
    assert '"state": "started"' in said[0] and '"annotations_posted"' in said[2] and '"labels"' in said[3]
    pid = int((Path(cfg.data_dir) / "server.pid").read_text())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    written = {p: p.read_text(errors="replace") for folder in (Path(cfg.data_dir), labels) for p in folder.rglob("*")
               if p.is_file() and ".sqlite3" not in p.name and p.suffix != ".parquet"}  # the db holds the token by design
    assert (Path(cfg.data_dir) / "server.log").stat().st_size > 0 and any("pull_state" in p.name for p in written)
    for secret in secrets:
        assert not [i for i, text in enumerate(said) if secret in text]
        assert secret not in cmdline
        assert not [str(p) for p, text in written.items() if secret in text]
