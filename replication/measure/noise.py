"""Gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish, Kaplan, Amodei et al. 2018,
"An Empirical Model of Large-Batch Training", eq. 2.8 and appendix A).

Beyond Keskar et al. (2017): McCandlish et al. find that batches up to about the noise scale
train almost as efficiently per example as small ones, and larger batches with diminishing
returns, so it is a measured answer to "which batch size?". Symbols -> code: G is the expected
gradient of the mean training cross-entropy, Sigma the covariance of per-example gradients,
tr(Sigma) `trace_sigma`, |G|^2 `grad_norm_sq`.

Estimator, from K mini-batch gradients g_k of b examples each (drawn without replacement from the
N examples, independently per batch), and nothing else:
    V = sum_k |g_k - mean g|^2 / (K - 1)        unbiased for E|g - E g|^2 = tr(Sigma)/b (N - b)/(N - 1)
    tr(Sigma) = V b (N - 1) / (N - b)
    |G|^2 = |mean g|^2 - V / K                  unbiased, since E|mean g|^2 = |E g|^2 + V / K
The standard error is the jackknife over the K batches (closed form from two passes: the sums,
then each g_k . sum g). Where |G|^2's estimate is not positive the noise dominates the mean
gradient at this K and B_simple is reported as not resolved (None), never as a number.

Why G is not the full-data gradient: under batch-statistics batch norm (the paper's semantics) a
gradient depends on which examples share a batch, so the mean of b-example gradients differs from
a gradient over evaluation batches of 5000; measuring both moments from the same b-example
batches keeps the estimate about the noise the optimizer sees. Without batch norm E g_k is the
full-data gradient and this is exactly McCandlish et al.'s quantity. Dropout is off
(training=False), as for every evaluation of f.
"""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from replication import backend, storage
from replication import config as config_lib

REFERENCE = "McCandlish et al. (2018), An Empirical Model of Large-Batch Training, eq. 2.8"
POINTS = ("initial", "final")  # x0 of the run, and its minimiser; also "epoch<N>", a kept iterate


def estimate(model, inputs, labels, batch_size: int, batches: int, seed: int = 0,
             adam_epsilon: float = 1e-8) -> dict:
    """B_simple of the model's current weights on (inputs, labels); the weights are unchanged.
    `adam` holds the same estimate for Adam's preconditioned gradient P g (P = 1 / (sqrt(v) + eps)),
    from the same batches (the noise Adam's step sees, as AdaptDL/Pollux (Qiao et al. 2021) measure
    it for Adam). P is held fixed in its jackknife."""
    from replication import objective as objective_lib

    size = len(inputs)
    if not 1 <= batch_size < size:
        raise ValueError(f"the noise-scale batch ({batch_size}) must be between 1 and the number of "
                         f"examples minus one ({size - 1})")
    if batches < 3:
        raise ValueError(f"the noise scale needs at least 3 mini-batches, got {batches}")
    objective = objective_lib.Objective(model, inputs[:batch_size], labels[:batch_size], batch_size)
    flat = objective.get_flat()
    rng = np.random.default_rng([seed, 7])
    indices = [np.sort(rng.choice(size, batch_size, replace=False)) for _ in range(batches)]

    def gradient(index):  # one compiled pass, the same traced function as f; float64 on the host
        _, grad_sum = objective.batch_value_and_gradient(flat, inputs[index], labels[index])
        return np.asarray(grad_sum, np.float64) / batch_size

    total = np.zeros(objective.dimension)
    second_moment = np.zeros(objective.dimension)
    squares = np.empty(batches)
    for k, index in enumerate(indices):
        g = gradient(index)
        total += g
        second_moment += g * g
        squares[k] = g @ g
    # Adam's preconditioner 1 / (sqrt(v) + epsilon), v the per-coordinate mean square of these
    # mini-batch gradients (what Adam's second moment tracks; AdaptDL's Adam noise scale uses the
    # optimizer's own v, which a finished run does not keep). Its overall scale cancels in B.
    precondition = 1.0 / (np.sqrt(second_moment / batches) + adam_epsilon)
    scaled_total = precondition * total
    # Second pass (same batches, same gradients): g_k . sum g for the jackknife. Recomputing beats
    # keeping K gradients (K x n float64: 12 GB for C2/C4 at K = 100).
    dots, scaled_squares, scaled_dots = np.empty(batches), np.empty(batches), np.empty(batches)
    for k, index in enumerate(indices):
        g = gradient(index)
        dots[k] = g @ total
        scaled = precondition * g
        scaled_squares[k], scaled_dots[k] = scaled @ scaled, scaled @ scaled_total
    plain = _noise_scale(float(total @ total), squares, dots, batch_size, size)
    adam = _noise_scale(float(scaled_total @ scaled_total), scaled_squares, scaled_dots, batch_size, size)
    return {**plain, "adam": {key: adam[key] for key in ("b_simple", "b_simple_standard_error", "resolved",
                                                          "trace_sigma", "grad_norm_sq")},
            "batch_size": batch_size, "batches": batches, "num_examples": size}


