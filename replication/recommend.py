"""`python -m replication recommend CONFIG`: a batch size, its learning rate and the steps it needs,
from one short run, before (or instead of) the batch-size study (issue 25 item 6). It follows
docs/noise-scale.md, "The recommendation", and uses its definitions unchanged.

1. The short run: one run at the study's reference batch b (experiments/batchsize.reference_batch)
   at multiplier 1 (the study's scaling rule's rate at b), written under `<results_dir>/recommend/`
   so it never meets the study's own runs. It stops at the loosest target (the first of target.milestones, else target.value) or at the
   budget: `fraction` (default 0.05) of the study's step budget, defined as
   target.max_steps x len(batch_sizes) x len(lr_multipliers) x len(seeds), the most the study's
   grid (extensions left out) can cost in optimizer steps; and never past target.max_steps.
2. The noise scale at its final point (its last check) under the "training" definition, whatever
   the profile's default (the docs fix it for the recommendation): B_noise (Definition 1) and B_adam
   (Definition 2, from the Adam state the run saved there), each with its jackknife SE.
3. B = B_adam rounded down to a power of two (Adam is what the protocol trains with); B_noise where
   B_adam is not resolved, said so; no recommendation where neither is. The learning rate: the
   study's scaling rule at B (Config.study_lr_factor). The steps expected: S = S_min (1 + B_crit / B)
   (McCandlish et al. 2018, eq. 2.11) with B_crit := the noise scale used and S_min = S_b / (1 +
   B_crit / b) from the short run's S_b steps to the target; not estimated where it did not reach
   it. The uncertainty: B_crit +- 1.96 SE and the batches its ends round down to, the estimator's
   interval only (no seeds, no targets).
4. The caveat: the critical batch grows as the loss falls (McCandlish et al., section 3), so a
   target tighter than the short run reached likely needs a larger batch; the recommendation is an
   estimate at the short run's loss with its own error, a bound in neither direction (the docs'
   step 4 called it a lower bound; the F1 studies did not bear that out: docs/noise-scale.md, "What
   the studies showed").

Writes `<results_dir>/recommend/recommendation.json` (every number, the short run, what it cost,
the environment). A rerun reuses the finished run and its noise result, so it costs seconds.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from replication import regimes, storage, target
from replication import config as config_lib
from replication.experiments import batchsize

FOLDER = "recommend"
RESULT_FILE = "recommendation.json"
DEFINITION = "training"  # docs/noise-scale.md, "The recommendation"
Z = 1.96                 # the interval B_crit +- 1.96 SE
BUDGET_RULE = ("the study's step budget is target.max_steps x len(batch_size_study.batch_sizes) x "
               "len(batch_size_study.lr_multipliers) x len(seeds): the most the study's grid (extensions left "
               "out) can cost in optimizer steps; the short run takes at most the given fraction of it, and "
               "at most target.max_steps")
CAVEAT = ("the critical batch grows as the loss falls (McCandlish et al. 2018, section 3; it did on both F1 "
          "studies), so a target tighter than the short run reached likely needs a larger batch than the short "
          "run's loss does; the recommended batch is an estimate at that loss with an error of its own, a bound "
          "in neither direction (on F1 MNIST it lay above the tighter target's measured critical batch: "
          "docs/noise-scale.md, 'What the studies showed')")


# Pure functions -----------------------------------------------------------------------------------
def study_steps(config: config_lib.Config) -> int:
    """The study's step budget (BUDGET_RULE)."""
    study = config.batch_size_study
    return config.target.max_steps * len(study.batch_sizes) * len(study.lr_multipliers) * len(config.seeds)


def budget_steps(config: config_lib.Config, fraction: float) -> int:
    """The short run's step cap: `fraction` of study_steps rounded down, at most target.max_steps."""
    if not 0 < fraction <= 1:  # NaN fails this too
        raise config_lib.ConfigError(f"--budget {fraction!r} is not a fraction in (0, 1]: use e.g. 0.05 "
                                     "(5% of the study's step budget)")
    steps = min(config.target.max_steps, math.floor(fraction * study_steps(config)))
    if steps < 1:
        raise config_lib.ConfigError(f"--budget {fraction:g} of the study's step budget ({study_steps(config)} "
                                     "steps) is less than one step: raise --budget")
    return steps


