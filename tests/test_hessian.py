"""Hessian measures against closed forms: H v of a loss whose Hessian is a known matrix, and
against finite differences through batch-statistics normalisation; Lanczos on a known spectrum
(its stopping rule, its error bound, the top eigenvalue and not the largest in magnitude);
Hutchinson's trace and standard error; the spread over draws; a run directory through the CLI."""

import numpy as np
import pytest
import keras
from keras import ops

from conftest import stamp
from replication import models, rundir, storage, train
from replication import __main__ as cli_main
from replication import config as config_lib
from replication import objective as objective_lib
from replication.measure import hessian

pytestmark = pytest.mark.backend

K, EXAMPLES = 12, 30


class QuadraticProbability(keras.layers.Layer):
    """Two classes, p0 = exp(-s) with s = 1 + w.Mw/2 + x.w/10: with label 0 the cross-entropy is s,
    so f(w) = mean s has Hessian M exactly, at every w and for any batching."""

    def __init__(self, matrix, **kwargs):
        super().__init__(**kwargs)
        self.matrix = np.asarray(matrix, np.float32)

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="w")

    def call(self, inputs):
        s = 1.0 + 0.5 * ops.sum(self.w * ops.matmul(ops.convert_to_tensor(self.matrix), self.w)) \
            + 0.1 * ops.matmul(inputs, self.w)
        p0 = ops.exp(-s)
        return ops.stack([p0, 1.0 - p0], axis=-1)


