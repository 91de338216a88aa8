"""RFNet against people: confusion, PR curve with AP, calibration, a threshold to explore, and the
samples where they disagree. 'People' means the decided consensus (undecided ties are left out)."""

import altair as alt
import streamlit as st

from dashboards import data, ui
from dashboards.queries import RFNET

st.title("RFNet vs people")
ui.require("predictions", "no RFNet predictions; run `rf1m prelabel`")
ui.require("consensus", "no consensus labels; run `rf1m annotate consensus`")

s = data.frame(RFNET["summary"]).iloc[0]
if not s.samples:
    st.info("No data yet: no predicted sample has a decided consensus label in these batches.")
    st.stop()
pr = data.frame(RFNET["pr curve"])
prec = s.tp / (s.tp + s.fp) if s.tp + s.fp else None
rec = s.tp / (s.tp + s.fn) if s.tp + s.fn else None
f1 = 2 * prec * rec / (prec + rec) if prec and rec else None
cols = st.columns(5)
for col, (label, value) in zip(cols, [("Samples compared", ui.num(s.samples)), ("AP (available)", ui.pct(pr["ap"].iloc[0])),
                                      ("Precision", ui.pct(prec)), ("Recall", ui.pct(rec)), ("F1", ui.pct(f1))]):
    col.metric(label, value)
st.caption(f"Precision, recall and F1 of the verdicts people were shown (model at threshold: {s.models}); "
           "available is the positive class; AP over scores floored to 0.001.")

left, right = st.columns(2)
conf = data.frame(RFNET["confusion"])
left.subheader("Confusion")
left.altair_chart(alt.Chart(conf).mark_rect().encode(
    x=alt.X("rfnet:N", title="RFNet"), y=alt.Y("human:N", title="people"), color="samples:Q",
    tooltip=["human", "rfnet", "samples"]).properties(height=260) + alt.Chart(conf).mark_text(fontSize=18).encode(
    x="rfnet:N", y="human:N", text="samples:Q"), width="stretch")
right.subheader("Precision-recall")
right.altair_chart(alt.Chart(pr).mark_line().encode(
    x=alt.X("recall:Q", scale=alt.Scale(domain=[0, 1])), y=alt.Y("precision:Q", scale=alt.Scale(domain=[0, 1])),
    tooltip=["threshold", "precision", "recall"]), width="stretch")
ui.table(conf, "confusion")

cal = data.frame(RFNET["calibration"])
left, right = st.columns(2)
left.subheader("Calibration")
diag = alt.Chart(cal).mark_line(strokeDash=[4, 4], color="grey").encode(x="predicted:Q", y="predicted:Q")
left.altair_chart(diag + alt.Chart(cal).mark_line(point=True).encode(
    x=alt.X("predicted:Q", title="mean p(available)", scale=alt.Scale(domain=[0, 1])),
    y=alt.Y("observed:Q", title="share available (people)", scale=alt.Scale(domain=[0, 1])),
    tooltip=["bin", "samples", "predicted", "observed"]), width="stretch")
with right:
    st.subheader("Threshold")
    t = st.slider("p(available) threshold", 0.0, 1.0, float(s.threshold or 0.5), 0.01, key="rfnet_threshold")
    at = data.frame(RFNET["at threshold"], threshold=t).iloc[0]
    p_t = at.tp / (at.tp + at.fp) if at.tp + at.fp else None
    r_t = at.tp / (at.tp + at.fn) if at.tp + at.fn else None
    a, b = st.columns(2)
    a.metric("Precision at threshold", ui.pct(p_t))
    b.metric("Recall at threshold", ui.pct(r_t))
ui.table(cal, "calibration")

st.subheader("Disagreements")
st.caption("RFNet's verdict differs from people's; the most confident mistakes first (500 at most).")
ui.table(data.frame(RFNET["disagreements"]), "disagreements")
