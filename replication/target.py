"""Stopping at a target: steps and examples to a result (Shallue et al. 2019, "Measuring the Effects
of Data Parallelism on Neural Network Training", section 3.2), for the batch-size study.

Beyond Keskar et al. (2017), who train for a fixed number of epochs. A run with `stopping: target`
measures `target.metric` on a fixed evaluation subset (the first `target.eval_subset` training
examples in data.subset's fixed order) every `target.every_steps` optimizer steps (or every
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
TRACE_FIELDS = ["step", "examples", "epoch", "train_loss", "train_error", "train_seconds", "reached"]


def trace_path(run_dir) -> Path:
    return Path(run_dir) / TRACE_FILE


def meets(target: config_lib.TargetConfig, row: dict) -> bool:
    """Whether a check's row meets the target (a finite value at or below target.value)."""
    value = float(row[target.metric])
    return math.isfinite(value) and value <= target.value


class Tracker:
    """The target checks of one run: its trace so far, and the callback that extends it."""

    def __init__(self, config: config_lib.Config, model, x_train, y_train, batch_size: int,
                 completed_epochs: int, rows: list[dict]):
        from replication import objective

        self.target = config.target
        self.batch_size = batch_size
        self.every = (max(1, round(config.target.every_examples / batch_size)) if config.target.every_examples
                      else config.target.every_steps)
        self.steps_per_epoch = -(-len(x_train) // batch_size)
        self.completed_steps = completed_epochs * self.steps_per_epoch
        # Rows past the last completed epoch were made by an epoch that is redone now.
        self.rows = [row for row in rows if int(row["step"]) <= self.completed_steps]
        inputs, labels = data.subset(x_train, y_train, min(config.target.eval_subset, len(x_train)))
        self.objective = objective.Objective(model, inputs, labels, config.eval_batch_size)

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
        self.rows.append(row)
        return bool(row["reached"]) or step >= self.target.max_steps or not math.isfinite(loss)

    def callback(self, epoch: int):
        """The Keras callback for epoch `epoch` (0-based): a check every `every_steps` steps
        (counted over the whole run) and at max_steps; stops model.fit at the first that must stop."""
        import keras

        tracker = self
        first_step = epoch * self.steps_per_epoch
        seconds = float(self.rows[-1]["train_seconds"]) if self.rows else 0.0

        class TargetCheck(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.tick = time.perf_counter()
                self.seconds = seconds

            def on_train_batch_end(self, batch, logs=None):
                step = first_step + batch + 1
                if step % tracker.every and step < tracker.target.max_steps:
                    return
                # Under JAX, `self.model` writes the trainer's state back into the variables first.
                model = self.model
                self.seconds += time.perf_counter() - self.tick
                if tracker.check(step, epoch + 1, self.seconds):
                    model.stop_training = True
                self.tick = time.perf_counter()

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
                "steps_run": self.steps_done(history_length), "checks": len(self.rows), "check_every_steps": self.every}
