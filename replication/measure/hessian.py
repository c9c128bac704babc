"""Curvature of the training loss at a saved run: Hessian-vector products, the top eigenvalue, the
trace, the spread of every estimate over draws, and how each measure (Metric 2.1 included) moves
under function-preserving reparametrisations (reparametrize.py). Beyond Keskar et al. (2017):
issue 14; the measures PyHessian (Yao et al. 2020) and hessian-eigenthings report.

Symbols -> code: f is the same f as Metric 2.1 (objective.Objective on the run's training examples
`sharpness.subset`, its batch-norm semantics and evaluation batches); H = the Hessian of f at x;
H v is `Objective.hessian_vector_product` (forward over reverse, backend.hessian_vector_product);
lambda_max `top_eigenvalue`, tr(H) `trace`.

- Hessian of batch-statistics batch norm: TensorFlow's tf.nn.moments (behind keras.ops.moments)
  stops the gradient through the mean inside the variance. First derivatives are unaffected (the
  variance is stationary in the mean), second derivatives are not: under TensorFlow the model's
  own H v misses central differences of the gradient by more than 2% on a small network
  (tests/test_hessian.py), the copy below meets them within 0.2%. H v is therefore taken of
  `second_order_model`, a copy of the network whose batch norm computes the same variance with
  every derivative kept (the same f and gradient, checked by a test to float32 rounding; JAX's
  moments have no such stop, and the copy changes nothing there).
- Top eigenvalue: Lanczos from a random start v0 (START), full reorthogonalisation, one H v per
  iteration. Rule: stop at the first iteration k whose top Ritz pair (theta, u) has residual
  |H u - theta u| = beta_k |s_k| <= tol |theta| (s_k: the last entry of theta's eigenvector of the
  tridiagonal T_k), or when the Krylov space is invariant (beta_k ~ 0). Then some eigenvalue of H lies
  within the residual of theta, and theta <= lambda_max (Ritz values lie inside the spectrum), both
  up to float32 rounding (H v and the stored Lanczos vectors are float32: about 1e-8 |theta| in
  the tests). With a random v0, that eigenvalue is lambda_max with probability 1 in exact
  arithmetic; the spread over draws checks it. Unlike power iteration (PyHessian) Lanczos finds
  the largest eigenvalue, not the largest in magnitude, and states its error. Not converged within
  `iterations`: reported as such (theta is then only a lower bound on lambda_max): each draw records
  `converged`, the record `converged_draws` and `lower_bound`, and every table marks the value as
  a lower bound (analysis/hessian_tables.py). The smallest Ritz
  value is reported too: an upper bound on lambda_min, so a negative one says x is not a minimum.
- Trace: Hutchinson, tr(H) ~ mean over m Rademacher probes z of z^T H z (PROBES), with standard
  error std(z^T H z) / sqrt(m). Exact for a diagonal H (z_i^2 = 1).
- Spread: each estimate that draws something (v0, the probes, Metric 2.1's A, the filter-normalised
  directions of filter_landscape.py) is repeated over `draws` independent draws: mean, sample
  standard deviation (ddof 1) and the number of draws. Draw d of A is sharpness seed + d, so draw 0
  is the run's own random-subspace A.
Cost, in passes (one compiled pass per evaluation batch): an H v costs one forward-over-reverse
pass per batch (1.35 s for F1 on 10,000 examples on a 2-core CPU under TensorFlow:
results/hessian-quick's top_eigenvalue.json); the eigenvalue costs `products` of them per draw
(9-11 for F1 at tol 1e-3), the trace `probes` per draw, a Metric 2.1 solve its
`function_evaluations` gradient passes, the filter-normalised slices one forward pass per point
(filter_landscape.py); every record holds its products, passes (or evaluations) and seconds.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from replication import backend, data, models, storage
from replication import config as config_lib
from replication.measure import filter_landscape, reparametrize, sharpness

START = "v0 = g / |g|, g = NumPy default_rng([seed, draw, 1]).standard_normal(n) (float64)"
PROBES = ("z = 2 b - 1, b = NumPy default_rng([seed, draw, 2]).integers(0, 2, n) drawn probe after probe "
          "(Rademacher), float32")
RULE = ("Lanczos, full reorthogonalisation; stop at the first k with beta_k |s_k| <= tol |theta_top| "
        "(residual of the top Ritz pair) or beta_k <= 1e-12 |T_k| (invariant subspace)")
MEASURES = config_lib.HESSIAN_MEASURES
# The options and their defaults: those of a config's `hessian` section (one home, config.py).
DEFAULTS = {field.name: field.default for field in dataclasses.fields(config_lib.HessianConfig)
            if field.name not in ("enabled", "measures", "kinds")}


class _SecondOrderBatchStatNormalization(models.BatchStatNormalization):
    """BatchStatNormalization with the batch variance computed as mean((h - mean)^2), every
    derivative kept (see the module docstring); the same values as the original."""

    def call(self, inputs, training=None):
        axes = list(range(len(inputs.shape) - 1))
        mean = ops.mean(inputs, axis=axes, keepdims=True)
        variance = ops.mean(ops.square(inputs - mean), axis=axes, keepdims=True)
        return (inputs - mean) * ops.rsqrt(variance + self.epsilon) * self.gamma + self.beta


def second_order_model(model) -> keras.Model:
    """A copy of `model` (same weights, same trainable-variable order) whose batch-statistics
    normalisation has correct second derivatives on every backend."""
    def clone(layer):
        if type(layer) is models.BatchStatNormalization:
            return _SecondOrderBatchStatNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    shapes = [[tuple(v.shape) for v in m.trainable_variables] for m in (copy, model)]
    if shapes[0] != shapes[1]:
        raise ValueError(f"the second-order copy of {model.name} orders its variables differently")
    return copy


def curvature_objective(model, inputs, labels, batch_size: int):
    """An objective.Objective of `second_order_model(model)` on (inputs, labels): the H v of f."""
    from replication import objective as objective_lib

    return objective_lib.Objective(second_order_model(model), inputs, labels, batch_size)


def _product(objective, x, vector: np.ndarray) -> np.ndarray:
    hv = np.asarray(objective.hessian_vector_product(x, ops.convert_to_tensor(vector.astype(np.float32))),
                    np.float64)
    if not np.isfinite(hv).all():
        raise ArithmeticError("H v is not finite")
    return hv


def top_eigenvalue(objective, x, iterations: int = DEFAULTS["iterations"], tol: float = DEFAULTS["tol"],
                   seed: int = 0, draw: int = 0) -> dict:
    """lambda_max of H at x by Lanczos (RULE); `objective` needs hessian_vector_product(x, v) and
    dimension. Returns eigenvalue (the top Ritz value), residual, converged, products (H v used),
    lowest_ritz_value (the smallest Ritz value, an upper bound on lambda_min: negative means x is
    not a minimum of f), seconds."""
    if iterations < 1 or not tol > 0:
        raise ValueError(f"iterations must be >= 1 and tol > 0, got {iterations} and {tol}")
    from scipy.linalg import eigh_tridiagonal

    tick = time.perf_counter()
    n = objective.dimension
    start = np.random.default_rng([seed, draw, 1]).standard_normal(n)
    basis = np.empty((min(iterations, n), n), np.float32)  # the Lanczos vectors, float32 to save memory
    v = start / np.linalg.norm(start)
    alphas, betas = [], []
    result = {"converged": False, "invariant_subspace": False}
    for k in range(min(iterations, n)):
        basis[k] = v
        w = _product(objective, x, v)
        alphas.append(float(w @ v))
        w -= alphas[-1] * v + (betas[-1] * basis[k - 1] if k else 0.0)
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough"), in float32 BLAS
            w -= basis[:k + 1].T @ (basis[:k + 1] @ w.astype(np.float32))
        beta = float(np.linalg.norm(w))
        theta, vectors = eigh_tridiagonal(np.array(alphas), np.array(betas)) if k else \
            (np.array(alphas), np.ones((1, 1)))
        residual = beta * abs(vectors[-1, -1])
        low_residual = beta * abs(vectors[-1, 0])
        scale = max(abs(theta[0]), abs(theta[-1]))
        result.update(eigenvalue=float(theta[-1]), residual=float(residual), products=k + 1,
                      lowest_ritz_value=float(theta[0]), lowest_residual=float(low_residual))
        if beta <= 1e-12 * scale or k + 1 == n:
            result.update(converged=True, invariant_subspace=True)
            break
        if residual <= tol * abs(theta[-1]):
            result["converged"] = True
            break
        betas.append(beta)
        v = w / beta
    result.update(iterations_limit=iterations, tol=tol, seed=seed, draw=draw,
                  seconds=time.perf_counter() - tick)
    return result


def trace(objective, x, probes: int = DEFAULTS["probes"], seed: int = 0, draw: int = 0) -> dict:
    """tr(H) at x by Hutchinson with `probes` Rademacher probes (PROBES): trace (their mean),
    standard_error (std / sqrt(probes), None for one probe), values (each z^T H z), products."""
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    tick = time.perf_counter()
    rng = np.random.default_rng([seed, draw, 2])
    values = []
    for _ in range(probes):
        z = (2 * rng.integers(0, 2, objective.dimension) - 1).astype(np.float32)
        values.append(float(z.astype(np.float64) @ _product(objective, x, z)))
    return {"trace": float(np.mean(values)),
            "standard_error": float(np.std(values, ddof=1) / math.sqrt(probes)) if probes > 1 else None,
            "values": values, "products": probes, "seed": seed, "draw": draw,
            "seconds": time.perf_counter() - tick}


def spread(values) -> dict:
    """mean, sample standard deviation (ddof 1; None for one draw) and the number of draws."""
    values = [float(v) for v in values]
    if not values:
        return {"mean": None, "std": None, "draws": 0}
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "draws": len(values)}


def over_draws(estimate, draws: int, key: str) -> dict:
    """estimate(draw) for draw = 0 .. draws-1: {"per_draw": [each result], "spread": spread of `key`}."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    results = [estimate(draw) for draw in range(draws)]
    return {"per_draw": results, "spread": spread(r[key] for r in results if r.get(key) is not None)}


