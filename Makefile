# One command per job. `make test` runs the tests; `make quick` the CPU profile end to end;
# `make reproduce` the paper profile (GPU; every run is a file target, so `make -j N` runs them in
# parallel and a rerun skips what is done); `make report` rebuilds reports from existing results.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONUNBUFFERED := 1

.PHONY: test quick reproduce official report bench clean-quick
.DELETE_ON_ERROR:

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q

# Rules for every run of a profile, generated from its configs (seeds and regimes come from there).
.cache/%.mk: $(VENV)/.installed $(wildcard configs/*/*.yaml) replication/pipeline.py
	@mkdir -p .cache
	$(PY) -m replication make-rules --name $* configs/$*/*.yaml > $@.tmp && mv $@.tmp $@

ifneq ($(filter quick,$(MAKECMDGOALS)),)
include .cache/quick.mk
endif
ifneq ($(filter reproduce,$(MAKECMDGOALS)),)
include .cache/paper.mk
endif
ifneq ($(filter official,$(MAKECMDGOALS)),)
include .cache/official.mk
endif

quick: quick-all
reproduce: paper-all
official: official-all

report: $(VENV)/.installed
	for d in results/*/; do [ -d "$$d" ] && $(PY) -m replication report "$$d" || true; done

bench: $(VENV)/.installed
	$(PY) -m replication bench --out results/bench
