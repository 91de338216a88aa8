"""The loop's second round: a batch pushed with RFNet's pre-labels shows them in a real Label Studio, the
simulated panel confirms or fixes them as the editor records it, pull marks the unchanged ones, and the
dvc.yaml commands compile v0.2 from both batches with a diff against v0.1."""

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from annotation import acceptance, panel, pull, push
from rf1m import release, tables
from rfnet.predict import predictions_rows
from tests.conftest import write_consensus
from tests.test_dvc_deps import substitute
from tests.test_release import fake_batch

REPO = Path(__file__).resolve().parents[1]
FLIP = {"available": ("not_available", ["size_mismatch"]), "not_available": ("available", [])}


@pytest.fixture(scope="module")
def round2(small_batch, label_studio):
    """The small batch again as batch `t_r2`, pushed with pre-labels: the first three samples' equal the
    panel's judgement (a noise-free panel judges as the oracle does), the other three's say the opposite;
    one annotator a task, no gold tasks. Then the panel labels it and pull reads it back."""
    tmp, gen, _ = small_batch
    cfg, client = label_studio
    batch = "t_r2"
    shutil.copytree(Path(gen.out) / gen.batch_id, Path(gen.out) / batch, dirs_exist_ok=True)
    pcfg = panel.PanelConfig(batch_id=batch, shards=gen.out, annotators=2, jitter=0.0, flip=0.0, miss=0.0)
    oracle = {r["key"]: (r["verdict"], r["reasons"]) for r in panel.oracle_rows(panel.sample_features(pcfg),
                                                                                  pcfg.rules)}
    keys = sorted(oracle)
    rows = predictions_rows(keys, np.full((len(keys), 5), 0.2), "rfnet-r1", 0.5)
    for i, r in enumerate(rows):
        r["verdict"], r["reasons"] = oracle[r["key"]] if i < 3 else FLIP[oracle[r["key"]][0]]
    preds = tmp / "predictions" / f"{batch}.parquet"
    tables.write(tables.PREDICTIONS, rows, preds)
    pushed = push.run(push.PushConfig(batch_id=batch, shards=gen.out, labels=str(tmp / "labels"),
                                      media=str(tmp / "media"), files_root=cfg.files_root, predictions=str(preds),
                                      gold_rate=0.0, overlap_fraction=0.0, overlap=1), client)
    done = panel.run(pcfg, pushed["project_id"], client)
    pull.run(pull.PullConfig(batch_id=batch, labels=str(tmp / "labels")), client)
    labels = pq.read_table(tmp / "labels" / batch / "labels.parquet").to_pylist()
    return tmp, keys, preds, pushed, done, labels


def test_label_studio_shows_the_pushed_prelabels(round2, label_studio):
    """"Predictions" is not 0 on any task of the batch, they are RFNet's, and the project pre-fills them
    (its model_version is theirs). Fails when push drops the predictions or attaches them to no task."""
    _, keys, _, pushed, _, _ = round2
    _, client = label_studio
    assert pushed["with_predictions"] == len(keys) == 6
    tasks = [t.model_dump() for t in client.ls.tasks.list(project=pushed["project_id"], fields="all")]
    assert len(tasks) == 6 and all(t["total_predictions"] == 1 for t in tasks)
    assert {p["model_version"] for t in tasks for p in t["predictions"]} == {"rfnet-r1"}
    assert client.ls.projects.get(pushed["project_id"]).model_version == "rfnet-r1"


def test_accepted_prelabels_are_marked_and_fixed_ones_are_not(round2, label_studio):
    """Every judgement began from the pre-label (parent_prediction, as the editor sends it); the three
    the panel agreed with come back prediction_accepted, the three it fixed do not, and accepting was
    faster. Fails when the panel never sets parent_prediction (nothing accepted), when pull trusts
    parent_prediction alone (the fixed ones accepted too), or when the panel accepts what it disagrees with."""
    _, keys, preds, pushed, done, labels = round2
    _, client = label_studio
    assert sorted(p["how"] for p in done["posted"]) == ["accepted"] * 3 + ["fixed"] * 3
    by_key = {r["key"]: r for r in labels}
    assert sorted(by_key) == keys
    assert [by_key[k]["prediction_accepted"] for k in keys] == [True] * 3 + [False] * 3
    pre = {r["key"]: r["verdict"] for r in tables.read(tables.PREDICTIONS, preds).to_pylist()}
    assert [by_key[k]["verdict"] == pre[k] for k in keys] == [True] * 3 + [False] * 3  # fixed: the panel's own
    assert np.mean([by_key[k]["lead_time"] for k in keys[:3]]) < np.mean([by_key[k]["lead_time"] for k in keys[3:]])
    tasks = client.ls.tasks.list(project=pushed["project_id"], fields="all")
    for t in map(lambda x: x.model_dump(), tasks):
        (ann,), (pred,) = t["annotations"], t["predictions"]
        assert ann["parent_prediction"] == pred["id"]


