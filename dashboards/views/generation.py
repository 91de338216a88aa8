"""Cyclic generation (every attempt, from the attempts table) and RFFT's arms against the base (rfft-eval's file)."""

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

st.subheader("RFFT: the arms against the base")
# rf1m rfft-eval's file (make demo); bench/bench_rfft.py writes the same shape with more arms
rfft = Path(os.environ.get("RF1M_RFFT", "metrics/rfft/eval.json"))
try:
    result = json.loads(rfft.read_text())
except FileNotFoundError:
    st.info(f"RFFT not yet run: `{rfft}` does not exist.")
except ValueError as e:
    st.warning(f"`{rfft}` is not JSON ({e}).")
else:
    try:
        rows = [{"arm": name, "oracle_rate": a["oracle"]["rate"], "oracle 95% CI": "{:.3f}-{:.3f}".format(*a["oracle"]["ci95"]),
                 "rfnet_rate": a["rfnet"]["rate"], "judge-oracle agreement": a["judge_oracle_agreement"],
                 "fixed vs base": a.get("paired_vs_base", {}).get("fixed"),
                 "broken vs base": a.get("paired_vs_base", {}).get("broken"),
                 "diversity within prompt": a["diversity"]["within_prompt"],
                 "diversity between prompts": a["diversity"]["between_prompts"],
                 "expected cyclic attempts": a["attempts"]["rfnet"]} for name, a in result["arms"].items()]
    except (AttributeError, KeyError, TypeError) as e:
        st.warning(f"`{rfft}` is not rfft-eval's shape (no arms with oracle, rfnet, diversity, attempts: {e!r}).")
    else:
        st.caption(f"{result.get('generations_per_arm', '?')} paired generations per arm on "
                   f"{result.get('test_products', '?')} held-out test products; the oracle stands in for people.")
        ui.table(pd.DataFrame(rows), "rfft")
