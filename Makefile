# Two commands a newcomer needs: `make demo` and `make test`. Both install what they use.
VENV ?= .venv
LS_VENV ?= .venv-ls
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo dashboard test lint clean

install: $(VENV)/.installed $(LS_VENV)/bin/label-studio

# torch first, pinned, by pip: it is the CPU build on these machines (uv does not look on this disk), and
# the project's torch range is then already satisfied, so no CUDA build is ever pulled in. The rest by uv
# (from PyPI; about 15 s against pip's 2 to 3 min), also for Label Studio's venv (annotation/server.py).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 uv==0.13.9
	$(VENV)/bin/uv pip install -q --python $(PY) -e '.[dev,cluster]'
	$(PY) -c "import torch; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__"
	touch $@

# Label Studio pins Django, pyarrow<25 and its SDK exactly: it gets a venv of its own.
$(LS_VENV)/bin/label-studio: $(VENV)/.installed
	rf1m labelstudio install

demo: install
	rf1m labelstudio up
	dvc repro
	rf1m catalog query "SELECT prompt_id, count(*) AS samples, count(DISTINCT product_id) AS products FROM samples GROUP BY ALL ORDER BY ALL"
	rf1m summary

# The quality lead's dashboard on http://127.0.0.1:8501 (loopback only; no usage statistics sent).
dashboard: $(VENV)/.installed
	$(PY) -c "import streamlit" 2>/dev/null || $(PY) -m pip install -q -e '.[dashboard]'
	$(PY) -m streamlit run dashboards/app.py --server.address 127.0.0.1 --server.headless true \
		--browser.gatherUsageStats false

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf data models
