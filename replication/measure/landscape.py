"""Parametric plots of Keskar et al. (2017): the loss between the SB and the LB minimiser.

For one trial (an SB run and an LB run from the same x0) we evaluate f and the accuracy on the
training and test sets along two paths through x_SB (alpha = 0) and x_LB (alpha = 1):

    linear       (Figure 3):  alpha * x_LB + (1 - alpha) * x_SB
    curvilinear  (Figure 7):  sin(alpha * pi / 2) * x_LB + cos(alpha * pi / 2) * x_SB

at `landscape.points` values of alpha in linspace(alpha_min, alpha_max) (the paper: 25 in [-1, 2]).
x is every trainable variable (kernels, biases, batch-norm gamma/beta), as in `objective`.

Batch norm: under `batch_statistics` (the paper's Keras 1 mode=2) each evaluation batch of
`eval_batch_size` is normalised with its own statistics, exactly as the runs were evaluated.
Under `moving_average` the moving mean/variance are not part of x; `landscape.moving_statistics`
says what we do with them, and the output records it:
- "interpolate": move them along the same path as the weights. Outside [0, 1] a combination of
  variances can be negative; such entries are clamped to 0 and the alphas where it happened are
  listed in the JSON sidecar.
- "recompute": at each point, set every layer's statistics to the exact population mean/variance
  of its inputs over the evaluated training examples, layer by layer in network order, so each
  layer sees its predecessors normalised with their recomputed statistics (what inference sees).

Output per pair and path, in `<results_dir>/<network>_<dataset>/landscape/`:
`seed<N>_<path>.csv` (the columns of `replication/reference/paper_figures/figure3_F1.csv`) and `.json`
(provenance and the settings that made it; a rerun with the same settings is skipped). The `.png`
and `.pdf` beside them (the paper's style, the published curves overlaid) are drawn from these
files by analysis/landscape_figures.py, which `python -m replication landscape` calls.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import keras
import numpy as np

from replication import backend, data, rundir, storage

PATHS = {"linear": "Figure 3", "curvilinear": "Figure 7"}
FORMULA = {"linear": "alpha * x_LB + (1 - alpha) * x_SB",
           "curvilinear": "sin(alpha * pi / 2) * x_LB + cos(alpha * pi / 2) * x_SB"}
COLUMNS = ["alpha", "train_xent", "test_xent", "train_acc_pct", "test_acc_pct"]


class LandscapeError(rundir.RunError):
    """The two runs of a pair cannot be compared (different x0, missing run)."""


def coefficients(path: str, alpha: float) -> tuple[float, float]:
    """(weight of x_LB, weight of x_SB) at alpha on `path`; (0, 1) at alpha=0, (1, 0) at alpha=1."""
    if path == "linear":
        return alpha, 1.0 - alpha
    if path == "curvilinear":
        return math.sin(alpha * math.pi / 2), math.cos(alpha * math.pi / 2)
    raise ValueError(f"unknown path {path!r}: use one of {tuple(PATHS)}")


def alphas(config) -> np.ndarray:
    return np.linspace(config.landscape.alpha_min, config.landscape.alpha_max, config.landscape.points)


def output_stem(config, seed: int, path: str) -> Path:
    return rundir.trial_directory(config) / "landscape" / f"seed{seed}_{path}"


def load_pair(config, seed: int):
    """(SB run, LB run) of trial `seed`; they must share x0 (the same metrics.json x0_sha256)."""
    sb = rundir.load_run(rundir.run_directory(config, "sb", seed))
    lb = rundir.load_run(rundir.run_directory(config, "lb", seed))
    check_pair(sb.path, sb.metrics, lb.path, lb.metrics)
    return sb, lb


def check_pair(sb_path, sb_metrics: dict, lb_path, lb_metrics: dict) -> None:
    # The paper's plots only mean something for minimisers reached from one starting point.
    if sb_metrics.get("x0_sha256") != lb_metrics.get("x0_sha256"):
        raise LandscapeError(
            f"SB run {sb_path} (x0 sha256 {sb_metrics.get('x0_sha256')}) and LB run {lb_path} "
            f"(x0 sha256 {lb_metrics.get('x0_sha256')}) did not start from the same x0: they are not "
            "a pair; retrain one of them")


def batchnorm_layers(model) -> list:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _statistics_variables(model) -> list:
    """[mean, variance, mean, variance, ...] of every BatchNormalization layer, in network order."""
    return [v for layer in batchnorm_layers(model) for v in (layer.moving_mean, layer.moving_variance)]


def _statistics(model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in _statistics_variables(model)]


def _set_statistics(model, values) -> None:
    for variable, value in zip(_statistics_variables(model), values):
        variable.assign(value)


def _interpolated_statistics(stats_sb, stats_lb, c_lb, c_sb) -> tuple[list[np.ndarray], bool]:
    """Statistics moved along the path; variances (every second array) clamped at 0."""
    out, clamped = [], False
    for index, (s, l) in enumerate(zip(stats_sb, stats_lb)):
        value = c_lb * l.astype(np.float64) + c_sb * s.astype(np.float64)
        if index % 2 == 1 and (value < 0).any():
            value, clamped = np.maximum(value, 0.0), True
        out.append(value.astype(np.float32))
    return out, clamped


def recompute_statistics(model, inputs: np.ndarray, batch_size: int) -> None:
    """Set each BatchNormalization layer's moving mean/variance to the exact population moments
    of its inputs over `inputs` (inference mode, layer by layer in network order)."""
    for layer in batchnorm_layers(model):
        probe = keras.Model(model.input, layer.input)
        total = total_sq = 0.0
        count = 0
        for start in range(0, len(inputs), batch_size):
            h = np.asarray(probe(inputs[start:start + batch_size], training=False), np.float64)
            h = h.reshape(-1, h.shape[-1])  # per feature / channel, as BatchNormalization(axis=-1)
            total, total_sq, count = total + h.sum(0), total_sq + (h * h).sum(0), count + len(h)
        mean = total / count
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(np.maximum(total_sq / count - mean ** 2, 0.0).astype(np.float32))


def settings(config, sb, lb, path: str, num_train: int, num_test: int) -> dict:
    """Everything that determines the curve: an existing CSV made with these is reused."""
    moving = config.landscape.moving_statistics if config.batchnorm == "moving_average" else None
    return {
        "path": path, "alphas": [float(a) for a in alphas(config)],
        "batchnorm": config.batchnorm, "moving_statistics": moving,
        "eval_batch_size": config.eval_batch_size, "landscape_subset": config.landscape.subset,
        "train_examples": num_train, "test_examples": num_test,
        "sb_final_sha256": storage.sha256_file(sb.path / "final.weights.h5"),
        "lb_final_sha256": storage.sha256_file(lb.path / "final.weights.h5"),
        "backend": backend.name(), "passes": backend.PASSES, **data.measured_examples(config.landscape.subset),
    }


def compute(config, seed: int, paths=tuple(PATHS), log=sys.stderr) -> list[Path]:
    """Evaluate the SB/LB pair of trial `seed` along each path; returns the CSV paths.

    Skips a path whose CSV and JSON exist with the same settings.
    """
    sb, lb = load_pair(config, seed)
    evaluator = _Evaluator(config, sb, lb)
    try:
        return [_compute_path(config, seed, path, sb, lb, evaluator, log) for path in paths]
    finally:
        evaluator.restore()


class _Evaluator:
    """f and accuracy of the SB model at any point of a path between x_SB and x_LB (the SB model
    evaluates every point; the LB model only lends its weights and batch-norm statistics)."""

    def __init__(self, config, sb, lb):
        from replication import objective

        dataset, x_train, y_train, x_test, y_test = rundir.load_arrays(config)
        self.x_train, y_train = data.measurement_subset(x_train, y_train, config.landscape.subset)
        self.dataset_label, self.num_test = dataset.label, len(x_test)
        self.eval_batch_size = config.eval_batch_size
        self.model = sb.model
        self.train_f = objective.Objective(self.model, self.x_train, y_train, config.eval_batch_size)
        self.test_f = objective.Objective(self.model, x_test, y_test, config.eval_batch_size)
        self.x_sb = keras.ops.convert_to_numpy(self.train_f.get_flat()).astype(np.float64)
        self.x_lb = np.concatenate([np.ravel(keras.ops.convert_to_numpy(v))
                                    for v in lb.model.trainable_variables]).astype(np.float64)
        self.stats_sb, self.stats_lb = _statistics(sb.model), _statistics(lb.model)
        self.moving = config.landscape.moving_statistics if config.batchnorm == "moving_average" else None

    def at(self, path: str, alpha: float) -> tuple[dict, bool]:
        """The CSV row at `alpha` on `path`, and whether variances were clamped at 0 there."""
        c_lb, c_sb = coefficients(path, alpha)
        point = (c_lb * self.x_lb + c_sb * self.x_sb).astype(np.float32)
        clamped = False
        if self.moving == "interpolate":
            values, clamped = _interpolated_statistics(self.stats_sb, self.stats_lb, c_lb, c_sb)
            _set_statistics(self.model, values)
        elif self.moving == "recompute":
            self.train_f.set_flat(point)
            recompute_statistics(self.model, self.x_train, self.eval_batch_size)
        train_loss, train_acc = self.train_f.evaluate(point)
        test_loss, test_acc = self.test_f.evaluate(point)
        return {"alpha": alpha, "train_xent": train_loss, "test_xent": test_loss,
                "train_acc_pct": 100 * train_acc, "test_acc_pct": 100 * test_acc}, clamped

    def restore(self) -> None:
        """The evaluation moved the SB model's variables; leave it holding x_SB again."""
        self.train_f.set_flat(self.x_sb.astype(np.float32))
        _set_statistics(self.model, self.stats_sb)


