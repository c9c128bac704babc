"""How to choose the mini-batch size: steps to a target against the batch size, the learning rate
tuned per batch size, and the critical batch size measured and predicted (issue 13; beyond
Keskar et al. 2017, whose fixed epochs and fixed learning rate cannot tell "large batches
generalise worse" from "large batches got fewer steps and the wrong learning rate").

The study (`python -m replication batch-size CONFIG`, `make batch-size-report`); this module
trains and measures (steps 1, 3, 5), replication/analysis/batchsize_report.py fits, reads and reports
(steps 2, 4 and the page):

1. Steps to a target (Shallue et al. 2019): for each batch B of `batch_size_study.batch_sizes`,
   runs `b<B>-x<m>` (ordinary run directories: resumable, shared x0, `stopping: target`,
   replication/target.py) with the learning rate m x the scaling rule's value at B, for each m of
   the grid and every seed. The best m (fewest steps to the target, on the seeds' mean) must lie
   inside the grid: while an edge rate is within one check interval of the fewest (a tie: steps
   are known to within that interval), one more rate is trained beyond that edge
   (`next_multiplier`), at most `max_extensions` per side; a best rate still at the edge then is
   reported as capped. With target.milestones, every target decides (issue 25 items 3-4). The
   command trains these in sequence itself, deciding each extension from the finished runs, so a
   rerun resumes where it stopped (simpler than a Make loop).
2. The critical batch size (McCandlish et al. 2018, eq. 2.11): S = S_min (1 + B_crit / B) is
   linear in 1/B (S = S_min + S_min B_crit / 1/B), fitted by least squares on relative residuals
   to the best (B, S) of every batch that reached the target (`fit_critical_batch`); B_crit =
   E_min / S_min; a fitted term within round-off of zero resolves none. Its uncertainty: a bootstrap
   over the batch sizes (percentiles of the refits; one that resolves none ranks at its side).
3. The prediction: B_simple (replication/measure/noise.py) of the reference run (the best run at the
   batch nearest sb_batch_size) at x0, at each kept iterate and where it met the target (its final
   weights), plain and with Adam's preconditioner; the ratio predicted / measured.
4. Time: seconds per optimizer step of each best run from its own trace (the time between
   consecutive checks of one epoch, after the first check, so compilation is left out:
   batchsize_report.seconds_per_step) -> time to target.
5. Generalisation once steps and learning rate are fair (Hoffer et al. 2017): at each batch of
   compare_batch_sizes, runs (a) b<B>-fixed-e<E> (the fixed learning rate), (b) b<B>-x<m>-e<E>
   (the best rate of step 1), (c) b<B>-x<m>-e<E'> (the smallest compared batch's steps), (d) (c)
   with ghost batch norm, b<B>-x<m>-e<E'>-g<G> (`compare_plan`), each with its sharpness.

Symbols -> code: S `steps`, E = B S `examples`, S_min `s_min`, E_min `e_min`, B_crit `b_crit`.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from replication import regimes, storage
from replication import config as config_lib


# The learning-rate grid ---------------------------------------------------------------------------
def tied(steps: dict[float, float | None], resolution: float = 0) -> list[float]:
    """The multipliers tied for the fewest steps to the target: within `resolution` steps of the
    fewest (the check interval: a run's steps are known to within one interval, so a rate that wins
    by no more than that has not been shown to win). Sorted; [] when no run reached the target."""
    reached = {m: s for m, s in steps.items() if s is not None}
    if not reached:
        return []
    fewest = min(reached.values())
    return sorted(m for m, s in reached.items() if s - fewest <= resolution)


def best_multiplier(steps: dict[float, float | None], resolution: float = 0) -> float | None:
    """The multiplier with the fewest steps to the target (None: no run reached it); among rates
    tied within `resolution` (tied), the one nearest the middle of the rates tried, so that a rate
    reported as best is one the grid brackets whenever it can; of two as near, the fewer steps."""
    ties = tied(steps, resolution)
    if not ties:
        return None
    tried = sorted(steps)
    middle = (len(tried) - 1) / 2
    return min(ties, key=lambda m: (abs(tried.index(m) - middle), steps[m], m))


def next_multiplier(steps: dict[float, float | None], study: config_lib.BatchSizeStudyConfig,
                    resolution: float = 0) -> tuple[float | None, str]:
    """(the next multiplier to train at one batch size, or None; the state of its grid).

    `steps`: multiplier -> steps to the target (None: not reached); `resolution`: steps within
    which two rates tie (tied). The grid comes first; then, while an edge of the rates tried is
    among the tied best, the next rate beyond that edge on study.multipliers()' ladder (issue 25
    item 3: a tie with an edge counts as an edge). States: "grid" (grid runs missing), "interior",
    "extended low/high" (the next run extends), "capped low/high" (no rate left on that side),
    "none reached" (no rate reached the target: nothing says which way to go)."""
    missing = [m for m in study.lr_multipliers if float(f"{m:.6g}") not in steps]
    if missing:
        return float(f"{missing[0]:.6g}"), "grid"
    ties = tied(steps, resolution)
    if not ties:
        return None, "none reached"
    tried = sorted(steps)
    ladder = study.multipliers()
    states = []
    for edge, side, beyond in ((tried[0], "low", [m for m in ladder if m < tried[0]][-1:]),
                               (tried[-1], "high", [m for m in ladder if m > tried[-1]][:1])):
        if len(tried) > 1 and edge in ties:
            if beyond:
                return beyond[0], f"extended {side}"
            states.append(f"capped {side}")
    return None, " and ".join(states) or "interior"


# Training the study -------------------------------------------------------------------------------
def run_steps(config: config_lib.Config, batch: int, seed: int, value: float | None = None) -> dict[float, float | None]:
    """multiplier -> steps to the target `value` (None: the run's own target.value; else one of
    target.milestones) of each finished run at `batch` (None: not reached)."""
    from replication import rundir, target

    out = {}
    for multiplier in config.batch_size_study.multipliers():
        path = rundir.run_directory(config, regimes.study(batch, multiplier).name, seed) / "metrics.json"
        if path.exists():
            # The next run to train is decided from this number: a hand-edited one is refused.
            summary = target.check_summary(storage.read_json(path).get("target"), path)
            target.check_examples(summary, path, target.STUDY_FIX.format(run=path.parent))
            steps = summary.get("steps")
            if value is not None and value != config.target.value:
                record = next((t for t in summary.get("targets", []) if t["value"] == value), None)
                if record is None:
                    raise storage.StorageError(f"{path} records no steps to the milestone {value:g} (made before "
                                               f"target.milestones named it): {target.STUDY_FIX.format(run=path.parent)}")
                steps = record["steps"]
            out[multiplier] = target.number(steps, path, "target.steps", target.STUDY_FIX.format(run=path.parent),
                                            integer=True, low=0, above=True, optional=True)
    return out


def pooled_steps(config: config_lib.Config, batch: int, seeds, value: float | None = None) -> dict[float, float | None]:
    """multiplier -> seed_mean over `seeds` of the steps to the target `value` at `batch`, for each
    multiplier every seed has finished."""
    per_seed = [run_steps(config, batch, seed, value) for seed in seeds]
    return {multiplier: seed_mean([steps[multiplier] for steps in per_seed])
            for multiplier in set.intersection(*(set(steps) for steps in per_seed))}


def seed_mean(steps: list) -> float | None:
    """The mean of the seeds' steps to a target; None where any seed did not reach it (a rate that
    fails on one seed is not a rate to recommend). The study's and the report's one rule."""
    return None if None in steps else sum(steps) / len(steps)


def grid_state(config: config_lib.Config, batch: int, seeds) -> tuple[float | None, str]:
    """The next multiplier to train at `batch` for every seed, or None; and the state of its grid.
    Decided on the seeds' mean steps to each target (target.values(), loosest first), within one
    check interval at this batch: a rate any target needs beyond an edge is trained."""
    resolution = _resolution(config, batch)
    states = []
    for value in config.target.values():
        multiplier, state = next_multiplier(pooled_steps(config, batch, seeds, value), config.batch_size_study,
                                            resolution)
        if multiplier is not None:
            return multiplier, state
        states.append(state)
    return None, states[-1] if len(set(states)) == 1 else "; ".join(
        f"{value:g}: {state}" for value, state in zip(config.target.values(), states))


def run_study(config: config_lib.Config, seeds, log=None, only: int | None = None) -> list[dict]:
    """Train every run the study needs (module docstring, step 1) for every seed of `seeds`, in
    sequence (`only`: at that batch alone): each rate is trained for every seed before the next is
    chosen from their mean steps (grid_state). Returns one row per batch size: its next multiplier
    (None: done) and the state of its grid."""
    from replication import train

    log = log or sys.stderr
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    _check_study(config)
    if only is not None and only not in config.batch_size_study.batch_sizes:
        raise config_lib.ConfigError(f"--batch {only} is not one of batch_size_study.batch_sizes "
                                     f"{list(config.batch_size_study.batch_sizes)}: use one of them")
    rows = []
    for batch in sorted(config.batch_size_study.batch_sizes):
        if only is not None and batch != only:
            continue
        while True:
            # A rate one seed has (an interrupted study) is finished for every seed first.
            tried = sorted(set().union(*(run_steps(config, batch, seed) for seed in seeds)))
            for multiplier in tried:
                for seed in seeds:
                    if multiplier not in run_steps(config, batch, seed):
                        train.train(config, regimes.study(batch, multiplier), seed, log)
            multiplier, state = grid_state(config, batch, seeds)
            if multiplier is None:
                break
            print(f"[batch-size study] batch {batch}: training lr multiplier {multiplier:g} ({state}) for seeds "
                  f"{', '.join(map(str, seeds))}", file=log, flush=True)
            for seed in seeds:
                train.train(config, regimes.study(batch, multiplier), seed, log)
        best = best_rate(config, batch, seeds)
        rows.append({"batch_size": batch, "best_multiplier": best, "grid": state})
        print(f"[batch-size study] batch {batch}: best multiplier {best} ({state})", file=log, flush=True)
    return rows


def _resolution(config: config_lib.Config, batch: int) -> int:
    from replication import target

    return target.check_interval(config.target, batch)


def best_rate(config: config_lib.Config, batch: int, seeds) -> float | None:
    """The best multiplier at `batch` for the run's own target, on the mean steps of `seeds`: the
    rate the noise scale and the fair comparison use for every seed."""
    return best_multiplier(pooled_steps(config, batch, seeds), _resolution(config, batch))


def _check_study(config: config_lib.Config) -> None:
    if not config.batch_size_study.batch_sizes:
        raise config_lib.ConfigError(f"profile {config.profile} has no batch_size_study.batch_sizes: "
                                     "list the batch sizes to study")
    if config.stopping != "target":
        raise config_lib.ConfigError(f"profile {config.profile} has stopping {config.stopping!r}: the batch-size "
                                     "study needs stopping: target and a target.value")
    _check_backend(config)


def _check_backend(config: config_lib.Config) -> None:
    """Refuse, before anything trains, a results_dir that holds runs of the other Keras backend: each
    backend draws its own x0, and the report refuses a folder of both, so continuing a study under
    the other backend would train runs that can never be reported beside the first ones."""
    from replication import backend, rundir

    here = backend.name()
    for path in sorted(Path(config.results_dir).glob("*/*/seed*/config.yaml")):
        made = (storage.read_yaml(path).get("run") or {}).get("backend") or "tensorflow"  # before the JAX port
        if made != here:
            raise rundir.RunError(f"{config.results_dir} holds a study started under the {made} backend "
                                 f"({path.parent}), and this process runs {here}: set KERAS_BACKEND={made} "
                                 "to continue it, or give this config another results_dir")


def reference_batch(config: config_lib.Config) -> int:
    """The batch whose best run B_simple is measured along: under the training definition the
    study's smallest batch (docs/noise-scale.md, fixed before those studies ran); under the earlier
    evaluation definition, as those studies were made, the batch nearest sb_batch_size (log scale)."""
    if config.sweep.noise_definition == "training":
        return min(config.batch_size_study.batch_sizes)
    return min(config.batch_size_study.batch_sizes,
               key=lambda b: (abs(math.log(b / config.sb_batch_size)), b))


def measure_noise(config: config_lib.Config, seed: int, log=None, seeds=None) -> list[Path]:
    """B_simple of the reference run of `seed` (the best rate on the mean of `seeds`, default
    [seed]) at x0, at each kept iterate, where it first met each milestone, and at its final
    weights (where it met the target); returns the files (noise/<point>.json)."""
    from replication.measure import noise
    from replication import rundir

    batch = reference_batch(config)
    best = best_rate(config, batch, seeds or [seed])
    if best is None:
        print(f"[batch-size study] no run at batch {batch} reached the target: no noise scale along "
              "training", file=log or sys.stderr)
        return []
    run = rundir.run_directory(config, regimes.study(batch, best).name, seed)
    metrics = storage.read_json(run / "metrics.json")
    from replication import target

    summary = target.check_summary(metrics.get("target"), run / "metrics.json")  # its numbers checked
    target.check_examples(summary, run / "metrics.json", target.STUDY_FIX.format(run=run))
    met = [t["value"] for t in summary.get("targets", [])[:-1] if t["steps"] is not None]
    points = ["initial", *[f"epoch{e}" for e in metrics.get("kept_iterates", [])], *[f"target{v:g}" for v in met],
              "final"]
    for point in points:
        noise.noise_scale(run, point, log=log)
    return [noise.result_path(run, point) for point in points]


# Generalisation once steps and learning rate are fair (item 3) --------------------------------------
COMPARE_KINDS = {"fixed": "(a) fixed epochs, fixed learning rate",
                 "tuned": "(b) fixed epochs, tuned learning rate",
                 "steps": "(c) tuned rate, as many steps as the smallest batch",
                 "ghost": "(d) as (c), ghost batch norm"}


def steps_per_epoch(num_train: int, batch: int) -> int:
    return -(-num_train // batch)


def compare_plan(config: config_lib.Config, seed: int, num_train: int, seeds=None) -> list[tuple[int, str, regimes.RunSpec]]:
    """(batch, kind, run) of every fair-comparison run (Hoffer et al. 2017; issue 13 item 3):
    at each of batch_size_study.compare_batch_sizes, (a) compare_epochs at the fixed learning_rate;
    then, where the study found a best rate at that batch, (b) as many epochs at it, (c) at it for
    as many optimizer steps as the smallest compared batch takes in (b) (Hoffer et al.'s "regime
    adaptation"; the smallest batch's (c) is its (b)), (d) (c) with ghost batch norm over virtual
    batches of compare_ghost_batch_size (only at batches larger than that)."""
    study = config.batch_size_study
    if not study.compare_batch_sizes:
        return []
    epochs, ghost = study.compare_epochs, study.compare_ghost_batch_size
    smallest = min(study.compare_batch_sizes)
    budget = epochs * steps_per_epoch(num_train, smallest)
    plan = []
    for batch in sorted(study.compare_batch_sizes):
        plan.append((batch, "fixed", regimes.compare(batch, None, epochs)))
        best = best_rate(config, batch, seeds or [seed])
        if best is None:
            continue
        plan.append((batch, "tuned", regimes.compare(batch, best, epochs)))
        matched = -(-budget // steps_per_epoch(num_train, batch))
        if batch != smallest:
            plan.append((batch, "steps", regimes.compare(batch, best, matched)))
        if ghost and ghost < batch:
            plan.append((batch, "ghost", regimes.compare(batch, best, matched, ghost)))
    return plan


def run_compare(config: config_lib.Config, seed: int, log=None, seeds=None) -> list[Path]:
    """Train every fair-comparison run (compare_plan), then measure each minimiser's sharpness
    (the config's Metric 2.1 settings); returns the run directories. Training first, so a run
    stopped by a deadline leaves the accuracies before the sharpness."""
    from replication.measure import sharpness
    from replication import rundir, train

    log = log or sys.stderr
    if not config.batch_size_study.compare_batch_sizes:
        return []
    num_train = len(rundir.load_arrays(config)[1])
    plan = compare_plan(config, seed, num_train, seeds)
    for batch, kind, spec in plan:
        print(f"[batch-size study] fair comparison at batch {batch}: {COMPARE_KINDS[kind]} ({spec.name})",
              file=log, flush=True)
        train.train(config, spec, seed, log)
    paths = [rundir.run_directory(config.for_regime(spec), spec.name, seed) for _, _, spec in plan]
    for path in paths:
        sharpness.sharpness_all(path, log=log)
    return paths


def compare_kind(spec: regimes.RunSpec | None, compare_epochs: int) -> str | None:
    """Which of (a)-(d) the run `spec` is (None: not a comparison run); a smallest batch's
    (b) is also its (c). The report asks this of the run directories it reads."""
    if spec is None or spec.kind != "compare":
        return None
    return ("fixed" if spec.multiplier is None else "ghost" if spec.ghost else
            "tuned" if spec.epochs == compare_epochs else "steps")


def study(config_path: str, overrides=(), seed: int | None = None, log=None, only: int | None = None) -> config_lib.Config:
    """The whole study of one config: train, measure the noise scale, run the fair comparison
    (batchsize_report.write_report then writes the report). With `only` (a batch size), train
    that batch's runs alone and stop there: a long study in pieces, each resumable. Returns the config."""
    config = config_lib.load(config_path, overrides)
    _check_study(config)
    seeds = [seed] if seed is not None else list(config.seeds)
    tick = time.time()
    run_study(config, seeds, log, only)
    if only is None:
        for s in seeds:
            measure_noise(config, s, log, seeds)
            run_compare(config, s, log, seeds)
    if only is None:
        print(f"[batch-size study] trained and measured in {time.time() - tick:.0f} s (this process)",
              file=log or sys.stderr, flush=True)
    return config
