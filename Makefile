# Two commands: `make run` (main job) and `make test` (whole suite). Both build .venv from scratch if needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: venv run test test-cpu test-cudasim bench bench-quick clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH)" -e ".[test,torch,bench]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.main

test: test-cpu test-cudasim

test-cpu: $(STAMP)
	$(PY) -m pytest -m "not cudasim" -q

# The simulator must be switched on before numba is imported, so it gets its own process.
test-cudasim: $(STAMP)
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -m cudasim -q

bench: $(STAMP)
	$(VENV)/bin/asv run --python=same --quick --show-stderr

clean:
	rm -rf $(VENV) .asv build *.egg-info
