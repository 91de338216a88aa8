import datetime as dt
import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from annotation.consensus import (
    ConsensusConfig,
    cohen_kappa,
    consensus,
    dawid_skene,
    decide,
    gold_accuracy,
    krippendorff_alpha,
    majority,
    run,
)
from rf1m import tables

A, N = "available", "not_available"


def test_cohen_kappa_by_hand():
    # po = 4/5; pe = 3/5*2/5 + 2/5*3/5 = 0.48; kappa = 0.32 / 0.52
    assert cohen_kappa([A, A, N, N, A], [A, N, N, N, A]) == (pytest.approx(0.32 / 0.52), None)
    assert cohen_kappa([A, N, A], [A, N, A]) == (1.0, None)


def test_undefined_agreement_is_none_with_the_reason_not_one():
    # one verdict everywhere: expected agreement 1 (kappa) / expected disagreement 0 (alpha): 0/0, not 1
    kappa, why = cohen_kappa([A, A, A], [A, A, A])
    assert kappa is None and "expected agreement 1" in why
    alpha, why = krippendorff_alpha([[N, N], [N, N, N]])
    assert alpha is None and "expected disagreement 0" in why
    alpha, why = krippendorff_alpha([[A]])
    assert alpha is None and "no sample has two judgements" in why


def test_krippendorff_alpha_by_hand():
    # coincidences: o_AA = 2, o_NN = 2, o_AN = o_NA = 1; n = 6; Do = 2/6; De = (36 - 18) / 30
    assert krippendorff_alpha([[A, A], [A, N], [N, N]]) == (pytest.approx(1 - (2 / 6) / (18 / 30)), None)
    assert krippendorff_alpha([[A, A], [N, N, N]]) == (1.0, None)


def test_majority_breaks_ties_conservatively():
    assert majority([A, A, N]) == (A, pytest.approx(2 / 3))
    assert majority([A, N]) == (N, 0.5)


def test_dawid_skene_learns_an_unreliable_annotator():
    # a and b agree on 8 items; c always says the opposite. On the last item only a and c vote:
    # majority ties (-> not_available), Dawid-Skene trusts a because it has learnt that c is inverted.
    items = []
    for i in range(8):
        truth = i % 2
        items.append([("a", truth), ("b", truth), ("c", 1 - truth)])
    items.append([("a", 0), ("c", 1)])
    post, conf, prior = dawid_skene(items, 2)
    assert post[-1].argmax() == 0 and post[-1, 0] > 0.9
    assert conf["c"][0, 1] > 0.9 and conf["a"][0, 0] > 0.9
    assert prior[0] == pytest.approx(0.5, abs=0.1)


def row(key, annotator, verdict, reasons=(), source="simulated"):
    return {"key": key, "annotator": annotator, "verdict": verdict, "reasons": list(reasons), "source": source}


def write_labels(path, rows):
    """A labels.parquet as pull writes it: the given columns, the others filled in."""
    t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    tables.write(tables.LABELS, [{"annotation_id": i, "task_id": i, "project_id": 1, "batch_id": "b", "regions": "[]",
                                  "lead_time": 1.0, "prediction_accepted": False, "created_at": t, "updated_at": t,
                                  **r} for i, r in enumerate(rows)], path)


def test_consensus_rows_reasons_and_pairwise_kappa():
    rows = [row("k1", "a", N, ["size_mismatch", "indistinctiveness"]), row("k1", "b", N, ["size_mismatch"]),
            row("k2", "a", A), row("k2", "b", A), row("k3", "a", N, ["space_mismatch"]), row("k3", "b", A)]
    out, agr = consensus(rows)
    by = {o["key"]: o for o in out}
    # reasons kept when picked by at least half of those who said not_available
    assert by["k1"]["verdict"] == N and by["k1"]["reasons"] == ["size_mismatch", "indistinctiveness"]
    assert by["k2"]["verdict"] == A and by["k2"]["reasons"] == [] and by["k2"]["majority_confidence"] == 1.0
    assert by["k3"]["majority_verdict"] == N and by["k3"]["majority_confidence"] == 0.5
    assert agr["cohen_kappa"]["a | b"]["kappa"] == pytest.approx(cohen_kappa([N, A, N], [N, A, A])[0])
    assert agr["samples"] == 3 and agr["judgements"] == 6


def test_gold_accuracy():
    gold = {"g1": {"verdict": N, "reasons": ["size_mismatch"]}, "g2": {"verdict": A, "reasons": []}}
    rows = [row("g1", "a", N, ["size_mismatch", "space_mismatch"]), row("g2", "a", A), row("g1", "b", A)]
    acc = gold_accuracy(rows, gold)
    assert acc["a"] == {"gold_tasks": 2, "accuracy": 1.0, "reason_jaccard": pytest.approx((0.5 + 1.0) / 2)}
    assert acc["b"]["accuracy"] == 0.0


def test_panel_rules_cover_every_reason():
    from annotation.panel import Rules, judge

    ok = {"base": 0.9, "height": 0.7, "ground": 0.6, "ground_step": 20.0, "contrast": 80.0, "busy": 30.0, "banding": 0.3,
          "clutter": 5.0, "prompt_id": "studio", "halo": 1.0, "truncated": False, "title": "Vela red bottle",
          "category": "beauty"}
    assert judge(ok, Rules(camera_m=0.08)) == ("available", [])
    cases = {"unsuitable": {"truncated": True}, "space_mismatch": {"ground": 0.88},
             "size_mismatch": {"title": "Vela red bag", "category": "fashion", "height": 0.2},
             "indistinctiveness": {"contrast": 20.0}, "shape_hallucination": {"halo": 0.6}}
    assert judge({**ok, "banding": 0.8}, Rules(camera_m=0.08)) == ("not_available", ["indistinctiveness"])
    assert judge({**ok, "clutter": 8.0}, Rules(camera_m=0.08)) == ("not_available", ["indistinctiveness"])  # > 1.4 x 4.4
    assert judge({**ok, "clutter": 8.0, "prompt_id": None}, Rules(camera_m=0.08)) == ("available", [])  # no preset
    for reason, change in cases.items():
        assert judge({**ok, **change}, Rules(camera_m=0.08)) == ("not_available", [reason])