# A saved run -------------------------------------------------------------------------------------

def result_path(run_dir, name: str) -> Path:
    return Path(run_dir) / "hessian" / f"{name}.json"


class _Context:
    """A finished run and what its measures share, each made once on first use: the examples,
    f's objective (the one sharpness uses) and the second-order objective for H v."""

    def __init__(self, run_dir, options: dict, log):
        from replication import rundir

        self.run = rundir.load_run(run_dir)
        if self.run.metrics["diverged"]:
            raise rundir.RunError(f"{self.run.path} diverged (epoch {self.run.metrics['diverged_epoch']}): "
                                 "it has no minimiser whose Hessian could be measured")
        self.options, self.log = options, log
        self.batch_size = self.run.config.eval_batch_size
        self.digest = storage.weights_digest(self.run.model.get_weights())
        self._made = {}

    def _once(self, key, make):
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def examples(self):
        from replication import rundir

        return self._once("examples", lambda: rundir.training_examples(self.run.config,
                                                                      self.run.config.sharpness.subset))

    def objective(self):
        from replication import objective as objective_lib

        return self._once("f", lambda: objective_lib.Objective(self.run.model, *self.examples(),
                                                               self.batch_size))

    def curvature(self):
        return self._once("h", lambda: curvature_objective(self.run.model, *self.examples(), self.batch_size))

    def phi_full(self, epsilon: float) -> dict:
        """Metric 2.1 in the full space at the run's own weights (shared by both transformations)."""
        return self._once("phi_full", lambda: _phi_full(self, self.run.model.get_weights(), epsilon))

    def settings(self, **specific) -> dict:
        config = self.run.config
        return {**specific, "subset": config.sharpness.subset, "eval_batch_size": config.eval_batch_size,
                "batchnorm": config.batchnorm, "backend": backend.name(), "passes": backend.PASSES,
                "weights_digest": self.digest, **data.measured_examples(config.sharpness.subset)}

    def record(self, name: str, settings: dict, compute, force: bool, summary) -> dict:
        """The result `name`: reused if its settings match, else computed and written atomically;
        one line printed either way."""
        from replication import rundir

        path = result_path(self.run.path, name)
        with storage.locked(path.with_suffix(".lock")):
            if (record := storage.reusable(path, settings, force, self.log)) is None:
                tick = time.time()
                body = compute()
                examples = len(self.examples()[0])
                record = {"measure": name, "run": str(self.run.path), "network": self.run.config.network,
                          "dataset": self.run.config.dataset, "regime": self.run.metrics["regime"],
                          "run_seed": self.run.metrics["seed"], **body, "settings": settings,
                          "num_examples": examples, "batches_per_pass": math.ceil(examples / self.batch_size),
                          "wall_seconds": round(time.time() - tick, 3),
                          "environment": rundir.environment(self.options["seed"])}
                storage.atomic_write_json(path, record)
        print(f"[{self.run.path}] {name}: {summary(record)} ({record['wall_seconds']:.1f} s) -> {path}",
              file=self.log, flush=True)
        return record


