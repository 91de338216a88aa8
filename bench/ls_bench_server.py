"""A throw-away Label Studio for the benches: own data dir, free port, stopped on exit; sqlite, or
PostgreSQL on a private cluster (tests/pg.py) with `db="postgresql"`. Yields the client and the config."""

import contextlib
import os
import socket
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from annotation import server  # noqa: E402
from annotation.client import Client  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def label_studio(files_root: str, db: str = "sqlite"):
    os.environ.update(LABEL_STUDIO_USERNAME="bench@rf1m.local", LABEL_STUDIO_PASSWORD="bench-pass-123456",
                      LABEL_STUDIO_API_KEY="bench0123456789abcdef0123456789abcdef012")
    with tempfile.TemporaryDirectory() as data, contextlib.ExitStack() as stack:
        if db == "postgresql":
            from tests import pg

            os.environ.update(stack.enter_context(pg.cluster(_free_port())))
        cfg = server.ServerConfig(url=f"http://127.0.0.1:{_free_port()}", data_dir=data, files_root=files_root, db=db,
                                  venv=str(Path(__file__).parents[1] / ".venv-ls"))
        print(f"starting Label Studio on {db} (about a minute on an empty database) ...", file=sys.stderr)
        server.up(cfg)
        stack.callback(server.down, cfg)
        yield Client(cfg.url), cfg