def test_acceptance_report_from_the_pulled_labels(round2, tmp_path):
    """Half accepted; the time with pre-labels against a baseline judged from scratch. Fails when gold
    judgements or samples without a pre-label are counted, or the saving is taken the wrong way round."""
    tmp, keys, preds, _, _, labels = round2
    base = [{**r, "lead_time": 10.0, "prediction_accepted": False} for r in labels]
    gold = {**labels[0], "annotation_id": 10**6, "gold": True, "prediction_accepted": False, "lead_time": 99.0}
    stray = {**labels[1], "annotation_id": 10**6 + 1, "key": "not-predicted", "lead_time": 99.0}
    tables.write(tables.LABELS, labels + [gold, stray], tmp_path / "r2.parquet")
    tables.write(tables.LABELS, base + [{**gold, "lead_time": 1000.0}], tmp_path / "r1.parquet")
    got = acceptance.report(tmp_path / "r2.parquet", preds, tmp_path / "r1.parquet")
    with_pre = round(sum(r["lead_time"] for r in labels) / 6, 3)
    assert (got["judgements"], got["tasks"], got["accepted_unchanged"], got["accepted_share"]) == (6, 6, 3, 0.5)
    assert got["lead_time_s"]["with_prelabel"] == with_pre and got["lead_time_s"]["without_prelabel"] == 10.0
    assert got["saved_s_per_task"] == got["saved_s_per_judgement"] == round(10.0 - with_pre, 3) > 0
    assert got["lead_time_source"] == ["simulated"]


def stage_argv(name: str, params: dict) -> list[str]:
    """A dvc.yaml stage's command as argv for `rf1m`, with the params substituted as DVC does."""
    cmd = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]["cmd"]
    argv = shlex.split(substitute(cmd, params))
    assert argv[0] == "rf1m"
    return argv[1:]


def test_round2_release_holds_both_batches_and_its_diff_lists_the_new_samples(tmp_path):
    """The round-1 `release` stage, then `round2_release` and `round2_diff` as dvc.yaml runs them: v0.2
    has parent v0.1 and both batches, and the diff file lists every new sample and the relabel. Fails
    when v0.2 is compiled from the new batch only (the old samples show as removed) or the diff is cut."""
    from pipelines.cli import main

    repo = yaml.safe_load((REPO / "params.yaml").read_text())
    data, out = tmp_path / "data", tmp_path / "releases"
    params = {**repo, "data": str(data), "batch_id": "b1", "cyclic": {**repo["cyclic"], "batch": "b2"},
              "release": {**repo["release"], "out": str(out), "workers": 1, "splits": [0.6, 0.2, 0.2]},
              "round2": {**repo["round2"], "metrics": str(tmp_path / "metrics")}}
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    old = fake_batch(data / "shards", "b1", [f"p{i:02d}" for i in range(10)])
    write_consensus(data / "labels", "b1", old)
    assert main(["--params", str(pfile), *stage_argv("release", params)]) == 0
    relabelled = old[3]
    write_consensus(data / "labels", "b1", old, flip={relabelled})  # people changed a round-1 label since
    new = fake_batch(data / "shards", "b2", [f"p{i:02d}" for i in range(10, 22)])  # 24 samples: more than 20
    write_consensus(data / "labels", "b2", new)
    assert main(["--params", str(pfile), *stage_argv("round2_release", params)]) == 0
    assert main(["--params", str(pfile), *stage_argv("round2_diff", params)]) == 0
    manifest = json.loads((out / "v0.2" / "manifest.json").read_text())
    assert manifest["parent"] == "v0.1" and manifest["batches"] == ["b1", "b2"]
    diff = json.loads((tmp_path / "metrics" / "diff.json").read_text())
    assert (diff["old"], diff["new"]) == ("v0.1", "v0.2")
    assert diff["added"] == sorted(new) and diff["removed"] == [] and diff["relabelled"] == [relabelled]
    assert diff == release.diff("v0.1", "v0.2", out)