def _format(s: dict) -> str:
    if s["mean"] is None:
        return "not measured"
    if s["std"] is None:
        return f"{s['mean']:.4g} (1 draw)"
    return f"{s['mean']:.4g} ± {s['std']:.2g} (sample std over {s['draws']} draws)"


def measure_run(run_dir, measures=MEASURES, kinds=reparametrize.KINDS, force: bool = False, log=None,
                **options) -> list[dict]:
    """The Hessian measures of a finished run, each written to RUN_DIR/hessian/<name>.json and
    reused when its settings match: top_eigenvalue, trace, sharpness_random_eps<eps> (Metric 2.1 in
    random subspaces over draws of A), filter_landscape (filter-normalised slices: the rises over
    draws in the JSON, the slices in filter_landscape_1d.csv and _2d.csv, a figure beside them) and
    reparametrization_<kind>_a<factor> (which needs the first two and the filter landscape).
    Options and their defaults: DEFAULTS (config.HessianConfig: draws 3, iterations 100, tol 1e-3,
    probes 20, seed 0, factor 10, epsilon 1e-3, points 41, grid 11, span 1)."""
    for given, known, what in ((options, DEFAULTS, "option"), (measures, MEASURES, "measure"),
                               (kinds, reparametrize.KINDS, "reparametrisation")):
        if unknown := sorted(set(given) - set(known)):
            raise config_lib.ConfigError(f"hessian: unknown {what} {', '.join(map(str, unknown))}: "
                                         f"use {', '.join(known)}")
    o = {**DEFAULTS, **options}
    _validate(o)
    context = _Context(run_dir, o, log or sys.stderr)
    for kind in kinds if "reparametrization" in measures else ():
        try:  # before anything is measured: a network the transformation cannot preserve
            reparametrize.scalings(context.run.model, kind, o["factor"])
        except ValueError as err:
            others = [k for k in kinds if k != kind]
            raise config_lib.ConfigError(
                f"hessian: the {kind!r} reparametrisation cannot be applied to {context.run.path}: {err}; leave "
                f"it out ({'--kinds ' + ','.join(others) if others else '--measures without reparametrization'})") \
                from None
    records, base = [], {}
    eigenvalue_settings = context.settings(measure="top eigenvalue of H", rule=RULE, start=START,
                                           iterations=o["iterations"], tol=o["tol"], seed=o["seed"],
                                           draws=o["draws"])
    trace_settings = context.settings(measure="trace of H (Hutchinson)", probe_distribution=PROBES,
                                      probes=o["probes"], seed=o["seed"], draws=o["draws"])

    def eigenvalues():
        h = context.curvature()
        draws = over_draws(lambda d: top_eigenvalue(h, h.get_flat(), o["iterations"], o["tol"], o["seed"], d),
                           o["draws"], "eigenvalue")
        converged = sum(d["converged"] for d in draws["per_draw"])
        # An unconverged draw's theta is below lambda_max, so their mean is only a lower bound.
        return {**draws, "converged_draws": converged, "lower_bound": converged < len(draws["per_draw"]),
                "rule": RULE, "start": START}

    def traces():
        h = context.curvature()
        draws = over_draws(lambda d: trace(h, h.get_flat(), o["probes"], o["seed"], d), o["draws"], "trace")
        return {**draws, "probe_distribution": PROBES}

    if "eigenvalue" in measures or "reparametrization" in measures:
        base["eigenvalue"] = context.record(
            "top_eigenvalue", eigenvalue_settings, eigenvalues, force,
            lambda r: f"lambda_max {'>=' if _lower_bound(r) else '='} {_format(r['spread'])}, "
                      f"{sum(d['products'] for d in r['per_draw'])} H v products, "
                      f"{sum(d['converged'] for d in r['per_draw'])} of {r['spread']['draws']} draws converged"
                      + (" (a lower bound: raise --iterations)" if _lower_bound(r) else ""))
        records.append(base["eigenvalue"])
    if "trace" in measures or "reparametrization" in measures:
        base["trace"] = context.record(
            "trace", trace_settings, traces, force,
            lambda r: f"tr(H) = {_format(r['spread'])}, {o['probes']} probes per draw (standard error "
                      f"{r['per_draw'][0]['standard_error']:.2g} in draw 0)")
        records.append(base["trace"])
    filter_settings = context.settings(
        measure="filter-normalised slices of f", reference=filter_landscape.REFERENCE,
        direction=filter_landscape.DIRECTION, rise=filter_landscape.RISE,
        rise_steps=list(filter_landscape.RISE_STEPS), seed=o["seed"], draws=o["draws"], points=o["points"],
        grid=o["grid"], span=o["span"])
    if "filter" in measures or "reparametrization" in measures:
        base["filter"] = _filter_record(context, filter_settings, o, force)
        records.append(base["filter"])
    if "sharpness" in measures:
        cfg = context.run.config.sharpness
        settings = context.settings(
            measure=sharpness.METRIC + ", random subspace, over draws of A", epsilon=o["epsilon"], p=cfg.dim,
            sharpness_iterations=cfg.iterations, start=cfg.start, restarts=cfg.restarts,
            a_seeds=[cfg.seed + d for d in range(o["draws"])], a_distribution=sharpness.A_DISTRIBUTION,
            block_rows=sharpness.BLOCK_ROWS)
        records.append(context.record(
            f"sharpness_random_eps{o['epsilon']:g}", settings, lambda: _sharpness_draws(context, o), force,
            lambda r: f"phi (random subspace, eps {o['epsilon']:g}, p {cfg.dim}) = {_format(r['spread'])}"))
    if "reparametrization" in measures:
        for kind in kinds:
            settings = context.settings(
                measure="measures under a function-preserving transformation", kind=kind, factor=o["factor"],
                epsilon=o["epsilon"], sharpness_iterations=context.run.config.sharpness.iterations,
                eigenvalue=eigenvalue_settings, trace=trace_settings, filter=filter_settings)
            records.append(context.record(f"reparametrization_{kind}_a{o['factor']:g}", settings,
                                          lambda kind=kind: _reparametrized(context, kind, o, base), force,
                                          _reparametrized_summary))
    return records


