"""Stopping at a target: steps and examples to a result (Shallue et al. 2019, "Measuring the Effects
of Data Parallelism on Neural Network Training", section 3.2), for the batch-size study.

Beyond Keskar et al. (2017), who train for a fixed number of epochs. A run with `stopping: target`
measures `target.metric` on a fixed evaluation subset (the first `target.eval_subset` training
examples in data.measurement_subset's fixed order) every `target.every_steps` optimizer steps (or every
`target.every_examples` / batch steps, at least 1), inside
model.fit (a Keras callback), and stops at the first check that meets `target.value`, or at
`target.max_steps` steps (not reached). Every check is a row of `<run>/target.csv`:

    step, examples (step x batch), epoch, train_loss, train_error (%), train_seconds, reached

`train_seconds` is the training time up to that check without the checks' own evaluations, so
time to target is the optimizer's, not the measurement's.

Resuming: the rows are written at each epoch end, before history.csv (whose length names the
checkpoint). A resumed run drops rows past its last completed epoch and redoes that epoch from
its checkpoint; the epoch's shuffle and dropout masks come from (seed, epoch) alone
(train._train_epoch), so the checks of the redone epoch are the ones an uninterrupted run makes.
Only `train_seconds` of a resumed run counts the time of the process that finished each epoch.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from replication import config as config_lib
from replication import data, storage

TRACE_FILE = "target.csv"
TRACE_FIELDS = ["step", "examples", "epoch", "train_loss", "train_error", "train_seconds", "reached", "eval_examples"]


def trace_path(run_dir) -> Path:
    return Path(run_dir) / TRACE_FILE


def meets(target: config_lib.TargetConfig, row: dict) -> bool:
    """Whether a check's row meets the target (a finite value at or below target.value)."""
    value = float(row[target.metric])
    return math.isfinite(value) and value <= target.value


def first_meeting(rows: list[dict], metric: str, value: float) -> dict | None:
    """The first check whose `metric` is finite and at or below `value` (None: never met)."""
    for row in rows:
        measured = float(row[metric])
        if math.isfinite(measured) and measured <= value:
            return row
    return None


def milestone_path(run_dir, value: float, suffix: str = ".weights.h5") -> Path:
    """Where a run keeps its weights (suffix .weights.h5) and Adam's state (.adam.npz) at the first
    check meeting the milestone `value` (target.milestones)."""
    return Path(run_dir) / "targets" / f"{value:g}{suffix}"


def check_interval(target: config_lib.TargetConfig, batch_size: int) -> int:
    """Optimizer steps between two checks: every_examples / batch (rounded, at least 1) when
    every_examples is set, so every batch is checked at about the same examples; else every_steps."""
    if target.every_examples:
        return max(1, round(target.every_examples / batch_size))
    return target.every_steps


# Checking the numbers of a finished run's files before use --------------------------------------
STUDY_FIX = "delete {run} and rerun `python -m replication batch-size CONFIG`, which makes it again"


def number(value, path, field: str, fix: str, *, integer: bool = False, low: float = 0.0,
           high: float = math.inf, above: bool = False, optional: bool = False, text: bool = False):
    """`value` read from `path` (a JSON value, or with `text` a CSV cell), checked before use: a
    finite number in [low, high] (> low with `above`), an integer if `integer`, None only if
    `optional`. StorageError naming the file, the field, the rule and `fix` otherwise."""
    def bad(rule):
        return storage.StorageError(f"{path}: {field} is {value!r}, {rule} (edited by hand, or damaged): {fix}")

    if value is None or value == "":
        if optional:
            return None
        raise bad("a number is needed")
    if isinstance(value, bool) or not isinstance(value, (int, float, str) if text else (int, float)):
        raise bad("not a number")
    try:
        parsed = int(value) if integer and isinstance(value, str) else float(value) if isinstance(value, str) else value
    except ValueError:
        raise bad("not an integer" if integer else "not a number") from None
    if integer and not isinstance(parsed, int):
        raise bad("not an integer")
    if not math.isfinite(parsed):
        raise bad("not finite")
    if parsed < low or (above and parsed == low) or parsed > high:
        interval = f"{'(' if above else '['}{low:g}, {high:g}]" if math.isfinite(high) else \
            f"{'>' if above else '>='} {low:g}"
        raise bad(f"must be {interval}")
    return parsed


