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

# ruff (lint and format) on the library, the experiments and the tests, mypy (types) on the library, and
# import-linter (the layers, no import cycle); settings in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check testbed experiments tests
	$(VENV)/bin/ruff format --check testbed experiments tests
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

# asv (results, environments and site under the git-ignored .asv/): HEAD's code in .venv (bench), the last
# COMMITS commits each built in asv's own virtualenv (bench-history), BASE against HEAD (bench-continuous), the
# site with its JavaScript vendored from npm so that it renders offline (bench-publish). BENCH: asv's --bench
# regular expressions, matched against `Class.method('param', ...)` (no single quotes in BENCH: write
# `Speed.time.*kron.*unet1`); the default is the wall-time and peak-memory benchmarks (add
# `|CPUTime|Accuracy|track_gflops|NumbaCompile` for the rest). Durations: README, "Benchmarks over commits".
BENCH   ?= Speed\.time|Memory
BASE    ?= main~1
COMMITS ?= 3
FACTOR  ?= 1.2
ASV     := $(VENV)/bin/asv

# asv imports the suite and checks every benchmark's signature and parameters (~5 s; part of `make test`).
.PHONY: bench-check bench-regression-check
bench-check: $(STAMP)
	$(ASV) check --python=same

# The working tree's code (PYTHONPATH wins over .venv's editable install), recorded as HEAD's results: asv
# keeps results of an existing environment only with --set-commit-hash.
bench: $(STAMP)
	$(ASV) machine --yes
	PYTHONPATH=$(CURDIR) $(ASV) run --python=same --set-commit-hash $$(git rev-parse HEAD) \
		--bench '$(BENCH)' --show-stderr

# Commits resolved here, so asv's own clone of the repository reads the same range; benchmarks that already
# have results in asv's environment are skipped, so a rerun only adds new commits (`make bench`'s results, from
# .venv, are another environment and do not count).
bench-history: $(STAMP)
	$(ASV) machine --yes
	$(ASV) run --skip-existing-successful --bench '$(BENCH)' --show-stderr \
		$$(git rev-parse HEAD~$(COMMITS))..$$(git rev-parse HEAD)

# Exits non-zero when a benchmark got worse by more than FACTOR (and asv finds the change significant).
bench-continuous: $(STAMP)
	$(ASV) machine --yes
	$(ASV) continuous --show-stderr --factor $(FACTOR) --bench '$(BENCH)' $(BASE) HEAD

# A throw-away clone with a planted 2x slowdown in kron: asv continuous/compare and experiments.history must flag
# it and no unchanged backend (not part of `make test`: it builds an asv environment, minutes).
bench-regression-check: $(STAMP)
	$(PY) -m experiments.asv_regression

bench-publish: $(STAMP)
	$(PY) -m experiments.asv_site
	@echo "view: $(PY) -m http.server --bind 127.0.0.1 -d .asv/html 8080"

clean:
	rm -rf $(VENV) .asv build *.egg-info