def _compute_path(config, seed: int, path: str, sb, lb, evaluator: _Evaluator, log) -> Path:
    """One path's CSV and JSON sidecar, unless they exist with these settings."""
    stem = output_stem(config, seed, path)
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    wanted = settings(config, sb, lb, path, len(evaluator.x_train), evaluator.num_test)
    with storage.locked(stem.parent / f".seed{seed}_{path}.lock"):
        if csv_path.exists() and json_path.exists() and storage.read_json(json_path).get("settings") == wanted:
            print(f"[{csv_path}] already computed with these settings; skipping", file=log)
            return csv_path
        started = time.time()
        rows, clamped = _evaluate_path(config, seed, path, evaluator, log)
        sidecar = _sidecar(config, seed, path, sb, lb, evaluator, clamped, wanted, started)
        storage.atomic_write_csv(csv_path, rows, COLUMNS)
        storage.atomic_write_json(json_path, sidecar)  # after the CSV: its presence means done
    return csv_path


def _evaluate_path(config, seed: int, path: str, evaluator: _Evaluator, log) -> tuple[list[dict], list[float]]:
    """The CSV rows of `path` at every alpha, and the alphas where variances were clamped."""
    rows, clamped = [], []
    for alpha in alphas(config):
        row, was_clamped = evaluator.at(path, float(alpha))
        rows.append(row)
        if was_clamped:
            clamped.append(float(alpha))
        print(f"[{config.network} seed {seed} {path}] alpha {alpha:+.3f}: train {row['train_xent']:.4f} "
              f"({row['train_acc_pct']:.2f}%) test {row['test_xent']:.4f} ({row['test_acc_pct']:.2f}%)",
              file=log, flush=True)
    return rows, clamped


