"""Filter-normalised landscapes (Li et al. 2018): the directions (each filter has the norm of x's,
biases and batch-norm parameters are left out, the same directions for the same seed), the slices
and rises against a closed form and against f, their invariance under a filter-wise rescaling, the
report section from hand-made result files, and the `hessian` config section."""

import math

import keras
import numpy as np
import pytest

from conftest import cli, one_error_line
from replication import models, pipeline, storage
from replication import config as config_lib
from replication import objective as objective_lib
from replication.measure import filter_landscape, hessian, reparametrize
from replication.analysis import hessian_tables, report

pytestmark = pytest.mark.backend


def conv_network():
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, name="conv_1"),
        models.BatchStatNormalization(name="bn_1"), keras.layers.Activation("relu", name="act_1"),
        keras.layers.Flatten(), keras.layers.Dense(5, activation="relu", name="dense_1"),
        keras.layers.Dense(3, activation="softmax", name="output")])


def flat(model):
    return np.concatenate([np.ravel(keras.ops.convert_to_numpy(v)) for v in model.trainable_variables]).astype(np.float64)


def pieces(model, vector):
    out, start = [], 0
    for v in model.trainable_variables:
        size = math.prod(v.shape)
        out.append((v.path, np.reshape(vector[start:start + size], v.shape)))
        start += size
    return out


def test_each_filter_has_the_norm_of_its_filter_of_x_and_biases_and_batch_norm_are_zero():
    model = conv_network()
    x = flat(model)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    d = filter_landscape.direction(shapes, x, seed=7, index=0)
    kernels = 0
    for (path, d_piece), (_, x_piece) in zip(pieces(model, d), pieces(model, x)):
        if d_piece.ndim == 1:  # biases, gamma, beta
            assert not d_piece.any(), path
            continue
        kernels += 1
        norms_d = np.linalg.norm(d_piece.reshape(-1, d_piece.shape[-1]), axis=0)
        norms_x = np.linalg.norm(x_piece.reshape(-1, x_piece.shape[-1]), axis=0)
        np.testing.assert_allclose(norms_d, norms_x, rtol=1e-9)
    assert kernels == 3  # conv (3, 3, 2, 4): 4 filters; dense (64, 5): 5 units; output (5, 3)
    # The same seed and index give the same direction (a NumPy draw: the same on every backend);
    # another index or seed another one.
    np.testing.assert_array_equal(d, filter_landscape.direction(shapes, x, 7, 0))
    assert not np.allclose(d, filter_landscape.direction(shapes, x, 7, 1))
    assert not np.allclose(d, filter_landscape.direction(shapes, x, 8, 0))
    with pytest.raises(ValueError, match="entries"):
        filter_landscape.direction(shapes, x[:-1], 7, 0)


def test_direction_is_a_fixed_numpy_draw():
    """Backend-independent by construction: pinned to the values NumPy draws (any backend, any run)."""
    d = filter_landscape.direction([(2, 2), (2,)], np.array([3.0, 0.0, 4.0, 1.0, 5.0, 6.0]), 0, 0)
    g = np.random.default_rng([0, 0, 3]).standard_normal(6)
    column0 = g[[0, 2]] * 5.0 / np.linalg.norm(g[[0, 2]])
    column1 = g[[1, 3]] * 1.0 / np.linalg.norm(g[[1, 3]])
    np.testing.assert_allclose(d, [column0[0], column1[0], column0[1], column1[1], 0.0, 0.0], rtol=1e-9)


class Quadratic:
    """f(x) = x.Mx / 2 + c.x with accuracy 1: an objective-like with a known rise."""

    def __init__(self, matrix, c):
        self.matrix, self.c, self.calls = matrix, c, 0

    def evaluate(self, point):
        self.calls += 1
        x = np.asarray(point, np.float64)
        return 0.5 * x @ self.matrix @ x + self.c @ x, 1.0


