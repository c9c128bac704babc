"""Sharpness, Metric 2.1 of Keskar et al. (2017), section 2.2.1 (PAPER.md "Sharpness").

    C_eps = { y in R^p : |y_i| <= eps * (|(A+ x)_i| + 1) }
    phi(x, f, eps, A) = (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x)) * 100

Paper symbols -> code: x is `x`, the flat vector of the run's trainable variables
(objective.Objective order); f is the mean training cross-entropy computed by objective.Objective
(the run's batch-norm semantics and evaluation batch size); eps is `epsilon`; A is `subspace`
(None for the full space A = I_n, else a RandomSubspace); y is the solver's variable; phi is `phi`.

Choices where the paper is silent:
- Random subspace: A is n x p (p = 100) with i.i.d. standard normal entries, float32, drawn by
  NumPy's PCG64 generator seeded by (seed, row block) in blocks of BLOCK_ROWS rows, so a seed
  means the same A on every backend (results before the JAX port drew A with TensorFlow's
  Philox generator; each result file names its generator). A is held on the device when
  n*p*4 bytes <= `materialize_bytes` (8 GiB: F1-C4 at p = 100) and
  otherwise regenerated block by block inside every product (the same numbers either way), so a
  device without room for A still works.
- A+ x = (A^T A)^-1 A^T x (A has full column rank with probability 1 when p <= n), with the
  p x p Gram matrix and A^T x accumulated in float64 block by block; a float64 n x p never exists.
- The maximisation is SciPy's L-BFGS-B (its compiled routine, see `lbfgsb`) on -f over y,
  `iterations` iterations (the paper: 10), from y = 0 (or uniform in the box per restart), with
  memory 10 and at most 20 line-search steps (SciPy's defaults). gtol = ftol = 0: SciPy's default tolerances are
  absolute and would call a flat minimum (gradient entries < 1e-5) "converged" at y = 0, reporting
  phi = 0; only the iteration cap, an exactly zero projected gradient or a line-search stop end it.
- max f is the largest f at any point evaluated (all inside the box, x itself included), which is
  at least f at the solver's last iterate.
- Failure (phi is None, never 0): f(x) or any f or gradient the solver asks for is not finite, or
  the solve ends with no ascent over its start although the gradient there is not zero (an
  abnormal line-search stop, or SciPy's "relative reduction <= ftol" when a step changed nothing,
  which with ftol = 0 is how a failed line search can also end). Reaching the iteration limit
  (status 1) is the paper's intended inexact solve and is not a failure; nor is phi = 0 at a start
  whose gradient is exactly zero. With restarts, one failed restart fails the result (a non-finite
  f in the box means the max is not measured).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from keras import ops

from replication import backend, data, progress, storage
from replication import config as config_lib

BLOCK_ROWS = 1 << 17            # rows of A generated together; part of A's definition, recorded
# Keep A (float32) on the device up to this size: a product then reads A once (C2/C4's 6 GB:
# milliseconds on an H100), while regenerating it costs a Philox draw of all n*p entries.
MATERIALIZE_BYTES = 8 << 30
METRIC = "sharpness, Keskar et al. (2017) Metric 2.1"
A_DISTRIBUTION = (f"i.i.d. N(0, 1) entries, float32, NumPy default_rng([seed, block]).standard_normal "
                  f"over blocks of {BLOCK_ROWS} rows")
A_PINV = "A+ x = solve(A^T A, A^T x), Gram matrix accumulated in float64 on the host by row blocks"


class _NonFinite(ArithmeticError):
    pass


class RandomSubspace:
    """A (n x p, i.i.d. N(0, 1)) as products: A y, A^T g and A+ x, optionally never materialised.

    A is drawn on the host by NumPy (PCG64 seeded by (seed, block)), so a seed gives the same A on
    every backend and device; the products run on the device in full float32."""

    def __init__(self, n: int, p: int, seed: int, materialize_bytes: int = MATERIALIZE_BYTES,
                 block_rows: int = BLOCK_ROWS):
        if not 1 <= p <= n:
            raise ValueError(f"subspace dimension p={p} must be between 1 and n={n}")
        self.n, self.p, self.seed, self.block_rows = n, p, seed, block_rows
        self.starts = list(range(0, n, block_rows))
        self.materialized = n * p * 4 <= materialize_bytes
        self._dense = (backend.resident(np.concatenate([self._generate(i) for i in range(len(self.starts))]))
                       if self.materialized else None)

    def _generate(self, index: int) -> np.ndarray:
        rows = min(self.block_rows, self.n - self.starts[index])
        return np.random.default_rng([self.seed, index]).standard_normal((rows, self.p), dtype=np.float32)

    def _host_blocks(self):
        for index, start in enumerate(self.starts):
            yield start, min(start + self.block_rows, self.n), self._generate(index)

    def matvec(self, y):
        """A y (float32 tensor of length n) for y of length p."""
        y = ops.convert_to_tensor(y, "float32")
        with backend.float32_matmuls():
            if self.materialized:
                return ops.matmul(self._dense, y)
            return ops.concatenate([ops.matmul(backend.resident(block), y)
                                    for _, _, block in self._host_blocks()], axis=0)

    def rmatvec(self, g):
        """A^T g (float32 tensor of length p) for g of length n."""
        g = ops.convert_to_tensor(g, "float32")
        with backend.float32_matmuls():
            if self.materialized:
                return ops.matmul(g, self._dense)
            total = None
            for start, stop, block in self._host_blocks():
                part = ops.matmul(g[start:stop], backend.resident(block))
                total = part if total is None else total + part
            return total

    def pinv(self, x) -> np.ndarray:
        """A+ x in float64 on the host: solve(A^T A, A^T x), both accumulated block by block."""
        x = np.asarray(x, np.float64)
        gram = np.zeros((self.p, self.p))
        atx = np.zeros(self.p)
        for start, stop, block in self._host_blocks():
            block = block.astype(np.float64)
            gram += block.T @ block
            atx += block.T @ x[start:stop]
        return np.linalg.solve(gram, atx)

    def dense(self) -> np.ndarray:
        """A as a float32 NumPy array (for tests and small n only)."""
        return np.concatenate([block for _, _, block in self._host_blocks()], axis=0)


def maximize(objective, x, epsilon: float, subspace=None, iterations: int = 10, start: str = "zero",
             restarts: int = 1, seed: int = 0) -> dict:
    """max_{y in C_eps} f(x + A y) by L-BFGS-B, and phi. Works on any objective-like object.

    `objective` needs value_and_gradient(flat float32 tensor) -> (f, grad f) (tensors or arrays);
    `subspace` (None = A = I) needs matvec(y), rmatvec(g) -> tensors or arrays, pinv(x) and p.
    Returns a dict: phi (None on failure), phi_std, phi_values, f_x, max_f, failed, failure,
    function_evaluations (passes of the objective, f(x) included), solves (one per restart) and
    y_max (the best y found, a NumPy array).
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if start not in ("zero", "random"):
        raise ValueError(f"start must be 'zero' or 'random', got {start!r}")
    x = ops.convert_to_tensor(x, "float32")
    started = time.perf_counter()
    bound = box_bounds(x, epsilon, subspace)
    passes = _Passes(objective, x, subspace)
    result = {"f_x": None, "max_f": None, "phi": None, "phi_std": None, "phi_values": [],
              "failed": True, "failure": None, "solves": [], "y_max": None,
              "bound_seconds": time.perf_counter() - started}
    try:
        f_x, grad_x = passes(np.zeros(len(bound)))
    except _NonFinite as err:
        result.update(failure=f"f(x) is not finite: {err}", function_evaluations=passes.count,
                      seconds=time.perf_counter() - started)
        return result
    result["f_x"] = f_x
    # y = 0 gives the same point for every restart, so zero-start solves once.
    for restart in range(restarts if start == "random" else 1):
        y0 = (np.zeros(len(bound)) if start == "zero"
              else np.random.default_rng([seed, 1, restart]).uniform(-bound, bound))
        # SciPy evaluates y = 0 first on a zero start: that solve reuses the f(x) pass.
        solve, best_y = _solve(passes, y0, bound, iterations, f_x,
                               at_zero=(f_x, grad_x) if start == "zero" else None)
        solve = {"restart": restart, **solve}
        result["solves"].append(solve)
        if solve["max_f"] is not None and (result["max_f"] is None or solve["max_f"] > result["max_f"]):
            result.update(max_f=solve["max_f"], y_max=best_y)
    failures = [s["failure"] for s in result["solves"] if s["failure"]]
    values = [s["phi"] for s in result["solves"] if not s["failure"]]
    result.update(failed=bool(failures), failure="; ".join(failures) or None, phi_values=values,
                  function_evaluations=passes.count, seconds=time.perf_counter() - started)
    if not failures:
        result.update(phi=float(np.mean(values)),
                      phi_std=float(np.std(values, ddof=1)) if len(values) > 1 else None)
    return result


