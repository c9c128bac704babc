"""Inputs a run had never seen when its Adam-preconditioned noise scale was measured.

Definition 2 of docs/noise-scale.md preconditions with P = 1 / (sqrt(v_hat) + epsilon), v_hat the
optimizer's own second moment. A first-layer weight of a dense network (F1, F2) whose input feature was
zero in every example trained on so far has had a zero gradient at every step, so v = 0 exactly and
P = 1 / epsilon (1e8): if the measured mini-batches hold an example where that feature is not zero,
its gradient enters tr(P Sigma P) scaled by 1e8 (one such batch among K can dominate the estimate).
This counts, for each training-definition noise record of a folder that has an Adam value, the
features zero in every example its run had trained on by the measured step, and how many of them the
measured batches light. For a convolutional first layer (C1-C4) the count says nothing of v: its
weights are shared across pixels. Noted after the F1 studies ran (docs/noise-scale.md, "Where it
is built"); the definitions are unchanged.

`python -m replication unseen-inputs RESULTS_DIR` writes RESULTS_DIR/tables/unseen_inputs.csv.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from replication import data, rundir, storage, train
from replication import config as config_lib
from replication.analysis import results as results_lib
from replication.experiments import batchsize
from replication.measure import noise


def examples_trained(seed: int, batch: int, steps: int, num_train: int) -> np.ndarray:
    """The indices of the training examples a run of `seed` at `batch` had trained on after `steps`
    steps (train.epoch_order per epoch; each epoch ends with one smaller batch)."""
    per_epoch = batchsize.steps_per_epoch(num_train, batch)
    seen = [train.epoch_order(seed, epoch, num_train) for epoch in range(steps // per_epoch)]
    left = steps % per_epoch
    if left:
        seen.append(train.epoch_order(seed, steps // per_epoch, num_train)[:left * batch])
    return np.unique(np.concatenate(seen)) if seen else np.array([], int)


def count(x_train: np.ndarray, measured: np.ndarray, trained: np.ndarray, batches: list[np.ndarray]) -> dict:
    """Features zero in every trained example, and how the measured batches light them (an example
    drawn into several batches counts once in measured_examples_with_one)."""
    flat, inputs = x_train.reshape(len(x_train), -1), measured.reshape(len(measured), -1)
    never = ~(flat[trained] != 0).any(axis=0)
    lights = (inputs[:, never] != 0).any(axis=1)  # per measured example
    used = np.unique(np.concatenate(batches)) if batches else np.array([], int)
    return {"features_never_nonzero": int(never.sum()),
            "of_them_nonzero_in_measured_batches": int((inputs[used][:, never] != 0).any(axis=0).sum()),
            "measured_batches_with_one": int(sum(lights[index].any() for index in batches)),
            "measured_examples_with_one": int(lights[used].sum())}


def for_record(config: config_lib.Config, record: dict, train_arrays=None) -> dict:
    """`count` for one noise record (measure/noise.noise_scale's) with an Adam value, of a run made by
    `config`: its training set (`train_arrays` (x_train, y_train) where the caller loaded it already),
    the examples it had trained on by the measured step, the measured batches."""
    settings = record["settings"]
    x_train, y_train = train_arrays or rundir.load_arrays(config)[1:3]
    measured, _ = data.measurement_subset(x_train, y_train, settings["subset"])  # rundir.training_examples, loaded once
    trained = examples_trained(record["run_seed"], record["run_batch_size"], record["adam"]["adam_step"], len(x_train))
    batches = noise.batch_indices(len(measured), settings["batch_size"], settings["batches"], settings["seed"])
    return count(x_train, measured, trained, batches)


def table(results_dir) -> list[dict]:
    """One row per training-definition noise record with an Adam value (a seed's point along its run)."""
    loaded = results_lib.load(results_dir)
    rows, arrays = [], {}  # the training set once per dataset and subset, not once per record
    for run in loaded.runs:
        for record in (m.record for m in run.noise.values()):
            adam, settings = record.get("adam") or {}, record["settings"]
            if record.get("definition") != "training" or "adam_step" not in adam:
                continue  # no optimizer state measured (an unresolved B_adam still has one: counted)
            config = rundir.run_config(run.path, run.metrics)  # only for a run with something to count
            key = (config.dataset, str(config.data_dir), config.train_subset, config.test_subset)  # load_arrays' inputs
            if key not in arrays:
                arrays[key] = rundir.load_arrays(config)[1:3]
            rows.append({"run": str(run.path), "seed": record["run_seed"], "point": settings["point"],
                         "step": adam["adam_step"], "adam_b_simple": adam["b_simple"],
                         "adam_b_simple_se": adam["b_simple_standard_error"], **for_record(config, record, arrays[key])})
    return sorted(rows, key=lambda r: (r["run"], r["step"]))


def write(results_dir) -> Path:
    """RESULTS_DIR/tables/unseen_inputs.csv from `table`."""
    rows = table(results_dir)
    path = Path(results_dir) / "tables" / "unseen_inputs.csv"
    storage.atomic_write_csv(path, rows, list(rows[0]) if rows else ["run"])
    return path
