"""Metric 2.1 against closed forms: models whose training loss is linear or a separable convex
quadratic in their weights, so the maximum over the box C_eps is known exactly; the random
subspace's algebra; the failure rules; and a real run directory through the CLI and Tables 3-4."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from conftest import stamp
from replication import data, rundir, storage, train
from replication import __main__ as cli_main
from replication import config as config_lib
from replication.measure import sharpness

pytestmark = pytest.mark.backend

K, EXAMPLES = 20, 30


class ExpProbability(keras.layers.Layer):
    """Two classes, p0 = exp(-s), p1 = 1 - p0: with label 0 the cross-entropy is exactly s, so
    f(w) = mean_j s_j(w) is linear (s = x.w) or a separable convex quadratic (s = x.(w*w))."""

    def __init__(self, quadratic: bool, **kwargs):
        super().__init__(**kwargs)
        self.quadratic = quadratic

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="w")

    def call(self, inputs):
        s = ops.matmul(inputs, self.w * self.w if self.quadratic else self.w)
        p0 = ops.exp(-s)
        return ops.stack([p0, 1.0 - p0], axis=-1)


def closed_form_model(quadratic=False):
    """(model, inputs, labels, c = mean input, w) with w and inputs positive, 0.1 < s < 16."""
    rng = np.random.default_rng(7)
    inputs = rng.uniform(0.1, 1.0, size=(EXAMPLES, K)).astype(np.float32)
    model = keras.Sequential([keras.Input((K,)), ExpProbability(quadratic)])
    w = rng.uniform(0.05, 0.3, size=K).astype(np.float32)
    model.set_weights([w])
    return model, inputs, np.zeros(EXAMPLES, np.int64), inputs.astype(np.float64).mean(0), w.astype(np.float64)


def expected_phi(f_x, max_f):
    return (max_f - f_x) / (1 + f_x) * 100


class NumpyObjective:
    """A pure-NumPy objective-like: value(z) and gradient(z) given as functions."""

    def __init__(self, value, gradient, dimension):
        self.value, self.gradient, self.dimension = value, gradient, dimension

    def value_and_gradient(self, flat):
        z = np.asarray(flat, np.float64)
        return self.value(z), self.gradient(z)


class MatrixSubspace:
    """An explicit A (tests only), with A+ from NumPy's pseudo-inverse."""

    def __init__(self, matrix):
        self.matrix = np.asarray(matrix, np.float64)
        self.p = self.matrix.shape[1]

    def matvec(self, y):
        return ops.convert_to_tensor((self.matrix @ np.asarray(y, np.float64)).astype(np.float32))

    def rmatvec(self, g):
        return self.matrix.T @ np.asarray(g, np.float64)

    def pinv(self, x):
        return np.linalg.pinv(self.matrix) @ np.asarray(x, np.float64)


def quadratic_objective(d):
    return NumpyObjective(lambda z: float(d @ (z * z)), lambda z: 2 * d * z, len(d))


@pytest.mark.parametrize("epsilon", [1e-3, 5e-4])
def test_linear_loss_full_space_matches_closed_form_and_keeps_weights(epsilon):
    model, inputs, labels, c, w = closed_form_model()
    before = [v.copy() for v in model.get_weights()]
    result = sharpness.measure(model, inputs, labels, batch_size=7, epsilon=epsilon, space="full")
    f_x = c @ w
    max_f = f_x + np.abs(c) @ (epsilon * (np.abs(w) + 1))  # the vertex sign(c) * bound
    assert not result["failed"]
    assert result["f_x"] == pytest.approx(f_x, rel=1e-6)
    assert result["max_f"] == pytest.approx(max_f, rel=1e-6)
    assert result["phi"] == pytest.approx(expected_phi(f_x, max_f), rel=1e-4)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("materialize_bytes", [sharpness.MATERIALIZE_BYTES, 0])