def box_bounds(x, epsilon: float, subspace=None) -> np.ndarray:
    """The half-widths of C_eps: |y_i| <= eps (|(A+ x)_i| + 1) (Metric 2.1), float64 for SciPy."""
    coordinates = np.abs(np.asarray(x, np.float64) if subspace is None else subspace.pinv(x))
    return epsilon * (coordinates + 1.0)


class _Passes:
    """y -> (f(x + A y), A^T grad f) as float64 for SciPy, counting passes of the objective; a
    non-finite f or gradient raises _NonFinite."""

    def __init__(self, objective, x, subspace):
        self.objective, self.x, self.subspace, self.count = objective, x, subspace, 0

    def __call__(self, y):
        self.count += 1
        step = ops.convert_to_tensor(np.asarray(y, np.float32))
        value, grad = self.objective.value_and_gradient(
            self.x + (step if self.subspace is None else self.subspace.matvec(step)))
        if self.subspace is not None:
            grad = self.subspace.rmatvec(grad)
        value, grad = float(value), np.asarray(grad, np.float64)
        if not (math.isfinite(value) and np.isfinite(grad).all()):
            raise _NonFinite(f"f or its gradient is not finite (f = {value}) at evaluation {self.count}")
        return value, grad


def _solve(passes: _Passes, y0, bound, iterations: int, f_x: float,
           at_zero=None) -> tuple[dict, np.ndarray | None]:
    """One L-BFGS-B ascent from y0 inside the box: (its record, the best y it evaluated).

    `at_zero`: (f, grad) already known at y = 0, used for the solver's first request there.
    The record's max_f is never below f(x) (y = 0 is in the box); a stop that leaves f where it
    started although the gradient there is not zero is a failure (SciPy's "converged" when a step
    changed nothing, or an abnormal line search), as is a non-finite pass."""
    tick, first_pass = time.perf_counter(), passes.count
    best = {"f": -math.inf, "y": None}
    first = {}

    def negated(y):
        if at_zero is not None and passes.count == first_pass and not y.any():
            value, grad = at_zero
        else:
            value, grad = passes(y)
        if not first:
            first.update(f=value, moving=bool(np.any(grad != 0)))
        if value > best["f"]:
            best.update(f=value, y=y.copy())
        return -value, -grad

    shown = progress.bar(iterations, unit="iteration", shown=("max f",))  # draws only on a terminal
    try:
        answer = lbfgsb(negated, y0, -bound, bound, iterations,
                        on_iteration=lambda nit: shown.update(nit, [("max f", best["f"])]))
        shown.update(answer["nit"], [("max f", best["f"])], finalize=True)  # a solve may stop early
        solve = dict(status=answer["status"], message=answer["message"], iterations=answer["nit"],
                     solver_final_f=-answer["fun"], solver_seconds=answer["solver_seconds"], failure=None)
        if first["moving"] and not best["f"] > first["f"]:
            solve["failure"] = "no ascent from the start although its gradient is not zero: " + answer["message"]
    except _NonFinite as err:
        solve = dict(status=None, message=str(err), iterations=None, solver_final_f=None,
                     solver_seconds=None, failure=str(err))
    max_f = max(best["f"], f_x) if math.isfinite(best["f"]) else None
    solve.update(max_f=max_f, function_evaluations=passes.count - first_pass,
                 phi=None if solve["failure"] or max_f is None else phi_value(f_x, max_f),
                 seconds=time.perf_counter() - tick)
    return solve, best["y"]


