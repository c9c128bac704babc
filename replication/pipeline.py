"""The steps of a profile as Make rules: train -> the measures of each run (measure/registry.py:
sharpness, the noise scale, the kept iterates, the Hessian measures, where the config asks) ->
parametric plots -> report.

`python -m replication make-rules --name quick configs/quick/*.yaml` prints one rule per result
file, generated from the configs (seeds, regimes, epsilons, spaces), so `make -j N` runs
independent runs in parallel and a rerun skips every file that exists. The commands themselves
also skip finished work and lock what they write, so the rules are a schedule, not the guard.
With `--results-root local`, results/<name> becomes local/<name>: every command that reads a
config gets `--set results_dir=local/<name>`, so each run's config.yaml says where it lives, and
nothing compared by `diff` (replication/analysis/rerun.py) records the folder (`make quick`
trains there, then compares with the committed results/quick).

Before any step, `check` refuses finished runs that another config made (an edited config: the
message names the key). Measurements follow their runs as order-only prerequisites (`target: | run`): a measurement file
that exists is never redone because of file times. A fresh clone gives committed files arbitrary
times (git writes `landscape/` before `lb/` and `sb/`), and redoing a measurement needs the run's
weights, which git does not hold. A run is retrained only after its directory is deleted (train
refuses a changed config), which deletes its sharpness and noise files too; a parametric plot
made from other weights than its runs now hold is refused by the report (results.load).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from replication import rundir
from replication import config as config_lib
from replication.measure import landscape, registry

PY = "$(PY) -m replication"
# Recipes that use a GPU run behind $(RUN): empty by default; the Makefile sets it to the GPU slot
# wrapper when GPUS is given (replication/slot.py), or a user sets it to `srun ...` inside a Slurm
# allocation. Checks and reports use no GPU and run as they are.
GPU = "$(RUN) $(PY) -m replication"


def relocated(config_path: str, results_root: str) -> str:
    """The config's results_dir with its leading results/ replaced by results_root."""
    results_dir = config_lib.load(config_path).results_dir
    parts = Path(results_dir).parts
    if len(parts) < 2 or parts[0] != "results":
        raise config_lib.ConfigError(
            f"{config_path}: results_dir {results_dir} is not under results/, so --results-root "
            f"{results_root} cannot move it: leave results_dir out (results/<profile>) or drop --results-root")
    return str(Path(results_root, *parts[1:]))


def rules(name: str, config_paths: list[str], results_root: str | None = None) -> str:
    """Make rules for every result of the given configs; `<name>-all` builds them all. With
    results_root, each config's results/<x> is written to results_root/<x> instead."""
    lines, reports, checks = [], {}, []
    for config_path in config_paths:
        overrides = [f"results_dir={relocated(config_path, results_root)}"] if results_root else []
        config = config_lib.load(config_path, overrides)
        # The commands that read the config get the same override, so they and the rules agree.
        quoted = " ".join([shlex.quote(config_path)] + [f"--set {shlex.quote(o)}" for o in overrides])
        # First, every time: finished runs made by another config (an edited one) are refused.
        check = f"{name}-check-{len(checks)}"
        checks.append(check)
        lines += [f".PHONY: {check}", f"{check}:", f"\t{PY} check {quoted}", ""]
        for seed in config.seeds:
            runs = {}
            for spec in config.runs():
                run = rundir.run_directory(config, spec.name, seed)
                runs[spec.name] = f"{run}/metrics.json"
                # A piggyback run (Figure 5) starts from an iterate of the seed's SB run.
                after_sb = f" {runs['sb']}" if spec.kind == "warm_start" else ""
                lines += [f"{runs[spec.name]}: | {check}{after_sb}",
                          f"\t{GPU} train {quoted} --seed {seed} --regime {spec.name}", ""]
                # Each measure this run gets (measure/registry.py), in the registry's order.
                for measure in registry.MEASURES.values():
                    if measure.applies(config, spec):
                        for target in measure.targets(config, spec, run):
                            reports.setdefault(config.results_dir, []).append(str(target.path))
                            lines += [f"{target.path}: | {runs[spec.name]}", f"\t{GPU} {target.command}", ""]
            for path in landscape.PATHS:
                # Written in the order CSV, JSON sidecar, PNG, PDF: the PDF means all are there.
                target = f"{landscape.output_stem(config, seed, path)}.pdf"
                reports.setdefault(config.results_dir, []).append(target)
                lines += [f"{target}: | {runs['sb']} {runs['lb']}",
                          f"\t{GPU} landscape {quoted} --seed {seed} --path {path}", ""]
    for results_dir, targets in reports.items():
        lines += [f"{results_dir}/REPORT.md: {' '.join(targets)}",
                  f"\t{PY} report {results_dir}", ""]
    lines.append(f"{name}-all: {' '.join(f'{d}/REPORT.md' for d in reports)}")
    return "\n".join(lines) + "\n"
