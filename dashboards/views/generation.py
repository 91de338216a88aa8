"""Cyclic generation (every attempt, from the attempts table) and RFFT before/after (its bench result)."""

import json
import os
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from dashboards import data, ui
from dashboards.queries import GENERATION

st.title("Generation")
st.subheader("Cyclic generation")
if data.rows("attempts") == 0:
    st.info("Cyclic generation not yet run: no attempts table under the data root.")
else:
    k = data.frame(GENERATION["kpis"]).iloc[0]
    cols = st.columns(5)
    for col, (label, value) in zip(cols, [
            ("Product x prompt slots", ui.num(k.slots)), ("Attempts", ui.num(k.attempts)),
            ("Available, first try", ui.pct(k.available_first_try)),
            ("Available, after cyclic", ui.pct(k.available_after_cyclic)), ("Mean tries", ui.dec(k.mean_tries, 2))]):
        col.metric(label, value)
    st.caption("By RFNet's decision: the first attempt of each slot, and the attempt finally kept.")
    by_attempt = data.frame(GENERATION["by attempt"])
    tries = data.frame(GENERATION["tries"])
    left, right = st.columns(2)
    left.altair_chart(alt.Chart(by_attempt).mark_bar().encode(
        x=alt.X("attempt:O"), y=alt.Y("available_rate:Q", axis=alt.Axis(format="%"), title="available rate"),
        tooltip=["attempt", "tries", "available_rate", "mean_score"]), width="stretch")
    right.altair_chart(alt.Chart(tries).mark_bar().encode(
        x=alt.X("tries:O", title="tries until kept"), y="slots:Q", color=alt.Color("kept_available:N"),
        tooltip=["tries", "kept_available", "slots"]), width="stretch")
    ui.table(by_attempt, "attempts_by_number")
    ui.table(tries, "tries_until_kept")
    ui.table(data.frame(GENERATION["by batch"]), "cyclic_by_batch")

st.subheader("RFFT: before and after")
rfft = Path(os.environ.get("RF1M_RFFT", "bench/results/rfft.json"))
try:
    result = json.loads(rfft.read_text())
except FileNotFoundError:
    st.info(f"RFFT not yet run: `{rfft}` does not exist.")
except ValueError as e:
    st.warning(f"`{rfft}` is not JSON ({e}).")
else:
    before, after = result.get("before"), result.get("after")
    if isinstance(before, dict) and isinstance(after, dict):
        names = [n for n in before if isinstance(before[n], (int, float)) and isinstance(after.get(n), (int, float))]
        ui.table(pd.DataFrame({"metric": names, "before": [before[n] for n in names],
                               "after": [after[n] for n in names],
                               "change": [after[n] - before[n] for n in names]}), "rfft")
    else:
        st.json(result)
