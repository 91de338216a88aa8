"""The Streamlit dashboard (read-only over rf1m). May import rf1m."""