def lbfgsb(fun, x0, lower, upper, iterations: int, maxcor: int = 10, maxls: int = 20,
           on_iteration=None) -> dict:
    """Minimise fun (x -> (f, grad), float64) over lower <= x <= upper with SciPy's L-BFGS-B.

    This is SciPy's compiled L-BFGS-B (`_lbfgsb.setulb`, SciPy >= 1.15) driven exactly as
    scipy.optimize.minimize(method="L-BFGS-B", options={"maxiter": iterations, "gtol": 0,
    "ftol": 0}) drives it (a test checks identical iterates), without minimize's Python loops
    over every coordinate's bounds: those take seconds for F1 and minutes and gigabytes for the
    15M-parameter C2/C4, once per solve. Returns status (0 converged, 1 iteration limit,
    2 other), message, nit, nfev, fun, x and solver_seconds (time inside setulb).
    `on_iteration(nit)` is called after each completed iteration (a progress bar).
    """
    from scipy.optimize import _lbfgsb, _lbfgsb_py

    n, m = len(x0), maxcor
    lower, upper = np.asarray(lower, np.float64).copy(), np.asarray(upper, np.float64).copy()
    x = np.clip(np.asarray(x0, np.float64), lower, upper)
    nbd = np.full(n, 2, np.int32)  # 2: both bounds finite
    f, g = np.array(0.0), np.zeros(n)
    wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m)
    iwa = np.zeros(3 * n, np.int32)
    task, ln_task, lsave = np.zeros(2, np.int32), np.zeros(2, np.int32), np.zeros(4, np.int32)
    isave, dsave = np.zeros(44, np.int32), np.zeros(29)
    nit = nfev = 0
    last_x = None
    solver_seconds = 0.0  # inside setulb: the algorithm's own work (Cauchy point, subspace step)
    while True:
        g = g.astype(np.float64)  # a fresh float64 copy each call, as SciPy's own driver does
        tick = time.perf_counter()
        _lbfgsb.setulb(m, x, lower, upper, nbd, f, g, 0.0, 0.0, wa, iwa, task, lsave, isave, dsave,
                       maxls, ln_task)
        solver_seconds += time.perf_counter() - tick
        if task[0] == 3:  # FG: f and g wanted at x
            # The routine may ask again at the point it just had (SciPy's wrapper caches that too):
            # one pass over the training set saved each time.
            if last_x is None or not np.array_equal(x, last_x):
                f, g = fun(x)
                last_x = x.copy()
                nfev += 1
        elif task[0] == 1:  # NEW_X: an iteration is complete
            nit += 1
            if on_iteration is not None:
                on_iteration(nit)
            if nit >= iterations:
                task[0], task[1] = 5, 504
        else:
            break
    status = 0 if task[0] == 4 else 1 if nit >= iterations else 2
    message = _lbfgsb_py.status_messages[task[0]] + ": " + _lbfgsb_py.task_messages[task[1]]
    return {"status": status, "message": message, "nit": nit, "nfev": nfev, "fun": float(f), "x": x,
            "solver_seconds": solver_seconds}


