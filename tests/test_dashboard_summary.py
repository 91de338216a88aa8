"""`rf1m summary`, what `make demo` ends with: the numbers come from the files the stages wrote."""

from __future__ import annotations

import json

import pandas as pd
import yaml

from bench.bench_dashboard import build
from pipelines.cli import main


def test_summary_reports_the_files_numbers(tmp_path, capsys):
    data, releases, metrics = tmp_path / "data", tmp_path / "releases", tmp_path / "metrics"
    build(data, releases, batches=2, labels=120, seed=5)
    (data / "labels" / "b000" / "agreement.json").write_text(json.dumps({"krippendorff_alpha": 0.61}))
    (data / "labels" / "b001" / "agreement.json").write_text(json.dumps({"krippendorff_alpha": None}))
    metrics.mkdir()
    (metrics / "metrics.json").write_text(json.dumps({"ap": 0.8758, "f1": 0.8583}))
    (metrics / "failures.json").write_text(json.dumps({"samples": 10, "available": 0.5, "space_mismatch": 0.3,
                                                       "size_mismatch": 0.2, "per_prompt": {}}))
    (metrics / "cyclic.json").write_text(json.dumps({"first_try_available_rate": 0.42, "never_within_k_share": 0.25,
                                                     "max_attempts": 4}))
    (metrics / "prelabels.json").write_text(json.dumps({"accepted_share": 0.691, "saved_s_per_task": 3.176}))
    arm = {"oracle": {"rate": 0.5}, "paired_vs_base": {"diff": 0.0625, "ci95": [0.0125, 0.1]}}
    (metrics / "eval.json").write_text(json.dumps({"generations_per_arm": 32, "arms": {
        "base": {"oracle": {"rate": 0.4375}}, "rfft": arm}}))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": str(data), "release": {"out": str(releases)},
                                      "evaluate": {"out": str(metrics)},
                                      "panel": {"failures": str(metrics / "failures.json")},
                                      "cyclic": {"metrics": str(metrics)}, "round2": {"metrics": str(metrics)},
                                      "rfft_eval": {"out": str(metrics / "eval.json")}}))

    assert main(["--params", str(params), "summary", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    cons = pd.concat(pd.read_parquet(p) for p in sorted(data.glob("labels/*/consensus.parquet")))
    decided = cons[cons.status == "decided"]
    assert got["usable_rate"] == (decided.verdict == "available").mean()
    assert got["labelled"] == len(cons) and got["undecided"] == (cons.status == "undecided").sum()
    assert got["krippendorff_alpha"] == {"b000": 0.61, "b001": None}
    assert got["rfnet_ap"] == 0.8758 and got["releases"] == ["v0.1", "v0.2"]

    assert main(["--params", str(params), "summary"]) == 0
    text = capsys.readouterr().out
    assert "AP 87.6%" in text and "b000: 0.61, b001: undefined" in text and "make dashboard" in text
    assert "50.0% available; space_mismatch 30.0%, size_mismatch 20.0%" in text
    # the loop's later stages, from their own files
    assert "42.0% accepted at the first try, 25.0% never within 4 tries" in text
    assert "69.1% accepted unchanged (round 2), 3.2 s saved per task" in text
    assert "43.8% -> 50.0% (+6.2 points, 95% CI [+1.2, +10.0], 32 paired test images)\n" in text
    # early stopping that kept the base says so (a demo's short run: +0.0 exactly, which read like a bug)
    for kept, tail in ((0, "; kept step 0, the base: validation never improved\n"), (5, "; kept step 5\n")):
        (metrics / "eval.json").write_text(json.dumps({"generations_per_arm": 32, "arms": {
            "base": {"oracle": {"rate": 0.4375}}, "rfft": {**arm, "kept_step": kept}}}))
        assert main(["--params", str(params), "summary"]) == 0
        assert "32 paired test images)" + tail in capsys.readouterr().out
    # acceptance run without a baseline has no time saved: the summary says less, and does not fail
    (metrics / "prelabels.json").write_text(json.dumps({"accepted_share": 0.5}))
    assert main(["--params", str(params), "summary"]) == 0
    text = capsys.readouterr().out
    assert "50.0% accepted unchanged (round 2)\n" in text


def test_summary_of_a_fresh_clone_says_not_yet(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": str(tmp_path / "none"), "release": {"out": str(tmp_path / "r")},
                                      "evaluate": {"out": str(tmp_path / "m")},  # not the repo's own metrics/
                                      "panel": {"failures": str(tmp_path / "m" / "failures.json")},
                                      "cyclic": {"metrics": str(tmp_path / "m")}, "round2": {"metrics": str(tmp_path / "m")},
                                      "rfft_eval": {"out": str(tmp_path / "m" / "eval.json")}}))
    assert main(["--params", str(params), "summary"]) == 0
    text = capsys.readouterr().out
    for line in ("cyclic  not yet", "pre-labels  not yet", "RFFT  not yet"):
        assert line in text
    assert "0 in 0 batch(es)" in text and "not yet evaluated" in text and "none yet" in text
    assert "oracle  not yet" in text