def check_examples(summary: dict, path, fix: str) -> None:
    """Refuse a run whose target checks measured other examples than a run made now: before
    data.MEASUREMENT_SUBSET, seed 0's checks measured the examples its first epoch began with, so
    its steps to a target met in that epoch are biased low and not comparable with a run of today."""
    if summary.get("eval_examples") != data.MEASUREMENT_SUBSET:
        measured = summary.get("eval_examples") or ("the examples drawn before data.MEASUREMENT_SUBSET "
                                                     "(which seed 0 trained on first)")
        raise storage.StorageError(f"{path}: its target checks were measured on {measured}, not on "
                                   f"{data.MEASUREMENT_SUBSET}'s, so its steps to target cannot be set beside a run "
                                   f"made now: {fix}")


def check_summary(summary, path, fix: str | None = None) -> dict:
    """metrics.json's `target` block (Tracker.summary) of the run in path's folder, checked: steps
    and examples a positive integer where the target was reached and null where not, steps_run a
    positive integer, check_every_steps a positive integer (or absent, in runs that predate it),
    train_seconds >= 0. Returns it; StorageError (one line: file, field, fix: `fix`, else the
    study's rerun) otherwise."""
    path = Path(path)
    fix = fix or STUDY_FIX.format(run=path.parent)
    if not isinstance(summary, dict) or not isinstance(summary.get("reached"), bool):
        raise storage.StorageError(f"{path}: its 'target' record has no reached: true/false (edited by hand, "
                                   f"or damaged): {fix}")
    reached = summary["reached"]
    for key in ("steps", "examples"):
        value = number(summary.get(key), path, f"target.{key}", fix, integer=True, low=0, above=True,
                       optional=not reached)
        if not reached and value is not None:
            raise storage.StorageError(f"{path}: target.{key} is {value!r} but target.reached is false "
                                       f"(edited by hand, or damaged): {fix}")
    steps_run = number(summary.get("steps_run"), path, "target.steps_run", fix, integer=True, low=0, above=True)
    if reached and summary["steps"] > steps_run:
        raise storage.StorageError(f"{path}: target.steps {summary['steps']} is more than target.steps_run "
                                   f"{steps_run} (edited by hand, or damaged): {fix}")
    number(summary.get("check_every_steps"), path, "target.check_every_steps", fix, integer=True, low=0,
           above=True, optional=True)
    number(summary.get("train_seconds"), path, "target.train_seconds", fix, optional=not reached)
    targets = summary.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
        raise storage.StorageError(f"{path}: target.targets is not a list of records (edited by hand, or damaged): {fix}")
    previous = 0
    for index, record in enumerate(targets):
        where = f"target.targets[{index}]"
        number(record.get("value"), path, f"{where}.value", fix, above=True)
        met = record.get("steps") is not None
        steps = number(record.get("steps"), path, f"{where}.steps", fix, integer=True, low=0, above=True,
                       optional=True)
        number(record.get("examples"), path, f"{where}.examples", fix, integer=True, low=0, above=True,
               optional=not met)
        number(record.get("train_seconds"), path, f"{where}.train_seconds", fix, optional=not met)
        # Looser targets come first, so each is met no later than the next; the last is the run's own.
        if met and (steps < previous or steps > steps_run):
            raise storage.StorageError(f"{path}: {where}.steps {steps} is out of order or past target.steps_run "
                                       f"{steps_run} (edited by hand, or damaged): {fix}")
        previous = steps if met else math.inf
    values = [record["value"] for record in targets]
    if values and (values != sorted(values, reverse=True) or len(set(values)) < len(values)
                   or values[-1] != summary.get("value")):
        raise storage.StorageError(f"{path}: target.targets' values {values} are not decreasing to target.value "
                                   f"{summary.get('value')!r} (edited by hand, or damaged): {fix}")
    if targets and targets[-1].get("steps") != summary.get("steps"):
        raise storage.StorageError(f"{path}: the last of target.targets (the run's own target) has steps "
                                   f"{targets[-1].get('steps')!r}, not target.steps {summary.get('steps')!r} (edited by "
                                   f"hand, or damaged): {fix}")
    return summary