def phi_value(f_x: float, max_f: float) -> float:
    """phi = (max f - f(x)) / (1 + f(x)) * 100 (Metric 2.1)."""
    return (max_f - f_x) / (1.0 + f_x) * 100.0


def measure(model, inputs, labels, batch_size: int, epsilon: float, space: str = "full", dim: int = 100,
            iterations: int = 10, start: str = "zero", restarts: int = 1, seed: int = 0,
            materialize_bytes: int = MATERIALIZE_BYTES, objective=None) -> dict:
    """phi of a Keras model's current weights on (inputs, labels); the weights are left unchanged.

    `objective`: an objective.Objective of this model on these examples, to reuse its compiled
    passes across measurements (inputs, labels and batch_size are then not read)."""
    from replication import objective as objective_lib

    if space not in ("full", "random"):
        raise ValueError(f"space must be 'full' or 'random', got {space!r}")
    saved = model.get_weights()
    try:
        objective = objective or objective_lib.Objective(model, inputs, labels, batch_size)
        tick = time.perf_counter()
        subspace = (RandomSubspace(objective.dimension, dim, seed, materialize_bytes)
                    if space == "random" else None)
        setup = time.perf_counter() - tick
        result = maximize(objective, objective.get_flat(), epsilon, subspace, iterations, start,
                          restarts, seed)
    finally:
        model.set_weights(saved)  # Objective evaluates statelessly; this makes it a guarantee
    result.update(n=objective.dimension, p=dim if space == "random" else objective.dimension,
                  subspace_setup_seconds=setup,
                  subspace_materialized=None if subspace is None else subspace.materialized)
    return result