def _lower_bound(record: dict) -> bool:
    """Did some draw of a top_eigenvalue record not converge (its value then a lower bound)?"""
    return not all(d["converged"] for d in record["per_draw"])


def last_result(run_dir, measures, kinds, factor: float, epsilon: float) -> Path:
    """The file measure_run writes last for these measures and options (make's target)."""
    if "reparametrization" in measures:
        return result_path(run_dir, f"reparametrization_{kinds[-1]}_a{factor:g}")
    order = (("eigenvalue", "top_eigenvalue"), ("trace", "trace"), ("filter", "filter_landscape"),
             ("sharpness", f"sharpness_random_eps{epsilon:g}"))
    return result_path(run_dir, [name for measure, name in order if measure in measures][-1])


def _validate(o: dict) -> None:
    """The options obey the rules of a config's `hessian` section (config.HessianConfig.validate)."""
    dataclasses.replace(config_lib.HessianConfig(), **o).validate("hessian (command-line options)")


def filter_csv_paths(run_dir) -> tuple[Path, Path]:
    """The 1-D and 2-D slices of the filter_landscape record (written before its JSON)."""
    folder = Path(run_dir) / "hessian"
    return folder / "filter_landscape_1d.csv", folder / "filter_landscape_2d.csv"


def _filter_rises(slicer, directions: list) -> dict:
    """The rises r(t) of filter_landscape.RISE_STEPS along each direction from the slicer's x;
    `rise` is the mean at HEADLINE_STEP (the scalar of the tables)."""
    rises = filter_landscape.rises(slicer, directions)
    headline = rises[f"t={filter_landscape.HEADLINE_STEP:g}"]
    return {"rise": float(np.mean(headline)), "per_draw": headline, "rises": rises, "f_x": slicer.at()[0],
            "step": filter_landscape.HEADLINE_STEP}