def power_of_two_floor(value: float) -> int:
    """The largest power of two <= value; 1 for a value below 1 (no batch is smaller)."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    if value < 1:
        return 1
    _, exponent = math.frexp(value)  # value = m 2^exponent, 0.5 <= m < 1: exact, unlike log2
    return 2 ** (exponent - 1)


def expected_steps(steps: float, batch: int, b_crit: float, at: int) -> tuple[float, float]:
    """(S_min, S at batch `at`) of S = S_min (1 + B_crit / B) (McCandlish et al. 2018, eq. 2.11),
    S_min taken from `steps` to the target at `batch`."""
    s_min = steps / (1 + b_crit / batch)
    return s_min, s_min * (1 + b_crit / at)


def predictor(b_adam: float | None, b_noise: float | None) -> str | None:
    """Which noise scale stands for B_crit: B_adam where resolved, else B_noise, else none."""
    return "B_adam" if b_adam is not None else "B_noise" if b_noise is not None else None


def interval(b_crit: float, standard_error: float | None) -> dict | None:
    """B_crit +- 1.96 SE and the power-of-two batches its ends round down to (None: no SE)."""
    if standard_error is None:
        return None
    low, high = b_crit - Z * standard_error, b_crit + Z * standard_error
    return {"low": low, "high": high, "batches": [power_of_two_floor(low), power_of_two_floor(high)]}


# The command --------------------------------------------------------------------------------------
def check(config: config_lib.Config, fraction: float) -> int:
    """ConfigError (one line) unless `config` has a study to stand for; returns the budget in steps.
    Needs no Keras: the CLI calls it first."""
    study = config.batch_size_study
    if not study.batch_sizes:
        raise config_lib.ConfigError(f"profile {config.profile} has no batch_size_study.batch_sizes: recommend "
                                     "stands for a batch-size study: list its batch sizes")
    if config.stopping != "target":
        raise config_lib.ConfigError(f"profile {config.profile} has stopping {config.stopping!r}: recommend's "
                                     "short run stops at the study's target: set stopping: target and a target.value")
    if 1.0 not in study.multipliers():
        raise config_lib.ConfigError(f"batch_size_study.lr_multipliers {list(study.lr_multipliers)} cannot reach "
                                     "multiplier 1, the scaling rule's own rate that recommend trains: add 1")
    return budget_steps(config, fraction)


def recommend(config_path, overrides=(), fraction: float = 0.05, seed: int | None = None, log=None) -> dict:
    """Train (or reuse) the short run, measure (or reuse) its noise scale, and write and return the
    recommendation (module docstring)."""
    from replication import rundir, train
    from replication.analysis import unseen_inputs
    from replication.measure import noise

    log = log or sys.stderr
    config = config_lib.load(config_path, overrides)
    budget = check(config, fraction)
    seed = config.seeds[0] if seed is None else seed
    folder = Path(config.results_dir) / FOLDER
    # The same config but for where it writes, its step cap and the definition the docs fix.
    # It stops at the loosest target (the first milestone, else target.value): the docs' short run.
    loosest = config.target.values()[0]
    short = config_lib.load(config_path, [*overrides, f"results_dir={json.dumps(str(folder))}",
                                          f"target.max_steps={budget}", f"sweep.noise_definition={DEFINITION}",
                                          f"target.value={loosest!r}", "target.milestones=[]"])
    batch = batchsize.reference_batch(config)
    spec = regimes.study(batch, 1.0)
    run = train.train(short, spec, seed, log)
    record = noise.noise_scale(run, "final", log=log, definition=DEFINITION)
    measured = _checked_noise(record, noise.result_path(run, "final"), _fix(run))
    # Inputs the short run never saw lit, lit in a measured batch: B_adam's P is 1/epsilon there.
    unseen = unseen_inputs.for_record(short, record) if "adam_step" in (record.get("adam") or {}) else None
    progress = _checked_run(run)
    study = config.batch_size_study
    result = {
        "file": str(folder / RESULT_FILE), "config": str(config_path), "overrides": list(overrides),
        "profile": config.profile, "network": config.network, "dataset": config.dataset, "seed": seed,
        "definition": DEFINITION, "definitions_doc": noise.DEFINITIONS_DOC,
        "budget": {"fraction": fraction, "study_steps": study_steps(config), "max_steps": budget, "rule": BUDGET_RULE},
        "grid": {"max_steps": config.target.max_steps, "batch_sizes": len(study.batch_sizes),
                 "lr_multipliers": len(study.lr_multipliers), "seeds": len(config.seeds),
                 "lr_scaling": study.lr_scaling},
        "short_run": {"path": str(run), "batch_size": batch, "multiplier": 1.0,
                      "learning_rate": short.for_regime(spec).learning_rate,
                      "target": {"metric": config.target.metric, "value": loosest}, **progress},
        "noise": measured,
        **advise(config, measured, batch, progress["steps"]),
        "steps_note": None if progress["reached"] else
        "not estimated: the short run did not reach the target within its budget",
        "interval_note": f"B_crit +- {Z} jackknife SE: the estimator's interval only (no seeds, no targets)",
        "caveat": CAVEAT,
        "unseen_inputs": unseen,
        "cost_seconds": round(progress["train_seconds"] + measured["noise_seconds"], 3),
        "environment": rundir.environment(seed),
    }
    storage.atomic_write_json(folder / RESULT_FILE, result)
    return result


def advise(config: config_lib.Config, measured: dict, batch: int, steps: int | None) -> dict:
    """{"recommendation": the batch, its rate, the steps expected and the interval (None where
    neither noise scale is resolved), "no_recommendation": why not (None where there is one)}, from
    the noise scales `measured` (_checked_noise) and the short run's `steps` to the target at `batch`
    (None: not reached, so no steps are estimated)."""
    used = predictor(measured["b_adam"], measured["b_noise"])
    if used is None:
        return {"recommendation": None, "no_recommendation": "neither noise scale is resolved (B_noise: "
                f"{measured['b_noise_note']}; B_adam: {measured['b_adam_note'] or 'not measured'})"}
    name = "b_adam" if used == "B_adam" else "b_noise"
    b_crit, standard_error = measured[name], measured[f"{name}_standard_error"]
    size = power_of_two_floor(b_crit)
    s_min, expected = expected_steps(steps, batch, b_crit, size) if steps is not None else (None, None)
    return {"recommendation": {
        "batch_size": size, "from": used, "b_crit": b_crit, "b_crit_standard_error": standard_error,
        "learning_rate": config.learning_rate * config.study_lr_factor(regimes.study(size, 1.0)),
        "lr_scaling": config.batch_size_study.lr_scaling, "interval": interval(b_crit, standard_error),
        "s_min": s_min, "steps_expected": expected}, "no_recommendation": None}


def _fix(run: Path) -> str:
    return f"delete {run} and rerun `python -m replication recommend CONFIG`, which makes it again"


def _checked_run(run: Path) -> dict:
    """The short run's progress from its files, every number checked: whether and when it reached
    the target, the steps it ran, and its training time summed over history.csv's epochs
    (evaluations included), as the study's reports count each of their runs."""
    path, history_path = run / "metrics.json", run / "history.csv"
    record = target.check_summary(storage.read_json(path).get("target"), path, _fix(run))
    target.check_examples(record, path, _fix(run))
    history = storage.read_csv(history_path)
    return {"reached": record["reached"], "steps": record.get("steps"), "steps_run": record["steps_run"],
            "train_seconds": sum(target.number(row.get("seconds"), history_path, f"row {i + 1} seconds", _fix(run),
                                               text=True) for i, row in enumerate(history))}


