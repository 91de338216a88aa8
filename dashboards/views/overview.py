"""Usable rate and failure reasons per batch, prompt, category, generator model, day and release."""

import altair as alt
import streamlit as st

from dashboards import data, ui
from dashboards.queries import DIMENSIONS, OVERVIEW

st.title("Overview")
ui.require("samples", "no generated samples; run `rf1m generate` (or `make demo`)")

k = data.frame(OVERVIEW["kpis"]).iloc[0]
cols = st.columns(6)
for col, (label, value) in zip(cols, [("Samples", ui.num(k.samples)), ("Labelled", ui.num(k.labelled)),
                                      ("Usable rate", ui.pct(k.usable_rate)), ("Undecided", ui.num(k.undecided)),
                                      ("Judgements", ui.num(k.judgements)), ("Quarantined", ui.num(k.quarantined))]):
    col.metric(label, value)
st.caption("Usable rate: share of decided consensus samples judged available (ties are undecided and "
           "count neither way).")

if k.labelled == 0:
    st.info("No data yet: no consensus labels; run `rf1m annotate pull` and `rf1m annotate consensus`.")
    st.stop()

dim = st.radio("Group by", list(DIMENSIONS), horizontal=True, key="overview_dim")
rate = data.frame(OVERVIEW[f"by {dim}"])
reasons = data.frame(OVERVIEW[f"reasons by {dim}"])
left, right = st.columns(2)
mark = alt.Chart(rate).mark_line(point=True) if dim in ("batch", "day generated") else alt.Chart(rate).mark_bar()
left.subheader(f"Usable rate by {dim}")
left.altair_chart(mark.encode(x=alt.X("group:N", title=dim, sort=None),
                              y=alt.Y("usable_rate:Q", title="usable rate", axis=alt.Axis(format="%")),
                              tooltip=["group", "labelled", alt.Tooltip("usable_rate", format=".1%")]),
                  width="stretch")
right.subheader(f"Failure reasons by {dim}")
right.altair_chart(alt.Chart(reasons).mark_bar().encode(
    x=alt.X("group:N", title=dim), y=alt.Y("samples:Q", title="samples with the reason"),
    color=alt.Color("reason:N"), tooltip=["group", "reason", "samples"]), width="stretch")
ui.table(rate, f"usable_rate_by_{dim.replace(' ', '_')}")
ui.table(reasons, f"reasons_by_{dim.replace(' ', '_')}")

st.subheader("Releases")
by_release = data.frame(OVERVIEW["by release"])
if by_release.empty:
    st.info("No data yet: no release compiled; run `rf1m release compile`.")
else:
    ui.table(by_release, "usable_rate_by_release")
    ui.table(data.frame(OVERVIEW["reasons by release"]), "reasons_by_release")

st.subheader("Quarantine")
ui.table(data.frame(OVERVIEW["quarantine"]), "quarantine")