def _directions(objective, x, o: dict, count: int) -> list:
    return [filter_landscape.direction(objective.shapes, x, o["seed"], index) for index in range(count)]


def _filter_record(context, settings: dict, o: dict, force: bool) -> dict:
    """filter_landscape.json (rises over draws) after its two CSVs, and the run's figure drawn from them."""
    csvs = filter_csv_paths(context.run.path)

    def compute():
        f = context.objective()
        x = ops.convert_to_numpy(f.get_flat()).astype(np.float64)
        slicer = filter_landscape.Slicer(f, x)
        directions = _directions(f, x, o, max(o["draws"], 2))  # the 2-D slice uses draws 0 and 1
        ts = filter_landscape.steps(o["span"], o["points"])
        rows_1d = [{"draw": i, **row} for i in range(o["draws"]) for row in slicer.line(i, directions[i], ts)]
        rows_2d = slicer.plane(directions[0], directions[1], filter_landscape.steps(o["span"], o["grid"]))
        rises = _filter_rises(slicer, directions[:o["draws"]])
        storage.atomic_write_csv(csvs[0], rows_1d, filter_landscape.COLUMNS_1D)
        storage.atomic_write_csv(csvs[1], rows_2d, filter_landscape.COLUMNS_2D)
        return {**rises, "spread": spread(rises["per_draw"]),
                "rise_spreads": {step: spread(values) for step, values in rises["rises"].items()},
                "direction_norms": [float(np.linalg.norm(d)) for d in directions[:o["draws"]]],
                "x_norm": float(np.linalg.norm(x)), "evaluations": slicer.evaluations,
                "csv": [path.name for path in csvs]}

    missing = not all(path.exists() for path in csvs)
    record = context.record(
        "filter_landscape", settings, compute, force or missing,
        lambda r: f"filter-normalised rise at t = {r['step']:g}: {_format(r['spread'])} over f(x) = "
                  f"{r['f_x']:.4g}, {r['evaluations']} evaluations of f")
    stem = filter_landscape.figure_stem(csvs[0])
    if force or missing or not (stem.with_suffix(".png").exists() and stem.with_suffix(".pdf").exists()):
        run = context.run
        label = f"{run.config.network} {run.metrics['regime'].upper()} seed {run.metrics['seed']}"
        filter_landscape.draw(stem, {label: tuple(storage.read_csv(path) for path in csvs)})
    return record


