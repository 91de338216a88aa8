"""A throw-away Label Studio for the benches: own data dir, free port, stopped on exit."""

import contextlib
import os
import socket
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from annotation import server  # noqa: E402
from annotation.client import Client  # noqa: E402


@contextlib.contextmanager
def label_studio(files_root: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(LABEL_STUDIO_USERNAME="bench@rf1m.local", LABEL_STUDIO_PASSWORD="bench-pass-123456",
                      LABEL_STUDIO_API_KEY="bench0123456789abcdef0123456789abcdef012")
    with tempfile.TemporaryDirectory() as data:
        cfg = server.ServerConfig(url=f"http://127.0.0.1:{port}", venv=str(Path(__file__).parents[1] / ".venv-ls"),
                                  data_dir=data, files_root=files_root)
        print("starting Label Studio (about a minute on an empty database) ...", file=sys.stderr)
        server.up(cfg)
        try:
            yield Client(cfg.url)
        finally:
            server.down(cfg)
