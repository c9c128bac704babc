# One command per job. `make test` runs the tests; `make quick` the CPU profile end to end into
# local/quick/ (git-ignored), then compares every number with the committed reference
# results/quick/ and prints what was reproduced (docs/guarantees.md); `make quick-reference` trains
# into results/quick/ itself, to refresh the committed reference on purpose (its finished runs are
# kept: delete results/quick/ first to retrain it);
# `make sweep` the batch-size sweep (Figure 4) on the CPU; `make iterates` sharpness along the
# iterates of SB and LB (Figure 6) and LB warm-started from them (Figure 5) on the CPU;
# `make remedies` conservative training (Table 7, F1) and data augmentation (Table 6, C1 on 10000
# images) beside plain SB and LB, on the CPU;
# `make reproduce` the paper profile and the warm-start one (GPU; every run is a file target, so
# `make -j N` runs them in parallel and a rerun skips what is done); `make warmstart` Figure 5 at
# the paper's protocol alone (GPU); `make paper-gpu` C1 at the paper's protocol under JAX;
# `make report` rebuilds reports from existing results.
#
# Interpreter: by default a .venv made from requirements.txt. `make <target> PY=python3` uses that
# interpreter as it is (a cluster's or a GPU image's environment): no venv, no pip; a missing
# package is one line naming it. Backend: KERAS_BACKEND=jax (or tensorflow, the default), as Keras reads it.
PYTHON ?= python3
VENV := .venv
ifeq ($(origin PY),undefined)
PY := $(VENV)/bin/python
SETUP := $(VENV)/.installed
else
SETUP :=
endif
# Several GPUs on one node: GPUS="0 1 2 3" make -j4 reproduce gives each training and measurement
# recipe a GPU of its own (the slot wrapper, replication/slot.py); SLOTS_PER_GPU=2 lets two jobs
# share each GPU (memory preallocation off). Inside a Slurm allocation instead:
# make -j8 reproduce RUN="srun --exclusive -n1 --gres=gpu:1". Reports take no GPU. docs/cluster.md.
GPUS ?=
SLOTS_PER_GPU ?= 1
ifneq ($(strip $(GPUS)),)
RUN ?= $(PY) -m replication slot --gpus "$(GPUS)" --per-gpu $(SLOTS_PER_GPU) --
endif
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONUNBUFFERED := 1

.PHONY: test test-jax quick quick-reference hessian-quick sweep iterates remedies reproduce warmstart paper-gpu official official-cpu official-cpu-cifar10 paper-cpu paper-cpu-rerun report bench batch-size-report
.DELETE_ON_ERROR:

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: $(SETUP)
	$(PY) -m pytest -q

# The backend-sensitive tests (marked `backend`: pytestmark in their files) again under JAX (CPU jax
# from requirements.txt); `make test` runs everything under TensorFlow, and test_backend compares the two.
test-jax: $(SETUP)
	KERAS_BACKEND=jax $(PY) -m pytest -q -m backend

# Rules for every run of a profile, generated from its configs (seeds and regimes come from there):
# .cache/<profile>.mk writes under results/ (what git holds), .cache/local/<profile>.mk under
# $(LOCAL)/ (make quick), naming its targets <profile>-local-*. The local rule comes first: GNU make
# >= 3.82 picks the pattern with the shorter stem, 3.81 (macOS) the first that matches.
# What the rules are made from: the configs, the pipeline, the measure registry and the run names.
LOCAL := local
RULE_SOURCES := $(wildcard configs/*/*.yaml) replication/pipeline.py replication/config.py \
                replication/measure/registry.py replication/regimes.py
.cache/local/%.mk: $(SETUP) $(RULE_SOURCES)
	@mkdir -p .cache/local
	$(PY) -m replication make-rules --name $*-local --results-root $(LOCAL) configs/$*/*.yaml > $@.tmp && mv $@.tmp $@
.cache/%.mk: $(SETUP) $(RULE_SOURCES)
	@mkdir -p .cache
	$(PY) -m replication make-rules --name $* configs/$*/*.yaml > $@.tmp && mv $@.tmp $@

# A profile goal builds every result of its profiles (configs/<profile>/*.yaml) through the rules
# generated into .cache/<profile>.mk, each read only when a goal named on the command line needs it
# (generating it starts Python). A goal is its own profile, except reproduce and quick-reference;
# make quick's inner make (below) reads .cache/local/quick.mk for its goal quick-local-all.
PROFILE_GOALS := quick-reference sweep iterates remedies reproduce warmstart paper-gpu official official-cpu \
                 official-cpu-cifar10 paper-cpu
reproduce_PROFILES := paper warmstart
quick-reference_PROFILES := quick
goal_profiles = $(or $($(1)_PROFILES),$(1))
include $(patsubst %,.cache/%.mk,$(sort $(foreach g,$(filter $(PROFILE_GOALS),$(MAKECMDGOALS)),$(call goal_profiles,$(g)))))
include $(patsubst %-local-all,.cache/local/%.mk,$(filter %-local-all,$(MAKECMDGOALS)))
# Written out, one line a goal, because the README's generator (analysis/readme.py make_targets)
# reads each profile's make target from these lines (the quick profile's is `quick`, below).
quick-reference: quick-all
sweep: sweep-all
iterates: iterates-all
remedies: remedies-all
reproduce: paper-all warmstart-all
warmstart: warmstart-all
paper-gpu: paper-gpu-all
official: official-all
official-cpu: official-cpu-all
official-cpu-cifar10: official-cpu-cifar10-all
paper-cpu: paper-cpu-all

# Profiles with finished runs: results/<profile>/<network>_<dataset>/<regime>/seed<N>/metrics.json
PROFILES = $(sort $(foreach f,$(wildcard results/*/*/*/seed*/metrics.json),$(word 2,$(subst /, ,$f))))
# The reports, then the parts of README.md and docs/ generated from them (python -m replication readme).
report: $(SETUP)
	@test -n "$(PROFILES)" || { echo "no finished runs under results/: run make quick-reference or a profile target first"; exit 2; }
	for p in $(PROFILES); do $(PY) -m replication report results/$$p || exit 1; done
	$(PY) -m replication readme

