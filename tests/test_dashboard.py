"""Every dashboard page under streamlit.testing's AppTest, on a small fixture catalog written through
rf1m.tables. The numbers a page shows are checked against the fixture's files read with pandas and
computed here (pandas, annotation.consensus, rfnet.evaluate), never with the dashboard's own SQL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
import streamlit as st  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from bench.bench_dashboard import build  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "dashboards" / "app.py")


@pytest.fixture(scope="module")
def fixture_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("dash")
    build(base / "data", base / "releases", batches=3, labels=300, seed=1, images=True)
    return base / "data", base / "releases"


@pytest.fixture
def app(fixture_roots, monkeypatch):
    """A fresh app over the fixture; caches cleared (they are process-global and keyed by arguments)."""
    monkeypatch.setenv("RF1M_DATA", str(fixture_roots[0]))
    monkeypatch.setenv("RF1M_RELEASES", str(fixture_roots[1]))
    monkeypatch.setenv("RF1M_RFFT", str(fixture_roots[0] / "no-rfft.json"))
    st.cache_data.clear()
    st.cache_resource.clear()
    return AppTest.from_file(APP, default_timeout=60)


def read(root: Path, pattern: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p).assign(_file=str(p)) for p in sorted(root.glob(pattern))], ignore_index=True)


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def clean(at) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def test_overview_numbers_are_the_catalogs(app, fixture_roots):
    data = fixture_roots[0]
    at = app.run()
    clean(at)
    cons, labels = read(data, "labels/*/consensus.parquet"), read(data, "labels/*/labels.parquet")
    decided = cons[cons.status == "decided"]
    want = {"Samples": f"{len(read(data, 'shards/*/*.parquet')):,}", "Labelled": f"{len(cons):,}",
            "Usable rate": pct((decided.verdict == "available").mean()),
            "Undecided": f"{(cons.status == 'undecided').sum():,}", "Judgements": f"{len(labels):,}",
            "Quarantined": str(len((data / "products" / "quarantine.jsonl").read_text().splitlines()))}
    assert metrics(at) == want
    assert 0 < (cons.status == "undecided").sum() < len(cons)  # the fixture exercises both

    at.radio(key="overview_dim").set_value("prompt").run()
    samples = read(data, "shards/*/*.parquet")[["key", "prompt_id"]]
    by_prompt = decided.merge(samples, on="key").groupby("prompt_id").verdict.agg(
        lambda v: (v == "available").mean())
    shown = at.dataframe[0].value.set_index("group")["usable_rate"]
    assert shown.to_dict() == pytest.approx(by_prompt.to_dict())
    assert {b.label for b in at.get("download_button")} == {"Download CSV"}
    assert len(at.get("download_button")) == len(at.dataframe)  # a CSV for every table


def test_filters_narrow_every_number_to_the_chosen_batches(app, fixture_roots):
    data = fixture_roots[0]
    at = app.run()
    at.sidebar.multiselect(key="batches").set_value(["b001"]).run()
    clean(at)
    cons = pd.read_parquet(data / "labels" / "b001" / "consensus.parquet")
    decided = cons[cons.status == "decided"]
    got = metrics(at)
    assert got["Labelled"] == f"{len(cons):,}"
    assert got["Usable rate"] == pct((decided.verdict == "available").mean())
    assert got["Samples"] == f"{len(pd.read_parquet(next((data / 'shards' / 'b001').glob('*.parquet')))):,}"


def test_annotators_kappa_alpha_and_gold_accuracy(app, fixture_roots):
    from annotation.consensus import cohen_kappa, krippendorff_alpha

    data = fixture_roots[0]
    at = app.switch_page("views/annotators.py").run()
    clean(at)
    labels = read(data, "labels/*/labels.parquet")
    judged = labels[~labels.gold]
    alpha, _ = krippendorff_alpha([list(g.verdict) for _, g in judged.groupby("key")])
    assert metrics(at)["Krippendorff's alpha"] == f"{alpha:.3f}"
    assert metrics(at)["Judgements"] == f"{len(labels):,}"

    per = at.dataframe[0].value.set_index("annotator")
    assert per["judgements"].to_dict() == labels.annotator.value_counts().to_dict()
    gold = read(data, "labels/*/gold.parquet")[["key", "verdict"]].rename(columns={"verdict": "truth"})
    g = labels[labels.gold].merge(gold, on="key")
    acc = g.assign(ok=g.verdict == g.truth).groupby("annotator").ok.mean()
    assert per.loc[acc.index, "gold_accuracy"].to_dict() == pytest.approx(acc.to_dict())

    kappa = at.dataframe[2].value
    pairs = judged.merge(judged, on="key")
    pairs = pairs[pairs.annotator_x < pairs.annotator_y]
    top = pairs.groupby(["annotator_x", "annotator_y"]).size().idxmax()
    p = pairs.set_index(["annotator_x", "annotator_y"]).loc[top]
    row = kappa[(kappa.annotator_a == top[0]) & (kappa.annotator_b == top[1])].iloc[0]
    assert row.shared_items == len(p)
    assert row.kappa == pytest.approx(cohen_kappa(list(p.verdict_x), list(p.verdict_y))[0])


def test_rfnet_ap_and_confusion_match_the_evaluation_code(app, fixture_roots):
    from rfnet.evaluate import average_precision

    data = fixture_roots[0]
    at = app.switch_page("views/rfnet.py").run()
    clean(at)
    cons = read(data, "labels/*/consensus.parquet")
    j = read(data, "predictions/*.parquet").merge(cons[cons.status == "decided"], on="key", suffixes=("", "_h"))
    y = j.verdict_h == "available"
    ap = average_precision(y.to_numpy(), np.floor(j.p_available.to_numpy() * 1000) / 1000)  # the page's bins
    pred = j.p_available >= 0.5
    got = metrics(at)
    assert got["Samples compared"] == f"{len(j):,}"
    assert got["AP (available)"] == pct(ap)
    assert got["Precision"] == pct((pred & y).sum() / pred.sum())
    assert got["Recall"] == pct((pred & y).sum() / y.sum())
    conf = at.dataframe[0].value.set_index(["human", "rfnet"])["samples"].to_dict()
    assert conf == j.groupby(["verdict_h", "verdict"]).size().to_dict()

    at.slider(key="rfnet_threshold").set_value(0.8).run()
    high = j.p_available >= 0.8
    assert metrics(at)["Recall at threshold"] == pct((high & y).sum() / y.sum())


def test_gallery_shows_filtered_tiles_with_their_images(app, fixture_roots):
    data = fixture_roots[0]
    at = app.switch_page("views/gallery.py").run()
    clean(at)
    samples = read(data, "shards/*/*.parquet")
    assert f"{len(samples):,} samples match" in [c.value for c in at.caption]
    first = list(at.image)  # per tile: the generated image, then the maps
    assert len(first) == 2 * 12
    assert first[0].proto.imgs[0].caption == sorted(samples.key)[0]
    assert first[1].proto.imgs[0].caption == "product · mask · canny · depth · saliency"

    at.sidebar.selectbox(key="gallery_reason").set_value("size_mismatch").run()
    cons = read(data, "labels/*/consensus.parquet")
    n = sum("size_mismatch" in r for r in cons.reasons)
    assert f"{n:,} samples match" in [c.value for c in at.caption]
    assert set(at.dataframe[0].value.key) <= set(cons[[("size_mismatch" in r) for r in cons.reasons]].key)


def test_generation_cyclic_rates_and_rfft_not_yet_run(app, fixture_roots):
    data = fixture_roots[0]
    at = app.switch_page("views/generation.py").run()
    clean(at)
    att = read(data, "attempts/*.parquet")
    slots = att.groupby(["batch_id", "product_id", "prompt_id"])
    first = att[att.attempt == 1].decision.eq("available").mean()
    kept = slots.apply(lambda g: bool((g.accepted & (g.decision == "available")).any())).mean()
    got = metrics(at)
    assert got["Product x prompt slots"] == f"{slots.ngroups:,}" and got["Attempts"] == f"{len(att):,}"
    assert got["Available, first try"] == pct(first) and got["Available, after cyclic"] == pct(kept)
    assert any("RFFT not yet run" in i.value for i in at.info)


def test_generation_shows_rfft_eval_arms(app, fixture_roots, tmp_path, monkeypatch):
    """The table reads what `rf1m rfft-eval` and bench_rfft write (the page used to expect a
    before/after shape that nothing wrote, and showed their files as raw JSON)."""
    from pipelines.rfft_eval import wilson

    def arm(k, n, r, fixed=None):
        out = {"oracle": {"rate": k / n, "ci95": wilson(k, n)}, "rfnet": {"rate": r, "ci95": [0, 1]},
               "judge_oracle_agreement": 0.7, "diversity": {"within_prompt": 0.4, "between_prompts": 0.16},
               "attempts": {"rfnet": round(1 / r, 3), "oracle": round(n / k, 3)}}
        return out | ({"paired_vs_base": {"fixed": fixed, "broken": 2, "diff": 0.1, "ci95": [0, 0.2]}} if fixed else {})

    rfft = tmp_path / "eval.json"
    rfft.write_text(json.dumps({"test_products": 4, "generations_per_arm": 32,
                                "arms": {"base": arm(14, 32, 0.25), "rfft": arm(19, 32, 0.5, fixed=7)}}))
    monkeypatch.setenv("RF1M_RFFT", str(rfft))
    at = app.switch_page("views/generation.py").run()
    clean(at)
    shown = at.dataframe[-1].value.set_index("arm")
    assert shown.loc["rfft", "oracle_rate"] == pytest.approx(19 / 32)
    assert shown.loc["rfft", "oracle 95% CI"] == "{:.3f}-{:.3f}".format(*wilson(19, 32))
    assert shown.loc["rfft", "fixed vs base"] == 7 and shown.loc["base", "expected cyclic attempts"] == 4.0
    assert any("32 paired generations per arm on 4 held-out test products" in c.value for c in at.caption)
    rfft.write_text(json.dumps({"before": {"ava_rfnet": 0.5}, "after": {"ava_rfnet": 0.8}}))  # another shape
    at = app.switch_page("views/generation.py").run()
    assert any("is not rfft-eval's shape" in w.value for w in at.warning)


def test_releases_contents_and_diff(app, fixture_roots):
    rel = fixture_roots[1]
    at = app.switch_page("views/releases.py").run()
    clean(at)
    old = pd.concat(pd.read_parquet(p) for p in (rel / "v0.1" / "labels").glob("*.parquet"))
    v2 = pd.concat(pd.read_parquet(p) for p in (rel / "v0.2" / "labels").glob("*.parquet"))
    v1 = set(old.key)
    both = old.merge(v2, on="key")
    relabelled = int((both.label_x != both.label_y).sum())
    got = metrics(at)
    assert got["Added"] == f"{len(set(v2.key) - v1):,}" and got["Removed"] == f"{len(v1 - set(v2.key)):,}"
    assert relabelled > 0 and got["Relabelled"] == str(relabelled)
    assert got["Unchanged"] == f"{len(both) - relabelled:,}"
    splits = at.dataframe[1].value
    want = v2.groupby("split").size().to_dict()
    assert splits[splits.version == "v0.2"].set_index("split")["samples"].to_dict() == want


@pytest.mark.parametrize("page", ["overview", "annotators", "rfnet", "gallery", "generation", "releases"])
def test_no_data_yet_is_a_sentence_not_a_traceback(page, tmp_path, monkeypatch):
    monkeypatch.setenv("RF1M_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("RF1M_RELEASES", str(tmp_path / "releases"))
    monkeypatch.setenv("RF1M_RFFT", str(tmp_path / "rfft.json"))
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=60).switch_page(f"views/{page}.py").run()
    clean(at)
    assert any("No data yet" in i.value or "not yet run" in i.value for i in at.info)


def test_a_file_breaking_its_contract_is_named_not_a_traceback(tmp_path, monkeypatch):
    data = tmp_path / "data"
    build(data, tmp_path / "releases", batches=1, labels=40, seed=2)
    labels = data / "labels" / "b000" / "labels.parquet"
    pd.read_parquet(labels).rename(columns={"lead_time": "seconds"}).to_parquet(labels)
    monkeypatch.setenv("RF1M_DATA", str(data))
    monkeypatch.setenv("RF1M_RELEASES", str(tmp_path / "releases"))
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=60).switch_page("views/annotators.py").run()
    assert not at.exception
    assert "lead_time" in at.error[0].value and "could not answer" in at.error[0].value


def test_synthetic_catalog_is_deterministic(tmp_path):
    a = build(tmp_path / "a", tmp_path / "ra", batches=2, labels=60, seed=3)
    b = build(tmp_path / "b", tmp_path / "rb", batches=2, labels=60, seed=3)
    assert a == b and a["labels"] >= 50
    x, y = (pd.read_parquet(tmp_path / r / "labels" / "b001" / "labels.parquet") for r in "ab")
    assert np.array_equal(x.verdict, y.verdict)
