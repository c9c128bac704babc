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
full-data gradient and this is exactly McCandlish et al.'s quantity.

Two definitions, picked per profile by `sweep.noise_definition` and named in every record
(docs/noise-scale.md fixes both, before the workloads they are used on):
- "evaluation" (the default; every committed study was measured so): each g_k with training=False,
  dropout off, as for every evaluation of f; the Adam variant's v is the per-coordinate mean square
  of the same K mini-batch gradients.
- "training": each g_k as the optimizer takes it (training=True: dropout on, batch k's masks drawn
  from the stream (seed, 7, k), batch norm on the batch's own statistics), B_noise of Definition 1;
  the Adam variant B_adam (Definition 2) preconditions with the optimizer's own v_hat = v_t /
  (1 - beta_2^t) at the measured point, read from the state the run saved there (train.py's
  final.adam.npz, written by runs with stopping: target). Without that state, B_adam is "not
  measured", and at x0 it is not defined; it never falls back to the batch-estimated v.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from replication import backend, data, storage
from replication import config as config_lib

REFERENCE = "McCandlish et al. (2018), An Empirical Model of Large-Batch Training, eq. 2.8"
POINTS = ("initial", "final")  # x0 of the run, and its minimiser; also "epoch<N>", a kept iterate
DEFINITIONS_DOC = "docs/noise-scale.md"
ADAM_KEYS = ("b_simple", "b_simple_standard_error", "resolved", "trace_sigma", "grad_norm_sq")


@dataclasses.dataclass(frozen=True)
class AdamState:
    """Adam's second moment at a point: v_t flat in model.trainable_variables order, after t steps."""

    v: np.ndarray
    step: int
    beta_2: float
    epsilon: float

    def preconditioner(self) -> np.ndarray:
        """P = 1 / (sqrt(v_hat) + epsilon), v_hat = v_t / (1 - beta_2^t) (docs/noise-scale.md, Definition 2)."""
        v_hat = np.asarray(self.v, np.float64) / (1.0 - self.beta_2 ** self.step)
        return 1.0 / (np.sqrt(v_hat) + self.epsilon)


def _not_measured(note: str) -> dict:
    return {"b_simple": None, "b_simple_standard_error": None, "resolved": False, "trace_sigma": None,
            "grad_norm_sq": None, "note": note}


def estimate(model, inputs, labels, batch_size: int, batches: int, seed: int = 0,
             adam_epsilon: float = 1e-8, definition: str = "evaluation", adam_state: AdamState | None = None,
             adam_missing: str = "not measured: no optimizer state at this point") -> dict:
    """B_simple of the model's current weights on (inputs, labels); the weights are unchanged.
    `adam` holds the same estimate for Adam's preconditioned gradient P g (P = 1 / (sqrt(v) + eps)),
    from the same batches (the noise Adam's step sees, as AdaptDL/Pollux (Qiao et al. 2021) measure
    it for Adam). P is held fixed in its jackknife.

    `definition` (module docstring): "evaluation" takes g_k with training=False and v from these
    batches (`adam_epsilon` its epsilon); "training" takes g_k in training mode, batch k's dropout
    masks from the stream (seed, 7, k), and P from `adam_state`, the optimizer's own v_hat; with no
    `adam_state` the Adam value is `adam_missing`, a note, never a number."""
    from replication import objective as objective_lib

    size = len(inputs)
    if definition not in config_lib.NOISE_DEFINITIONS:
        raise ValueError(f"unknown noise-scale definition {definition!r}: use one of {config_lib.NOISE_DEFINITIONS}")
    if adam_state is not None and definition != "training":
        raise ValueError("the optimizer's Adam state is used by the 'training' definition only")
    if not 1 <= batch_size < size:
        raise ValueError(f"the noise-scale batch ({batch_size}) must be between 1 and the number of "
                         f"examples minus one ({size - 1})")
    if batches < 3:
        raise ValueError(f"the noise scale needs at least 3 mini-batches, got {batches}")
    objective = objective_lib.Objective(model, inputs[:batch_size], labels[:batch_size], batch_size)
    flat = objective.get_flat()
    if adam_state is not None and len(adam_state.v) != objective.dimension:
        raise ValueError(f"the Adam state holds {len(adam_state.v)} second moments, the model "
                         f"{objective.dimension} trainable weights")
    training = definition == "training"
    indices = batch_indices(size, batch_size, batches, seed)

    def gradient(k):  # one compiled pass, the same traced function as f; float64 on the host
        index = indices[k]
        if training:  # batch k's masks from the stream (seed, 7, k): both passes see the same g_k
            _, grad_sum = objective.training_batch_gradient(flat, inputs[index], labels[index], (seed, 7, k))
        else:
            _, grad_sum = objective.batch_value_and_gradient(flat, inputs[index], labels[index])
        return np.asarray(grad_sum, np.float64) / batch_size

    total = np.zeros(objective.dimension)
    second_moment = np.zeros(objective.dimension)
    squares = np.empty(batches)
    for k in range(batches):
        g = gradient(k)
        total += g
        second_moment += g * g
        squares[k] = g @ g
    if training:  # the optimizer's own v_hat (Definition 2), or no Adam value at all
        precondition = adam_state.preconditioner() if adam_state is not None else None
    else:
        # Adam's preconditioner 1 / (sqrt(v) + epsilon), v the per-coordinate mean square of these
        # mini-batch gradients (what Adam's second moment tracks; the "training" definition uses
        # the optimizer's own v instead). Its overall scale cancels in B.
        precondition = 1.0 / (np.sqrt(second_moment / batches) + adam_epsilon)
    scaled_total = precondition * total if precondition is not None else None
    # Second pass (same batches, same gradients): g_k . sum g for the jackknife. Recomputing beats
    # keeping K gradients (K x n float64: 12 GB for C2/C4 at K = 100).
    dots, scaled_squares, scaled_dots = np.empty(batches), np.empty(batches), np.empty(batches)
    for k in range(batches):
        g = gradient(k)
        dots[k] = g @ total
        if precondition is not None:
            scaled = precondition * g
            scaled_squares[k], scaled_dots[k] = scaled @ scaled, scaled @ scaled_total
    plain = _noise_scale(float(total @ total), squares, dots, batch_size, size)
    if precondition is None:
        adam = _not_measured(adam_missing)
    else:
        adam = _noise_scale(float(scaled_total @ scaled_total), scaled_squares, scaled_dots, batch_size, size)
        # The evaluation definition's record keeps the keys it always had.
        adam = {key: adam[key] for key in ADAM_KEYS + (("note",) if training else ())}
    if training and adam_state is not None:
        adam["adam_step"] = adam_state.step
    return {**plain, "adam": adam, "batch_size": batch_size, "batches": batches, "num_examples": size}


def batch_indices(size: int, batch_size: int, batches: int, seed: int) -> list[np.ndarray]:
    """The K mini-batches of an estimate: `batches` draws of `batch_size` of the `size` examples
    without replacement, from the stream (seed, 7)."""
    rng = np.random.default_rng([seed, 7])
    return [np.sort(rng.choice(size, batch_size, replace=False)) for _ in range(batches)]


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


def noise_scale(run_dir, point: str = "final", force: bool = False, log=None, definition: str | None = None) -> dict:
    """B_simple of a finished run at its x0 ("initial") or minimiser ("final"), written to
    `<run_dir>/noise/<point>.json`; a result with identical settings is not recomputed. Uses the
    sharpness examples (`sharpness.subset`), the SB batch size, `sweep.noise_batches` batches, and
    the definition `sweep.noise_definition` names (`definition` overrides it; module docstring)."""
    from replication import rundir, train

    epoch = re.fullmatch(r"epoch([1-9][0-9]*)", point)
    milestone = re.fullmatch(r"target(.+)", point)
    if point not in POINTS and not epoch and not milestone:
        raise config_lib.ConfigError(f"point must be one of {POINTS}, epoch<N> (a kept iterate) or target<value> "
                                     f"(a milestone of target.milestones), got {point!r}")
    log = log or sys.stderr
    run = rundir.load_run(run_dir)
    config = run.config
    definition = definition or config.sweep.noise_definition
    if definition not in config_lib.NOISE_DEFINITIONS:
        raise config_lib.ConfigError(f"unknown noise-scale definition {definition!r}: use one of "
                                     f"{', '.join(config_lib.NOISE_DEFINITIONS)}")
    if point == "initial":
        storage.load_weights(run.model, run.path / "initial.weights.h5")
    elif epoch:
        iterate = rundir.iterate_path(run.path, int(epoch.group(1)))
        if not iterate.is_file():
            raise config_lib.ConfigError(f"{run.path} kept no iterate of epoch {epoch.group(1)} ({iterate}): "
                                         f"use one of its kept_iterates {run.metrics.get('kept_iterates', [])}")
        storage.load_weights(run.model, iterate)
    elif milestone:
        weights = _milestone_weights(run, milestone.group(1))
        storage.load_weights(run.model, weights)
    settings = {"point": point, "batch_size": config.sb_batch_size, "batches": config.sweep.noise_batches,
                "subset": config.sharpness.subset, "estimator": "mini-batch moments, jackknife SE",
                "seed": config.sharpness.seed, "weights_digest": storage.weights_digest(run.model.get_weights()),
                "backend": backend.name(), "passes": backend.PASSES, **data.measured_examples(config.sharpness.subset)}
    state_path = (weights.with_name(weights.name.removesuffix(".weights.h5") + ".adam.npz") if milestone
                  else train.adam_state_path(run.path))
    has_state = definition == "training" and point != "initial" and not epoch and state_path.is_file()
    if definition != "evaluation":
        # Only here: the evaluation settings stay exactly as they were, so the committed files
        # measured before the definitions existed are still reused; either way a result made
        # under the other definition is recomputed. The state's digest: a new state, a new result.
        settings.update(definition=definition,
                        adam_state_sha256=storage.sha256_file(state_path) if has_state else None)
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
        elif definition == "training":
            adam_state = read_adam_state(state_path, settings["weights_digest"]) if has_state else None
            missing = ("not defined at x0: no optimizer state (docs/noise-scale.md, Definition 2)"
                       if point == "initial" else
                       f"not measured: the run saved no optimizer state at this point ({state_path.name} is "
                       "kept at the final point of runs with stopping: target)")
            result = estimate(run.model, inputs, labels, config.sb_batch_size, config.sweep.noise_batches,
                              config.sharpness.seed, definition=definition, adam_state=adam_state,
                              adam_missing=missing)
        else:
            result = estimate(run.model, inputs, labels, config.sb_batch_size,
                              config.sweep.noise_batches, config.sharpness.seed, config.adam_epsilon)
        record = {"measure": REFERENCE, "definition": definition, "definitions_doc": DEFINITIONS_DOC,
                  "run": str(run.path), "network": config.network,
                  "dataset": config.dataset, "regime": run.metrics["regime"], "run_seed": run.metrics["seed"],
                  "run_batch_size": run.metrics["batch_size"], **result, "batchnorm": config.batchnorm,
                  "settings": settings, "wall_seconds": round(time.time() - tick, 3),
                  "environment": rundir.environment(config.sharpness.seed)}
        storage.atomic_write_json(path, record)
    value = record["note"] if record["b_simple"] is None else \
        f"{record['b_simple']:.4g} ± {record['b_simple_standard_error'] or float('nan'):.2g}"
    print(f"[{run.path}] gradient noise scale at {point} ({record.get('definition', 'evaluation')} definition): "
          f"B_simple = {value} ({record['wall_seconds']:.1f} s) -> {path}", file=log, flush=True)
    return record


def _milestone_weights(run, text: str) -> Path:
    """The weights a run kept where it first met the milestone `text` (target<value>)."""
    from replication import target

    milestones = run.config.target.milestones
    value = next((m for m in milestones if f"{m:g}" == text), None)
    if value is None:
        raise config_lib.ConfigError(f"{run.path} has no milestone {text!r}: use target<value> with a value of its "
                                     f"target.milestones {[f'{m:g}' for m in milestones]}")
    path = target.milestone_path(run.path, value)
    if not path.is_file():
        raise config_lib.ConfigError(f"{run.path} never met its milestone {value:g} ({path} is missing): measure a "
                                     "milestone it met (metrics.json, target.targets)")
    return path


def read_adam_state(path, weights_digest: str) -> AdamState:
    """The Adam state a run saved at its final point (train.py, final.adam.npz), every value checked,
    and checked to belong to the weights measured (`weights_digest`, storage.weights_digest)."""
    from replication import rundir

    path = Path(path)
    fix = f"train the run again (delete {path.parent}) to save it anew"
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise rundir.RunError(f"{path}: not a readable .npz ({(str(err).splitlines() or [type(err).__name__])[0]}): "
                              f"{fix}") from None
    missing = [key for key in ("v", "t", "beta_2", "epsilon", "weights_sha256") if key not in arrays]
    if missing:
        raise rundir.RunError(f"{path}: no {', '.join(missing)} in the Adam state: {fix}")
    v, t, beta_2, epsilon, digest = (arrays[key] for key in ("v", "t", "beta_2", "epsilon", "weights_sha256"))
    problem = None
    if v.ndim != 1 or v.dtype.kind != "f" or not np.all(np.isfinite(v)) or np.any(v < 0):
        problem = "v is not a flat array of finite, non-negative second moments"
    elif t.shape != () or t.dtype.kind not in "iu" or int(t) < 1:
        problem = f"the step t ({t!r}) is not an integer >= 1"
    elif beta_2.shape != () or not 0 < float(beta_2) < 1:
        problem = f"beta_2 ({beta_2!r}) is not in (0, 1)"
    elif epsilon.shape != () or not 0 < float(epsilon) < math.inf:
        problem = f"epsilon ({epsilon!r}) is not a positive number"
    elif digest.shape != () or str(digest) != weights_digest:
        problem = "it was saved with other weights than the run's final.weights.h5"
    if problem:
        raise rundir.RunError(f"{path}: {problem}: {fix}")
    return AdamState(v, int(t), float(beta_2), float(epsilon))