def test_linear_loss_random_subspace_matches_closed_form(materialize_bytes):
    model, inputs, labels, c, w = closed_form_model()
    p, seed, epsilon = 5, 3, 1e-3
    result = sharpness.measure(model, inputs, labels, 7, epsilon, "random", p, seed=seed,
                               materialize_bytes=materialize_bytes)
    a = sharpness.RandomSubspace(K, p, seed).dense().astype(np.float64)
    bound = epsilon * (np.abs(np.linalg.pinv(a) @ w) + 1)
    max_f = c @ w + np.abs(a.T @ c) @ bound
    assert result["p"] == p and result["subspace_materialized"] == bool(materialize_bytes)
    assert result["phi"] == pytest.approx(expected_phi(c @ w, max_f), rel=1e-4)
    assert np.all(np.abs(result["y_max"]) <= bound * (1 + 1e-12))
    np.testing.assert_allclose(result["y_max"], np.sign(a.T @ c) * bound, rtol=1e-9)


def test_convex_quadratic_reaches_the_outer_vertex_inside_the_box():
    model, inputs, labels, c, w = closed_form_model(quadratic=True)
    epsilon = 1e-3
    result = sharpness.measure(model, inputs, labels, 7, epsilon, "full")
    bound = epsilon * (np.abs(w) + 1)
    f_x, max_f = c @ (w * w), c @ (np.abs(w) + bound) ** 2
    assert result["phi"] == pytest.approx(expected_phi(f_x, max_f), rel=1e-4)
    assert np.all(np.abs(result["y_max"]) <= bound * (1 + 1e-12))
    np.testing.assert_allclose(result["y_max"], np.sign(w) * bound, rtol=1e-9)


def test_identity_and_signed_permutation_subspaces_agree_with_full_space():
    rng = np.random.default_rng(1)
    n, epsilon = 12, 1e-3
    d, x = rng.uniform(0.5, 2.0, n), rng.normal(size=n).astype(np.float32)
    objective = quadratic_objective(d)
    full = sharpness.maximize(objective, x, epsilon)
    # A = I gives the same box; a signed permutation P maps the box of y onto the box of z = P y.
    signed_permutation = np.eye(n)[rng.permutation(n)] * rng.choice([-1.0, 1.0], n)
    for matrix in (np.eye(n), signed_permutation):
        other = sharpness.maximize(objective, x, epsilon, MatrixSubspace(matrix))
        assert other["phi"] == pytest.approx(full["phi"], rel=1e-6)
    z = np.abs(x.astype(np.float64))
    assert full["max_f"] == pytest.approx(d @ (z + epsilon * (z + 1)) ** 2, rel=1e-6)


