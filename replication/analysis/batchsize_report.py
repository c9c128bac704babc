"""Reading and reporting a batch-size study folder (replication/experiments/batchsize.py runs the study;
issue 13): per target (target.value and its milestones), the best steps of each batch on the seeds'
mean, the critical batch size and its bootstrap over seeds and batch sizes (critical_batch.py, the
statistics), time per step from each run's own trace, B_simple along each seed's reference run, the
fair comparison (a)-(d) with sharpness, and the one-page REPORT.md with its figures and tables, of
one network (issue 24). Everything here reads files through results.load; nothing trains.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from replication import data, regimes, storage
from replication import config as config_lib
from replication.experiments import batchsize
from replication.analysis import results as results_lib
from replication.analysis.critical_batch import (HOLDS_FACTOR, Point, bootstrap_seeds_and_batches, check_resolution,
                                                 fit_critical_batch, one_multiplier, pooled, prediction_check)

REPORT_FILE = "REPORT.md"
SUMMARY_FILE = "batch_size.json"


def unresolved_reason(fit: dict) -> str:
    """Why `fit` (fit_critical_batch's, b_crit None) resolved no critical batch, in words."""
    if fit["unresolved"] == "below":
        return (f"fitted slope S_min B_crit {_fmt(fit['slope'])}, zero within round-off or below: the steps do not "
                "fall as the batch grows, so B_crit lies below the smallest batch or the points do not follow "
                "S = S_min (1 + B_crit / B)")
    return (f"fitted S_min {_fmt(fit['intercept'])}, zero within round-off or below: the steps fall at least "
            "as fast as 1/B over these batches, so B_crit lies beyond the largest or the points do not follow "
            "S = S_min (1 + B_crit / B)")


def seconds_per_step(trace: list[dict]) -> float | None:
    """Training seconds per optimizer step from a run's target.csv: the seconds between consecutive
    checks of one epoch, after the first check (the time before it holds compilation), over the steps
    between them. Within one epoch only: until 2026-12-07 the timer did not count an epoch's steps
    after its last check (target.Tracker), so an interval across an epoch's end held more steps than
    time (C1 on 10000 images at batch 32: about a fifth of its steps). It also leaves out model.fit's
    start-up at each epoch (this trainer's one fit call per epoch), which is not a cost of the step.
    None when no two checks after the first share an epoch."""
    rows = [(int(r["step"]), int(r["epoch"]), float(r["train_seconds"])) for r in trace]
    pairs = [(b[0] - a[0], b[2] - a[2]) for a, b in zip(rows[1:], rows[2:]) if a[1] == b[1]]
    steps = sum(s for s, _ in pairs)
    return sum(t for _, t in pairs) / steps if steps else None


def _kind(spec: regimes.RunSpec | None) -> str | None:
    """A run's kind (regimes.KINDS), None for a name no run has."""
    return spec.kind if spec else None


def is_study(results_dir) -> bool:
    """Whether `results_dir` holds batch-size study runs (b<batch>-x<multiplier>)."""
    return any(_kind(regimes.parse_or_none(p.parent.parent.name)) == "study"
               for p in Path(results_dir).glob("*/*/seed*/metrics.json"))


def read_points(loaded) -> list[Point]:
    """Every study run of a loaded results folder. results.load checked their protocols, identity
    and the numbers of the files it reads; the target summary and the trace, which only this reader
    uses, are checked here (target.check_summary, target.read_trace)."""
    from replication import target

    out = []
    for run in loaded.runs:
        if _kind(run.spec) != "study":
            continue
        parsed = run.spec.batch, run.spec.multiplier
        summary = target.check_summary(run.metrics.get("target"), run.path / "metrics.json")
        trace = tuple(target.read_trace(run.path))
        # check_summary checked the targets' values and that the last is the run's own target.value.
        targets = tuple((t["value"], t["steps"]) for t in summary.get("targets", [])) or \
            ((target.number(summary.get("value"), run.path / "metrics.json", "target.value",
                            target.STUDY_FIX.format(run=run.path), above=True), summary.get("steps")),)
        out.append(Point(run.path, run.network, run.dataset, run.seed, parsed[0], parsed[1],
                         float(run.metrics["resolved_config"]["learning_rate"]), summary["reached"],
                         summary.get("steps"), summary.get("examples"), summary["steps_run"],
                         seconds_per_step(list(trace)), summary.get("check_every_steps"), run.train_seconds,
                         float(run.metrics["test_accuracy"]), run.diverged, trace, targets,
                         summary.get("eval_examples")))
    return sorted(out, key=lambda p: (p.seed, p.batch_size, p.multiplier))


def _check_one_study(root: Path, loaded) -> None:
    """A report is one study: one network on one dataset, under one learning-rate scaling rule (what
    a multiplier means). Two networks' studies in one folder were merged into one table and one
    fit; they are refused instead, naming both (their seeds are reported apart: summarize)."""
    runs = [r for r in loaded.runs if _kind(r.spec) in ("study", "compare")]
    for key, name in (((lambda r: f"{r.network} on {r.dataset}"), "networks or datasets"),
                      ((lambda r: r.metrics["resolved_config"].get("batch_size_study", {}).get("lr_scaling", "sqrt")),
                       "learning-rate scaling rules (batch_size_study.lr_scaling)")):
        other = next((r for r in runs if key(r) != key(runs[0])), None)
        if other is not None:
            raise results_lib.ResultsError(
                f"{root} holds batch-size study runs of two {name}: {runs[0].path} ({key(runs[0])}) and {other.path} "
                f"({key(other)}); a report is one study: move one study's runs to its own results_dir")


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _best_rows(points: list[Point], study: config_lib.BatchSizeStudyConfig, value: float, seeds, own: bool) -> list[dict]:
    """One row per batch for the target `value`, on the mean over `seeds`: its runs, best rate (ties
    within one check interval: batchsize.tied), grid state, steps (mean and per seed) and time.
    `own`: `value` is the runs' own target (their test accuracy is measured there)."""
    rows = []
    for batch in sorted({p.batch_size for p in points}):
        mine = [p for p in points if p.batch_size == batch]
        by_rate = pooled(mine, value, seeds)
        steps = {m: r["steps"] for m, r in by_rate.items()}
        resolution = check_resolution(mine)
        best = batchsize.best_multiplier(steps, resolution)
        nxt, state = batchsize.next_multiplier(steps, study, resolution)
        ties = batchsize.tied(steps, resolution)
        chosen = by_rate[best] if best is not None else None
        chosen_points = chosen["points"] if chosen else []
        per_step = _mean([p.seconds_per_step for p in chosen_points])
        mean_steps = chosen["steps"] if chosen else None
        fewest = min((s for s in steps.values() if s is not None), default=None)
        rows.append({
            "target": value, "seeds": len(seeds), "batch_size": batch,
            "multipliers_tried": " ".join(f"{m:g}" for m in sorted(steps)),
            "steps_by_multiplier": " ".join(f"{m:g}:{'-' if s is None else _fmt(s)}" for m, s in sorted(steps.items())),
            "best_multiplier": best, "tied": " ".join(f"{m:g}" for m in ties) if len(ties) > 1 else "",
            "grid": state if nxt is None else f"unfinished ({state})",
            "learning_rate": chosen_points[0].learning_rate if chosen else None,
            "steps": mean_steps, "steps_per_seed": " ".join(str(s) for s in chosen["per_seed"]) if chosen else "",
            "fewest_steps": fewest,  # of any rate (the best is the tied rate nearest the middle: fewest_fit)
            "examples": mean_steps * batch if mean_steps is not None else None,
            "check_every_steps": resolution or None,
            "test_accuracy": _mean([p.test_accuracy for p in chosen_points if p.reached]) if chosen and own else None,
            "seconds_per_step": per_step,
            "seconds_to_target": mean_steps * per_step if mean_steps is not None and per_step is not None else None,
            # Each seed's own steps times its own step time: fastest_two pairs batches by seed.
            "seconds_to_target_per_seed": [s * p.seconds_per_step if s is not None and p.seconds_per_step is not None
                                           else None for s, p in zip(chosen["per_seed"], chosen_points)] if chosen else [],
            "run": str(chosen_points[0].path) if chosen else None,
            # The scaling rule's own rate (1x): whether it ran at every seed, and its mean steps.
            "rule_ran": 1.0 in by_rate, "rule_steps": by_rate[1.0]["steps"] if 1.0 in by_rate else None})
    return rows


def _one_per_seed(rows: list[dict], reference: tuple | None) -> list[dict]:
    """One noise row per seed: its reference run's (`reference`: batch, multiplier), else (a study
    measured under an earlier grid rule) the one run that seed measured."""
    out = {}
    for row in rows:
        mine = (row["batch_size"], row["multiplier"]) == reference
        if row["seed"] not in out or mine:
            out[row["seed"]] = row
    return list(out.values())


PARTIAL_SHARE = 0.01  # a batch whose average examples per step is this much below it is named


def mean_batch_fit(batches, steps, num_train: int) -> dict | None:
    """The fit again with each batch replaced by the examples an optimizer step averages over an
    epoch, num_train / ceil(num_train / B): every epoch ends with the num_train mod B examples left
    as one smaller batch (model.fit's last batch), so at batch 16384 on 60000 examples a quarter of
    the steps take 10848. None where no fitted batch averages PARTIAL_SHARE or more below itself.
    A sensitivity check of the nominal fit, not a correction: which average (examples per step, or
    the harmonic mean a noise argument would give) stands for a mixed batch is not settled here."""
    means = {int(b): num_train / batchsize.steps_per_epoch(num_train, int(b)) for b in batches}
    short = {b: m for b, m in means.items() if m < (1 - PARTIAL_SHARE) * b}
    if not short:
        return None
    averaged = [means[int(b)] for b in batches]
    # Two batches can average alike (64 and 100 on 128 examples: 64 each); below two apart, no fit.
    fit = fit_critical_batch(averaged, steps) if len(set(averaged)) >= 2 else {"b_crit": None, "unresolved": "merged"}
    return {"num_train": num_train, "mean_batches": {str(b): m for b, m in sorted(short.items())},
            "b_crit": fit["b_crit"], "unresolved": fit["unresolved"]}


_NO_REFIT = {"merged": "no refit: the averages leave fewer than two distinct batches",
             "too few": "no refit: fewer than two batches remain",
             "above": "no B_crit resolves (beyond the largest batch)",
             "below": "no B_crit resolves (below the smallest)"}


def _refit(again: dict, fit: float, name: str) -> str:
    """A sensitivity refit (`again`: its b_crit, else why not) in words, its change from the fit it
    checks: "B_crit = 2395, 5% above the fit's 2285" (the refit against the fit, so the sign reads as
    the move); why there is none where it resolved no B_crit."""
    value = again["b_crit"]
    if value is None:
        return _NO_REFIT[again["unresolved"]]
    change = value / fit - 1
    side = "above" if change > 0 else "below"
    moved = f"{abs(change):.0%} {side}" if round(abs(change), 2) else "within 1% of"
    return f"B_crit = {_fmt(value)}, {moved} {name} {_fmt(fit)}"


def _mean_batch_words(study: dict) -> str:
    """The sentence on the smaller last batch of each epoch and the fit on average batches."""
    again, fit = study.get("mean_batch_fit"), study["fit"]
    if not again or not fit or fit.get("b_crit") is None:
        return ""
    shares = ", ".join(f"batch {b} averages {m:.0f}" for b, m in again["mean_batches"].items())
    refit = _refit(again, fit["b_crit"], "the nominal fit's")
    return (f" Each epoch of {again['num_train']} examples ends with the examples left over as one smaller batch, so "
            f"per optimizer step {shares} examples over an epoch; the examples E in the table above count steps x the nominal batch "
            f"and overstate by as much. Fitted on those averages instead of the nominal batches (a sensitivity check, "
            f"not a correction), {refit}.")


def fewest_fit(rows: list[dict]) -> dict | None:
    """The fit again on each batch's fewest steps (the seeds' mean) of any rate, where the best (the
    tied rate nearest the middle of those tried: batchsize.best_multiplier) took more: a sensitivity
    check of that rule, which chooses among rates whose steps differ by at most one check interval.
    {"batches": {batch: [the best's steps, the fewest]}, "b_crit", "unresolved"}; None where every
    fitted batch's best is its fewest, or fewer than two batches are fitted."""
    fitted = [r for r in rows if r["steps"] is not None]
    differ = {str(r["batch_size"]): [r["steps"], r["fewest_steps"]] for r in fitted if r["fewest_steps"] < r["steps"]}
    if not differ or len(fitted) < 2:
        return None
    fit = fit_critical_batch([r["batch_size"] for r in fitted], [r["fewest_steps"] for r in fitted])
    return {"batches": differ, "b_crit": fit["b_crit"], "unresolved": fit["unresolved"]}


def _fewest_words(study: dict) -> str:
    """The sentence on batches where a tied rate took fewer steps than the best, and the fit on those."""
    again, fit = study.get("fewest_fit"), study["fit"]
    if not again or not fit or fit.get("b_crit") is None:
        return ""
    where = ", ".join(f"batch {b}: {_fmt(fewest)} against {_fmt(best)}" for b, (best, fewest) in again["batches"].items())
    refit = _refit(again, fit["b_crit"], "the fit's")
    count = f"{len(again['batches'])} batches" if len(again["batches"]) > 1 else "one batch"
    return (f" At {count} a rate tied with the best took fewer steps "
            f"({where}: tied, as within one check interval, and the best is the tied rate nearest the middle of those "
            f"tried). Fitted on each batch's fewest steps instead (a sensitivity check, not a correction), {refit}.")


def at_edge(row: dict) -> str | None:
    """How a batch's best rate sits at an edge of its grid, where it does (an edge rate tied with the
    best, so a rate beyond it might need fewer steps and its steps are an upper bound): "capped" (no
    rate left on that side) or "to be extended" (a study run under an older rule, or still training,
    stopped before the next rate); None where the grid is interior or not yet run."""
    grid = row["grid"]
    return "capped" if grid.startswith("capped") else "to be extended" if "(extended" in grid else None


def uncapped_fit(rows: list[dict]) -> dict | None:
    """The fit again without the batches whose best rate sat at an edge of its grid (at_edge): their
    steps are an upper bound, which the fit takes as a measurement. A sensitivity check of that:
    {"left_out": {batch: how}, "b_crit", "unresolved" ("too few" where fewer than two batches
    remain)}; None where no fitted batch is at an edge."""
    fitted = [r for r in rows if r["steps"] is not None]
    edges = {str(r["batch_size"]): at_edge(r) for r in fitted if at_edge(r)}
    if not edges or len(fitted) < 2:
        return None
    kept = [r for r in fitted if str(r["batch_size"]) not in edges]
    if len(kept) < 2:
        return {"left_out": edges, "b_crit": None, "unresolved": "too few"}
    fit = fit_critical_batch([r["batch_size"] for r in kept], [r["steps"] for r in kept])
    return {"left_out": edges, "b_crit": fit["b_crit"], "unresolved": fit["unresolved"]}


def _uncapped_words(study: dict) -> str:
    """The sentence on the fit without the batches at an edge of their grid (uncapped_fit)."""
    again, fit = study.get("uncapped_fit"), study["fit"]
    if not again or not fit or fit.get("b_crit") is None:
        return ""
    refit = _refit(again, fit["b_crit"], "the fit's")
    kinds = {how: [b for b, h in again["left_out"].items() if h == how] for how in ("capped", "to be extended")}
    named = "; ".join(f"{', '.join(batches)}: {how}" for how, batches in kinds.items() if batches)
    many = len(again["left_out"]) > 1
    return (f" Fitted without the batch{'es' if many else ''} whose best rate sits at an edge of {'their' if many else 'its'} "
            f"grid ({named}; steps an upper bound there; a sensitivity check, not a correction), {refit}.")


def unreached_bound(points: list[Point], value: float, seeds) -> dict:
    """What the runs of one batch where no rate met `value` on every seed say about its steps: per rate
    every seed ran, the seeds' mean of each run's steps to `value` or, where a run did not meet it, the
    steps it ran (its own are more), so that rate's mean steps exceed it; `bound`: the smallest over
    those rates, None where none bounds: every rate every seed ran had a diverged run ("diverged"), or
    no rate has run on every seed yet ("unpooled"). {"bound", "why" (None, "diverged", "unpooled"),
    "rates" (rates counted), "diverged": ["<multiplier>x seed <seed>", ...]}."""
    counts, rates = {}, pooled(points, value, seeds)
    for multiplier, rate in rates.items():
        if any(p.diverged for p in rate["points"]):
            continue  # it never meets the target: no finite bound from this rate
        counts[multiplier] = sum(p.steps_to(value) if p.steps_to(value) is not None else p.steps_run
                                 for p in rate["points"]) / len(rate["points"])
    diverged = [f"{p.multiplier:g}x seed {p.seed}" for p in sorted(points, key=lambda p: (p.multiplier, p.seed)) if p.diverged]
    why = None if counts else "diverged" if rates else "unpooled"
    return {"bound": min(counts.values()) if counts else None, "why": why, "rates": len(counts), "diverged": diverged}


def _against_bound(predicted: float, bound: float, batch: int, fitted: list[int]) -> str:
    """The fitted curve at an unreached batch against that batch's bound, in words. More steps than the
    curve allows above the fitted batches means a larger S_min, so a smaller B_crit (E_min / S_min);
    below them, a larger E_min, so a larger B_crit; between them no direction follows."""
    if predicted >= bound:
        return "above that bound, consistent with it"
    direction = ("so B_crit is likely overstated" if batch > max(fitted) else
                 "so B_crit is likely understated" if batch < min(fitted) else "so the curve misses this batch")
    return f"below that bound: this batch needed more steps than the curve allows, {direction}"


def left_out_words(row: dict, study: dict, loss: str, fit: dict | None, fitted: list[int]) -> str:
    """The sentence on a batch no rate's seeds all met the target at (`row`, one of study["rows"]):
    not yet run on every seed; or the budget its unmet runs stopped at and the bound their steps give
    (unreached_bound), against the fitted curve where a B_crit was fitted (`fit`, over the `fitted` batches)."""
    batch, bound = row["batch_size"], row["steps_above"]
    # The budget of the runs that did not meet this target (a run that met it stopped there, not at a budget).
    budget = max((p.steps_run for p in study["points"] if p.batch_size == batch and not p.diverged
                  and p.steps_to(study["target"]) is None), default=None)
    words = f"- Batch {batch} is left out of the fit: "
    if row["no_bound"] == "unpooled":
        words += "no rate has run on every seed yet, so nothing bounds it"
    else:
        words += (f"no rate met the {loss} {_fmt(study['target'])} on every seed within its runs"
                  + (f" (those that did not meet it stopped at {budget} steps or fewer, by `epochs` or "
                     "target.max_steps)" if budget is not None else ""))
    if bound is None:
        if row["no_bound"] == "diverged":
            words += ": every rate its seeds all ran had a diverged run, so its runs bound nothing"
    else:
        words += (f", so at every rate its seeds all ran their mean steps to the target exceed {_fmt(bound)} (each "
                  "run counted at its steps to the target or, where it did not meet it, at the steps it ran): a "
                  "bound at the rates tried, not a point of the curve")
        if fit:
            predicted = fit["s_min"] * (1 + fit["b_crit"] / batch)
            words += f"; the fitted curve predicts {_fmt(predicted)} steps there, " + _against_bound(
                predicted, bound, batch, fitted)
    return words + (f" (diverged: {row['diverged_runs']})" if row["diverged_runs"] else "") + "."


def summarize(loaded, config: config_lib.Config) -> dict:
    """The study pooled over its seeds, one entry per target (target.values(), loosest first): per
    batch the seeds' mean steps per rate, best rate and grid state; the fit and its bootstrap over
    seeds and batch sizes; the noise scale along each seed's reference run. {"points", "seeds",
    "studies": [{"target", "own", "seeds", "rows", "fit", "bootstrap", "noise", "prediction", "points"}]}."""
    points = read_points(loaded)
    seeds = sorted({p.seed for p in points})
    # A seed missing a run another seed has makes that rate unpooled; the report says which runs.
    studies = []
    targets = config.target.values()
    noise = noise_along_training(loaded, seeds, targets)
    # The reference run of every seed: the best rate at the reference batch for the runs' own target.
    batch = batchsize.reference_batch(config)
    own = _best_rows([p for p in points if p.batch_size == batch], config.batch_size_study, targets[-1], seeds, True)
    reference = (batch, own[0]["best_multiplier"]) if own else None
    sizes = {int(run.metrics["num_train"]) for run in loaded.runs if _kind(run.spec) == "study"}
    for value in targets:
        own = value == targets[-1]
        rows = _best_rows(points, config.batch_size_study, value, seeds, own)
        fitted = [r for r in rows if r["steps"] is not None]
        for row in rows:  # a batch no rate's seeds all reached: a bound on its steps, not a point
            bound = (unreached_bound([p for p in points if p.batch_size == row["batch_size"]], value, seeds)
                     if row["steps"] is None else {"bound": None, "why": None, "diverged": []})
            row.update({"steps_above": bound["bound"], "no_bound": bound["why"], "diverged_runs": "; ".join(bound["diverged"])})
        fit = bootstrap = again = None
        if len(fitted) >= 2:
            fit = fit_critical_batch([r["batch_size"] for r in fitted], [r["steps"] for r in fitted])
            if len(sizes) == 1:  # one training-set size, as a study has; else no sensitivity fit
                again = mean_batch_fit([r["batch_size"] for r in fitted], [r["steps"] for r in fitted], *sizes)
            bootstrap = bootstrap_seeds_and_batches(points, value, seeds, config.batch_size_study.bootstrap)
        mine = [{**r, "at_target": r["met"] == value} for r in noise]
        met = _one_per_seed([r for r in mine if r["at_target"]], reference)
        prediction = {key: _mean([r[key] for r in met]) for key in ("b_simple", "adam_b_simple")}
        prediction["n"] = {key: sum(r[key] is not None for r in met) for key in ("b_simple", "adam_b_simple")}
        prediction["check"] = {key: prediction_check(met, key, bootstrap, fit["b_crit"] if fit else None)
                               for key in ("b_simple", "adam_b_simple")}
        studies.append({"target": value, "own": own, "seeds": seeds, "rows": rows, "fit": fit, "mean_batch_fit": again,
                        "fewest_fit": fewest_fit(rows), "uncapped_fit": uncapped_fit(rows),
                        "bootstrap": bootstrap,
                        "points": points, "noise": mine, "prediction": prediction,
                        "one_multiplier": one_multiplier(points, value, seeds)})
    return {"points": points, "seeds": seeds, "studies": studies}


def noise_along_training(loaded, seeds, targets) -> list[dict]:
    """B_simple (plain and Adam-preconditioned) at each measured point of each study run of `seeds`,
    with the step of the point (0 at x0, the epoch end for a kept iterate, the check for a
    milestone, steps_run at the final weights) and `met`: the target of `targets` first met there
    (a milestone's point, or the final point of a run that met its own target), else None. Every
    record must be of one definition (docs/noise-scale.md): a folder mixing them is refused."""
    from replication import target

    out, definitions = [], {}
    for run in loaded.runs:
        if _kind(run.spec) != "study" or not run.noise or run.seed not in seeds:
            continue
        parsed = run.spec.batch, run.spec.multiplier
        summary = target.check_summary(run.metrics.get("target"), run.path / "metrics.json")
        per_epoch = batchsize.steps_per_epoch(int(run.metrics["num_train"]), parsed[0])
        steps_to = {f"target{t['value']:g}": (t["value"], t["steps"]) for t in summary.get("targets", [])}
        for point, measurement in run.noise.items():
            record = measurement.record
            definitions.setdefault(record.get("definition", "evaluation"), run.path / "noise" / f"{point}.json")
            steps_run = summary["steps_run"]
            met = None
            if point in steps_to:
                met, step = steps_to[point]
            elif point == "final":
                step, met = steps_run, (targets[-1] if summary["reached"] else None)
            else:
                # A run that stopped inside epoch N kept its "epoch N" iterate where it stopped.
                step = 0 if point == "initial" else min(int(point.removeprefix("epoch")) * per_epoch, steps_run)
            adam = record.get("adam") or {}
            out.append({"seed": run.seed, "run": str(run.path), "batch_size": parsed[0], "multiplier": parsed[1],
                        "point": point, "step": step, "met": met, "definition": record.get("definition", "evaluation"),
                        "b_simple": record.get("b_simple"), "b_simple_se": record.get("b_simple_standard_error"),
                        "adam_b_simple": adam.get("b_simple"), "adam_b_simple_se": adam.get("b_simple_standard_error"),
                        "noise_batch": record.get("batch_size"), "noise_batches": record.get("batches"),
                        "noise_examples": record.get("num_examples")})
    if len(definitions) > 1:
        (a, first), (b, second) = list(definitions.items())[:2]
        raise results_lib.ResultsError(f"{first} is of the {a} noise-scale definition and {second} of the {b} one "
                                       "(docs/noise-scale.md): a study reports one; remeasure with "
                                       "`python -m replication noise RUN_DIR --point POINT --force` under one")
    return sorted(out, key=lambda r: (r["seed"], r["run"], r["step"]))


def read_compare(loaded, compare_epochs: int) -> list[dict]:
    """One row per fair-comparison run: seed, batch, kind, rate, epochs and steps, accuracies, the
    gap between training and test accuracy, and its sharpness at each measured (space, epsilon)."""
    out = []
    for run in loaded.runs:
        kind = batchsize.compare_kind(run.spec, compare_epochs)
        if kind is None:
            continue
        batch, multiplier, epochs, ghost = run.spec.batch, run.spec.multiplier, run.spec.epochs, run.spec.ghost
        metrics = run.metrics
        row = {"seed": run.seed, "batch_size": batch, "kind": kind, "regime": run.regime, "multiplier": multiplier,
               "learning_rate": float(metrics["resolved_config"]["learning_rate"]), "epochs": epochs,
               "steps": epochs * batchsize.steps_per_epoch(int(metrics["num_train"]), batch), "ghost_batch_size": ghost,
               "train_accuracy": float(metrics["train_accuracy"]), "test_accuracy": float(metrics["test_accuracy"]),
               "train_loss": float(metrics["train_loss"]), "diverged": bool(run.diverged),
               "train_seconds": round(run.train_seconds, 2), "run": str(run.path)}
        row["generalization_gap"] = row["train_accuracy"] - row["test_accuracy"]
        for (space, epsilon), measurement in sorted(run.sharpness.items()):
            row[results_lib.sharpness_column("phi", space, epsilon)] = measurement.record.get("phi")
        out.append(row)
    order = list(batchsize.COMPARE_KINDS)
    return sorted(out, key=lambda r: (r["seed"], order.index(r["kind"]), r["batch_size"]))


def compare_gaps(rows: list[dict]) -> list[dict]:
    """Per kind (a)-(d), of one seed's rows: the largest batch against the smallest (for (c) and (d)
    the smallest's own (b) run, the same steps at the same rate): test accuracy difference and
    sharpness ratio. A diverged run is no minimiser: a kind whose run on either side diverged has no
    verdict (the report counts and names them)."""
    if not rows:
        return []
    smallest, largest = min(r["batch_size"] for r in rows), max(r["batch_size"] for r in rows)
    if smallest == largest:
        return []
    keys = results_lib.sharpness_columns(rows, "phi")
    out = []
    for kind in batchsize.COMPARE_KINDS:
        reference_kind = kind if kind in ("fixed", "tuned") else "tuned"
        small = next((r for r in rows if r["kind"] == reference_kind and r["batch_size"] == smallest), None)
        large = next((r for r in rows if r["kind"] == kind and r["batch_size"] == largest), None)
        if small is None or large is None or small["diverged"] or large["diverged"]:
            continue
        row = {"kind": kind, "small_batch": smallest, "large_batch": largest,
               "small_test_accuracy": small["test_accuracy"], "large_test_accuracy": large["test_accuracy"],
               "test_accuracy_difference": large["test_accuracy"] - small["test_accuracy"],
               "small_steps": small["steps"], "large_steps": large["steps"]}
        for key in keys:
            a, b = small.get(key), large.get(key)
            row[key + "_ratio"] = b / a if a and b is not None else None
        out.append(row)
    return out


# The report ----------------------------------------------------------------------------------------
def fastest_two(rows: list[dict]) -> tuple[dict | None, dict | None, int, int]:
    """(fastest, runner-up, faster, compared): the two batches with the least training time to the
    target (the seeds' mean steps times their mean time per step; either None where fewer rows are
    timed), and on how many of the `compared` seeds the fastest's own time was below the
    runner-up's. Paired by seed: a seed is one x0 and one data order shared by its runs at every
    batch. A count, not a test: with 2-3 seeds no test could reach significance."""
    timed = sorted((r for r in rows if r["seconds_to_target"] is not None and math.isfinite(r["seconds_to_target"])),
                   key=lambda r: r["seconds_to_target"])
    if len(timed) < 2:
        return (timed[0] if timed else None), None, 0, 0
    pairs = [(a, b) for a, b in zip(timed[0]["seconds_to_target_per_seed"], timed[1]["seconds_to_target_per_seed"])
             if a is not None and b is not None]
    return timed[0], timed[1], sum(a < b for a, b in pairs), len(pairs)


def _fmt(value, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if spec == ".3g" and abs(value) >= 1000:  # 3690, not 3.69e+03
        return f"{value:.0f}"
    return format(value, spec)


def plot_steps(summary: dict, stem: Path, title: str):
    """Steps, examples and time to the target against the batch (log-log): every rate tried
    (light), the best per batch, perfect scaling through the smallest batch, and the fitted curve."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    rows = [r for r in summary["rows"] if r["steps"] is not None]
    fit = summary["fit"]
    timed = [r for r in rows if r["seconds_to_target"] is not None]
    figure, axes = pyplot.subplots(1, 3, figsize=(14, 4))
    for axis, key, label in ((axes[0], "steps", "steps to target"), (axes[1], "examples", "examples to target"),
                             (axes[2], "seconds_to_target", "training seconds to target (this machine)")):
        if key != "seconds_to_target":
            # Each run (every seed) at this section's target: a milestone's steps, not the run's own.
            value = summary.get("target", None)
            tried = [(p.batch_size, p.steps_to(value) if value is not None else p.steps) for p in summary["points"]]
            tried = [(b, s) for b, s in tried if s is not None]
            axis.scatter([b for b, _ in tried], [s if key == "steps" else s * b for b, s in tried], color="grey",
                         alpha=0.4, s=14, label="every learning rate tried")
        mine = timed if key == "seconds_to_target" else rows
        if not mine:
            continue
        xs = np.array([r["batch_size"] for r in mine], float)
        ys = np.array([r[key] for r in mine], float)
        axis.plot(xs, ys, "o-", color="tab:blue", label="best learning rate")
        grid = np.geomspace(xs.min(), xs.max(), 100)
        if key == "steps":
            axis.plot(grid, ys[0] * xs[0] / grid, ":", color="black", label="perfect scaling (S ~ 1/B)")
        if key == "examples":
            axis.plot(grid, np.full_like(grid, ys[0]), ":", color="black", label="perfect scaling (E constant)")
        if fit and fit["b_crit"] is not None and key in ("steps", "examples"):
            curve = fit["s_min"] * (1 + fit["b_crit"] / grid)
            axis.plot(grid, curve if key == "steps" else curve * grid, "--", color="tab:red",
                      label=f"fit: S_min {_fmt(fit['s_min'])}, B_crit {_fmt(fit['b_crit'])}")
            axis.axvline(fit["b_crit"], color="tab:red", alpha=0.3)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("batch size B")
        axis.set_ylabel(label)
        axis.legend(fontsize=7, frameon=False)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return storage.save_figure(figure, stem)


def plot_noise(summary: dict, stem: Path, title: str):
    """B_simple (plain and Adam-preconditioned) along the reference run, beside the measured B_crit."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(6, 4))
    rows = [r for r in summary["noise"] if r["b_simple"] is not None]
    for key, name, color in (("b_simple", "B_simple (gradient)", "tab:green"),
                             ("adam_b_simple", "B_simple (Adam-preconditioned)", "tab:purple")):
        mine = [r for r in rows if r[key] is not None]
        if mine:
            axis.errorbar([r["step"] for r in mine], [r[key] for r in mine],
                          yerr=[r[key + "_se"] or 0 for r in mine], marker="o", color=color, capsize=3, label=name)
    fit, boot = summary["fit"], summary["bootstrap"]
    if fit and fit["b_crit"] is not None:
        axis.axhline(fit["b_crit"], color="tab:red", linestyle="--", label="B_crit measured (fit)")
        if boot and boot["p16"] is not None and boot["p84"] is not None:
            axis.axhspan(boot["p16"], boot["p84"], color="tab:red", alpha=0.15, label="bootstrap 16-84%")
    axis.set_yscale("log")
    axis.set_xlabel("optimizer step of the reference run (0 = x0; last = target met)")
    axis.set_ylabel("batch size")
    axis.legend(fontsize=7, frameon=False)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return storage.save_figure(figure, stem)


def write_report(results_dir) -> Path:
    """REPORT.md, the figures and the tables of a batch-size study folder, from its files alone: one
    study per target, fitted on the seeds' mean steps (summarize); a folder holding two networks'
    studies is refused (_check_one_study)."""
    root = Path(results_dir)
    loaded = results_lib.load(root)
    points = read_points(loaded)
    if not points:
        raise results_lib.ResultsError(f"no batch-size study runs (b<batch>-x<multiplier>) under {root}: "
                                       "run `python -m replication batch-size CONFIG` first")
    _check_one_study(root, loaded)
    runs = {run.path: run for run in loaded.runs}  # each run's files, read once by the loader
    first = runs[points[0].path].metrics
    # The study and sweep sections are not training keys, so a run records the ones of the day it
    # finished, and a study's batches or grid may grow while it trains (its config says when): the
    # report reads those of the run that finished last (env.json's end_time), which hold the
    # settings every later decision was made with (a comparison run, made last, the compare_* its
    # names were planned with).
    newest = max(loaded.runs, key=lambda run: (str(run.env.get("end_time") or ""), _kind(run.spec) == "compare"))
    sections = {key: newest.metrics["resolved_config"][key] for key in ("batch_size_study", "sweep")
                if key in newest.metrics["resolved_config"]}
    config = config_lib.from_dict({**{k: v for k, v in first["resolved_config"].items() if k != "run"},
                                   **sections, "results_dir": str(root)}, where=str(points[0].path / "config.yaml"))
    # A run records its own (scaled) learning rate; the study's base rate is the config's.
    base = config.learning_rate / config.study_lr_factor(regimes.parse(first["regime"]))
    config = dataclasses.replace(config, learning_rate=float(f"{base:.12g}"))
    summary = summarize(loaded, config)
    studies, many = summary["studies"], len(summary["studies"]) > 1
    seeds = summary["seeds"]
    label = f"{config.network} on {data.DATASETS[config.dataset].workload_label()}"
    tables = root / "tables"
    storage.atomic_write_csv(tables / "batch_size_steps.csv", [
        {"seed": p.seed, "batch_size": p.batch_size, "multiplier": p.multiplier, "learning_rate": p.learning_rate,
         "reached": int(p.reached), "steps": p.steps, "examples": p.examples, "steps_run": p.steps_run,
         **({f"steps_to_{v:g}": p.steps_to(v) for v in config.target.values()[:-1]}),
         "seconds_per_step": p.seconds_per_step, "train_seconds": round(p.train_seconds, 3),
         "test_accuracy": p.test_accuracy, "diverged": int(p.diverged), "run": str(p.path)} for p in points])
    storage.atomic_write_csv(tables / "batch_size_best.csv", [
        {k: " ".join(_fmt(x) for x in v) if isinstance(v, list) else v for k, v in r.items()}
        for s in studies for r in s["rows"]])
    noise_rows = studies[-1]["noise"]
    if noise_rows:
        storage.atomic_write_csv(tables / "batch_size_noise.csv", noise_rows)
    compared = read_compare(loaded, config.batch_size_study.compare_epochs)
    if compared:
        storage.atomic_write_csv(tables / "batch_size_compare.csv", compared)
    of_seeds = "" if len(seeds) == 1 else f" ({len(seeds)} seeds, mean)"
    for study in studies:
        # The fair comparison trains at the runs' own target's best rates: it belongs to that target.
        study["compare"] = [r for r in compared if study["own"]]
        study["compare_gaps"] = [{**g, "seed": seed} for seed in seeds
                                 for g in compare_gaps([r for r in study["compare"] if r["seed"] == seed])]
        # Not "_1.5": the figure's stem takes a suffix (.png), which would replace ".5".
        suffix = "_" + format(study["target"], "g").replace(".", "_") if many and not study["own"] else ""
        study["figures"] = [plot_steps(study, root / f"batch_size_steps{suffix}", f"{label}{of_seeds}: steps, examples "
                                       f"and time to {config.target.metric} <= {study['target']:g}")[0]]
        if study["noise"]:
            study["figures"].append(plot_noise(study, root / f"batch_size_noise{suffix}", f"{config.network}: "
                                               f"B_simple along training vs the measured B_crit at {study['target']:g}")[0])
    cost = sum(p.train_seconds for p in points) + sum(r["train_seconds"] for r in compared)
    capped = capped_seconds([runs[p.path] for p in points] + [runs[Path(r["run"])] for r in compared])
    noise_cost = sum(float(m.record.get("wall_seconds") or 0) for run in loaded.runs for m in run.noise.values())
    measure_cost = noise_cost + sum(float(m.record.get("wall_seconds") or 0) for run in loaded.runs for m in run.sharpness.values()
                      if batchsize.compare_kind(run.spec, config.batch_size_study.compare_epochs))
    per_target = [{key: s[key] for key in ("target", "fit", "mean_batch_fit", "fewest_fit", "uncapped_fit", "bootstrap", "rows", "noise", "prediction",
                                           "one_multiplier", "compare", "compare_gaps")} for s in studies]
    for entry in per_target:
        if len(seeds) == 1:
            entry["seed"] = seeds[0]  # one seed: named as before seeds were pooled
    record = {"seeds": seeds,
              # One target: its study's keys at the top, as before targets were kept apart.
              **({"studies": per_target} if many else per_target[0]),
              "runs": len(points) + len(compared), "train_seconds_total": round(cost, 1),
              "train_seconds_capped": round(capped, 1),
              "noise_seconds_total": round(noise_cost, 1), "measure_seconds_total": round(measure_cost, 1),
              "target": dataclasses.asdict(config.target), "study": dataclasses.asdict(config.batch_size_study),
              # Those that bear on this study's numbers: each run's own learning rate and the target
              # are stated in their own places; the iterate a run keeps (epoch 1) is a point of the
              # noise scale along training, not Figure 6's; no parametric plot is made; sharpness
              # settings matter only where the fair comparison measured sharpness.
              "deviations": sorted({d for p in points for d in runs[p.path].metrics["deviations"]
                                    if not d.startswith(("learning rate ", "stopped at a target", "iterates kept",
                                                         "parametric plots", *(() if compared else ("sharpness ",))))})}
    storage.atomic_write_json(root / SUMMARY_FILE, record)
    text = _markdown(config, label, summary, record, root)
    storage.atomic_write_text(root / REPORT_FILE, text)
    return root / REPORT_FILE


def capped_seconds(runs) -> float:
    """The runs' epoch wall times (history.csv) summed with each epoch after the first counted at
    most at the median of those epochs at its batch size over `runs`: a cost robust to epochs slowed
    by other work on the machine (the C1 study shared its CPU with tests at times), at the price of
    capping clean epochs above the median too. A first epoch (which compiles the step) and a last
    one cut short at the target count as they were."""
    first, later = 0.0, {}
    for run in runs:
        for row in run.history:
            if row.get("seconds") in (None, ""):
                continue
            if int(row["epoch"]) == 1:
                first += float(row["seconds"])
            else:
                later.setdefault(int(run.metrics["batch_size"]), []).append(float(row["seconds"]))
    return first + sum(min(seconds, float(np.median(times))) for times in later.values() for seconds in times)


def _ratio(predicted, measured) -> str:
    return "-" if predicted is None or measured is None else f"{predicted / measured:.2f}"


def _bound(boot: dict | None, key: str) -> str:
    """A bootstrap percentile in words: its value, or which side is unbounded (not measured)."""
    if boot and key in boot.get("unbounded", {}):
        return "no upper bound" if boot["unbounded"][key] == "above" else "no lower bound"
    return _fmt(boot and boot.get(key))


def _interval(boot: dict | None, low: str, high: str) -> str:
    a, b = _bound(boot, low), _bound(boot, high)
    return f"{a} to {b}" if boot and {low, high} & set(boot.get("unbounded", {})) else f"{a}-{b}"


def _capped_words(reached: list[dict]) -> str:
    """The fitted batches whose best rate sat at a capped edge of its grid: their steps are an upper
    bound (a rate beyond the edge might need fewer), said beside the fit they enter."""
    capped = [r for r in reached if r["grid"].startswith("capped")]
    if not capped:
        return ""
    names = [str(r["batch_size"]) for r in capped]
    where = f"batch {names[0]}" if len(names) == 1 else f"batches {', '.join(names[:-1])} and {names[-1]}"
    return f" At {where} the best rate is at a capped edge of the grid, so the steps fitted there are an upper bound."


def _bootstrap_words(boot: dict) -> str:
    """The bootstrap's counts and percentiles (bootstrap_critical_batch), in words."""
    if not boot["resamples"]:
        return "no bootstrap resamples"
    sides = [(boot["unresolved_above"], "steps falling at least as fast as 1/B (B_crit beyond their largest batch)"),
             (boot["unresolved_below"], "steps not falling as the batch grew (B_crit below their smallest batch)")]
    sides = [(count, words) for count, words in sides if count]
    # What was resampled is the bootstrap's own record (one seed: the batch sizes; pooled: seeds too).
    text = (f"bootstrap over the {boot.get('over', 'batch sizes')}: {boot['resolved']} of {boot['resamples']} "
            "resamples resolved a B_crit")
    if boot.get("drawn", boot["resamples"]) > boot["resamples"]:  # a resample of one batch size fits no curve
        text += (f" (of {boot['drawn']} drawn, {boot['drawn'] - boot['resamples']} held fewer than two distinct "
                 "batch sizes, which fit no curve: left out)")
    if len(sides) == 1:
        text += f"; {boot['unresolved']} did not, with {sides[0][1]}"
    elif sides:
        text += f"; {boot['unresolved']} did not: {' and '.join(f'{c} with {w}' for c, w in sides)}"
    text += "; "
    text += (f"median {_bound(boot, 'median')}, 16-84% {_interval(boot, 'p16', 'p84')}, 2.5-97.5% "
             f"{_interval(boot, 'p2_5', 'p97_5')}")
    if boot["unbounded"]:
        text += ("; every resample is ranked, an unresolved one at its side, so a bound that falls among them is "
                 "not measured")
    if boot.get("outside"):
        # A resample's seeds that all met the target at a batch the point estimate left out: such a batch
        # enters through the seeds that happened to finish within the budget, a pull towards fewer steps.
        text += (f"; {boot['outside']} resamples fitted a batch the point estimate leaves out (their drawn seeds "
                 "all met the target there, within the run budget that stopped another seed)")
    n = boot.get("seeds", 0)
    if 1 < n < 5:
        # n seeds drawn with replacement make only C(2n-1, n) distinct draws (3 for 2 seeds), and a
        # bootstrap from few units understates their spread (its variance of a mean is (n-1)/n of the
        # unbiased one: half of it for 2 seeds).
        text += (f"; with {n} seeds a resample draws one of only {math.comb(2 * n - 1, n)} distinct sets of seeds, "
                 "so the seeds' share of this interval is coarse and likely too narrow")
    return text


# Generated sentences: each is chosen by the numbers it describes (issue 23 item 4) ----------------
TREND_FACTOR = 1.25  # B_simple changing by less than this factor, either way, is "about the same"


def _series(rows: list[dict], key: str) -> list[dict]:
    return [r for r in rows if r[key] is not None and math.isfinite(r[key])]


def _moved(a: dict, b: dict, key: str) -> bool:
    """Whether `key` differs between two noise rows by at least TREND_FACTOR and by more than two
    standard errors of the difference (a missing standard error counts as 0)."""
    x, y = a[key], b[key]
    if x <= 0 or y <= 0:
        return x != y
    spread = math.hypot(a[key + "_se"] or 0, b[key + "_se"] or 0)
    return abs(math.log(y / x)) >= math.log(TREND_FACTOR) and abs(y - x) > 2 * spread


def _trend_words(rows: list[dict], key: str, name: str) -> tuple[str, bool] | None:
    """How `key` changed along one run's noise rows, from x0 to where the target was met: (words,
    whether it moved). "grew" or "fell" where the change passes _moved, else "stayed about the
    same"; a point between them outside both ends (by _moved) is named, as the path was not monotone."""
    series = _series(rows, key)
    start = next((r for r in series if r["point"] == "initial"), None)
    end = next((r for r in series if r["at_target"]), None)
    if start is None or end is None:
        return None
    x, y = start[key], end[key]
    moved = _moved(start, end, key)
    if moved:
        words = f"{name} {'grew' if y > x else 'fell'} from {_fmt(x)} at x0 to {_fmt(y)} (x{y / x:.2g})"
    else:
        words = (f"{name} stayed about the same ({_fmt(x)} at x0, {_fmt(y)} at the target: a change under "
                 f"{TREND_FACTOR:g}-fold or within two standard errors)")
    # Only points measured between x0 and the target: a run that went on to a tighter target has
    # later points, which are not "on the way" to this one.
    between = [r for r in series if start["step"] < r["step"] < end["step"]]
    low = min(between, key=lambda r: r[key], default=None)
    high = max(between, key=lambda r: r[key], default=None)
    lowest, highest = (start, end) if x <= y else (end, start)
    if low is not None and low[key] < lowest[key] and _moved(lowest, low, key):
        words += f", after falling to {_fmt(low[key])} at step {low['step']} on the way"
        moved = True
    elif high is not None and high[key] > highest[key] and _moved(highest, high, key):
        words += f", after rising to {_fmt(high[key])} at step {high['step']} on the way"
        moved = True
    return words, moved


def noise_trend(rows: list[dict]) -> str | None:
    """The sentence on how B_simple (plain and Adam-preconditioned) changed along the reference run
    (its noise rows), chosen by each change's sign and size (_trend_words); None without both x0
    and the point where the target was met."""
    parts = [t for t in (_trend_words(rows, "b_simple", "the plain B_simple"),
                         _trend_words(rows, "adam_b_simple", "the Adam-preconditioned one")) if t]
    if not parts:
        return None
    text = f"From x0 to where the target was met, {'; '.join(words for words, _ in parts)}. "
    if any(moved for _, moved in parts):
        return text + "It depends on where along training it is measured: measure it near the loss you train to."
    return text + "Along this run it hardly moved, so where it is measured matters little here."


def best_rate_words(rows: list[dict], config) -> str | None:
    """The sentence on the best learning rate per batch, and whether the scaling rule's own value
    (multiplier 1) would have done as well: it names each batch where 1x took more steps (by more
    than one check interval, the resolution of steps) or never
    reached the target, or says the rule alone was enough on this grid."""
    best = [r for r in rows if r["best_multiplier"] is not None]
    if not best:
        return None
    study = config.batch_size_study
    multipliers = ", ".join(f"{r['best_multiplier']:g}x" for r in best)
    text = (f"- The best learning rate per batch was {multipliers} the "
            f"{study.lr_scaling}-rule value (learning_rate {config.learning_rate:g} x "
            f"(B / {config.sb_batch_size})^{regimes.LR_SCALINGS[study.lr_scaling]:g})")
    lost, tried = [], 0
    for r in best:
        if not r["rule_ran"]:
            continue
        tried += 1
        if r["rule_steps"] is None:
            lost.append(f"batch {r['batch_size']} (did not reach the target on every seed; {_fmt(r['steps'])} steps at "
                        f"{r['best_multiplier']:g}x)")
        elif r["rule_steps"] > r["steps"] + (r["check_every_steps"] or 0):
            lost.append(f"batch {r['batch_size']} ({_fmt(r['rule_steps'])} against {_fmt(r['steps'])} steps)")
    if lost:
        return text + (f"; the rule's own value (1x) took more steps at {', '.join(lost)}: the rule alone was not "
                       f"enough at {len(lost)} of the {tried} batches where it ran.")
    if tried:
        return text + "; the rule's own value (1x) was as fast as the best at every batch where it ran: on this grid the rule alone was enough."
    return text + "."


def _markdown(config, label: str, summary: dict, record: dict, root: Path) -> str:
    studies, seeds = summary["studies"], summary["seeds"]
    many = len(studies) > 1
    lines = [f"# How to choose the batch size: {label}", "",
             f"Every number below is read from the run directories under `{root}` (rebuild: "
             f"`python -m replication report {root}`; train: `python -m replication batch-size CONFIG`).", ""]
    if len(seeds) > 1:
        lines += [f"This folder holds the study of {len(seeds)} seeds ({', '.join(map(str, seeds))}), trained at "
                  "the same rates: steps to a target are the seeds' mean, the best rate is chosen on that mean, and "
                  "B_crit's interval resamples seeds and batch sizes together. Every seed's steps are in the table.",
                  ""]
    if many:
        values = ", ".join(format(study["target"], "g") for study in studies)
        lines += [f"Steps are counted to {len(studies)} targets of {config.target.metric} "
                  f"({values}), each from the same runs' checks: one "
                  "section per target, the loosest first.", ""]
    alone = "one seed" if len(seeds) == 1 else f"mean of {len(seeds)} seeds"
    for study in studies:
        if many:
            lines += [f"## Target {config.target.metric} <= {study['target']:g}", ""]
        lines += _study_markdown(config, study, summary, record, "###" if many else "##", alone)
    # The tables write_report wrote: the noise table once a noise scale is measured, the comparison's once run.
    record_noise, record_compare = bool(studies[-1]["noise"]), any(study["compare"] for study in studies)
    lines += ["## Cost and provenance", "",
              f"{record['runs']} runs; training time summed over their epochs {record['train_seconds_total']:.0f} s "
              f"(evaluations included; {record['train_seconds_capped']:.0f} s counting each epoch after the first "
              "at most at the median of those at its batch size: a lower estimate, which discounts epochs slowed by "
              "other work on a shared machine and clean epochs above the median alike), noise-scale and sharpness "
              f"measurements {record['measure_seconds_total']:.0f} s "
              f"({_device(summary)}; process start-ups and waits for a shared CPU not counted). Tables: "
              "`tables/batch_size_steps.csv` (every run), `tables/batch_size_best.csv` (best per batch)"
              + (", `tables/batch_size_noise.csv`" if record_noise else "")
              + (", `tables/batch_size_compare.csv` (the fair comparison)" if record_compare else "")
              + "; everything in `batch_size.json`. Each run's checks: `<run>/target.csv`.", ""]
    return "\n".join(lines)


def _study_markdown(config, study: dict, summary: dict, record: dict, h: str, alone: str) -> list[str]:
    """The sections of one target's study; `h` their heading level, `alone` how its seeds are named
    ("one seed", or "mean of N seeds")."""
    rows, fit, boot, noise, figures = study["rows"], study["fit"], study["bootstrap"], study["noise"], study["figures"]
    target = dataclasses.replace(config.target, value=study["target"])
    loss = "training loss" if target.metric == "train_loss" else "training error"
    reached = [r for r in rows if r["steps"] is not None]
    b_crit = fit["b_crit"] if fit else None
    at_target = next((r for r in noise if r["at_target"]), None)  # the first seed's: its run's trend
    prediction = study["prediction"]
    reference = [r for r in noise if at_target and r["run"] == at_target["run"]]
    at_x0 = next((r for r in reference if r["point"] == "initial"), None)
    fastest, runner_up, faster, compared = fastest_two(reached)
    capped = [r for r in rows if r["grid"].startswith(("capped", "unfinished", "none"))]
    lines = [f"{h} In plain words", ""]
    if b_crit is not None:
        lines.append(
            f"- The measured critical batch size is **B_crit = {_fmt(b_crit)}** (bootstrap 16-84%: "
            f"{_interval(boot, 'p16', 'p84')}). By the fitted curve S = S_min (1 + B_crit / B), well below it "
            f"doubling the batch nearly halves the steps to the same {loss} at about the same number of examples, "
            "so a larger batch is nearly free in compute and, where a step of it takes about the same time, "
            f"faster. At B = B_crit it takes twice the fewest steps possible (S_min = {_fmt(fit['s_min'])}) "
            "and twice the fewest examples; beyond it, each doubling costs many more examples for few "
            "steps saved."
            + (f" B_crit lies outside the batches that reached the target ({reached[0]['batch_size']}-"
               f"{reached[-1]['batch_size']}): "
               "it is an extrapolation of the fit." if not reached[0]["batch_size"] <= b_crit <= reached[-1]["batch_size"]
               else ""))
    elif len(reached) < 2:
        lines.append(f"- Not enough batch sizes reached the target ({len(reached)}) to fit a critical batch size.")
    else:
        lines.append(f"- The fit resolved no critical batch size: {unresolved_reason(fit)}.")
    for row in (r for r in rows if r["steps"] is None):
        lines.append(left_out_words(row, study, loss, fit if b_crit else None, [r["batch_size"] for r in reached]))
    if at_target and b_crit:
        n = max(prediction["n"].values())
        lines.append(
            f"- The gradient noise scale B_simple, measured where the reference run meets the target"
            f"{f' (mean of {n} seeds)' if n > 1 else ''}, predicts "
            f"{_ratio(prediction['b_simple'], b_crit)} x the measured B_crit ({_fmt(prediction['b_simple'])}); with "
            f"Adam's preconditioner applied, {_ratio(prediction['adam_b_simple'], b_crit)} x "
            f"({_fmt(prediction['adam_b_simple'])})."
            + (f" Measured at x0 instead (seed {at_x0['seed']}'s run), it would predict {_ratio(at_x0['b_simple'], b_crit)} x"
               + (f" (preconditioned {_ratio(at_x0['adam_b_simple'], b_crit)} x)." if at_x0["adam_b_simple"] else
                  " (preconditioned: not defined there, before Adam's first step has a second-moment estimate).")
               if at_x0 else ""))
        # The rule was fixed before the runs for the training definition only: an earlier study is not judged by it.
        if any(prediction["check"].values()) and {r["definition"] for r in noise} == {"training"}:
            lines.append("- Does the prediction hold (docs/noise-scale.md's rule, fixed before the runs: the measured "
                         f"B_crit's 2.5-97.5% interval holds a value within a factor {HOLDS_FACTOR:g} of the "
                         "prediction)? " + "; ".join(_holds_words(name, prediction["check"][key]) for key, name in
                                                     (("b_simple", "plain"), ("adam_b_simple", "Adam-preconditioned"))
                                                     if prediction["check"][key]) + ".")
    if (trend := noise_trend(reference)) is not None:
        # One run's trend (the first seed's reference run), beside numbers that are seeds' means.
        lines.append(f"- In seed {at_target['seed']}'s reference run, {trend[0].lower()}{trend[1:]}"
                     if len(study['seeds']) > 1 else f"- {trend}")
    if fastest:
        lines.append(f"- On this machine ({_device(summary)}) the fastest batch to the target was "
                     f"**{fastest['batch_size']}** ({fastest['seconds_to_target']:.3g} s of training"
                     + (f"; batch {runner_up['batch_size']} next at {runner_up['seconds_to_target'] / fastest['seconds_to_target']:.2g}x "
                        f"its time" if runner_up and fastest["seconds_to_target"] > 0 else "")
                     + (f"; faster on {faster} of {compared} seeds, each seed's own runs, no test of a difference"
                        if compared > 1 else "") + ").")
    accuracies = [(r["batch_size"], r["test_accuracy"]) for r in reached if r["test_accuracy"] is not None]
    if len(accuracies) >= 2:
        (b0, a0), (b1, a1) = accuracies[0], accuracies[-1]
        spread = max(a for _, a in accuracies) - min(a for _, a in accuracies)
        # Numbers only, no verdict: no test of a difference is made here, and a range under a point
        # can still separate the seeds (F1 Fashion at 0.2: batch 32's seeds all above batch 512's).
        lines.append(f"- Stopped at the same {loss} with its best learning rate, test accuracy was {a0:.2f}% "
                     f"at batch {b0} and {a1:.2f}% at batch {b1} (range {spread:.2f} points over "
                     f"{len(accuracies)} batch sizes; {alone}; no test of a difference"
                     + ("" if alone == "one seed" else "; each seed's in tables/batch_size_steps.csv")
                     + "). This is a fair comparison in steps and learning rate at this target, not the paper's "
                     "100-epoch regime.")
    if (rate := best_rate_words(rows, config)) is not None:
        lines.append(rate)
    if (one := study["one_multiplier"]) is not None:
        lines.append(f"- One multiple of the rule for every batch: {one['multiplier']:g}x the {config.batch_size_study.lr_scaling}"
                     "-rule value " + ("took the fewest steps at every batch" if one["excess"] == 0 else
                                       f"took at most {one['excess']:.0%} more steps than the fewest any rate took (at batch "
                                       f"{one['worst_batch']}" + ("; within one check interval of the fewest at every "
                                                                  "batch, so tied with the best everywhere)" if one["tied"]
                                                                  else ")"))
                     + f", over the {len(one['batches'])} batches {one['batches'][0]}-{one['batches'][-1]} where a "
                     f"rate met the target ({alone}; no multiple did better in the worst case).")
    lines += _compare_plain(study["compare_gaps"], _sharpness_key(study["compare"]), alone,
                            [r for r in study["compare"] if r["diverged"]])
    seeds = ("one seed, so no seed-to-seed spread of steps to target" if alone == "one seed" else
             f"steps are the {alone} (each seed's in the table), and B_crit's interval resamples seeds and batch "
             "sizes together")
    definition = {r["definition"] for r in noise}
    estimator = ([] if not definition else  # nothing measured yet: no estimator to describe
                 ["B_simple measured with mini-batches of sb_batch_size in training mode (dropout on), and the Adam "
                  "preconditioner from the run's own second-moment estimate where it was saved (docs/noise-scale.md)"]
                 if definition == {"training"} else
                 ["B_simple measured with mini-batches of sb_batch_size with dropout off (the evaluation definition, "
                  "made before docs/noise-scale.md); the Adam preconditioner is estimated from those mini-batch "
                  "gradients, not the run's own second moment"])
    lines += ["- Limits: " + "; ".join(record["deviations"] + [
        f"target {target.metric} <= {target.value:g} on a fixed {target.eval_subset} of the training examples"
        + ("" if all(p.eval_examples == data.MEASUREMENT_SUBSET for p in study["points"]) else
           " (drawn before the measured examples had a stream of their own, data.MEASUREMENT_SUBSET: they are the "
           "examples seed 0's first epoch began with, so seed 0's steps to a target met in or soon after its first "
           "epoch may be biased low)") + ", "
        + (f"checked every {target.every_examples} examples (every max(1, {target.every_examples} / B) steps; "
           "steps to target are counted at the first check that met it, the check before not, so they may overstate "
           "by about that interval, the table's 'check')" if target.every_examples
           else f"checked every {target.every_steps} steps (steps to target are counted at the first check that met it, "
                f"the check before not, so they may overstate by about {target.every_steps})"),
        seeds, *estimator]
        + _nondeterministic(summary)
        + (["grid not interior at " + ", ".join(f"batch {r['batch_size']} ({r['grid'].replace(' (', ', ').rstrip(')')})"
                                                  for r in capped)] if capped else [])) + ".", ""]
    lines += [f"{h} Steps and examples to the target", "",
              f"![steps to target]({figures[0].name})", "",
              "| batch | rates tried (x rule) | steps per rate (seeds' mean; - = not reached by every seed) | best | tied within a check | "
              "grid | lr | steps S | per seed | check | examples E | s/step | s to target | test acc. at target (%) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch_size']} | {r['multipliers_tried']} | {r['steps_by_multiplier']} | "
                     f"{_fmt(r['best_multiplier'], 'g')} | {r['tied'] or '-'} | {r['grid']} | {_fmt(r['learning_rate'])} | "
                     f"{_fmt(r['steps']) if r['steps'] is not None else 'not reached'} | {r['steps_per_seed'] or '-'} | "
                     f"{_fmt(r['check_every_steps'], 'd') if r['check_every_steps'] else '-'} | "
                     f"{_fmt(r['examples']) if r['examples'] is not None else '-'} | "
                     f"{_fmt(r['seconds_per_step'])} | {_fmt(r['seconds_to_target'])} | "
                     f"{_fmt(r['test_accuracy'], '.2f')} |")
    lines += ["", "Grid rule: the learning rates are the multipliers times the scaling rule's value; rates whose "
              "steps (the seeds' mean) differ by no more than one check interval are tied, since steps are known "
              "to within that interval; the best is the tied rate nearest the middle of those tried. While an edge "
              "rate is among the tied, one more rate is trained beyond that edge, up to "
              f"{config.batch_size_study.max_extensions} per side (Shallue et al. 2019; issue 25 item 3). Time per step is each best run's own (its trace: the intervals "
              "between checks within one epoch, after the first check), so it includes input handling on this "
              "machine.", ""]
    lines += [f"{h} The critical batch size: measured and predicted", ""]
    if fit and b_crit is None:
        lines += [f"Fit of S = S_min (1 + B_crit / B) (McCandlish et al. 2018, eq. 2.11) to the best steps of "
                  f"{len(reached)} batch sizes: no critical batch size resolved ({unresolved_reason(fit)})"
                  + (f"; {_bootstrap_words(boot)}" if boot else "") + ".", ""]
    elif fit:
        lines += [f"Fit of S = S_min (1 + B_crit / B) (McCandlish et al. 2018, eq. 2.11) to the best steps of "
                  f"{len(reached)} batch sizes, least squares on relative residuals of S against 1/B: "
                  f"S_min = {_fmt(fit['s_min'])}, E_min = {_fmt(fit['e_min'])}, **B_crit = E_min / S_min = "
                  f"{_fmt(b_crit)}**" + (f" ({_bootstrap_words(boot)})" if boot else "") + "."
                  + _capped_words(reached) + _uncapped_words(study)
                  + (f" The fit's largest relative residual (S - fit) / S is {fit['worst_residual']:+.0%}, at batch "
                     f"{fit['worst_residual_batch']:g}." if "worst_residual" in fit else "")
                  + _mean_batch_words(study) + _fewest_words(study), ""]
    else:
        lines += [f"Not measured: {len(reached)} batch size{'s' if len(reached) != 1 else ''} reached the target, "
                  "and the fit needs two.", ""]
    if not noise:
        where = ("the study's smallest, under the training definition" if config.sweep.noise_definition == "training"
                 else "the batch nearest sb_batch_size, under the evaluation definition")
        lines += [f"No noise scale yet: it is measured along the best run at batch {batchsize.reference_batch(config)} "
                  f"({where}; docs/noise-scale.md), once every batch of the study is trained "
                  "(`python -m replication batch-size CONFIG`).", ""]
    else:
        lines += [f"![noise scale]({figures[1].name})", "",
                  "| run | point | step | B_simple | Adam-preconditioned | predicted / measured (plain) | "
                  "predicted / measured (Adam) |", "|---|---|---|---|---|---|---|"]
        for r in noise:
            lines.append(f"| {Path(r['run']).parent.name} seed {r['seed']} | {r['point']}{' (target met)' if r['at_target'] else ''} | "
                         f"{r['step']} | {_fmt(r['b_simple'])} ± {_fmt(r['b_simple_se'])} | "
                         f"{_fmt(r['adam_b_simple'])} ± {_fmt(r['adam_b_simple_se'])} | "
                         f"{_ratio(r['b_simple'], b_crit)} | {_ratio(r['adam_b_simple'], b_crit)} |")
        if at_target and b_crit and (prediction["b_simple"] or prediction["adam_b_simple"]):
            plain, adam = prediction["b_simple"], prediction["adam_b_simple"]
            closer = ("the plain gradient's" if not adam or (plain and abs(math.log(plain / b_crit)) <=
                      abs(math.log(adam / b_crit))) else "the Adam-preconditioned")
            lines += ["", f"At the point where the reference run meets the target, {closer} noise scale is the "
                      "closer prediction of the measured B_crit."]
        reference_row = next((r for r in rows if r["batch_size"] == batchsize.reference_batch(config)), None)
        measured_on = {Path(r["run"]).parent.name for r in noise if r["at_target"]}
        if reference_row and reference_row["run"] and measured_on - {Path(reference_row["run"]).parent.name}:
            # measure_noise picks the reference by the runs' own target: a milestone's best may differ.
            why = ("the best at its batch for the runs' own target (B_simple is measured along one run for every "
                   "target); at this target" if not study["own"] else
                   "the reference run the grid rule of its day chose; under the present rule (ties within a check "
                   "interval)")
            lines += ["", f"The noise scale was measured on {', '.join(sorted(measured_on))}, {why} the best run at "
                      f"batch {reference_row['batch_size']} is {Path(reference_row['run']).parent.name}."]
        where = ("the study's smallest batch (the training definition, docs/noise-scale.md)"
                 if {r["definition"] for r in noise} == {"training"} else "the batch nearest sb_batch_size")
        lines += ["", f"B_simple = tr(Sigma) / |G|^2 (replication/measure/noise.py) from {noise[0]['noise_batches']} "
                  f"mini-batches of {noise[0]['noise_batch']} of {noise[0]['noise_examples']} training examples "
                  f"(± jackknife standard error), on the best run at {where}; the "
                  "preconditioned one applies Adam's 1 / (sqrt(v) + eps) to every mini-batch gradient.", ""]
    if not study["own"]:  # the fair comparison trains at the runs' own target's rates: reported there
        return lines
    unranked = [r["batch_size"] for r in rows if r["best_multiplier"] is None]
    lines += _compare_section(study["compare"], study["compare_gaps"], config, unranked, h)
    if moved := _compare_off_best(study["compare"], rows):
        lines[-1:] = ["", moved, ""]
    return lines


def _compare_off_best(compare: list[dict], rows: list[dict]) -> str | None:
    """(b)-(d) train at the study's best rate per batch as compare_plan found it when they ran; the
    best can move after (an extended grid, more seeds, a changed grid rule). Say where the runs'
    rate is not the present best, so the section's "the rate the study found best" is not read as
    true of them."""
    best = {r["batch_size"]: r for r in rows}

    def at_best(run):
        multiplier = best[run["batch_size"]]["best_multiplier"]
        return multiplier is not None and math.isclose(run["multiplier"], multiplier, rel_tol=1e-4)
    off = sorted({(r["batch_size"], r["multiplier"]) for r in compare
                  if r["multiplier"] is not None and r["batch_size"] in best and not at_best(r)})
    if not off:
        return None

    def where(batch, multiplier):
        row = best[batch]
        if row["best_multiplier"] is None:
            return f"at batch {batch} at {_fmt(multiplier)}x the rule, where no rate meets the target now"
        tied = any(math.isclose(multiplier, float(m), rel_tol=1e-4) for m in (row.get("tied") or "").split() if m != "-")
        return (f"at batch {batch} at {_fmt(multiplier)}x the rule, not the best {_fmt(row['best_multiplier'])}x "
                f"the study finds now ({'tied with it' if tied else 'not tied with it'})")
    return "The comparison's tuned-rate runs ran " + "; ".join(where(b, m) for b, m in off) + "."


def _holds_words(name: str, check: dict) -> str:
    return _holds_verdict(name, check) + (
        f" (unresolved at seed {', '.join(map(str, check['unresolved_seeds']))}: a standard error at least the "
        "estimate itself, or none, where a jackknife replicate's |G|^2 was not positive; the mean rests on an "
        "unresolved value" + _resolved_only(check.get("resolved_only")) + ")" if check.get("unresolved_seeds") else "")


def _resolved_only(alone: dict | None) -> str:
    """critical_batch.prediction_check's resolved_only in words: the same rule on the resolved seeds."""
    if not alone:
        return ""
    return (f"; the resolved seeds alone (n = {alone['n']}) predict {_fmt(alone['mean'])}, which "
            f"{'holds' if alone['holds'] else 'does not hold'} by the same rule")


def _holds_verdict(name: str, check: dict) -> str:
    if check["holds"] is None:
        return (f"{name}: not decided (predicted {_fmt(check['mean'])}; the measured B_crit's interval lies beyond "
                "the batches measured, or no bootstrap ran)")
    measured = f"{_fmt(check['measured_low'])}-{_fmt(check['measured_high']) if check['measured_high'] else 'unbounded'}"
    normal = " (a normal interval: with this few seeds it covers less than 95%)" if check["n"] < 5 else ""
    return (f"{name}: {'**holds**' if check['holds'] else '**does not hold**'} (predicted {_fmt(check['mean'])}, +-1.96 SE{normal} "
            f"{_fmt(check['low'])}-{_fmt(check['high'])}, n = {check['n']} seed{'s' if check['n'] != 1 else ''}; "
            f"ratio {check['ratio']:.2f} to the measured point estimate; measured {measured})")


def _sharpness_key(rows: list[dict]) -> str | None:
    """The sharpness column the comparison reports: full space, eps 1e-3 if measured, else the
    largest epsilon measured (`results.sharpness_columns`' order)."""
    keys = [k for k in results_lib.sharpness_columns(rows, "phi")
            if results_lib.sharpness_setting(k, "phi")[0] == "full"]
    return keys[0] if keys else None


def _diverged_words(diverged: list[dict]) -> str:
    return (f"{len(diverged)} diverged run{'s' if len(diverged) != 1 else ''} ({', '.join(r['regime'] for r in diverged)}) "
            "left out: a diverged run is no minimiser, so no comparison uses it.")


def _compare_plain(gaps: list[dict], key: str | None, alone: str, diverged: list[dict]) -> list[str]:
    """The plain-words line of the fair comparison; `key`: the sharpness column (_sharpness_key);
    `diverged`: the comparison's diverged runs (compare_gaps leaves them out), counted and named."""
    if not gaps:
        return [f"- Generalisation once steps and learning rate are fair: no comparison. {_diverged_words(diverged)}"] \
            if diverged else []
    by_kind = {g["kind"]: g for g in gaps}
    parts = []
    for kind, g in by_kind.items():
        ratio = g.get(f"{key}_ratio") if key else None
        parts.append(f"{batchsize.COMPARE_KINDS[kind].split(' ', 1)[0]} {g['test_accuracy_difference']:+.2f} points"
                     + (f" (sharpness x{_fmt(ratio)})" if ratio is not None else ""))
    first = gaps[0]
    fixed, fair = by_kind.get("fixed"), by_kind.get("steps") or by_kind.get("tuned")
    verdict = ""
    if fixed and fair:
        shrink = fair["test_accuracy_difference"] - fixed["test_accuracy_difference"]
        verdict = (f" Giving the large batch a tuned rate{' and the same steps' if 'steps' in by_kind else ''} "
                   f"moved its gap by {shrink:+.2f} points.")
    return [f"- Generalisation once steps and learning rate are fair: test accuracy of batch {first['large_batch']} "
            f"minus batch {first['small_batch']}, {'; '.join(parts)}.{verdict}"
            + (f" {_diverged_words(diverged)}" if diverged else "")
            + f" {alone[0].upper() + alone[1:]}: differences under about a point are within seed-to-seed noise for "
            "these networks (the paper's Table 2 test-accuracy standard deviations over 5 seeds are 0.07-1.05 points)."]


def _compare_section(rows: list[dict], gaps: list[dict], config, unranked: list[int], h: str = "##") -> list[str]:
    """`unranked`: the study's batches where no rate reached the target, so (b)-(d) have no rate there."""
    study = config.batch_size_study
    lines = [f"{h} Generalisation once steps and learning rate are fair", ""]
    missing = [batchsize.COMPARE_KINDS[kind] for kind in batchsize.COMPARE_KINDS
               if (kind != "ghost" or study.compare_ghost_batch_size) and not any(r["kind"] == kind for r in rows)]
    if not rows:
        return lines + ["Not run: this profile sets no batch_size_study.compare_batch_sizes (the comparison of "
                        "(a) fixed epochs and learning rate, (b) the tuned rate, (c) the smallest batch's steps, "
                        "(d) ghost batch norm, with each minimiser's sharpness).", ""]
    key = _sharpness_key(rows)
    label = ", eps ".join(results_lib.sharpness_setting(key, "phi")) if key else None
    epochs = f"{study.compare_epochs} epoch{'s' if study.compare_epochs != 1 else ''}"
    lines += [f"At each compared batch: (a) {epochs} at the fixed learning rate "
              f"{config.learning_rate:g} (the paper's protocol, shortened); (b) as many epochs at the rate the "
              "study found best for that batch; (c) that rate for as many optimizer steps as the smallest batch "
              "takes in (b) (Hoffer et al. 2017's regime adaptation: \"train longer\"); (d) (c) with ghost batch "
              f"norm over virtual batches of {study.compare_ghost_batch_size} in training (Hoffer et al. 2017, "
              "section 4.1; evaluation and sharpness use the whole batch's statistics, as for every other run). "
              "Sharpness is Metric 2.1 on each minimiser with the profile's settings.", "",
              "| run | batch | lr | epochs | steps | train acc. (%) | test acc. (%) | train - test | "
              f"sharpness ({label or 'not measured'}) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {batchsize.COMPARE_KINDS[r['kind']]} | {r['batch_size']} | {_fmt(r['learning_rate'])} | {r['epochs']} | "
                     f"{r['steps']} | {r['train_accuracy']:.2f} | {r['test_accuracy']:.2f} | "
                     f"{r['generalization_gap']:.2f} | {_fmt(r.get(key) if key else None)} |"
                     + (" diverged" if r["diverged"] else ""))
    if gaps:
        lines += ["", "| regime | small batch: test acc. | large batch: test acc. | large - small | steps small / large | "
                  "sharpness large / small |", "|---|---|---|---|---|---|"]
        for g in gaps:
            ratio = g.get(f"{key}_ratio") if key else None
            lines.append(f"| {batchsize.COMPARE_KINDS[g['kind']]} | {g['small_test_accuracy']:.2f} (B={g['small_batch']}) | "
                         f"{g['large_test_accuracy']:.2f} (B={g['large_batch']}) | {g['test_accuracy_difference']:+.2f} | "
                         f"{g['small_steps']} / {g['large_steps']} | {_fmt(ratio) if ratio is not None else '-'} |")
        lines += ["", "For (c) and (d) the small batch's row is its own (b) run: the same steps at its tuned rate."]
    if diverged := [r for r in rows if r["diverged"]]:
        lines += ["", _diverged_words(diverged)[0].upper() + _diverged_words(diverged)[1:]]
    blocked = [b for b in study.compare_batch_sizes if b in unranked]
    if missing and blocked:
        lines += ["", f"Not run: {'; '.join(missing)}. They train at the study's best rate for each compared "
                  f"batch, and no rate reached the target at batch {', '.join(map(str, blocked))}: set a target "
                  "the runs can reach (target.value) or raise target.max_steps and epochs."]
    elif missing:
        lines += ["", f"Not finished here: {'; '.join(missing)} (`python -m replication batch-size CONFIG` "
                  "trains what is missing and resumes)."]
    if key is None:
        lines += ["", "No sharpness has been measured on these minimisers yet: `python -m replication batch-size "
                  "CONFIG` measures it after training."]
    return lines + [""]


def _nondeterministic(summary: dict) -> list[str]:
    """A limit to state when a run trained on a GPU without XLA's deterministic ops (env.json)."""
    envs = [storage.read_json(p.path / "env.json") for p in summary["points"] if (p.path / "env.json").exists()]
    if any(e.get("device", "").startswith("NVIDIA") and e.get("deterministic_ops") is False for e in envs):
        return ["GPU runs without XLA's deterministic ops (faster; a rerun's numbers differ in the last bits, "
                "and a best learning rate decided by a few steps can differ)"]
    return []


def _device(summary: dict) -> str:
    for point in summary["points"]:
        env = point.path / "env.json"
        if env.exists():
            record = storage.read_json(env)
            return f"{record.get('device', 'unknown device')}, {record.get('backend', '')}".strip(", ")
    return "unknown device"
