"""bench.timing.Record: every bench's machine-readable results file."""

import json
from pathlib import Path

from bench import timing


def test_a_record_saves_path_arguments_as_text(tmp_path, monkeypatch):
    # argparse's type=Path arguments (bench_rfnet --root, bench_rfft --rfnet-root) once made the save at the
    # end of a 30-minute bench fail with "PosixPath is not JSON serializable", losing its results
    monkeypatch.setattr(timing, "RESULTS", tmp_path)
    rec = timing.Record("t", {"root": Path("/data/bench"), "n": 3})
    path = rec.save(ap=0.5)
    saved = json.loads(path.read_text())
    assert saved["args"] == {"root": "/data/bench", "n": 3}
    assert saved["results"] == {"ap": 0.5} and saved["bench"] == "t"
