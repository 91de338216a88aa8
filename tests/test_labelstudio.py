"""Against a real Label Studio server: push, the simulated panel, pull, faults, the ML backend."""

import json
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from annotation import consensus, ml_backend, panel, pull, push, server
from annotation.client import Client, LabelStudioUnavailable
from rf1m import shards
from tests.conftest import free_port


@pytest.fixture(scope="module")
def pushed(small_batch, label_studio):
    tmp, gen, _ = small_batch
    cfg, client = label_studio
    pcfg = panel.PanelConfig(batch_id=gen.batch_id, shards=gen.out, annotators=3)
    panel.write_gold(pcfg, labels=str(tmp / "labels"))
    push_cfg = push.PushConfig(batch_id=gen.batch_id, shards=gen.out, labels=str(tmp / "labels"),
                               media=str(tmp / "media"), files_root=cfg.files_root, gold_rate=0.5,
                               overlap_fraction=0.5, chunk=4)
    first = push.run(push_cfg, client)
    return tmp, gen, push_cfg, pcfg, first


def count_tasks(client: Client, project_id: int) -> Counter:
    return Counter(t["data"]["task_key"] for t in client.pages("/api/tasks", "tasks", project=project_id,
                                                                  fields="task_only"))


def test_push_is_idempotent_and_mixes_in_gold(pushed, label_studio):
    tmp, gen, push_cfg, _, first = pushed
    _, client = label_studio
    assert first["samples"] == 6 and first["gold"] == 3 and first["tasks"] == 9 and first["imported_now"] == 9
    again = push.run(push_cfg, client)
    assert again["imported_now"] == 0 and again["project_id"] == first["project_id"]
    counts = count_tasks(client, first["project_id"])
    assert sum(counts.values()) == 9 and set(counts.values()) == {1}
    project = client.get(f"/api/projects/{first['project_id']}")
    assert project["title"] == "RF1M batch t" and project["maximum_annotations"] == 2
    # the images are served by Label Studio's local-files storage, to an authenticated client
    task = next(iter(client.pages("/api/tasks", "tasks", project=first["project_id"], fields="task_only")))
    r = client.session.get(client.url + task["data"]["image"], timeout=30)
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"


def test_panel_labels_and_pull_returns_exactly_that(pushed, label_studio):
    tmp, gen, push_cfg, pcfg, first = pushed
    _, client = label_studio
    done = panel.run(pcfg, first["project_id"], client)
    overlaps = [t["overlap"] for t in client.pages("/api/tasks", "tasks", project=first["project_id"],
                                                    fields="task_only")]
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


def post(client, task_id, choices, reasons):
    result = [{"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": choices}}]
    if reasons:
        result.append({"from_name": "reasons", "to_name": "image", "type": "choices", "value": {"choices": reasons}})
    return client.post(f"/api/tasks/{task_id}/annotations", {"result": result, "lead_time": 1.0})


def test_unknown_reason_is_quarantined(pushed, label_studio):
    tmp, gen, *_ , first = pushed
    _, client = label_studio
    task = next(iter(client.pages("/api/tasks", "tasks", project=first["project_id"], fields="task_only")))
    bad = post(client, task["id"], ["not_available"], ["size_mismatch", "too_shiny"])
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


class StopsDuringPull(Client):
    """Fault injection: the server is really stopped right before the export request."""

    def __init__(self, cfg, **kw):
        super().__init__(cfg.url, **kw)
        self.cfg = cfg

    def request(self, method, path, **kw):
        if path.endswith("/export") and server.healthy(self.cfg.url):
            server.down(self.cfg)
        return super().request(method, path, **kw)


def test_label_studio_stopped_during_pull(pushed, label_studio):
    tmp, gen, *_, first = pushed
    cfg, client = label_studio
    out = tmp / "labels" / gen.batch_id
    pcfg = pull.PullConfig(batch_id=gen.batch_id, labels=str(tmp / "labels"))
    pull.run(pcfg, client)
    state, labels = (out / "pull_state.json").read_bytes(), (out / "labels.parquet").read_bytes()
    with pytest.raises(LabelStudioUnavailable, match="did not answer GET .*/export after 3 tries"):
        pull.run(pcfg, StopsDuringPull(cfg, retries=2, backoff=0.1))
    assert (out / "pull_state.json").read_bytes() == state and (out / "labels.parquet").read_bytes() == labels
    server.up(cfg)  # a restart on the migrated data dir
    task = next(iter(client.pages("/api/tasks", "tasks", project=first["project_id"], fields="task_only")))
    new = post(client, task["id"], ["available"], [])
    got = pull.run(pcfg, client)
    assert got["new_or_changed"] == 1
    ids = pq.read_table(out / "labels.parquet").column("annotation_id").to_pylist()
    assert new["id"] in ids and len(ids) == len(set(ids))


def test_ml_backend_serves_predictions_to_label_studio(pushed, label_studio, tmp_path):
    tmp, gen, push_cfg, _, first = pushed
    _, client = label_studio
    keys = sorted(shards.read_sidecars(Path(gen.out) / gen.batch_id).column("key").to_pylist())
    preds = tmp_path / "predictions.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"key": k, "model_version": "rfnet-test", "p_available": 0.9 if i % 2 else 0.2, "p_unsuitable": 0.0,
         "p_space_mismatch": 0.7, "p_size_mismatch": 0.1, "p_indistinctiveness": 0.0, "p_shape_hallucination": 0.0}
        for i, k in enumerate(keys)]), preds)
    port = free_port()
    srv = ml_backend.serve(ml_backend.make_predictor(f"predictions:{preds}"), port=port, background=True)
    try:
        url = f"http://127.0.0.1:{port}"
        tasks = [{"id": 1, "data": {"key": keys[1]}}, {"id": 2, "data": {"key": "unknown"}},
                 {"id": 3, "data": {"key": keys[0]}}]
        res = requests.post(url + "/predict", json={"tasks": tasks}, timeout=10).json()["results"]
        assert res[0]["result"][0]["value"]["choices"] == ["available"] and res[0]["score"] == 0.9
        assert res[1]["result"] == []
        assert res[2]["result"][1]["value"]["choices"] == ["space_mismatch"]
        backend = ml_backend.connect(client, first["project_id"], url)
        assert backend["state"] == "CO" and ml_backend.connect(client, first["project_id"], url)["id"] == backend["id"]
    finally:
        srv.shutdown()
    # push attaches the same predictions as pre-labels to a new batch's tasks
    other = replace(push_cfg, batch_id="t_pred", predictions=str(preds))
    shutil.copytree(Path(gen.out) / gen.batch_id, Path(gen.out) / "t_pred", dirs_exist_ok=True)
    got = push.run(other, client)
    assert got["with_predictions"] == 6
    task = next(t for t in client.pages("/api/tasks", "tasks", project=got["project_id"], fields="all")
                if not t["data"]["gold"])
    assert task["predictions"][0]["model_version"] == "rfnet-test"