def test_slices_and_rises_of_a_quadratic_are_its_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    f = Quadratic(a @ a.T, rng.normal(size=6))
    x = np.round(rng.normal(size=6), 3)  # exact in float32, so the closed form applies to the bits
    slicer = filter_landscape.Slicer(f, x)
    d1 = filter_landscape.direction([(3, 2)], x, 0, 0)
    d2 = filter_landscape.direction([(3, 2)], x, 0, 1)
    ts = filter_landscape.steps(1.0, 5)
    line = slicer.line(0, d1, ts)
    assert [row["t"] for row in line] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert line[2]["loss"] == pytest.approx(f.evaluate(x.astype(np.float32))[0], rel=1e-12)
    for t in (0.5, 1.0):
        # The linear term cancels in (f(x + t d) + f(x - t d)) / 2 - f(x) = t^2 d.Md / 2.
        assert slicer.rise(0, d1, t) == pytest.approx(t * t * d1 @ f.matrix @ d1 / 2, rel=1e-5)
    calls = f.calls
    plane = slicer.plane(d1, d2, filter_landscape.steps(1.0, 3))
    assert len(plane) == 9 and f.calls - calls == 9 - 3  # (-1, 0), (0, 0), (1, 0) are on the 1-D slice
    point = next(r for r in plane if r["a"] == 1.0 and r["b"] == -1.0)
    assert point["loss"] == pytest.approx(f.evaluate((x + d1 - d2).astype(np.float32))[0], rel=1e-12)


def test_the_rise_of_a_network_is_invariant_under_filterwise_rescaling():
    """Both of Dinh et al.'s transformations scale whole filters, so f'(x' + t d') = f(x + t d):
    the ReLU rescaling exactly; before batch norm up to its epsilon (here 0)."""
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="dense_1"),
                              models.BatchStatNormalization(epsilon=0.0, name="bn_1"),
                              keras.layers.Activation("relu", name="act_1"),
                              keras.layers.Dense(7, activation="relu", name="dense_2"),
                              keras.layers.Dense(3, activation="softmax", name="output")])
    rng = np.random.default_rng(1)
    f = objective_lib.Objective(model, rng.normal(size=(40, 6)).astype(np.float32), rng.integers(0, 3, 40), 20)
    x = keras.ops.convert_to_numpy(f.get_flat()).astype(np.float64)
    before = [filter_landscape.Slicer(f, x).rise(0, filter_landscape.direction(f.shapes, x, 0, i), 0.5)
              for i in range(3)]
    assert all(abs(r) > 1e-3 for r in before), before  # x is no minimum, but f bends
    for kind in reparametrize.KINDS:
        x_new = x * reparametrize.factors(model, kind, 10.0)
        after = [filter_landscape.Slicer(f, x_new).rise(0, filter_landscape.direction(f.shapes, x_new, 0, i), 0.5)
                 for i in range(3)]
        np.testing.assert_allclose(after, before, rtol=2e-3, err_msg=kind)
    # Without the normalisation (the same raw direction at both points) the rise moves by far more.
    g = np.random.default_rng([0, 0, 3]).standard_normal(len(x)) * 0.1
    x_new = x * reparametrize.factors(model, "relu", 10.0)
    raw = [filter_landscape.Slicer(f, point).rise(0, g, 0.5) for point in (x, x_new)]
    assert abs(raw[1] / raw[0] - 1) > 0.1


def test_hessian_and_reparametrisation_names_agree_with_the_config():
    assert reparametrize.KINDS == config_lib.REPARAMETRIZATIONS and hessian.MEASURES == config_lib.HESSIAN_MEASURES
    assert hessian.DEFAULTS["points"] == config_lib.HessianConfig().points


