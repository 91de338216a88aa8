import math

import pytest

from annotation.consensus import cohen_kappa, consensus, dawid_skene, gold_accuracy, krippendorff_alpha, majority

A, N = "available", "not_available"


def test_cohen_kappa_by_hand():
    # po = 4/5; pe = 3/5*2/5 + 2/5*3/5 = 0.48; kappa = 0.32 / 0.52
    assert cohen_kappa([A, A, N, N, A], [A, N, N, N, A]) == pytest.approx(0.32 / 0.52)
    assert cohen_kappa([A, N, A], [A, N, A]) == 1.0


def test_krippendorff_alpha_by_hand():
    # coincidences: o_AA = 2, o_NN = 2, o_AN = o_NA = 1; n = 6; Do = 2/6; De = (36 - 18) / 30
    assert krippendorff_alpha([[A, A], [A, N], [N, N]]) == pytest.approx(1 - (2 / 6) / (18 / 30))
    assert krippendorff_alpha([[A, A], [N, N, N]]) == 1.0
    assert math.isnan(krippendorff_alpha([[A]]))  # nothing pairable


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


def test_consensus_rows_reasons_and_pairwise_kappa():
    rows = [row("k1", "a", N, ["size_mismatch", "indistinctiveness"]), row("k1", "b", N, ["size_mismatch"]),
            row("k2", "a", A), row("k2", "b", A), row("k3", "a", N, ["space_mismatch"]), row("k3", "b", A)]
    out, agr = consensus(rows)
    by = {o["key"]: o for o in out}
    # reasons kept when picked by at least half of those who said not_available
    assert by["k1"]["verdict"] == N and by["k1"]["reasons"] == ["size_mismatch", "indistinctiveness"]
    assert by["k2"]["verdict"] == A and by["k2"]["reasons"] == [] and by["k2"]["majority_confidence"] == 1.0
    assert by["k3"]["majority_verdict"] == N and by["k3"]["majority_confidence"] == 0.5
    assert agr["cohen_kappa"]["a | b"]["kappa"] == pytest.approx(cohen_kappa([N, A, N], [N, A, A]))
    assert agr["samples"] == 3 and agr["judgements"] == 6


def test_gold_accuracy():
    gold = {"g1": {"verdict": N, "reasons": ["size_mismatch"]}, "g2": {"verdict": A, "reasons": []}}
    rows = [row("g1", "a", N, ["size_mismatch", "space_mismatch"]), row("g2", "a", A), row("g1", "b", A)]
    acc = gold_accuracy(rows, gold)
    assert acc["a"] == {"gold_tasks": 2, "accuracy": 1.0, "reason_jaccard": pytest.approx((0.5 + 1.0) / 2)}
    assert acc["b"]["accuracy"] == 0.0


def test_panel_rules_cover_every_reason():
    from annotation.panel import Rules, judge

    ok = {"scale": 0.74, "gap": 0.13, "edge": 0.1, "contrast": 80.0, "busy": 30.0, "halo": 1.0, "truncated": False}
    assert judge(ok, Rules()) == ("available", [])
    cases = {"unsuitable": {"truncated": True}, "space_mismatch": {"gap": 0.4}, "size_mismatch": {"scale": 0.5},
             "indistinctiveness": {"contrast": 20.0}, "shape_hallucination": {"halo": 0.8}}
    for reason, change in cases.items():
        assert judge({**ok, **change}, Rules()) == ("not_available", [reason])