# Does the quick profile reproduce here? Train, measure and report it into $(LOCAL)/quick/ (every
# result a file target: a second make quick trains nothing), then compare every number with the
# committed results/quick/ and print a summary: files and numbers reproduced exactly, what differs
# and why (the runs' device and versions, from env.json), the report to open, the time. Exit
# status 1 only where numbers differ on the reference's own device and versions (diff's rule; on
# another device they are listed, not judged). The inner make builds the rules for $(LOCAL)/.
STARTED := $(shell date +%s)
quick: $(SETUP)
	@$(MAKE) --no-print-directory quick-local-all
	@$(PY) -m replication diff results/quick $(LOCAL)/quick --summary --started $(STARTED)

# Beyond Metric 2.1 (Hessian top eigenvalue and trace, spread over draws, filter-normalised slices
# (Li et al. 2018), Dinh et al.'s reparametrisations) on the quick profile's finished runs: about
# 6 min per F1 run on 2 CPU cores, so not part of `make quick` (the paper profiles measure it per
# run: `hessian.enabled` in configs/paper/*.yaml). Needs the weights of results/quick's runs, which
# git does not keep: retrain the reference first. `make report` then adds the section "Do SB and
# LB minimisers differ by every measure?".
hessian-quick: $(SETUP)
	@test -n "$(wildcard results/quick/*/*/seed*/final.weights.h5)" || { echo "error: no weights under results/quick (git keeps none): retrain the reference first: rm -rf results/quick && make quick-reference"; exit 2; }
	$(PY) -m replication hessian $(patsubst %/final.weights.h5,%,$(wildcard results/quick/*/*/seed*/final.weights.h5))

# Issue 22's lambda_max at matched training loss and the Hessian measures of F1 at the paper's
# protocol need the runs' weights, which git does not keep and which a JAX rerun on another CPU does
# not reproduce bit for bit: retrain seed 0's SB and LB of configs/paper-cpu/f1.yaml into
# results/paper-cpu-rerun (about 20 min under JAX on 2 cores), then measure those same weights there:
# Metric 2.1 and lambda_max at the kept iterates nearest each training loss level, the Hessian
# measures at the final points (results/paper-cpu-rerun/PROVENANCE.md has the times, about 1.7 h in
# all; the reparametrisations are left out, at 6 min per transformation and run: HESSIAN_MEASURES=
# to add them).
RERUN := results/paper-cpu-rerun
RERUN_RUNS := $(RERUN)/F1_mnist/sb/seed0 $(RERUN)/F1_mnist/lb/seed0
HESSIAN_MEASURES ?= --measures eigenvalue,trace,sharpness,filter
paper-cpu-rerun: $(SETUP)
	for r in sb lb; do KERAS_BACKEND=jax $(PY) -m replication train configs/paper-cpu/f1.yaml --seed 0 --regime $$r --set results_dir=$(RERUN) || exit 1; done
	KERAS_BACKEND=jax $(PY) -m replication matched $(RERUN_RUNS) --space full --epsilon 0.001 --lambda-max
	KERAS_BACKEND=jax $(PY) -m replication hessian $(RERUN_RUNS) $(HESSIAN_MEASURES)
	$(PY) -m replication report $(RERUN)

bench: $(SETUP)
	$(PY) -m replication bench --out results/bench

# How to choose the batch size (issue 13): steps to a target against the batch size with the
# learning rate tuned per batch, the critical batch size and the noise scale; one page in the
# config's results_dir. Default: F1 on the CPU; BATCH_SIZE_CONFIG=configs/batch-size-gpu/c1.yaml
# (or c2.yaml) on a GPU under JAX. Trains what is missing (resumable), then writes the report.
BATCH_SIZE_CONFIG ?= configs/batch-size/f1.yaml
batch-size-report: $(SETUP)
	$(PY) -m replication batch-size $(BATCH_SIZE_CONFIG)
