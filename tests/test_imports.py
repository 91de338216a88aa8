"""The layering of DESIGN.md, checked on the source: rf1m imports nothing of ours; annotation and rfnet
import only rf1m (and themselves); annotation.pull does not load the simulated panel, even transitively."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = {"rf1m", "annotation", "rfnet", "pipelines", "dashboards", "bench", "tests"}
ALLOWED = {"rf1m": {"rf1m"}, "annotation": {"annotation", "rf1m"}, "rfnet": {"rfnet", "rf1m"},
           "dashboards": {"dashboards", "rf1m"}}


def imports_of(package_dir: Path) -> list[tuple[str, int, str]]:
    """(file, line, top-level package) for every import of one of our packages, function-local ones included."""
    out = []
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [package_dir.name] if node.level else [node.module or ""]
            else:
                continue
            out += [(str(path.relative_to(package_dir.parent)), node.lineno, n.split(".")[0])
                    for n in names if n.split(".")[0] in OURS]
    return out


def violations(package_dir: Path, allowed: set[str]) -> list[str]:
    return [f"{f}:{line} imports {pkg}" for f, line, pkg in imports_of(package_dir) if pkg not in allowed]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_design_allows(package):
    assert violations(REPO / package, ALLOWED[package]) == []


def test_the_check_sees_a_planted_import(tmp_path):
    """The scan is not vacuous: a function-local import of the stages, or a relative one, is reported."""
    pkg = tmp_path / "rfnet"
    pkg.mkdir()
    (pkg / "ok.py").write_text("from rf1m import schema\nfrom . import ok\n")
    (pkg / "bad.py").write_text("import numpy\n\ndef f():\n    from pipelines.cli import main\n    import annotation.panel\n")
    assert violations(pkg, ALLOWED["rfnet"]) == ["rfnet/bad.py:4 imports pipelines", "rfnet/bad.py:5 imports annotation"]


def test_pull_does_not_load_the_panel():
    code = ("import sys, annotation.pull, annotation.consensus, annotation.ml_backend\n"
            "bad = sorted(m for m in sys.modules if m == 'annotation.panel' or m.startswith('pipelines'))\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_pull_reads_simulated_from_the_annotator_record():
    """Which annotator is simulated is data (the Label Studio user record), not the panel's code."""
    from annotation.config import SIMULATED_FIRST_NAME, choice_result
    from annotation.pull import parse

    task = {"id": 7, "data": {"key": "k", "batch_id": "b"}}
    ann = {"id": 1, "completed_by": 3, "result": choice_result("available", []),
           "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}
    sim = {3: {"email": "anyone@example.com", "first_name": SIMULATED_FIRST_NAME}}
    person = {3: {"email": "sim-00@panel.rf1m.local", "first_name": "Ada"}}
    assert parse(task, ann, sim, 1)["source"] == "simulated"
    assert parse(task, ann, person, 1)["source"] == "human"
    assert parse(task, ann, {}, 1)["annotator"] == "3"  # a deleted user: its id, counted as human