def known_spectrum(eigenvalues, seed=0):
    """A symmetric matrix Q diag(eigenvalues) Q^T with a random orthogonal Q."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
    return (q * np.asarray(eigenvalues, np.float64)) @ q.T


def quadratic_objective(matrix, batch_size=7):
    rng = np.random.default_rng(1)
    inputs = rng.uniform(0, 1, (EXAMPLES, len(matrix))).astype(np.float32)
    model = keras.Sequential([keras.Input((len(matrix),)), QuadraticProbability(matrix)])
    model.set_weights([rng.uniform(-0.1, 0.1, len(matrix)).astype(np.float32)])
    return objective_lib.Objective(model, inputs, np.zeros(EXAMPLES, np.int64), batch_size)


class MatrixObjective:
    """H v = M v in NumPy (an objective-like for the estimators)."""

    def __init__(self, matrix):
        self.matrix, self.dimension, self.products = np.asarray(matrix, np.float64), len(matrix), 0

    def hessian_vector_product(self, x, vector):
        self.products += 1
        return self.matrix @ np.asarray(vector, np.float64)


def test_hessian_vector_product_of_a_quadratic_is_its_matrix():
    matrix = known_spectrum(np.linspace(-2, 9, K))
    f = quadratic_objective(matrix)  # batches of 7, 7, 7, 7, 2: summed, then divided by 30
    rng = np.random.default_rng(2)
    for _ in range(3):
        v = rng.normal(size=K).astype(np.float32)
        np.testing.assert_allclose(np.asarray(f.hessian_vector_product(f.get_flat(), v)), matrix @ v,
                                   rtol=1e-4, atol=1e-5)


def batchnorm_network(activation="tanh", epsilon=models.BN_EPSILON):
    keras.utils.set_random_seed(5)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="dense_1"),
                             models.BatchStatNormalization(epsilon=epsilon, name="bn_1"),
                             keras.layers.Activation(activation, name="act_1"),
                             keras.layers.Dense(3, activation="softmax", name="output")])


def test_hessian_vector_product_matches_finite_differences_through_batch_statistics():
    """A smooth network with the paper's batch norm: H v against central differences of the
    gradient. Under TensorFlow the model's own batch norm gives another H v (tf.nn.moments stops
    the gradient through the mean; checked here); the second-order copy computes the same f exactly."""
    model = batchnorm_network()
    rng = np.random.default_rng(0)
    inputs, labels = rng.normal(size=(40, 6)).astype(np.float32), rng.integers(0, 3, 40)
    original = objective_lib.Objective(model, inputs, labels, 16)
    f = hessian.curvature_objective(model, inputs, labels, 16)
    x = f.get_flat()
    (value, grad), (value0, grad0) = f.value_and_gradient(x), original.value_and_gradient(original.get_flat())
    assert float(value) == pytest.approx(float(value0), rel=1e-6)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad0), rtol=1e-4, atol=1e-7)
    for _ in range(2):
        v = rng.normal(size=f.dimension).astype(np.float32)
        hv = np.asarray(f.hessian_vector_product(x, v), np.float64)
        h = 1e-3
        plus, minus = (np.asarray(f.value_and_gradient(x + s * h * v)[1], np.float64) for s in (1, -1))
        difference = (plus - minus) / (2 * h)
        assert np.linalg.norm(hv - difference) <= 2e-3 * np.linalg.norm(difference)
        if keras.backend.backend() == "tensorflow":
            # Why the copy exists: the model's own batch norm differentiates twice to another H v here.
            own = np.asarray(original.hessian_vector_product(x, v), np.float64)
            assert np.linalg.norm(own - difference) > 2e-2 * np.linalg.norm(difference)  # 10x the copy's bound


def test_lanczos_finds_the_top_eigenvalue_not_the_largest_in_magnitude():
    # Power iteration would return -50; the rule's residual bounds theta's distance to the spectrum.
    eigenvalues = np.concatenate([[-50.0], np.linspace(0, 8, 198), [10.0]])
    objective = MatrixObjective(known_spectrum(eigenvalues))
    tol = 1e-6
    result = hessian.top_eigenvalue(objective, None, iterations=200, tol=tol, seed=3)
    assert result["converged"] and not result["invariant_subspace"]
    assert result["products"] == objective.products < 200
    assert result["eigenvalue"] <= 10.0 + 1e-9  # Ritz values lie inside the spectrum
    assert abs(result["eigenvalue"] - 10.0) <= result["residual"] + 1e-9
    assert result["residual"] <= tol * result["eigenvalue"]
    assert result["lowest_ritz_value"] == pytest.approx(-50.0, rel=1e-6)
    # The rule stops at the first iteration that meets it: one fewer product does not.
    earlier = hessian.top_eigenvalue(MatrixObjective(objective.matrix), None, result["products"] - 1, tol,
                                     seed=3)
    assert not earlier["converged"] and earlier["residual"] > tol * earlier["eigenvalue"]
    assert earlier["products"] == result["products"] - 1
    # The start vector is drawn from (seed, draw): the same draw repeats, another differs.
    again = hessian.top_eigenvalue(MatrixObjective(objective.matrix), None, 200, tol, seed=3)
    other = hessian.top_eigenvalue(MatrixObjective(objective.matrix), None, 200, tol, seed=3, draw=1)
    assert again["eigenvalue"] == result["eigenvalue"] and other["eigenvalue"] != result["eigenvalue"]


def test_lanczos_on_a_small_space_is_exact_and_on_the_network_matches_the_matrix():
    eigenvalues = [-1.0, 0.5, 2.0, 3.0, 7.0]
    small = hessian.top_eigenvalue(MatrixObjective(known_spectrum(eigenvalues)), None, iterations=50,
                                   tol=1e-12)
    assert small["converged"] and small["products"] <= 5
    assert small["eigenvalue"] == pytest.approx(7.0, rel=1e-6)  # float32 Lanczos vectors
    # Kept orthogonal, the Lanczos vectors reach tol 1e-10 in 16 products here, to float32's
    # rounding of the vectors; without reorthogonalisation it took all 40, 20x further off.
    spectrum = np.geomspace(1e-3, 10, 40)
    tight = hessian.top_eigenvalue(MatrixObjective(known_spectrum(spectrum)), None, iterations=40, tol=1e-10)
    assert tight["converged"] and tight["products"] <= 20 and not tight["invariant_subspace"]
    assert abs(tight["eigenvalue"] - 10.0) < 1e-7
    matrix = known_spectrum(np.linspace(-2, 9, K))
    f = quadratic_objective(matrix)
    result = hessian.top_eigenvalue(f, f.get_flat(), iterations=K, tol=1e-4)
    assert result["eigenvalue"] == pytest.approx(9.0, rel=1e-4)


def test_hutchinson_is_exact_on_a_diagonal_and_its_standard_error_is_right():
    diagonal = np.diag(np.linspace(-3, 5, 50))
    exact = hessian.trace(MatrixObjective(diagonal), None, probes=4, seed=1)
    assert exact["trace"] == pytest.approx(np.trace(diagonal), abs=1e-9)  # z_i^2 = 1: no variance
    assert exact["standard_error"] == pytest.approx(0.0, abs=1e-9) and exact["products"] == 4
    matrix = known_spectrum(np.linspace(-1, 4, 30), seed=2)
    # Var(z^T M z) = 2 sum_{i != j} M_ij^2 for Rademacher z.
    off = matrix - np.diag(np.diag(matrix))
    probes = 10
    expected_se = np.sqrt(2 * np.sum(off ** 2) / probes)
    draws = hessian.over_draws(lambda d: hessian.trace(MatrixObjective(matrix), None, probes, seed=0, draw=d),
                               300, "trace")
    spread = draws["spread"]
    assert spread["draws"] == 300
    assert abs(spread["mean"] - np.trace(matrix)) < 4 * expected_se / np.sqrt(300)  # unbiased
    assert spread["std"] == pytest.approx(expected_se, rel=0.12)  # the spread over draws is the SE
    assert np.mean([d["standard_error"] for d in draws["per_draw"]]) == pytest.approx(expected_se, rel=0.12)


def test_spread_is_mean_sample_std_and_count():
    assert hessian.spread([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "draws": 3}
    assert hessian.spread([4.0]) == {"mean": 4.0, "std": None, "draws": 1}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hessian")
    config = config_lib.from_dict({
        "network": "F1", "dataset": "synthetic_mnist", "epochs": 1, "seeds": [0],
        "train_subset": 200, "test_subset": 50, "sb_batch_size": 50, "eval_batch_size": 64,
        "results_dir": str(root / "results"), "sharpness": {"dim": 5, "subset": 150}})
    return train.train(config, "sb", 0)


OPTIONS = ["--draws", "2", "--probes", "3", "--iterations", "4", "--points", "5", "--grid", "3", "--tol", "1e-2"]


def test_run_directory_results_settings_cache_and_errors(finished_run, capsys):
    run_dir = finished_run
    digest = storage.weights_digest(rundir.load_run(run_dir).model.get_weights())
    assert cli_main.main(["hessian", str(run_dir), *OPTIONS]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "-> " in line]
    names = ["top_eigenvalue", "trace", "filter_landscape", "sharpness_random_eps0.001",
             "reparametrization_batchnorm_a10", "reparametrization_relu_a10"]
    assert len(lines) == len(names) and all(f"{name}:" in line for name, line in zip(names, lines))
    records = {name: storage.read_json(hessian.result_path(run_dir, name)) for name in names}
    for record in records.values():
        settings = record["settings"]
        assert settings["weights_digest"] == digest and settings["subset"] == 150
        assert {"backend", "passes", "eval_batch_size"} <= set(settings) and record["num_examples"] == 150
    eigen, trace = records["top_eigenvalue"], records["trace"]
    assert eigen["spread"]["draws"] == 2 and all(d["products"] <= 4 for d in eigen["per_draw"])
    assert eigen["settings"]["iterations"] == 4 and eigen["settings"]["seed"] == 0
    assert trace["spread"]["draws"] == 2 and all(len(d["values"]) == 3 for d in trace["per_draw"])
    phis = records["sharpness_random_eps0.001"]["per_draw"]
    assert [d["a_seed"] for d in phis] == [0, 1] and all(d["phi"] >= 0 for d in phis)
    relu = records["reparametrization_relu_a10"]
    assert relu["output_change"]["max_abs_probability_change"] < 1e-4
    assert relu["output_change"]["predictions_changed"] == 0
    assert set(relu["ratio_after_to_before"]) == {"phi_full", "top_eigenvalue", "trace", "filter_rise"}
    assert relu["before"]["top_eigenvalue"] == eigen["per_draw"][0]  # the same draw on both sides
    # Dinh et al.'s point: the function is the same, the curvature is not (H -> D^-1 H D^-1 with a = 10),
    # so measures taken at x instead of the rescaled x would read ratio 1 and "invariant".
    for record in (relu, records["reparametrization_batchnorm_a10"]):
        assert record["output_change"]["predictions_changed"] == 0
        for name in ("top_eigenvalue", "trace"):
            assert abs(record["ratio_after_to_before"][name] - 1) > 0.05, (record["kind"], name)
            # (whether it "moved" beyond its own error is left undecided by 4 Lanczos steps here)
    # Filter-normalised slices: f as sharpness's f (the 1-D slices at t = 0 too), 2 draws x 5 points
    # and 3 x 3, a figure; the exact ReLU rescaling leaves the rise where it was.
    landscape = records["filter_landscape"]
    assert landscape["f_x"] == pytest.approx(phis[0]["f_x"], rel=1e-6) and landscape["spread"]["draws"] == 2
    rows_1d, rows_2d = (storage.read_csv(path) for path in hessian.filter_csv_paths(run_dir))
    assert len(rows_1d) == 10 and len(rows_2d) == 9
    centre = [r for r in rows_1d if float(r["t"]) == 0] + [r for r in rows_2d if float(r["a"]) == float(r["b"]) == 0]
    assert len(centre) == 3 and all(float(r["loss"]) == landscape["f_x"] for r in centre)
    assert (run_dir / "hessian" / "filter_landscape.png").exists()
    assert relu["ratio_after_to_before"]["filter_rise"] == pytest.approx(1.0, abs=1e-3)
    assert relu["moved"]["filter_rise"] is False
    assert storage.weights_digest(rundir.load_run(run_dir).model.get_weights()) == digest

    stamps = {name: stamp(hessian.result_path(run_dir, name)) for name in names}
    assert cli_main.main(["hessian", str(run_dir), *OPTIONS]) == 0
    assert capsys.readouterr().err.count("already computed") == len(names)
    assert {name: stamp(hessian.result_path(run_dir, name)) for name in names} == stamps
    # Another setting recomputes what depends on it, and only that.
    assert cli_main.main(["hessian", str(run_dir), *OPTIONS[:-2], "--tol", "0.05",
                          "--measures", "eigenvalue"]) == 0
    assert "already computed" not in capsys.readouterr().err
    assert storage.read_json(hessian.result_path(run_dir, "top_eigenvalue"))["settings"]["tol"] == 0.05

    for bad in (["--probes", "1"], ["--factor", "0"], ["--measures", "density"], ["--tol", "nan"]):
        assert cli_main.main(["hessian", str(run_dir), *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: hessian")


def test_cli_help_states_the_library_defaults():
    import re

    from conftest import cli

    text = " ".join(cli("hessian", "--help", check=True).stdout.split())
    for option, default in hessian.DEFAULTS.items():
        assert re.search(rf"--{option} [A-Z]+ [^()]*\(default {default:g}\)", text), option


def _copy_of(run_dir, tmp_path):
    """A copy of a finished run's results folder (so a test's results do not reach another's)."""
    import shutil

    root = tmp_path / "results"
    shutil.copytree(run_dir.parents[2], root)
    return root / run_dir.relative_to(run_dir.parents[2])