def _checked_noise(record: dict, path: Path, fix: str) -> dict:
    """B_noise and B_adam (record['adam']) with their standard errors and notes, and the
    measurement's wall_seconds, from a noise record, every number checked."""
    adam = record.get("adam") or {}  # a diverged run's record has no Adam part

    def number(value, field, optional=True):
        return target.number(value, path, field, fix, optional=optional)

    return {"path": str(path), "point": "final",
            "b_noise": number(record.get("b_simple"), "b_simple"),
            "b_noise_standard_error": number(record.get("b_simple_standard_error"), "b_simple_standard_error"),
            "b_noise_note": record.get("note"),
            "b_adam": number(adam.get("b_simple"), "adam.b_simple"),
            "b_adam_standard_error": number(adam.get("b_simple_standard_error"), "adam.b_simple_standard_error"),
            "b_adam_note": adam.get("note"),
            "noise_seconds": number(record.get("wall_seconds"), "wall_seconds", optional=False)}


def unseen_warning(unseen: dict | None) -> str | None:
    """Words for measured batches lighting inputs the short run never trained on (analysis/unseen_inputs),
    None where none does (or nothing was counted: a record made before the count)."""
    if not unseen or not unseen["measured_batches_with_one"]:
        return None
    return (f"{unseen['measured_batches_with_one']} of the measured batches hold {unseen['measured_examples_with_one']} "
            f"example(s) lighting {unseen['of_them_nonzero_in_measured_batches']} input feature(s) that no example the "
            "short run trained on had lit; in a dense first layer their weights have Adam's v = 0, so P = 1/epsilon "
            "there and B_adam may rest on them (docs/noise-scale.md, 'Where it is built'); after one whole epoch no "
            "measured example (they are training examples) could light such a feature")