def _noise_scale(total_sq: float, squares: np.ndarray, dots: np.ndarray, batch_size: int, size: int) -> dict:
    """B_simple and its jackknife standard error from |sum g|^2, each |g_k|^2 and each g_k . sum g."""
    batches = len(squares)

    def moments(k_count, sum_sq, sum_squares):
        variance = (sum_squares - sum_sq / k_count) / (k_count - 1)
        return variance * batch_size * (size - 1) / (size - batch_size), sum_sq / k_count ** 2 - variance / k_count

    trace_sigma, grad_norm_sq = moments(batches, total_sq, squares.sum())
    # Leave batch k out: |sum g - g_k|^2 = |sum g|^2 - 2 g_k . sum g + |g_k|^2.
    leave_out = [moments(batches - 1, total_sq - 2 * dots[k] + squares[k], squares.sum() - squares[k])
                 for k in range(batches)]
    trace_sigma, grad_norm_sq = float(trace_sigma), float(grad_norm_sq)
    resolved = bool(math.isfinite(trace_sigma) and math.isfinite(grad_norm_sq) and grad_norm_sq > 0)
    b_simple = trace_sigma / grad_norm_sq if resolved else None
    standard_error = None
    if resolved and all(g > 0 for _, g in leave_out):
        jack = np.array([t / g for t, g in leave_out])
        standard_error = float(np.sqrt((batches - 1) / batches * np.sum((jack - jack.mean()) ** 2)))
    return {"b_simple": b_simple, "b_simple_standard_error": standard_error,
            "resolved": resolved, "trace_sigma": trace_sigma, "grad_norm_sq": grad_norm_sq,
            "note": None if resolved else "not resolved: the estimate of |G|^2 is not positive at "
                                          "this number of batches (raise sweep.noise_batches)"}


def result_path(run_dir, point: str) -> Path:
    return Path(run_dir) / "noise" / f"{point}.json"


def noise_scale(run_dir, point: str = "final", force: bool = False, log=None) -> dict:
    """B_simple of a finished run at its x0 ("initial") or minimiser ("final"), written to
    `<run_dir>/noise/<point>.json`; a result with identical settings is not recomputed. Uses the
    sharpness examples (`sharpness.subset`), the SB batch size, `sweep.noise_batches` batches."""
    from replication import rundir

    epoch = re.fullmatch(r"epoch([1-9][0-9]*)", point)
    if point not in POINTS and not epoch:
        raise config_lib.ConfigError(f"point must be one of {POINTS} or epoch<N> (a kept iterate), got {point!r}")
    log = log or sys.stderr
    run = rundir.load_run(run_dir)
    config = run.config
    if point == "initial":
        storage.load_weights(run.model, run.path / "initial.weights.h5")
    elif epoch:
        iterate = rundir.iterate_path(run.path, int(epoch.group(1)))
        if not iterate.is_file():
            raise config_lib.ConfigError(f"{run.path} kept no iterate of epoch {epoch.group(1)} ({iterate}): "
                                         f"use one of its kept_iterates {run.metrics.get('kept_iterates', [])}")
        storage.load_weights(run.model, iterate)
    settings = {"point": point, "batch_size": config.sb_batch_size, "batches": config.sweep.noise_batches,
                "subset": config.sharpness.subset, "estimator": "mini-batch moments, jackknife SE",
                "seed": config.sharpness.seed, "weights_digest": storage.weights_digest(run.model.get_weights()),
                "backend": backend.name(), "passes": backend.PASSES}
    path = result_path(run.path, point)
    with storage.locked(path.with_suffix(".lock")):
        if (previous := storage.reusable(path, settings, force, log)) is not None:
            return previous
        inputs, labels = rundir.training_examples(config, config.sharpness.subset)
        if config.sb_batch_size >= len(inputs):
            raise config_lib.ConfigError(
                f"noise scale of {run.path}: mini-batches of sb_batch_size {config.sb_batch_size} need "
                f"more than the {len(inputs)} examples used: raise sharpness.subset")
        tick = time.time()
        if run.metrics["diverged"]:  # no minimiser to measure; the target still exists for make
            result = {"b_simple": None, "b_simple_standard_error": None, "resolved": False,
                      "note": "not measured: the run diverged"}
        else:
            result = estimate(run.model, inputs, labels, config.sb_batch_size,
                              config.sweep.noise_batches, config.sharpness.seed, config.adam_epsilon)
        record = {"measure": REFERENCE, "run": str(run.path), "network": config.network,
                  "dataset": config.dataset, "regime": run.metrics["regime"], "run_seed": run.metrics["seed"],
                  "run_batch_size": run.metrics["batch_size"], **result, "batchnorm": config.batchnorm,
                  "settings": settings, "wall_seconds": round(time.time() - tick, 3),
                  "environment": rundir.environment(config.sharpness.seed)}
        storage.atomic_write_json(path, record)
    value = record["note"] if record["b_simple"] is None else \
        f"{record['b_simple']:.4g} ± {record['b_simple_standard_error'] or float('nan'):.2g}"
    print(f"[{run.path}] gradient noise scale at {point}: B_simple = {value} ({record['wall_seconds']:.1f} s) "
          f"-> {path}", file=log, flush=True)
    return record