def test_a_tie_is_undecided_not_a_coin_flip():
    # a 1-1 tie: Dawid-Skene's posterior is 0.5 and its argmax picked `available` (class 0)
    rows = [row("k1", "a", A), row("k1", "b", N, ["size_mismatch"]), row("k2", "a", A), row("k2", "b", A)]
    out, agr = consensus(rows)
    by = {o["key"]: o for o in out}
    assert by["k1"]["status"] == "undecided" and by["k1"]["verdict"] == N
    assert (by["k1"]["votes_available"], by["k1"]["votes_not_available"]) == (1, 1)
    assert by["k1"]["confidence"] == pytest.approx(0.5, abs=0.05)
    assert by["k2"]["status"] == "decided" and by["k2"]["verdict"] == A and by["k2"]["votes_available"] == 2
    assert agr["undecided"] == 1
    # Dawid-Skene overruling a strict majority is as undecided as a tie
    assert decide(Counter({A: 2, N: 1}), N) == ("undecided", N)
    assert decide(Counter({A: 2, N: 1}), A) == ("decided", A)
    assert decide(Counter({N: 1}), N) == ("decided", N)


def test_run_writes_status_and_votes(tmp_path):
    d = tmp_path / "b"
    d.mkdir()
    rows = [{**row(k, a, v), "gold": False} for k, a, v in
            (("k1", "a", A), ("k1", "b", N), ("k2", "a", A), ("k2", "b", A), ("k3", "a", A))]
    write_labels(d / "labels.parquet", rows)
    summary = run(ConsensusConfig(batch_id="b", labels=str(tmp_path)))
    assert summary["undecided"] == 1
    cons = {r["key"]: r for r in pq.read_table(d / "consensus.parquet").to_pylist()}
    assert cons["k1"]["status"] == "undecided" and cons["k1"]["votes_not_available"] == 1
    assert cons["k3"]["status"] == "decided" and cons["k3"]["verdict"] == A
    text = (d / "agreement.json").read_text()
    assert "NaN" not in text  # json.loads would accept it; other readers do not
    agr = json.loads(text)
    # k1 (A/N) and k2 (A/A): kappa po = 1/2, pe = 1 * 1/2; alpha Do = 2/4, De = (16 - 10) / 12: both 0, defined
    assert agr["cohen_kappa"]["a | b"] == {"n": 2, "kappa": 0.0}
    assert agr["krippendorff_alpha"] == pytest.approx(0.0) and "krippendorff_alpha_undefined" not in agr


def test_run_says_why_alpha_and_kappa_are_null(tmp_path):
    d = tmp_path / "b"
    d.mkdir()
    rows = [{**row(k, a, A), "gold": False} for k in ("k1", "k2") for a in ("a", "b")]
    write_labels(d / "labels.parquet", rows)
    run(ConsensusConfig(batch_id="b", labels=str(tmp_path)))
    agr = json.loads((d / "agreement.json").read_text())
    assert agr["krippendorff_alpha"] is None and "expected disagreement 0" in agr["krippendorff_alpha_undefined"]
    pair = agr["cohen_kappa"]["a | b"]
    assert pair["kappa"] is None and "expected agreement 1" in pair["undefined"]


def simulate_panel(n_core: int, n_solo: int, n_shared_solo: int, accuracy: float, seed: int):
    """Three core annotators judge n_core items together; `solo` judges n_solo items alone and shares
    n_shared_solo items with core annotator c0. Returns (label rows, shared items per annotator as
    the simulation assigned them)."""
    rng = np.random.default_rng(seed)
    rows, shared = [], Counter()

    def judge(key, who):
        truth = int(rng.random() < 0.6)
        for a in who:
            v = truth if rng.random() < accuracy else 1 - truth
            rows.append(row(key, a, (A, N)[v]))
        if len(who) > 1:
            shared.update(who)

    for i in range(n_core):
        judge(f"core{i}", ["c0", "c1", "c2"])
    for i in range(n_solo):
        judge(f"solo{i}", ["solo"])
    for i in range(n_shared_solo):
        judge(f"pair{i}", ["c0", "solo"])
    return rows, shared


def test_dawid_skene_flags_annotators_with_few_shared_items():
    rows, shared = simulate_panel(n_core=150, n_solo=120, n_shared_solo=5, accuracy=0.9, seed=0)
    _, agr = consensus(rows, min_shared_items=20)
    ds = agr["dawid_skene"]["annotators"]
    assert {a: v["shared_items"] for a, v in ds.items()} == dict(shared) == {"c0": 155, "c1": 150, "c2": 150,
                                                                           "solo": 5}
    assert [a for a, v in ds.items() if not v["reliable"]] == ["solo"]
    # why the flag exists: on items judged alone EM learns that `solo` agrees with itself
    solo = (ds["solo"]["sensitivity"] + ds["solo"]["specificity"]) / 2
    core = [(ds[a]["sensitivity"] + ds[a]["specificity"]) / 2 for a in ("c0", "c1", "c2")]
    assert solo > 0.95 and all(abs(c - 0.9) < 0.05 for c in core)
    assert agr["dawid_skene"]["min_shared_items"] == 20
