"""The solver's budget for Metric 2.1 (Keskar et al. 2017, section 2.2.1).

The paper solves max_{y in C_eps} f(x + A y) inexactly, with 10 iterations of L-BFGS-B from y = 0.
Any point of the box gives a lower bound on the maximum, so a solve stopped at its iteration cap
while f was still rising reports less than the metric's definition asks for; at a flat minimiser
the ascent is slow and the gap can be large. This module measures phi at a run's final weights with
more iterations (ITERATIONS) and from random starts in the box (uniform, `restarts` solves, the
largest f kept), so a report can say how far the paper's budget is from the maximum it estimates.

Each setting is one `sharpness.measure_weights` call with the run's config.sharpness changed only
in iterations / start / restarts, written to

    <run>/sharpness/budget/<space>_eps<eps>_it<N>_<start>[x<restarts>].json

with the full sharpness record, whose `solves[].status` says how each solve ended (1: the
iteration cap, a lower bound; 0 or 2: SciPy stopped before it).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from replication import rundir

ITERATIONS = (10, 50, 200)
RESTARTS = 3


def result_path(run_dir, space: str, epsilon: float, iterations: int, start: str, restarts: int) -> Path:
    tail = "zero" if start == "zero" else f"random{restarts}"
    return Path(run_dir) / "sharpness" / "budget" / f"{space}_eps{epsilon:g}_it{iterations}_{tail}.json"


def settings(iterations=ITERATIONS, restarts: int = RESTARTS) -> list[tuple[int, str, int]]:
    """(iterations, start, restarts) measured: every budget from y = 0, and the paper's 10
    iterations from `restarts` random starts (0: none)."""
    chosen = [(n, "zero", 1) for n in iterations]
    if restarts:
        chosen.append((min(iterations), "random", restarts))
    return chosen


def measure(run_dir, iterations=ITERATIONS, restarts: int = RESTARTS, epsilons=(1e-3,), spaces=("full",),
            force: bool = False, log=None) -> list[Path]:
    """phi at the run's final weights for every budget of `settings`; returns the files."""
    from replication.measure import sharpness

    log = log or sys.stderr
    run = rundir.load_run(run_dir)
    objective = sharpness.lazy_objective(run)
    files = []
    for count, start, solves in settings(iterations, restarts):
        cfg = dataclasses.replace(run.config.sharpness, iterations=count, start=start, restarts=solves)
        variant = dataclasses.replace(run, config=dataclasses.replace(run.config, sharpness=cfg))
        records = sharpness.measure_weights(
            variant, lambda path, space, eps, n=count, s=start, r=solves: result_path(path, space, eps, n, s, r),
            epsilons, spaces, force=force, log=log, objective=objective)
        files += [result_path(run.path, r["space"], r["epsilon"], count, start, solves) for r in records]
    return files