def read_trace(run_dir) -> list[dict]:
    """The checks of a finished run (target.csv), each number checked before use: step a positive
    integer, rising; train_seconds >= 0; train_loss >= 0 and train_error in [0, 100], where a
    non-finite value is allowed on the last row alone (the check that saw the run diverge stops it).
    StorageError (one line: file, row, field, fix) otherwise. [] if the run has no trace."""
    path = trace_path(run_dir)
    if not path.exists():
        return []
    rows = storage.read_csv(path)
    fix = STUDY_FIX.format(run=Path(run_dir))
    previous = 0
    for index, row in enumerate(rows):
        where, last = f"row {index + 1}", index == len(rows) - 1
        step = number(row["step"], path, f"{where} step", fix, integer=True, low=0, above=True, text=True)
        if step <= previous:
            raise storage.StorageError(f"{path}: {where} step {step} does not come after the previous "
                                       f"check's {previous} (edited by hand, or damaged): {fix}")
        previous = step
        number(row["train_seconds"], path, f"{where} train_seconds", fix, text=True)
        number(row["epoch"], path, f"{where} epoch", fix, integer=True, low=0, above=True, text=True)
        for field, high in (("train_loss", math.inf), ("train_error", 100.0)):
            if not (last and row[field].strip().lower() in ("nan", "inf", "-inf")):
                number(row[field], path, f"{where} {field}", fix, high=high, text=True)
    return rows


def read_resumed_trace(run_dir) -> list[dict]:
    """The checks a run being resumed made so far ([] if none). A check made on other examples than
    data.MEASUREMENT_SUBSET's (a run begun before it) would mix two eval sets in one trace, and its
    summary would name only the new one: refused, one line naming the fix."""
    path = trace_path(run_dir)
    rows = storage.read_csv(path) if path.exists() else []
    if any(row.get("eval_examples") != data.MEASUREMENT_SUBSET for row in rows):
        raise storage.StorageError(f"{path}: its checks so far measured the examples drawn before "
                                   f"data.MEASUREMENT_SUBSET, which a resumed run would mix with the new ones: delete "
                                   f"{Path(run_dir)} and train it again")
    return rows


