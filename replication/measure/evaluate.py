"""One saved run evaluated on the backend of this process, for the cross-backend check.

`python -m replication evaluate RUN_DIR` computes, at the run's final weights, f(x) and accuracy on
the training set (the sharpness examples) and the test set, |grad f(x)|, and phi (Metric 2.1, full
space, eps 1e-3, the run's sharpness settings), writes `RUN_DIR/evaluations/<backend>.json`, and
prints a table of every backend evaluated so far with the differences. Run it once under
KERAS_BACKEND=tensorflow and once under KERAS_BACKEND=jax: the same weights and data should give
the same numbers to float32 tolerance (the README's cross-backend table is this output).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from replication import backend, storage

EPSILON = 1e-3
FIELDS = (("train_loss", "f(x) train"), ("train_accuracy", "train acc %"), ("test_loss", "f test"),
          ("test_accuracy", "test acc %"), ("gradient_norm", "|grad f(x)|"), ("phi", "phi eps 1e-3 (full)"))


def evaluate(run_dir) -> dict:
    """Evaluate the finished run at `run_dir` on this backend; write and return the record."""
    from replication import data, objective, rundir
    from replication.measure import sharpness

    run = rundir.load_run(run_dir)
    config = run.config
    _, x_train, y_train, x_test, y_test = rundir.load_arrays(config)
    inputs, labels = data.measurement_subset(x_train, y_train, config.sharpness.subset)
    tick = time.time()
    train_f = objective.Objective(run.model, inputs, labels, config.eval_batch_size)
    train_loss, train_accuracy = train_f.evaluate()
    _, gradient = train_f.value_and_gradient(train_f.get_flat())
    test_loss, test_accuracy = objective.Objective(run.model, x_test, y_test, config.eval_batch_size).evaluate()
    cfg = config.sharpness
    solve = sharpness.measure(run.model, inputs, labels, config.eval_batch_size, EPSILON, "full",
                              iterations=cfg.iterations, start=cfg.start, restarts=cfg.restarts, seed=cfg.seed,
                              objective=train_f)  # its compiled passes, already traced above
    record = {"run": str(run.path), "weights_sha256": storage.sha256_file(run.path / "final.weights.h5"),
              "train_examples": len(inputs), "test_examples": len(x_test),
              "train_loss": train_loss, "train_accuracy": 100 * train_accuracy,
              "test_loss": test_loss, "test_accuracy": 100 * test_accuracy,
              "gradient_norm": float(np.linalg.norm(np.asarray(gradient, np.float64))),
              "phi": solve["phi"], "sharpness_evaluations": solve["function_evaluations"],
              "wall_seconds": round(time.time() - tick, 1), "environment": rundir.environment(cfg.seed)}
    storage.atomic_write_json(result_path(run.path, backend.name()), record)
    return record


def result_path(run_dir, backend_name: str) -> Path:
    return Path(run_dir) / "evaluations" / f"{backend_name}.json"


def table(run_dir) -> str:
    """Markdown: one column per backend evaluated, and |difference| where there are two."""
    records = {name: storage.read_json(result_path(run_dir, name))
               for name in backend.SUPPORTED if result_path(run_dir, name).exists()}
    digests = {r["weights_sha256"] for r in records.values()}
    if len(digests) > 1:
        return f"{run_dir}: the evaluations were made at different weights; evaluate again on every backend"
    names = list(records)
    lines = ["| quantity | " + " | ".join(records[n]["environment"]["backend_version"] for n in names)
             + (" | abs. difference | rel. difference |" if len(names) == 2 else " |"),
             "|---|" + "---|" * len(names) + ("---|---|" if len(names) == 2 else "")]
    for key, label in FIELDS:
        values = [records[n][key] for n in names]
        cells = " | ".join("failed" if v is None else f"{v:.7g}" for v in values)
        if len(names) == 2 and None not in values:
            difference = abs(values[0] - values[1])
            relative = difference / max(abs(values[0]), 1e-30)
            cells += f" | {difference:.2g} | {relative:.2g}"
        elif len(names) == 2:
            cells += " | - | -"
        lines.append(f"| {label} | {cells} |")
    device = ", ".join(sorted({r["environment"]["device"] for r in records.values()}))
    return "\n".join(lines) + f"\n\nRun {run_dir}, device {device}.\n"