# Config section and make rules -------------------------------------------------------------------
@pytest.mark.parametrize("section, key", [({"draws": 0}, "hessian.draws"), ({"probes": 1}, "hessian.probes"),
                                          ({"span": -1.0}, "hessian.span"), ({"grid": 1}, "hessian.grid"),
                                          ({"measures": ["density"]}, "hessian.measures"),
                                          ({"kinds": []}, "hessian.kinds"), ({"colour": 1}, "hessian.colour"),
                                          ({"tol": "nan"}, "hessian.tol")])
def test_bad_hessian_sections_are_refused(section, key):
    with pytest.raises(config_lib.ConfigError, match=key.replace(".", r"\.")):
        config_lib.from_dict({"network": "F1", "dataset": "synthetic_mnist", "hessian": section})


def test_bad_hessian_section_is_one_line_before_keras(tiny_config):
    path = tiny_config(hessian={"draws": 0})
    result = cli("check", path)
    line = one_error_line(result.returncode, result.stderr)
    assert "'hessian.draws'" in line and str(path) in line


def test_make_rules_measure_the_hessian_only_where_a_config_asks(tiny_config):
    plain = pipeline.rules("t", [str(tiny_config())])
    assert " hessian " not in plain
    asked = pipeline.rules("t", [str(tiny_config(hessian={"enabled": True, "draws": 2, "grid": 5}))])
    commands = [line for line in asked.splitlines() if " hessian " in line]
    assert len(commands) == 2 and all("--draws 2" in c and "--grid 5" in c for c in commands)
    targets = [line.split(":")[0] for line in asked.splitlines() if "hessian/" in line and line.endswith("metrics.json")]
    assert len(targets) == 2
    report_rule = next(line for line in asked.splitlines() if "REPORT.md:" in line)
    assert all(target in report_rule for target in targets)


# The report section ------------------------------------------------------------------------------
def write_hessian(run_dir, regime, eig, tr, rise, phi, reparam):
    """Hand-made hessian results of one run: spreads and, per kind, (after/before) of each measure."""
    base = {"network": "F1", "regime": regime, "run_seed": 0, "settings": {"epsilon": 1e-3, "p": 100},
            "num_examples": 100, "wall_seconds": 1.0}

    def spread(mean, std):
        return {"mean": mean, "std": std, "draws": 3}

    storage.atomic_write_json(run_dir / "hessian/top_eigenvalue.json",
                              {**base, "spread": spread(*eig), "per_draw": [{"products": 9}] * 3})
    storage.atomic_write_json(run_dir / "hessian/trace.json",
                              {**base, "spread": spread(*tr), "per_draw": [{"products": 20}] * 3})
    storage.atomic_write_json(run_dir / "hessian/filter_landscape.json",
                              {**base, "spread": spread(*rise), "step": 0.5, "evaluations": 50})
    rows_1d = [{"draw": 0, "t": t, "loss": 1 + rise[0] * t * t, "accuracy": 0.9} for t in (-1, 0, 1)]
    rows_2d = [{"a": a, "b": b, "loss": 1 + rise[0] * (a * a + b * b), "accuracy": 0.9}
               for b in (-1, 0, 1) for a in (-1, 0, 1)]
    for name, rows in (("filter_landscape_1d", rows_1d), ("filter_landscape_2d", rows_2d)):
        storage.atomic_write_csv(run_dir / f"hessian/{name}.csv", rows)
    for kind, factor in reparam.items():
        values = {"top_eigenvalue": ("eigenvalue", eig[0]), "trace": ("trace", tr[0]),
                  "phi_full": ("phi", phi), "filter_rise": ("rise", rise[0])}
        storage.atomic_write_json(run_dir / f"hessian/reparametrization_{kind}_a10.json", {
            **base, "kind": kind, "factor": 10.0,
            "before": {k: {key: value} for k, (key, value) in values.items()},
            "after": {k: {key: value * factor.get(k, 1.0)} for k, (key, value) in values.items()}})