def result_path(run_dir, space: str, epsilon: float) -> Path:
    return Path(run_dir) / "sharpness" / f"{space}_eps{epsilon:g}.json"


def sharpness(run_dir, epsilon: float, space: str, dim: int | None = None, force: bool = False,
              log=None) -> dict:
    """phi of a finished run for one epsilon and space, with the run's config.sharpness settings.

    The result is `<run_dir>/sharpness/<space>_eps<epsilon>.json`, written atomically; a result
    with identical settings (and the same final weights) is returned without recomputing.
    """
    return sharpness_all(run_dir, [epsilon], [space], dim, force, log)[0]


def sharpness_all(run_dir, epsilons=None, spaces=None, dim: int | None = None, force: bool = False,
                  log=None) -> list[dict]:
    """Every (epsilon, space) asked for (None: all of the run's config.sharpness), in one process:
    the run, its training examples and their compiled objective are loaded once for all of them."""
    from replication import rundir

    return measure_weights(rundir.load_run(run_dir), result_path, epsilons, spaces, dim, force, log)


def lazy_objective(run):
    """A function that returns the Objective of `run.model` on the run's sharpness examples
    (config sharpness.subset), made on its first call only: when every result is reused, no data
    is loaded. The Objective reads the model's weights at each call, so one serves every set of
    weights loaded into the model (a run's iterates)."""
    from replication import objective as objective_lib, rundir

    made = {}

    def objective():
        if not made:
            inputs, labels = rundir.training_examples(run.config, run.config.sharpness.subset)
            made["objective"] = objective_lib.Objective(run.model, inputs, labels, run.config.eval_batch_size)
        return made["objective"]

    return objective


def measure_weights(run, path_of, epsilons=None, spaces=None, dim: int | None = None, force: bool = False,
                    log=None, objective=None, record=None) -> list[dict]:
    """phi of the weights `run.model` holds now (a rundir.Run: its final weights, or an iterate
    loaded into it) for every (epsilon, space) asked for (None: all of the run's config.sharpness),
    with the run's config.sharpness settings. Each result is written atomically at
    `path_of(run.path, space, epsilon)`; one whose settings (the weights' digest included) match is
    returned without recomputing. `objective`: a lazy_objective(run) shared across calls;
    `record`: keys added to each new result (an iterate's epoch)."""
    import dataclasses

    log = log or sys.stderr
    cfg = run.config.sharpness
    p = cfg.dim if dim is None else dim
    epsilons, spaces = tuple(epsilons or cfg.epsilons), tuple(spaces or cfg.spaces)
    # The config's checks apply to the values asked for here too (ConfigError names them).
    dataclasses.replace(cfg, epsilons=epsilons, spaces=spaces, dim=p).validate(
        f"sharpness of {run.path} (epsilon/space/dim)")
    digest = storage.weights_digest(run.model.get_weights())
    objective = objective or lazy_objective(run)
    return [_measure_run(run, epsilon, space, p, digest, objective, force, log,
                         path_of(run.path, space, epsilon), record or {})
            for space in spaces for epsilon in epsilons]