def summary(result: dict) -> str:
    """The recommendation in a few lines, for people."""
    run, noise_part, budget, best = result["short_run"], result["noise"], result["budget"], result["recommendation"]
    goal = run["target"]

    def value(name, label):
        number, error = noise_part[name], noise_part[f"{name}_standard_error"]
        if number is None:
            return f"{label} {noise_part[f'{name}_note']}"
        return f"{label} = {number:.4g}" + (f" ± {error:.2g}" if error is not None else " (no standard error)")

    ended = f"reached {goal['metric']} <= {goal['value']:g} at step {run['steps']}" if run["reached"] else \
        f"did not reach {goal['metric']} <= {goal['value']:g} in its {run['steps_run']} steps"
    grid = result["grid"]
    lines = [f"short run: batch {run['batch_size']} at learning rate {run['learning_rate']:.4g} (the "
             f"{grid['lr_scaling']} rule's), at most {budget['max_steps']} steps: {budget['fraction']:g} of the "
             f"study's step budget {budget['study_steps']} = target.max_steps {grid['max_steps']} x "
             f"{grid['batch_sizes']} batch sizes x {grid['lr_multipliers']} rate multipliers x {grid['seeds']} "
             f"seed(s), the most its grid can cost in optimizer steps; {ended}: {run['path']}",
             f"noise scale at its last check ({result['definition']} definition, {result['definitions_doc']}): "
             f"{value('b_adam', 'B_adam')}; {value('b_noise', 'B_noise')}"]
    if best is None:
        lines.append(f"no recommendation: {result['no_recommendation']}")
    else:
        fallback = "" if best["from"] == "B_adam" else " (B_adam is not resolved: B_noise instead)"
        lines.append(f"recommended batch: {best['batch_size']} ({best['from']} {best['b_crit']:.4g} rounded down to "
                     f"a power of two, at least 1{fallback}); learning rate {best['learning_rate']:.4g} (the "
                     f"{best['lr_scaling']} rule at that batch)")
        lines.append(f"steps expected: {best['steps_expected']:.3g} (S = S_min (1 + B_crit / B), McCandlish et al. "
                     f"2018 eq. 2.11, S_min = {best['s_min']:.3g} from the short run)" if run["reached"] else
                     f"steps expected: {result['steps_note']}")
        span = best["interval"]
        lines.append("uncertainty: no standard error" if span is None else
                     f"uncertainty: {best['from']} {span['low']:.4g} to {span['high']:.4g} "
                     f"({result['interval_note']}): batches {span['batches'][0]} to {span['batches'][1]}")
    lines.append(f"caveat: {result['caveat']}")
    if unseen_warning(result.get("unseen_inputs")):
        lines.append(f"warning: {unseen_warning(result['unseen_inputs'])}")
    lines.append(f"cost: {run['train_seconds']:.1f} s training + {noise_part['noise_seconds']:.1f} s noise scale "
                 f"-> {result['file']}")
    return "\n".join(lines)
