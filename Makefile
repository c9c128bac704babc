# One command per job. `make test` runs the tests; `make quick` the CPU profile end to end;
# `make sweep` the batch-size sweep (Figure 4) on the CPU;
# `make reproduce` the paper profile (GPU; every run is a file target, so `make -j N` runs them in
# parallel and a rerun skips what is done); `make report` rebuilds reports from existing results.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONUNBUFFERED := 1

.PHONY: test quick sweep reproduce official official-cpu report bench
.DELETE_ON_ERROR:

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q

# Rules for every run of a profile, generated from its configs (seeds and regimes come from there).
.cache/%.mk: $(VENV)/.installed $(wildcard configs/*/*.yaml) replication/pipeline.py replication/config.py
	@mkdir -p .cache
	$(PY) -m replication make-rules --name $* configs/$*/*.yaml > $@.tmp && mv $@.tmp $@

ifneq ($(filter quick,$(MAKECMDGOALS)),)
include .cache/quick.mk
endif
ifneq ($(filter sweep,$(MAKECMDGOALS)),)
include .cache/sweep.mk
endif
ifneq ($(filter reproduce,$(MAKECMDGOALS)),)
include .cache/paper.mk
endif
ifneq ($(filter official,$(MAKECMDGOALS)),)
include .cache/official.mk
endif
ifneq ($(filter official-cpu,$(MAKECMDGOALS)),)
include .cache/official-cpu.mk
endif

quick: quick-all
sweep: sweep-all
reproduce: paper-all
official: official-all
official-cpu: official-cpu-all

# Profiles with finished runs: results/<profile>/<network>_<dataset>/<regime>/seed<N>/metrics.json
PROFILES = $(sort $(foreach f,$(wildcard results/*/*/*/seed*/metrics.json),$(word 2,$(subst /, ,$f))))
report: $(VENV)/.installed
	@test -n "$(PROFILES)" || { echo "no finished runs under results/: run make quick first"; exit 2; }
	for p in $(PROFILES); do $(PY) -m replication report results/$$p || exit 1; done

bench: $(VENV)/.installed
	$(PY) -m replication bench --out results/bench