def _measure_run(run, epsilon: float, space: str, p: int, digest: str, objective, force: bool, log,
                 path: Path, extra: dict) -> dict:
    """One result file of measure_weights: reused if its settings match, else measured and written."""
    from replication import rundir

    cfg = run.config.sharpness
    settings = {
        "epsilon": epsilon, "space": space, "p": p if space == "random" else None,
        "iterations": cfg.iterations, "start": cfg.start, "restarts": cfg.restarts,
        "subset": cfg.subset, "seed": cfg.seed, "eval_batch_size": run.config.eval_batch_size,
        "block_rows": BLOCK_ROWS if space == "random" else None,
        "a_distribution": A_DISTRIBUTION if space == "random" else None,
        "backend": backend.name(), "passes": backend.PASSES, "weights_digest": digest,
        **data.measured_examples(cfg.subset),
    }
    with storage.locked(path.with_suffix(".lock")):
        if (previous := storage.reusable(path, settings, force, log)) is not None:
            return previous
        tick = time.time()
        f = objective()
        if space == "random" and p > f.dimension:
            raise config_lib.ConfigError(f"sharpness of {run.path}: a random subspace of p={p} dimensions "
                                         f"needs p <= n = {f.dimension} parameters: lower --dim or sharpness.dim")
        result = measure(run.model, None, None, run.config.eval_batch_size, epsilon, space, p,
                         cfg.iterations, cfg.start, cfg.restarts, cfg.seed, objective=f)
        result.pop("y_max")
        record = {
            "metric": METRIC, "run": str(run.path), "network": run.config.network,
            "dataset": run.config.dataset, "regime": run.metrics["regime"],
            "run_seed": run.metrics["seed"], "diverged_run": run.metrics["diverged"], **extra,
            **result, "epsilon": epsilon, "space": space, "a_seed": cfg.seed if space == "random" else None,
            "a_distribution": A_DISTRIBUTION if space == "random" else "identity (A = I_n)",
            "a_pinv": A_PINV if space == "random" else "A+ = I", "iterations": cfg.iterations,
            "start": cfg.start, "restarts": cfg.restarts, "subset": cfg.subset,
            "num_examples": f.size, "batchnorm": run.config.batchnorm,
            "messages": [s["message"] for s in result["solves"]],
            "config_sharpness": run.config.to_dict()["sharpness"], "settings": settings,
            "wall_seconds": round(time.time() - tick, 3), "environment": rundir.environment(cfg.seed),
        }
        storage.atomic_write_json(path, record)
    state = f"FAILED ({record['failure']})" if record["failed"] else f"phi = {record['phi']:.4g}"
    print(f"[{run.path}] {space} eps {epsilon:g}: {state}, f(x) = {record['f_x']}, "
          f"{record['function_evaluations']} evaluations, {record['wall_seconds']:.1f} s -> {path}",
          file=log, flush=True)
    return record


