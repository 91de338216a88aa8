"""Releases: what each version holds (splits, products, usable rate) and what changed between two."""

import altair as alt
import pandas as pd
import streamlit as st

from dashboards import data, ui
from dashboards.queries import RELEASES, release_diff
from rf1m.release import list_releases

st.title("Releases")
ui.require("releases", "no release compiled; run `rf1m release compile`")

manifests = pd.DataFrame(list_releases(data.roots()[1]))
if not manifests.empty:
    ui.table(manifests, "releases")
versions = data.frame(RELEASES["versions"])
st.altair_chart(alt.Chart(versions).mark_bar().encode(
    x=alt.X("version:N"), y="samples:Q", color=alt.Color("split:N", sort=["train", "validation", "test"]),
    tooltip=["version", "split", "samples", "products", alt.Tooltip("usable_rate", format=".1%")]), width="stretch")
ui.table(versions, "release_splits")

st.subheader("Diff between versions")
names = sorted(versions["version"].unique())
a, b = st.columns(2)
old = a.selectbox("Old", names, index=max(0, len(names) - 2), key="release_old")
new = b.selectbox("New", names, index=len(names) - 1, key="release_new")
diff = data.query(release_diff(old, new), {})
cols = st.columns(4)
for col, change in zip(cols, ("added", "removed", "relabelled", "unchanged")):
    col.metric(change.capitalize(), ui.num(diff[change].iloc[0]))
ui.table(diff.assign(old=old, new=new), "release_diff")
