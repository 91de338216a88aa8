"""The quality lead's dashboard: `make dashboard`, or `streamlit run dashboards/app.py`.

Pages are registered with st.navigation (the `pages/` folder convention is legacy); the sidebar's
filters are drawn here, once, before the page runs, so every page sees the same batches and source.
A file that breaks its contract shows one sentence naming the file and column, not a traceback.
"""

from __future__ import annotations

import duckdb
import streamlit as st

from dashboards import data

st.set_page_config(page_title="RF1M quality", layout="wide")

PAGES = {
    "Quality": [st.Page("views/overview.py", title="Overview", default=True),
                st.Page("views/annotators.py", title="Annotators"),
                st.Page("views/rfnet.py", title="RFNet vs people")],
    "Data": [st.Page("views/gallery.py", title="Gallery"),
             st.Page("views/generation.py", title="Generation"),
             st.Page("views/releases.py", title="Releases")],
}


def sidebar() -> None:
    root, releases = data.roots()
    with st.sidebar:
        st.multiselect("Batches", data.batches(), key="batches", placeholder="all batches")
        st.selectbox("Label source", ["all", "human", "simulated"], key="source",
                     help="human: judged by people; simulated: the demo's simulated panel")
        st.caption(f"data: `{root}` · releases: `{releases}` · re-read when a file changes")


page = st.navigation(PAGES)
try:
    sidebar()
    page.run()
except duckdb.Error as e:  # e.g. a Parquet file with a renamed column: say which, and stop there
    st.error(f"The catalog could not answer: {str(e).splitlines()[0]}")
