"""The two venvs `make install` builds hold exactly the versions their constraints files pin.

A fresh install resolves open ranges against today's PyPI: sentry-sdk 3.0 (2026-12) made Label Studio
1.23.2 exit at start in a clean clone while every existing venv kept working. These tests fail when an
install stops reading its constraints."""

import json
import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_DUMP = "import json; from importlib import metadata as m; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
    return pins


def _mismatches(pins: dict[str, str], installed: dict[str, str]) -> dict[str, tuple[str, str]]:
    have = {_norm(k): v for k, v in installed.items()}
    return {k: (v, have[k]) for k, v in pins.items() if k in have and have[k] != v}


def test_the_project_venv_holds_the_pinned_versions():
    pins = _pins(REPO / "constraints.txt")
    installed = {d.metadata["Name"]: d.version for d in metadata.distributions()}
    assert {"diffusers", "transformers", "datasets", "duckdb", "webdataset"} <= pins.keys()
    assert _mismatches(pins, installed) == {}  # {name: (pinned, installed)}


def test_label_studios_venv_holds_the_pinned_versions():
    py = REPO / ".venv-ls" / "bin" / "python"
    if not py.exists():
        pytest.skip("no .venv-ls (make install builds it)")
    pins = _pins(REPO / "annotation" / "label-studio-constraints.txt")
    installed = json.loads(subprocess.run([str(py), "-c", _DUMP], capture_output=True, text=True, check=True).stdout)
    assert pins["label-studio"] == "1.23.2" and pins["sentry-sdk"].startswith("2.")
    assert _mismatches(pins, installed) == {}


def test_the_constraints_pin_the_label_studio_that_server_installs():
    from annotation import server
    assert _pins(server.LS_CONSTRAINTS)["label-studio"] == server.LS_VERSION