def _sharpness_draws(context, o) -> dict:
    """Metric 2.1 in random subspaces, A drawn from sharpness.seed + draw (draw 0: the run's own A)."""
    cfg = context.run.config.sharpness
    kept = ("phi", "failed", "failure", "f_x", "max_f", "function_evaluations", "seconds", "solves")

    def solve(draw):
        result = sharpness.measure(context.run.model, None, None, context.batch_size, o["epsilon"], "random",
                                   cfg.dim, cfg.iterations, cfg.start, cfg.restarts, cfg.seed + draw,
                                   objective=context.objective())
        return {key: result[key] for key in kept} | {"a_seed": cfg.seed + draw}

    return over_draws(solve, o["draws"], "phi")


def _phi_full(context, weights: list, epsilon: float) -> dict:
    """Metric 2.1 in the full space (sharpness.measure) of the run's model holding `weights`."""
    model = context.run.model
    saved = model.get_weights()
    try:
        model.set_weights(weights)
        result = sharpness.measure(model, None, None, context.batch_size, epsilon, "full",
                                   iterations=context.run.config.sharpness.iterations,
                                   objective=context.objective())
    finally:
        model.set_weights(saved)
    # "solves" keeps each solve's status: one that stopped at its iteration cap is a lower bound.
    return {key: result[key] for key in ("phi", "failed", "f_x", "max_f", "function_evaluations", "seconds", "solves")}


