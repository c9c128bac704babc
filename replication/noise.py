"""Gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish, Kaplan, Amodei et al. 2018,
"An Empirical Model of Large-Batch Training", eq. 2.8 and appendix A).

Beyond Keskar et al. (2017): B_simple predicts the "critical batch size" below which a larger
batch buys an almost proportional speed-up and above which it buys little, which is the rule for
choosing a batch size that the generalization-gap question leads to. Symbols -> code: G is the
full-batch gradient of the mean training cross-entropy (`gradient`), Sigma the covariance of the
per-example gradients, tr(Sigma) `trace_sigma`.

Estimator: G over the examples (evaluation batches, as for sharpness), then K mini-batch
gradients g_k of b examples drawn without replacement. For such batches
E|g_k - G|^2 = tr(Sigma) / b * (N - b) / (N - 1), so tr(Sigma) = b (N - 1) / (N - b) * mean_k |g_k - G|^2.
The standard error comes from the spread of the K squared distances.

Under batch-statistics batch norm (the paper's semantics) a gradient depends on which examples
share a batch, so g_k (b examples) and G (evaluation batches) normalise differently; the estimate
then measures the noise the optimizer actually sees, bias included. Dropout is off (training=False),
as for every evaluation of f.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from replication import config as config_lib
from replication import storage

REFERENCE = "McCandlish et al. (2018), An Empirical Model of Large-Batch Training, eq. 2.8"
POINTS = ("initial", "final")  # x0 of the run, and its minimiser


def estimate(model, inputs, labels, batch_size: int, eval_batch_size: int, batches: int,
             seed: int = 0) -> dict:
    """B_simple of the model's current weights on (inputs, labels); the weights are unchanged."""
    import tensorflow as tf

    from replication import objective as objective_lib

    size = len(inputs)
    if not 1 <= batch_size < size:
        raise ValueError(f"the noise-scale batch ({batch_size}) must be between 1 and the number of "
                         f"examples minus one ({size - 1})")
    if batches < 2:
        raise ValueError(f"the noise scale needs at least 2 mini-batches, got {batches}")
    objective = objective_lib.Objective(model, inputs, labels, eval_batch_size)
    flat = objective.get_flat()
    loss, gradient = objective.value_and_gradient(flat)
    rng = np.random.default_rng([seed, 7])
    distances = []
    for _ in range(batches):
        index = np.sort(rng.choice(size, batch_size, replace=False))
        # One compiled pass per mini-batch, through the same traced function as f.
        _, grad_sum = objective._value_and_grad(flat, tf.constant(inputs[index]), tf.constant(labels[index]))
        distances.append(float(tf.reduce_sum(tf.square(grad_sum / batch_size - gradient))))
    correction = batch_size * (size - 1) / (size - batch_size)
    trace_sigma = correction * float(np.mean(distances))
    grad_norm_sq = float(tf.reduce_sum(tf.square(gradient)))
    trace_se = correction * float(np.std(distances, ddof=1)) / math.sqrt(batches)
    finite = math.isfinite(trace_sigma) and math.isfinite(grad_norm_sq) and grad_norm_sq > 0
    return {"b_simple": trace_sigma / grad_norm_sq if finite else None,
            "b_simple_standard_error": trace_se / grad_norm_sq if finite else None,
            "trace_sigma": trace_sigma, "grad_norm_sq": grad_norm_sq, "loss": float(loss),
            "batch_size": batch_size, "batches": batches, "num_examples": size}


def result_path(run_dir, point: str) -> Path:
    return Path(run_dir) / "noise" / f"{point}.json"


def noise_scale(run_dir, point: str = "final", force: bool = False, log=None) -> dict:
    """B_simple of a finished run at its x0 ("initial") or minimiser ("final"), written to
    `<run_dir>/noise/<point>.json`; a result with identical settings is not recomputed. Uses the
    sharpness examples (`sharpness.subset`), the SB batch size, `sweep.noise_batches` batches."""
    from replication import data, train

    if point not in POINTS:
        raise ValueError(f"point must be one of {POINTS}, got {point!r}")
    log = log or sys.stderr
    run = train.load_run(run_dir)
    config = run.config
    if point == "initial":
        run.model.load_weights(run.path / "initial.weights.h5")
    settings = {"point": point, "batch_size": config.sb_batch_size, "batches": config.sweep.noise_batches,
                "subset": config.sharpness.subset, "eval_batch_size": config.eval_batch_size,
                "seed": config.sharpness.seed, "weights_digest": storage.weights_digest(run.model.get_weights())}
    path = result_path(run.path, point)
    with storage.locked(path.with_suffix(".lock")):
        if path.exists() and not force:
            previous = storage.read_json(path)
            if previous.get("settings") == settings:
                print(f"[{path}] already computed with these settings; skipping", file=log)
                return previous
        _, x_train, y_train, _, _ = train.load_arrays(config)
        inputs, labels = data.subset(x_train, y_train, config.sharpness.subset)
        if config.sb_batch_size >= len(inputs):
            raise config_lib.ConfigError(
                f"noise scale of {run.path}: mini-batches of sb_batch_size {config.sb_batch_size} need "
                f"more than the {len(inputs)} examples used: raise sharpness.subset")
        tick = time.time()
        result = estimate(run.model, inputs, labels, config.sb_batch_size, config.eval_batch_size,
                          config.sweep.noise_batches, config.sharpness.seed)
        record = {"measure": REFERENCE, "run": str(run.path), "network": config.network,
                  "dataset": config.dataset, "regime": run.metrics["regime"], "run_seed": run.metrics["seed"],
                  "run_batch_size": run.metrics["batch_size"], **result, "batchnorm": config.batchnorm,
                  "settings": settings, "wall_seconds": round(time.time() - tick, 3),
                  "environment": train.environment(config.sharpness.seed)}
        storage.atomic_write_json(path, record)
    value = "undefined (zero or non-finite gradient)" if record["b_simple"] is None else \
        f"{record['b_simple']:.4g} ± {record['b_simple_standard_error']:.2g}"
    print(f"[{run.path}] gradient noise scale at {point}: B_simple = {value} ({record['wall_seconds']:.1f} s) "
          f"-> {path}", file=log, flush=True)
    return record