def benchmark(run_dir_or_model, epsilon: float = 1e-3, space: str = "full", dim: int = 100,
              iterations: int = 10, subset: int | None = None, inputs=None, labels=None,
              batch_size: int | None = None, materialize_bytes: int = MATERIALIZE_BYTES) -> dict:
    """Time one solve and its glue: benchmark(run_dir_or_model, epsilon=1e-3, space="full", dim=100,
    iterations=10, subset=None, inputs=None, labels=None, batch_size=None,
    materialize_bytes=MATERIALIZE_BYTES) -> dict.

    `run_dir_or_model`: a finished run directory (its final weights, training set, config's
    sharpness.subset unless `subset` is given, and eval batch size) or a keras.Model, which then
    needs `inputs`, `labels` and `batch_size`; materialize_bytes=0 times the regenerated-A path
    (reported as `materialized`). After one warm-up pass (tracing), it times one
    solve from y = 0 (`solve_seconds`; `passes` = objective evaluations), timing each pass inside
    it (`pass_seconds`, input and output waited for), then the same number of bare
    Objective.value_and_gradient calls at x (`bare_seconds`, a cross-check of pass_seconds).
    - solver_seconds: time inside SciPy's L-BFGS-B routine itself (the algorithm, not glue).
    - glue_seconds = solve - pass - solver: float64 casts, host/device transfers, A y and A^T g,
      finiteness checks, Python. glue_fraction = glue / solve (the budget: <= 0.15, reported as
      within_budget); glue_ratio_to_bare = glue / bare.
    - overhead_fraction = (solve - bare) / solve: everything but bare passes, solver included.
    - setup_seconds: A (random space) and A+ x, made once per measurement, not part of the solve.
    Also: space, epsilon, iterations, n, p, examples, phi, failed, device.
    """
    from replication import objective as objective_lib, rundir

    if isinstance(run_dir_or_model, (str, Path)):
        run = rundir.load_run(run_dir_or_model)
        inputs, labels = rundir.training_examples(run.config, subset or run.config.sharpness.subset)
        model, batch_size = run.model, run.config.eval_batch_size
    else:
        model = run_dir_or_model
        if inputs is None or labels is None or batch_size is None:
            raise ValueError("a model needs inputs, labels and batch_size")
        inputs, labels = data.measurement_subset(inputs, labels, subset)
    objective = _TimedObjective(objective_lib.Objective(model, inputs, labels, batch_size))
    x = objective.objective.get_flat()
    objective.value_and_gradient(x)  # warm-up: tracing
    tick = time.perf_counter()
    subspace = (RandomSubspace(objective.dimension, dim, 0, materialize_bytes)
                if space == "random" else None)
    setup = time.perf_counter() - tick
    objective.seconds = 0.0
    tick = time.perf_counter()
    result = maximize(objective, x, epsilon, subspace, iterations)
    solve = time.perf_counter() - tick - result["bound_seconds"]
    passes_in_solve = objective.seconds
    objective.seconds = 0.0
    for _ in range(result["function_evaluations"]):
        objective.value_and_gradient(x)
    bare = objective.seconds
    solver = sum(s["solver_seconds"] or 0.0 for s in result["solves"])
    glue = solve - passes_in_solve - solver
    return {"space": space, "epsilon": epsilon, "iterations": iterations, "n": objective.dimension,
            "p": dim if space == "random" else objective.dimension, "examples": objective.objective.size,
            "passes": result["function_evaluations"], "solve_seconds": solve,
            "pass_seconds": passes_in_solve, "bare_seconds": bare, "solver_seconds": solver,
            "glue_seconds": glue, "glue_fraction": glue / solve, "glue_ratio_to_bare": glue / bare,
            "overhead_fraction": (solve - bare) / solve, "within_budget": glue / solve <= 0.15,
            "setup_seconds": setup + result["bound_seconds"], "phi": result["phi"],
            "failed": result["failed"], "materialized": subspace.materialized if subspace else None,
            "device": backend.device(), "backend": backend.version()}


class _TimedObjective:
    """An Objective whose passes are timed from a ready input to a finished output."""

    def __init__(self, objective):
        self.objective, self.dimension, self.seconds = objective, objective.dimension, 0.0

    def value_and_gradient(self, flat):
        float(flat[-1])  # wait for x + A y (asynchronous on a GPU): it is glue, not the pass
        tick = time.perf_counter()
        value, grad = self.objective.value_and_gradient(flat)
        float(value), float(grad[-1])  # wait for the whole pass; grad[-1] needs the full sum
        self.seconds += time.perf_counter() - tick
        return value, grad