def _reparametrized(context, kind: str, o: dict, base: dict) -> dict:
    """Every measure before and after the transformation (draw 0 of the eigenvalue and trace: the
    same v0 and probes on both sides), the ratio after / before, and the output change."""
    model, a = context.run.model, o["factor"]
    x = np.asarray(context.curvature().get_flat(), np.float64)
    x_new = ops.convert_to_tensor((x * reparametrize.factors(model, kind, a)).astype(np.float32))
    change = reparametrize.output_change(model, kind, a, context.examples()[0], context.batch_size)
    filter_before = base["filter"]
    before = {"phi_full": context.phi_full(o["epsilon"]),
              "top_eigenvalue": base["eigenvalue"]["per_draw"][0], "trace": base["trace"]["per_draw"][0],
              "filter_rise": {key: filter_before[key] for key in ("rise", "per_draw", "rises", "f_x", "step")}}
    h, f = context.curvature(), context.objective()
    x_after = ops.convert_to_numpy(x_new).astype(np.float64)
    after = {"phi_full": _phi_full(context, reparametrize.transformed_weights(model, kind, a), o["epsilon"]),
             "top_eigenvalue": top_eigenvalue(h, x_new, o["iterations"], o["tol"], o["seed"]),
             "trace": trace(h, x_new, o["probes"], o["seed"]),
             # the same seeds: each direction is drawn anew and filter-normalised at the new point
             "filter_rise": _filter_rises(filter_landscape.Slicer(f, x_after),
                                          _directions(f, x_after, o, o["draws"]))}
    keys = {"phi_full": "phi", "top_eigenvalue": "eigenvalue", "trace": "trace", "filter_rise": "rise"}
    ratios = {}
    for name, key in keys.items():
        b, a_value = before[name].get(key), after[name].get(key)
        ratios[name] = None if b in (None, 0) or a_value is None else a_value / b
    spreads = {"top_eigenvalue": base["eigenvalue"]["spread"], "trace": base["trace"]["spread"],
               "filter_rise": base["filter"]["spread"]}
    return {"kind": kind, "factor": a, "reference": reparametrize.REFERENCE,
            "scaled_variables": [[path, f] for path, f in reparametrize.scalings(model, kind, a)],
            "output_change": change, "before": before, "after": after, "ratio_after_to_before": ratios,
            "spread_before": spreads, "moved_rule": MOVED_RULE,
            "moved": {name: _moved(name, ratios[name], before[name], after[name], spreads.get(name))
                      for name in keys}}


MOVED_RULE = ("moved: |after / before - 1| exceeds the estimate's own relative error: for lambda_max the "
              "larger of the two Lanczos residuals and 3 sample std over draws (relative to the mean), not judged "
              "(null) where either Lanczos did not converge (a lower bound); for "
              "the trace 3 sqrt(SE_before^2 + SE_after^2) and 3 sample std over draws; for phi (no draw, "
              "deterministic passes) and the filter-normalised rise (the mean over the same seeded "
              "directions on both sides, deterministic passes) 1%")


def _moved(name: str, ratio, before: dict, after: dict, spread) -> bool | None:
    """MOVED_RULE: does the measure change beyond its own error?"""
    if ratio is None:
        return None

    def relative(error, value):
        return error / abs(value) if value else math.inf

    relative_spread = 0.0
    if spread and spread["std"] is not None:
        relative_spread = relative(3 * spread["std"], spread["mean"])
    if name == "top_eigenvalue":
        if not (before.get("converged", True) and after.get("converged", True)):
            return None  # a lower bound on either side: no change can be told from the bound
        error = max(relative(before["residual"], before["eigenvalue"]),
                    relative(after["residual"], after["eigenvalue"]), relative_spread)
    elif name == "trace":
        error = max(relative(3 * math.hypot(before["standard_error"] or 0.0, after["standard_error"] or 0.0),
                             before["trace"]), relative_spread)
    else:
        error = 0.01
    return bool(abs(ratio - 1.0) > error)


def _reparametrized_summary(r: dict) -> str:
    ratios = ", ".join(f"{name} x{ratio:.3g}" if ratio is not None else f"{name} n/a"
                       for name, ratio in r["ratio_after_to_before"].items())
    change = r["output_change"]
    return (f"{r['kind']} a={r['factor']:g}: outputs change by at most "
            f"{change['max_abs_probability_change']:.2g} ({change['predictions_changed']} predictions "
            f"changed); after / before: {ratios}")