def test_report_section_from_hand_made_hessian_results(tmp_path):
    from test_report import write_run

    root = tmp_path / "results"
    sb, lb = write_run(root, "sb", 0, 99.0, 90.0), write_run(root, "lb", 0, 99.0, 89.0)
    assert "No Hessian results for SB/LB pairs in this folder: `python -m replication hessian" in \
        report.build(root).read_text()
    # SB tight and flat; LB sharper by every measure, but its eigenvalue and trace fall below SB's
    # when the batch-norm transformation is applied to it, and the filter-normalised rise does not.
    write_hessian(sb, "sb", (3.0, 0.001), (60.0, 1.0), (0.2, 0.05), 35.0, {"batchnorm": {}, "relu": {}})
    write_hessian(lb, "lb", (26.0, 0.002), (1000.0, 5.0), (0.4, 0.2), 360.0,
                  {"batchnorm": {"top_eigenvalue": 0.1, "trace": 0.03}, "relu": {}})
    text = report.build(root).read_text()
    section = text.split("## Do SB and LB minimisers differ by every measure?")[1].split("\n## ")[0]
    lines = {line.split(" | ")[3]: line for line in section.splitlines() if line.startswith("| F1 |")}
    # These hand-made records keep no solves, as the Hessian command's did before: the label says the
    # cap is unknown (an unknown status read as converged: results.at_cap is False without solves).
    full = "Metric 2.1, full space (eps 0.001; iteration cap not recorded: each may be a lower bound)"
    assert set(lines) == {"top eigenvalue of H", "trace of H (Hutchinson)", full,
                          "filter-normalised rise r(t) (t = 0.5)"}
    eig = lines["top eigenvalue of H"]
    assert "| 3 ± 0.001 (n = 3) | 26 ± 0.002 (n = 3) | 8.67 | 2 |" in eig
    assert "no: transformed LB 2.6 vs SB 3" in eig and eig.endswith("| yes |")  # batchnorm, relu
    rise = lines["filter-normalised rise r(t) (t = 0.5)"]
    # (2 (0.05 + 0.2) / 0.2)^2 = 6.25: seven draws separate the intervals
    assert rise.endswith("| 0.2 ± 0.05 (n = 3) | 0.4 ± 0.2 (n = 3) | 2.00 | 7 | yes | yes |")
    assert "| 35 (no draw) | 360 (no draw) | 10.29 | - |" in lines[full]
    from replication.analysis import hessian_tables
    capped, done = {"solves": [{"status": 1}]}, {"solves": [{"status": 0}]}
    assert hessian_tables._cap_words([capped, done, capped], [done]) == \
        "at the iteration cap: SB 2 of 3, LB 0 of 1 (lower bounds)"
    assert hessian_tables._cap_words([done], [done]) == "at the iteration cap: SB 0 of 1, LB 0 of 1"
    assert hessian_tables._cap_words([done], [{}]) == "at the iteration cap: SB 0 of 1, LB not recorded (lower bounds)"
    assert hessian_tables._cap_words(None, None) == ""
    assert "7 draw(s) per estimate suffice" in section
    png = root / "F1_fashion_mnist/hessian/seed0_filter_landscape.png"
    assert png.read_bytes().startswith(b"\x89PNG") and f"]({png.relative_to(root)})" in section
    assert (root / "tables/hessian.csv").exists()
    assert "27 H v products" in section and "50 evaluations of f" in section


def test_draws_to_separate():
    assert hessian_tables.draws_to_separate({"mean": 1.0, "std": 0.1}, {"mean": 2.0, "std": 0.1}) == 2
    assert hessian_tables.draws_to_separate({"mean": 1.0, "std": 1.0}, {"mean": 2.0, "std": 1.0}) == 17
    assert hessian_tables.draws_to_separate({"mean": 1.0, "std": None}, {"mean": 2.0, "std": 1.0}) is None
    assert hessian_tables.draws_to_separate({"mean": 1.0, "std": 1.0}, {"mean": 1.0, "std": 1.0}) == "never"
