# Two commands: `make run` (main job) and `make test` (whole suite). Both build .venv from scratch if needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: venv run test lint doctest test-cpu test-cudasim bench bench-history bench-continuous bench-publish clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH)" -e ".[all]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.main

test: lint doctest test-cpu test-cudasim bench-check

# ruff (style, imports, bugbear), mypy (types) on the library, and import-linter (the layers, no import cycle);
# settings in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check testbed
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The examples of testbed/'s docstrings and README.md's seed demonstration, as doctests.
doctest: $(STAMP)
	$(PY) -m pytest -q --doctest-modules --doctest-glob=README.md testbed README.md

test-cpu: $(STAMP)
	$(PY) -m pytest -m "not cudasim" -q

# The simulator must be switched on before numba is imported, so it gets its own process.
test-cudasim: $(STAMP)
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -m cudasim -q

# asv: the working tree once (bench), a range of real commits (bench-history), a regression check between
# BASE and HEAD (bench-continuous), the HTML site (bench-publish). asv needs a machine profile first.
BASE ?= main~1
# asv imports the suite and checks every benchmark's signature and parameters (~5 s; part of `make test`).
.PHONY: bench-check
bench-check: $(STAMP)
	$(VENV)/bin/asv check --python=same

# BENCH: asv's --bench regular expressions (matched against `Class.method(param, ...)`).
BENCH ?= Speed|Memory|Accuracy
# The working tree's code in .venv, recorded as HEAD's results (asv keeps them only with --set-commit-hash).
bench: $(STAMP)
	$(VENV)/bin/asv machine --yes
	PYTHONPATH=$(CURDIR) $(VENV)/bin/asv run --python=same --set-commit-hash $$(git rev-parse HEAD) \
		--bench '$(BENCH)' --show-stderr

bench-history: $(STAMP)
	$(VENV)/bin/asv machine --yes
	$(VENV)/bin/asv run --quick --show-stderr --skip-existing-commits HEAD~2..HEAD

bench-continuous: $(STAMP)
	$(VENV)/bin/asv machine --yes
	$(VENV)/bin/asv continuous --show-stderr -b 'Speed.time|Memory' $(BASE) HEAD

bench-publish: $(STAMP)
	$(VENV)/bin/asv publish
	@echo "view: $(VENV)/bin/python -m http.server --bind 127.0.0.1 -d .asv/html 8080"

clean:
	rm -rf $(VENV) .asv build *.egg-info
