"""A Label Studio ML backend: pre-labels for annotators, over Label Studio's ML-backend protocol.

Endpoints: GET /health, POST /setup (-> model_version), POST /predict (one result per task, in task
order), POST /webhook (annotation events; acknowledged). Standard library only: the maintained
`label-studio-ml` SDK is not on PyPI and the PyPI one pins Flask 1.x.

Predictors:
  predictions:<file.parquet>  serves RFNet's predictions table (`rf1m.tables.PREDICTIONS`: the
                              probabilities and the decision prelabel took), the same file and the
                              same decision that `annotate push` attaches to tasks
  null                        until a model exists: answers every task with no prediction, so the
                              project works and annotators simply see no pre-label
`rf1m annotate ml-backend --connect BATCH` attaches it to every project of the batch and then asks Label
Studio to retrieve predictions (`retrieve_predictions`): Label Studio calls /predict for the tasks and
stores the answers, so the Predictions column is filled at once rather than task by task as annotators
open them. Label Studio refuses to call a backend on loopback unless `up` was told so
(`allow_loopback_ml_backend`, which turns off its SSRF protection; see annotation/server.py).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from annotation.client import Client
from annotation.config import choice_result
from annotation.push import read_predictions


class NullPredictor:
    model_version = "null"

    def predict(self, tasks: list[dict]) -> list[dict | None]:
        return [None] * len(tasks)


class FilePredictor:
    def __init__(self, path: str):
        self.by_key = read_predictions(path)
        versions = {p["model_version"] for p in self.by_key.values()}
        self.model_version = ",".join(sorted(versions)) or "empty"

    def predict(self, tasks: list[dict]) -> list[dict | None]:
        return [self.by_key.get(t.get("data", {}).get("key")) for t in tasks]


def make_predictor(spec: str):
    if spec == "null":
        return NullPredictor()
    if spec.startswith("predictions:"):
        return FilePredictor(spec.split(":", 1)[1])
    raise ValueError(f"unknown predictor {spec!r} (null, predictions:<file.parquet>)")


def _handler(predictor):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> dict:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def do_GET(self):  # noqa: N802
            if self.path.rstrip("/") in ("/health", ""):
                self._send(200, {"status": "UP", "model_class": type(predictor).__name__})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self):  # noqa: N802
            try:
                body = self._body()
            except ValueError:
                return self._send(400, {"error": "body is not JSON"})
            path = self.path.rstrip("/")
            if path == "/setup":
                return self._send(200, {"model_version": predictor.model_version})
            if path == "/webhook":
                return self._send(200, {"status": "ok"})
            if path == "/predict":
                results = []
                for p in predictor.predict(body.get("tasks", [])):
                    results.append({"result": [], "score": 0.0, "model_version": predictor.model_version}
                                   if p is None else
                                   {"result": choice_result(p["verdict"], p["reasons"]), "score": p["score"],
                                    "model_version": p["model_version"]})
                return self._send(200, {"results": results, "model_version": predictor.model_version})
            self._send(404, {"error": "not found"})

        def log_message(self, *args):  # quiet: Label Studio polls /health
            pass

    return Handler


def serve(predictor, host: str = "127.0.0.1", port: int = 9090, background: bool = False) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _handler(predictor))
    if background:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def connect(client: Client, project_id: int, url: str, title: str = "RFNet") -> dict:
    """Attach the backend to a project (once; a second call finds the existing link).
    Label Studio calls /setup on the way and keeps the model_version the backend names."""
    for b in client.call("ml.list", client.ls.ml.list, project=project_id):
        if b.url.rstrip("/") == url.rstrip("/"):
            return b.model_dump()
    return client.call("ml.create", client.ls.ml.create, retry=False, project=project_id, url=url, title=title,
                       is_interactive=False).model_dump()


def retrieve_predictions(client: Client, project_id: int, task_ids: list[int] | None = None) -> None:
    """Label Studio's "Retrieve Predictions" action: it posts the tasks (all, or `task_ids`) to the
    connected backend's /predict and stores each answer as the task's prediction. Repeating it is
    harmless: Label Studio replaces the backend's earlier prediction of the same model version."""
    selected = {"all": True, "excluded": []} if task_ids is None else {"all": False, "included": task_ids}
    client.call("actions.create", client.ls.actions.create, retry=False, id="retrieve_tasks_predictions",
                project=project_id, selected_items=selected)


def attach(client: Client, project_ids: list[int], url: str) -> list[dict]:
    """Connect the backend to each project and have Label Studio fetch its predictions for every task;
    per project, the backend's link, its tasks and the predictions they now hold."""
    out = []
    for pid in project_ids:
        backend = connect(client, pid, url)
        retrieve_predictions(client, pid)
        totals = client.totals(pid)
        out.append({"project_id": pid, "backend_id": backend["id"], "state": backend["state"],
                    "model_version": backend.get("model_version"), "tasks": totals.total,
                    "predictions": totals.total_predictions})
    return out
