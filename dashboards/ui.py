"""What every page draws the same way: a table with its CSV, a metric's format, the 'no data yet' stop."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from dashboards import data

SHARES = re.compile(r"(_rate|accuracy|acceptance|agreement_with_consensus|_share|_first_try|_after_cyclic)$")


def table(df: pd.DataFrame, name: str, caption: str | None = None) -> None:
    """A table (shares shown as percentages; the CSV keeps the fractions) and its CSV download."""
    shares = {c: st.column_config.NumberColumn(format="percent") for c in df.columns if SHARES.search(str(c))}
    st.dataframe(df, hide_index=True, width="stretch", column_config=shares)
    st.download_button("Download CSV", df.to_csv(index=False).encode(), file_name=f"{name}.csv",
                       mime="text/csv", key=f"csv-{name}", help=caption)


def require(view: str, missing: str) -> None:
    """Stop the page with a plain sentence when the stage that writes `view` has not run yet."""
    if data.rows(view) == 0:
        st.info(f"No data yet: {missing} (data root: `{data.roots()[0]}`).")
        st.stop()


def pct(x) -> str:
    return "–" if x is None or pd.isna(x) else f"{100 * x:.1f}%"


def num(x) -> str:
    return "–" if x is None or pd.isna(x) else f"{int(x):,}"


def dec(x, places: int = 3) -> str:
    return "–" if x is None or pd.isna(x) else f"{x:.{places}f}"