def test_each_draw_of_a_is_the_subspace_its_seed_draws(finished_run, tmp_path):
    """Metric 2.1 over draws of A: draw d's phi is the phi of the subspace drawn from the seed it
    records (a_seed = sharpness.seed + d), measured alone; one A reused while recording other seeds
    would give every draw draw 0's phi."""
    import io

    from replication.measure import sharpness

    run_dir = _copy_of(finished_run, tmp_path)
    record = hessian.measure_run(run_dir, measures=("sharpness",), draws=2, log=io.StringIO())[0]
    run = rundir.load_run(run_dir)
    cfg = run.config.sharpness
    inputs, labels = rundir.training_examples(run.config, cfg.subset)
    assert [d["a_seed"] for d in record["per_draw"]] == [cfg.seed, cfg.seed + 1]
    for draw in record["per_draw"]:
        alone = sharpness.measure(run.model, inputs, labels, run.config.eval_batch_size, 1e-3, "random", cfg.dim,
                                  cfg.iterations, cfg.start, cfg.restarts, draw["a_seed"])
        assert alone["phi"] == pytest.approx(draw["phi"], rel=1e-6)
    assert record["per_draw"][0]["phi"] != record["per_draw"][1]["phi"]  # the two subspaces differ


def test_an_unconverged_top_eigenvalue_is_recorded_as_a_lower_bound(finished_run, tmp_path, capsys):
    run_dir = _copy_of(finished_run, tmp_path)
    assert cli_main.main(["hessian", str(run_dir), "--measures", "eigenvalue", "--draws", "2", "--iterations", "1",
                          "--force"]) == 0
    line = next(line for line in capsys.readouterr().err.splitlines() if "top_eigenvalue:" in line)
    record = storage.read_json(hessian.result_path(run_dir, "top_eigenvalue"))
    assert [d["converged"] for d in record["per_draw"]] == [False, False]
    assert record["converged_draws"] == 0 and record["lower_bound"] is True
    assert "lambda_max >= " in line and "0 of 2 draws converged (a lower bound: raise --iterations)" in line
    assert cli_main.main(["hessian", str(run_dir), "--measures", "eigenvalue", "--draws", "2", "--force"]) == 0
    record = storage.read_json(hessian.result_path(run_dir, "top_eigenvalue"))
    assert record["converged_draws"] == 2 and record["lower_bound"] is False


def test_a_reparametrisation_the_network_cannot_take_is_refused_before_measuring(tmp_path, capsys):
    from conftest import one_error_line

    config = config_lib.from_dict({
        "network": "F1", "dataset": "synthetic_mnist", "epochs": 1, "seeds": [0], "batchnorm": "moving_average",
        "train_subset": 200, "test_subset": 50, "sb_batch_size": 50, "eval_batch_size": 64,
        "results_dir": str(tmp_path / "results"), "sharpness": {"dim": 5, "subset": 150}})
    run_dir = train.train(config, "sb", 0)
    capsys.readouterr()  # training's lines
    code = cli_main.main(["hessian", str(run_dir), *OPTIONS])  # both kinds: batchnorm needs batch statistics
    line = one_error_line(code, capsys.readouterr().err)
    assert f"the 'batchnorm' reparametrisation cannot be applied to {run_dir}" in line
    assert "moving-average batch norm" in line and "leave it out (--kinds relu)" in line
    assert not (run_dir / "hessian").exists()  # refused before anything was measured
