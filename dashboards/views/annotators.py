"""Throughput, lead time, agreement (kappa per pair, alpha, with shared-item counts), gold accuracy and
pre-label acceptance per annotator, computed from the pulled labels (gold tasks out of agreement)."""

import altair as alt
import streamlit as st

from dashboards import data, ui
from dashboards.queries import ANNOTATORS

st.title("Annotators")
ui.require("labels", "no labels pulled; run `rf1m annotate pull`")

per = data.frame(ANNOTATORS["per annotator"])
alpha = data.frame(ANNOTATORS["alpha"])
overall = alpha[alpha["batch"] == "all batches"]
a, b, c, d = st.columns(4)
a.metric("Annotators", ui.num(len(per)))
b.metric("Judgements", ui.num(per["judgements"].sum()))
c.metric("Krippendorff's alpha", ui.dec(overall["alpha"].iloc[0]) if len(overall) else "–",
         help="nominal alpha over every sample judged at least twice (gold tasks excluded)")
d.metric("Samples judged twice or more", ui.num(overall["shared_items"].iloc[0]) if len(overall) else "0")

st.subheader("Per annotator")
ui.table(per, "annotators")
st.caption("mean_lead_time_s: seconds per judgement; agreement_with_consensus: share of the annotator's non-gold judgements equal to the decided "
           "consensus; gold_accuracy: verdict right on gold tasks; prelabel_acceptance: share submitted "
           "with RFNet's pre-label unchanged; shared_items: judgements on samples someone else judged too.")

st.subheader("Throughput")
tp = data.frame(ANNOTATORS["throughput"])
st.altair_chart(alt.Chart(tp).mark_bar().encode(
    x=alt.X("yearmonthdate(day):O", title="day"), y=alt.Y("judgements:Q"), color=alt.Color("annotator:N"),
    tooltip=["day", "annotator", "judgements"]), width="stretch")
ui.table(tp, "throughput")

st.subheader("Agreement")
kappa = data.frame(ANNOTATORS["kappa"])
if kappa.empty:
    st.info("No two annotators judged the same sample yet: kappa needs shared items.")
else:
    st.altair_chart(alt.Chart(kappa).mark_rect().encode(
        x=alt.X("annotator_a:N"), y=alt.Y("annotator_b:N"),
        color=alt.Color("kappa:Q", scale=alt.Scale(domain=[-1, 1], scheme="redblue")),
        tooltip=["annotator_a", "annotator_b", "shared_items", alt.Tooltip("kappa", format=".3f")]), width="stretch")
    ui.table(kappa, "kappa")
st.caption("Cohen's kappa per pair on the samples both judged (null when both gave one verdict everywhere); "
           "alpha per batch below, with how many samples it rests on.")
ui.table(alpha, "alpha")