def _sidecar(config, seed: int, path: str, sb, lb, evaluator: _Evaluator, clamped: list[float],
             wanted: dict, started: float) -> dict:
    """The JSON beside a curve's CSV: what it is, how and from what it was made."""
    return {
        "figure": PATHS[path], "path": path, "formula": FORMULA[path],
        "network": config.network, "dataset": config.dataset, "dataset_label": evaluator.dataset_label,
        "profile": config.profile, "seed": seed, "sb_run": str(sb.path), "lb_run": str(lb.path),
        "x0_sha256": sb.metrics["x0_sha256"],
        "batchnorm_mode": _describe_batchnorm(config),
        "train_statistics_examples": len(evaluator.x_train) if evaluator.moving == "recompute" else None,
        "variance_clamped_alphas": clamped,
        # The config's, not the runs': landscape.subset is set here, not at training.
        "deviations": [d for d in config.deviations() if not d.startswith("sharpness")],
        "environment": rundir.environment(seed),
        "wall_seconds": round(time.time() - started, 1),
        "settings": wanted,
    }


def _describe_batchnorm(config) -> str:
    if config.batchnorm == "batch_statistics":
        return (f"batch statistics of each evaluation batch of {config.eval_batch_size} "
                "(the paper's Keras 1 mode=2)")
    if config.landscape.moving_statistics == "interpolate":
        return "moving averages, interpolated along the path like the weights (variances clamped at 0)"
    return "moving averages, recomputed at each point from the evaluated training examples (exact)"


def finished_seeds(config) -> list[int]:
    """Seeds of `config` whose SB and LB runs both have metrics.json."""
    return [s for s in config.seeds
            if all((rundir.run_directory(config, r, s) / "metrics.json").exists() for r in ("sb", "lb"))]
