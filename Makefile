# Two commands a newcomer needs: `make demo` and `make test`. Both install what they use.
VENV ?= .venv
LS_VENV ?= .venv-ls
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo dashboard test lint clean lock

install: $(VENV)/.installed $(LS_VENV)/.rf1m-constraints

# torch first, pinned, by pip: it is the CPU build on these machines (uv does not look on this disk), and
# the project's torch range is then already satisfied, so no CUDA build is ever pulled in. The rest by uv
# (from PyPI; about 15 s against pip's 2 to 3 min), also for Label Studio's venv (annotation/server.py).
# Every dependency is held at the version in constraints.txt, the freeze of a venv that passed `make test`,
# so a release on PyPI cannot turn CI red overnight; `make lock` rewrites it after a deliberate upgrade.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 uv==0.13.9
	$(VENV)/bin/uv pip install -q --python $(PY) -c constraints.txt -e '.[dev,cluster]'
	$(PY) -c "import torch; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__"
	touch $@

# Label Studio pins Django, pyarrow<25 and its SDK exactly: it gets a venv of its own, held at
# annotation/label-studio-constraints.txt (reinstalled when that file changes).
$(LS_VENV)/.rf1m-constraints: $(VENV)/.installed annotation/label-studio-constraints.txt
	rf1m labelstudio install

# After upgrading on purpose (e.g. `uv pip install -U x`) and a green `make test`: pin what passed.
lock:
	$(VENV)/bin/uv pip freeze -q --python $(PY) --exclude-editable --exclude torch > constraints.txt
	$(VENV)/bin/uv pip freeze -q --python $(LS_VENV)/bin/python > annotation/label-studio-constraints.txt

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
