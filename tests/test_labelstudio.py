"""Against a real Label Studio server: push, the simulated panel, pull, faults, the ML backend."""

import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import yaml

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