class Tracker:
    """The target checks of one run: its trace so far, and the callback that extends it."""

    def __init__(self, config: config_lib.Config, model, x_train, y_train, batch_size: int,
                 completed_epochs: int, rows: list[dict]):
        from replication import objective

        self.target = config.target
        self.batch_size = batch_size
        self.every = check_interval(config.target, batch_size)
        self.steps_per_epoch = -(-len(x_train) // batch_size)
        self.completed_steps = completed_epochs * self.steps_per_epoch
        # Rows past the last completed epoch were made by an epoch that is redone now.
        self.rows = [row for row in rows if int(row["step"]) <= self.completed_steps]
        # Training seconds so far, every step timed (the callback adds each epoch's steps after its
        # last check at the epoch's end); a resumed run starts from its last check's, so the steps of
        # the epoch before the resume that came after that check go untimed.
        self.seconds = float(self.rows[-1]["train_seconds"]) if self.rows else 0.0
        inputs, labels = data.measurement_subset(x_train, y_train, min(config.target.eval_subset, len(x_train)))
        self.objective = objective.Objective(model, inputs, labels, config.eval_batch_size)
        # Called with a milestone's value at the first check meeting it, weights then current
        # (train keeps them and Adam's state there); set by the trainer once its session exists.
        self.on_milestone = None

    @property
    def reached(self) -> dict | None:
        """The first row that met the target (always the last row: the run stops there), or None."""
        return self.rows[-1] if self.rows and meets(self.target, self.rows[-1]) else None

    def steps_done(self, history_length: int) -> int:
        """Optimizer steps taken: the last check if the run stopped there, else whole epochs."""
        whole = history_length * self.steps_per_epoch
        return min(whole, int(self.rows[-1]["step"])) if self.reached or self._at_budget() else whole

    def _at_budget(self) -> bool:
        return bool(self.rows) and int(self.rows[-1]["step"]) >= self.target.max_steps

    def out_of_budget(self, history_length: int) -> bool:
        return self._at_budget() or history_length * self.steps_per_epoch >= self.target.max_steps

    def check(self, step: int, epoch: int, seconds: float) -> bool:
        """Measure the metric now (at `step`), append the row; True if the run must stop."""
        loss, accuracy = self.objective.evaluate()
        row = {"step": step, "examples": step * self.batch_size, "epoch": epoch, "train_loss": loss,
               "train_error": 100 * (1 - accuracy), "train_seconds": round(seconds, 3)}
        row["reached"] = int(meets(self.target, row))
        row["eval_examples"] = data.MEASUREMENT_SUBSET  # read_resumed_trace: a resume keeps like rows only
        met_before = {m for m in self.target.milestones if first_meeting(self.rows, self.target.metric, m)}
        self.rows.append(row)
        for milestone in self.target.milestones:
            if milestone not in met_before and first_meeting([row], self.target.metric, milestone) and self.on_milestone:
                self.on_milestone(milestone)
        return bool(row["reached"]) or step >= self.target.max_steps or not math.isfinite(loss)

    def callback(self, epoch: int):
        """The Keras callback for epoch `epoch` (0-based): a check every `every_steps` steps
        (counted over the whole run) and at max_steps; stops model.fit at the first that must stop."""
        import keras

        tracker = self
        first_step = epoch * self.steps_per_epoch

        class TargetCheck(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.tick = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                step = first_step + batch + 1
                if step % tracker.every and step < tracker.target.max_steps:
                    return
                # Under JAX, `self.model` writes the trainer's state back into the variables first.
                model = self.model
                tracker.seconds += time.perf_counter() - self.tick
                if tracker.check(step, epoch + 1, tracker.seconds):
                    model.stop_training = True
                self.tick = time.perf_counter()  # the check's own evaluation is not training time

            def on_train_end(self, logs=None):
                # The epoch's steps after its last check count too (before 2026-12-07 they did not:
                # batchsize_report.seconds_per_step reads within-epoch intervals for that reason).
                tracker.seconds += time.perf_counter() - self.tick

        return TargetCheck()

    def write(self, run_dir) -> None:
        storage.atomic_write_csv(trace_path(run_dir), self.rows, TRACE_FIELDS)

    def summary(self, history_length: int) -> dict:
        """What metrics.json records: the target, whether and when it was reached."""
        reached = self.reached
        return {**{key: getattr(self.target, key) for key in ("metric", "value", "every_steps", "every_examples",
                                                               "eval_subset", "max_steps")},
                "reached": reached is not None,
                "steps": int(reached["step"]) if reached else None,
                "examples": int(reached["examples"]) if reached else None,
                "train_seconds": float(reached["train_seconds"]) if reached else None,
                "steps_run": self.steps_done(history_length), "checks": len(self.rows), "check_every_steps": self.every,
                # Which examples the checks measured (data.measurement_subset): check_examples.
                "eval_examples": data.MEASUREMENT_SUBSET,
                **({"targets": self.targets()} if self.target.milestones else {})}

    def targets(self) -> list[dict]:
        """Steps, examples and training seconds to each of target.values() (loosest first; None
        where not met), from the checks."""
        out = []
        for value in self.target.values():
            row = first_meeting(self.rows, self.target.metric, value)
            out.append({"value": value, "steps": int(row["step"]) if row else None,
                        "examples": int(row["examples"]) if row else None,
                        "train_seconds": float(row["train_seconds"]) if row else None})
        return out