def test_random_subspace_blocks_pseudo_inverse_and_distribution():
    n, p, seed = 50, 4, 11
    rng = np.random.default_rng(0)
    x, y, g = rng.normal(size=n), rng.normal(size=p), rng.normal(size=n)
    dense = sharpness.RandomSubspace(n, p, seed, block_rows=7)
    blocks = sharpness.RandomSubspace(n, p, seed, materialize_bytes=0, block_rows=7)
    assert dense.materialized and not blocks.materialized
    a = dense.dense().astype(np.float64)
    np.testing.assert_array_equal(a, blocks.dense())  # the same numbers either way
    for op in (dense, blocks):
        np.testing.assert_allclose(op.matvec(y), a @ y, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(op.rmatvec(g), a.T @ g, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(op.pinv(x), np.linalg.pinv(a) @ x, rtol=1e-10, atol=1e-12)
    assert not np.array_equal(a, sharpness.RandomSubspace(n, p, seed + 1, block_rows=7).dense())
    sample = sharpness.RandomSubspace(20000, 10, seed).dense()
    assert abs(sample.mean()) < 0.01 and abs(sample.std() - 1) < 0.01  # i.i.d. N(0, 1)
    with pytest.raises(ValueError):
        sharpness.RandomSubspace(3, 4, seed)


def test_iteration_limit_is_the_intended_inexact_solve_not_a_failure():
    rng = np.random.default_rng(2)
    n, epsilon = 200, 1e-3
    d, x = rng.uniform(0.5, 2.0, n), rng.normal(size=n).astype(np.float32)
    result = sharpness.maximize(quadratic_objective(d), x, epsilon, iterations=1)
    solve = result["solves"][0]
    z = np.abs(x.astype(np.float64))
    assert solve["status"] == 1 and "LIMIT" in solve["message"]
    assert not result["failed"] and 0 < result["phi"]
    assert result["max_f"] <= d @ (z + epsilon * (z + 1)) ** 2 * (1 + 1e-12)


def test_random_restarts_start_inside_the_box_and_summarise():
    rng = np.random.default_rng(3)
    n, epsilon = 30, 1e-3
    d, x = rng.uniform(0.5, 2.0, n), rng.normal(size=n).astype(np.float32)
    result = sharpness.maximize(quadratic_objective(d), x, epsilon, start="random", restarts=3, seed=5)
    assert len(result["solves"]) == 3 and len(result["phi_values"]) == 3
    assert result["phi"] == pytest.approx(np.mean(result["phi_values"]))
    assert result["phi_std"] == pytest.approx(np.std(result["phi_values"], ddof=1))
    assert np.all(np.abs(result["y_max"]) <= epsilon * (np.abs(x.astype(np.float64)) + 1) * (1 + 1e-12))


def test_non_finite_weights_report_a_failure_and_stay_unchanged():
    model, inputs, labels, _, w = closed_form_model()
    model.set_weights([np.full_like(w, np.nan, dtype=np.float32)])
    result = sharpness.measure(model, inputs, labels, 7, 1e-3, "full")
    assert result["failed"] and result["phi"] is None and "not finite" in result["failure"]
    assert np.isnan(model.get_weights()[0]).all()


def test_non_finite_value_during_the_solve_is_a_failure_not_zero():
    n = 10
    c, x = np.ones(n), np.zeros(n, np.float32)
    objective = NumpyObjective(lambda z: float(c @ z) if z[0] < 5e-4 else math.nan, lambda z: c, n)
    result = sharpness.maximize(objective, x, 1e-3)
    assert result["failed"] and result["phi"] is None and result["solves"][0]["failure"]


@pytest.mark.parametrize("x, status", [(np.random.default_rng(0).normal(size=10), 2), (np.ones(10), 0)])
def test_stop_without_ascent_is_a_failure_whatever_the_solver_says(x, status):
    # A gradient of the wrong sign: no step ascends. SciPy ends with an abnormal line search
    # (status 2) or, when the failed step leaves f unchanged, with "converged" (status 0).
    c = np.linspace(1, 2, 10)
    wrong_sign = NumpyObjective(lambda z: float(-c @ z), lambda z: c, 10)
    result = sharpness.maximize(wrong_sign, x.astype(np.float32), 1e-3)
    assert result["solves"][0]["status"] == status
    assert result["failed"] and result["phi"] is None and "no ascent" in result["failure"]


def test_zero_gradient_start_is_a_measured_zero():
    flat = NumpyObjective(lambda z: 1.0, lambda z: np.zeros_like(z), 5)
    result = sharpness.maximize(flat, np.ones(5, np.float32), 1e-3)
    assert not result["failed"] and result["phi"] == 0


def test_driver_takes_the_same_steps_as_scipy_minimize():
    import scipy.optimize

    rng = np.random.default_rng(4)
    n = 40
    lower, upper = -rng.uniform(0.1, 2, n), rng.uniform(0.1, 2, n)
    fun = lambda y: (scipy.optimize.rosen(y + 1.5), scipy.optimize.rosen_der(y + 1.5))  # noqa: E731
    for iterations in (1, 4, 10, 60):
        ours = sharpness.lbfgsb(fun, np.zeros(n), lower, upper, iterations)
        scipys = scipy.optimize.minimize(fun, np.zeros(n), jac=True, method="L-BFGS-B",
                                         bounds=scipy.optimize.Bounds(lower, upper),
                                         options={"maxiter": iterations, "gtol": 0, "ftol": 0})
        np.testing.assert_array_equal(ours["x"], scipys.x)
        assert (ours["status"], ours["message"], ours["nit"], ours["nfev"], ours["fun"]) == \
            (scipys.status, scipys.message, scipys.nit, scipys.nfev, scipys.fun)


def test_benchmark_reports_passes_and_glue():
    model, inputs, labels, _, _ = closed_form_model()
    report = sharpness.benchmark(model, inputs=inputs, labels=labels, batch_size=7, space="random", dim=3,
                                 materialize_bytes=0)
    assert report["materialized"] is False
    assert report["passes"] >= 2 and report["solve_seconds"] > 0 and report["bare_seconds"] > 0
    # Timed inside the solve: the passes and SciPy's routine fit in it, the glue is the rest.
    assert 0 < report["pass_seconds"] and 0 <= report["solver_seconds"]
    assert report["pass_seconds"] + report["solver_seconds"] <= report["solve_seconds"]
    assert 0 <= report["glue_seconds"] <= report["solve_seconds"]
    assert set(report) >= {"glue_fraction", "glue_ratio_to_bare", "within_budget", "n", "p"}
    assert report["glue_fraction"] == pytest.approx(report["glue_seconds"] / report["solve_seconds"])
    assert report["glue_ratio_to_bare"] == pytest.approx(report["glue_seconds"] / report["bare_seconds"])
    assert report["within_budget"] == (report["glue_fraction"] <= 0.15)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharpness")
    config = config_lib.from_dict({
        "network": "F1", "dataset": "synthetic_mnist", "epochs": 1, "seeds": [0],
        "train_subset": 200, "test_subset": 50, "sb_batch_size": 50, "eval_batch_size": 64,
        "results_dir": str(root / "results"), "sharpness": {"dim": 5, "subset": 150}})
    return train.train(config, "sb", 0), root / "results"


def test_run_directory_results_cache_and_tables(finished_run, capsys):
    run_dir, results = finished_run
    digest = storage.weights_digest(rundir.load_run(run_dir).model.get_weights())
    assert cli_main.main(["sharpness", str(run_dir)]) == 0
    paths = {(s, e): sharpness.result_path(run_dir, s, e) for s in ("full", "random") for e in (1e-3, 5e-4)}
    for (space, epsilon), path in paths.items():
        record = storage.read_json(path)
        assert not record["failed"] and math.isfinite(record["phi"]) and record["phi"] >= 0
        assert record["max_f"] >= record["f_x"] and record["epsilon"] == epsilon
        assert record["p"] == (5 if space == "random" else record["n"])
        assert record["num_examples"] == 150 and record["iterations"] == 10
        assert record["function_evaluations"] >= 2 and record["messages"][0]
        assert record["a_seed"] == (0 if space == "random" else None)
    # Finer box, smaller ascent (same start, same solver): phi grows with epsilon here.
    assert storage.read_json(paths["full", 1e-3])["phi"] > storage.read_json(paths["full", 5e-4])["phi"]
    assert storage.weights_digest(rundir.load_run(run_dir).model.get_weights()) == digest

    assert cli_main.main(["sharpness", str(run_dir), "--epsilon", "-1"]) == 2  # ConfigError, one line
    stamps = {k: stamp(p) for k, p in paths.items()}
    assert cli_main.main(["sharpness", str(run_dir), "--epsilon", "1e-3", "--space", "full"]) == 0
    assert "already computed" in capsys.readouterr().err
    assert {k: stamp(p) for k, p in paths.items()} == stamps
    # A result measured on the examples drawn before data.MEASUREMENT_SUBSET (no "examples" in its
    # settings) is not reused: it is measured again, on today's examples.
    assert storage.read_json(paths["full", 1e-3])["settings"]["examples"] == data.MEASUREMENT_SUBSET
    old = storage.read_json(paths["full", 1e-3])
    del old["settings"]["examples"]
    storage.atomic_write_json(paths["full", 1e-3], old)
    assert cli_main.main(["sharpness", str(run_dir), "--epsilon", "1e-3", "--space", "full"]) == 0
    assert "already computed" not in capsys.readouterr().err
    assert storage.read_json(paths["full", 1e-3])["settings"]["examples"] == data.MEASUREMENT_SUBSET

    # A run whose weights are NaN: the failure is recorded and counted, not averaged in.
    # (Seed 1 trained for real: a copy of seed 0's directory is refused by the loader as a run
    # counted twice, and rightly.)
    broken = train.train(rundir.load_run(run_dir).config, "sb", 1)
    run = rundir.load_run(broken)
    run.model.set_weights([np.full_like(v, np.nan) for v in run.model.get_weights()])
    storage.save_weights(run.model, broken / "final.weights.h5")
    record = sharpness.sharpness(broken, 1e-3, "full")
    assert record["failed"] and record["phi"] is None

    assert cli_main.main(["table3", str(results)]) == 0
    rows = storage.read_csv(results / "tables" / "table3.csv")
    assert len(rows) == 1 and rows[0]["seeds"] == "2"
    assert (rows[0]["phi_full_eps0.001_n"], rows[0]["phi_full_eps0.001_failed"],
            rows[0]["phi_full_eps0.001_missing"]) == ("1", "1", "0")
    assert (rows[0]["phi_full_eps0.0005_n"], rows[0]["phi_full_eps0.0005_missing"]) == ("1", "1")
    assert float(rows[0]["phi_full_eps0.001_mean"]) == pytest.approx(storage.read_json(paths["full", 1e-3])["phi"])
    assert float(rows[0]["paper_phi_full_eps0.001_mean"]) == 1.23
    assert cli_main.main(["table4", str(results)]) == 0
    assert "p=5" in (results / "tables" / "table4.md").read_text()


def test_benchmark_on_a_run_directory(finished_run):
    run_dir, _ = finished_run
    report = sharpness.benchmark(run_dir, space="random", dim=5, iterations=2)
    assert report["examples"] == 150 and report["p"] == 5 and report["passes"] >= 2


def test_measurement_passes_give_identical_bits_on_every_call():
    """The cause of sharpness's old 2% spread between processes: TensorFlow's graph executor gave
    the gradient through batch-statistics normalisation different last bits from call to call (about
    one call in two at F1's size), and 10 L-BFGS-B steps amplified them. The passes are XLA programs
    now (backend.compiled); at the size where the spread was seen, repeated calls agree to the bit."""
    from replication import models, objective as objective_lib

    keras.utils.set_random_seed(3)
    model = models.build("F1", (28, 28, 1), 10, "batch_statistics")
    rng = np.random.default_rng(0)
    inputs = rng.uniform(0, 1, (5000, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, 10, 5000).astype(np.int32)
    f = objective_lib.Objective(model, inputs, labels, 5000)
    x = f.get_flat()
    first_value, first_grad = (np.asarray(t) for t in f.value_and_gradient(x))
    for _ in range(7):
        value, grad = (np.asarray(t) for t in f.value_and_gradient(x))
        assert value == first_value
        assert np.array_equal(grad, first_grad)


@pytest.mark.parametrize("terminal", [True, False])
def test_a_solve_draws_progress_on_a_terminal_only(terminal, monkeypatch, capsys):
    """Issue 26 item 1: long steps show progress on a terminal and stay quiet in logs (make -j,
    Slurm, CI), where a redrawn bar would add a line at every update."""
    from replication import progress

    monkeypatch.setattr(progress, "on_terminal", lambda: terminal)
    d = np.array([1.0, 2.0, 3.0])
    seen = []
    answer = sharpness.lbfgsb(lambda z: (float(-(d @ (z * z))), -2 * d * z), np.full(3, 0.5), -np.ones(3),
                              np.ones(3), iterations=4, on_iteration=seen.append)
    assert seen == list(range(1, answer["nit"] + 1)) and answer["nit"] >= 1
    capsys.readouterr()
    sharpness.maximize(quadratic_objective(d), np.ones(3, np.float32), 1e-3, iterations=3)
    drawn = capsys.readouterr().out
    assert ("iteration" in drawn) if terminal else drawn == ""
