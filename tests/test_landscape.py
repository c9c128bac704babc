"""Parametric plots (Figures 3 and 7) on a tiny real SB/LB pair: the curve's ends are the runs'
own final losses, the files are complete and valid, work is skipped, a pair must share x0, and
both ways of treating moving batch-norm statistics work."""

import io
import math
import shutil

import numpy as np
import pytest
import yaml

from conftest import TINY, cli, stamp
from replication import rundir, storage, train
from replication import config as config_lib
from replication.measure import landscape
from replication.analysis import compare, landscape_figures, results

pytestmark = pytest.mark.backend

PNG_MAGIC, PDF_MAGIC = b"\x89PNG\r\n\x1a\n", b"%PDF-"
REFERENCE_HEADER = (compare.REFERENCE / "paper_figures" / "figure3_F1.csv").read_text().splitlines()[0]


def tiny(results_dir, **overrides) -> config_lib.Config:
    return config_lib.from_dict({**TINY, "epochs": 1, "train_subset": 300, "test_subset": 100,
                                 "eval_batch_size": 100, "results_dir": str(results_dir), **overrides})


def train_pair(config):
    for regime in ("sb", "lb"):
        train.train(config, regime, 0, log=io.StringIO())
    return config


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A finished SB/LB pair (batch statistics, the paper's BN) with both curves computed and drawn,
    as the `landscape` command does."""
    config = train_pair(tiny(tmp_path_factory.mktemp("landscape") / "results"))
    for csv_path in landscape.compute(config, 0, log=io.StringIO()):
        landscape_figures.plot(csv_path)
    return config


def curve(config, path):
    rows = storage.read_csv(landscape.output_stem(config, 0, path).with_suffix(".csv"))
    return {float(r["alpha"]): r for r in rows}


def final(config, regime):
    return storage.read_json(rundir.run_directory(config, regime, 0) / "metrics.json")


def test_path_coefficients_in_closed_form():
    assert landscape.coefficients("linear", 0.0) == (0.0, 1.0)
    assert landscape.coefficients("linear", 2.0) == (2.0, -1.0)
    assert landscape.coefficients("curvilinear", 0.0) == (0.0, 1.0)
    lb, sb = landscape.coefficients("curvilinear", 1.0)
    assert lb == 1.0 and abs(sb) < 1e-15
    assert np.allclose(landscape.coefficients("curvilinear", -1.0), (-1.0, 0.0))
    # Between and beyond the ends, where another path with the same ends (alpha, 1 - alpha^2) differs:
    # Figure 7's path sin(alpha pi / 2) x_LB + cos(alpha pi / 2) x_SB.
    assert np.allclose(landscape.coefficients("curvilinear", 0.5), (math.sqrt(0.5), math.sqrt(0.5)))
    assert np.allclose(landscape.coefficients("curvilinear", 2.0), (0.0, -1.0), atol=1e-15)
    assert np.allclose(landscape.coefficients("curvilinear", 1 / 3), (0.5, math.sqrt(3) / 2))
    with pytest.raises(ValueError, match="unknown path"):
        landscape.coefficients("spiral", 0.5)


@pytest.mark.parametrize("path", ["linear", "curvilinear"])
def test_ends_are_the_runs_final_numbers(pair, path):
    rows = curve(pair, path)
    for alpha, regime in ((0.0, "sb"), (1.0, "lb")):
        metrics = final(pair, regime)
        assert float(rows[alpha]["train_xent"]) == pytest.approx(metrics["train_loss"], abs=1e-5)
        assert float(rows[alpha]["test_xent"]) == pytest.approx(metrics["test_loss"], abs=1e-5)
        assert float(rows[alpha]["train_acc_pct"]) == pytest.approx(metrics["train_accuracy"], abs=1e-6)
        assert float(rows[alpha]["test_acc_pct"]) == pytest.approx(metrics["test_accuracy"], abs=1e-6)


def test_outputs_are_complete_and_valid(pair):
    for path, figure in (("linear", "Figure 3"), ("curvilinear", "Figure 7")):
        stem = landscape.output_stem(pair, 0, path)
        assert stem.with_suffix(".csv").read_text().splitlines()[0] == REFERENCE_HEADER
        assert sorted(curve(pair, path)) == pytest.approx(list(np.linspace(-1, 2, 25)))
        meta = storage.read_json(stem.with_suffix(".json"))
        assert meta["figure"] == figure and meta["path"] == path
        assert meta["x0_sha256"] == final(pair, "sb")["x0_sha256"]
        assert meta["settings"]["batchnorm"] == "batch_statistics"
        assert meta["settings"]["moving_statistics"] is None
        assert "batch statistics" in meta["batchnorm_mode"] and meta["wall_seconds"] >= 0
        assert meta["settings"]["train_examples"] == 300 and meta["settings"]["landscape_subset"] is None
        assert meta["sb_run"].endswith("sb/seed0") and meta["lb_run"].endswith("lb/seed0")
        assert "git_commit" in meta["environment"]
        assert stem.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
        assert stem.with_suffix(".pdf").read_bytes()[:5] == PDF_MAGIC
        assert not list(stem.parent.glob(".*tmp*"))
    # The two paths share their ends only: inside, Figure 7's curve passes through other weights.
    linear, curved = curve(pair, "linear"), curve(pair, "curvilinear")
    assert float(linear[0.5]["train_xent"]) != pytest.approx(float(curved[0.5]["train_xent"]), rel=1e-4)


def test_done_work_is_skipped_and_figures_drawn_from_the_files(pair):
    stem = landscape.output_stem(pair, 0, "linear")
    before = stamp(stem.with_suffix(".csv"))
    stem.with_suffix(".png").unlink()
    log = io.StringIO()
    assert landscape.compute(pair, 0, ["linear"], log=log) == [stem.with_suffix(".csv")]
    assert "skipping" in log.getvalue()
    assert stamp(stem.with_suffix(".csv")) == before
    assert not stem.with_suffix(".png").exists()  # measuring draws nothing
    landscape_figures.plot(stem.with_suffix(".csv"))
    assert stem.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC


def test_subset_is_used_and_recorded(pair, tmp_path):
    config = tiny(tmp_path / "results", landscape={"subset": 50, "points": 4})
    shutil.copytree(rundir.trial_directory(pair), rundir.trial_directory(config))
    landscape.compute(config, 0, ["linear"], log=io.StringIO())
    meta = storage.read_json(landscape.output_stem(config, 0, "linear").with_suffix(".json"))
    assert meta["settings"]["train_examples"] == 50 and meta["settings"]["landscape_subset"] == 50
    assert "parametric plots on 50 training examples" in meta["deviations"]
    assert len(storage.read_csv(landscape.output_stem(config, 0, "linear").with_suffix(".csv"))) == 4


def test_a_pair_must_share_x0(pair, tmp_path):
    with pytest.raises(landscape.LandscapeError, match="sb/seed0.*lb/seed0"):
        landscape.check_pair("runs/sb/seed0", {"x0_sha256": "a"}, "runs/lb/seed0", {"x0_sha256": "b"})
    config = tiny(tmp_path / "results")
    shutil.copytree(rundir.trial_directory(pair), rundir.trial_directory(config))
    metrics_path = rundir.run_directory(config, "lb", 0) / "metrics.json"
    storage.atomic_write_json(metrics_path, {**storage.read_json(metrics_path), "x0_sha256": "0" * 64})
    with pytest.raises(landscape.LandscapeError) as err:
        landscape.load_pair(config, 0)
    assert str(rundir.run_directory(config, "sb", 0)) in str(err.value)
    assert str(rundir.run_directory(config, "lb", 0)) in str(err.value)


def test_moving_average_interpolate_and_recompute(tmp_path):
    config = train_pair(tiny(tmp_path / "results", batchnorm="moving_average",
                             landscape={"points": 4, "moving_statistics": "interpolate"}))
    landscape.compute(config, 0, ["linear"], log=io.StringIO())
    rows = curve(config, "linear")
    meta = storage.read_json(landscape.output_stem(config, 0, "linear").with_suffix(".json"))
    assert meta["settings"]["moving_statistics"] == "interpolate" and "interpolated" in meta["batchnorm_mode"]
    # The moving statistics travel with the weights, so both ends are exactly the runs' minimisers.
    for alpha, regime in ((0.0, "sb"), (1.0, "lb")):
        expected = final(config, regime)["train_loss"]
        assert float(rows[alpha]["train_xent"]) == pytest.approx(expected, abs=1e-5)
    assert set(meta["variance_clamped_alphas"]) <= {-1.0, 2.0}

    recompute = tiny(tmp_path / "results", batchnorm="moving_average",
                     landscape={"points": 4, "moving_statistics": "recompute"})
    landscape.compute(recompute, 0, ["linear"], log=io.StringIO())  # other settings: recomputed
    meta = storage.read_json(landscape.output_stem(config, 0, "linear").with_suffix(".json"))
    assert meta["settings"]["moving_statistics"] == "recompute" and "recomputed" in meta["batchnorm_mode"]
    assert meta["train_statistics_examples"] == 300
    assert all(np.isfinite(float(v)) for r in curve(config, "linear").values() for v in r.values())


def test_recomputed_statistics_are_the_exact_population_moments(tmp_path):
    import keras

    config = tiny(tmp_path / "results", batchnorm="moving_average")
    model = rundir.build_model(config, (28, 28, 1), 10, compiled=False)
    inputs = np.random.default_rng(0).uniform(size=(250, 28, 28, 1)).astype(np.float32)
    landscape.recompute_statistics(model, inputs, batch_size=60)  # uneven last batch on purpose
    layers = landscape.batchnorm_layers(model)
    for layer in layers[:2]:
        h = np.asarray(keras.Model(model.input, layer.input)(inputs, training=False), np.float64)
        np.testing.assert_allclose(np.asarray(layer.moving_mean), h.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(layer.moving_variance), h.var(0), rtol=1e-3, atol=1e-5)


def test_cli_computes_every_finished_pair(pair, tmp_path):
    config_path = tmp_path / "config.yaml"
    data = {**TINY, "epochs": 1, "train_subset": 300, "test_subset": 100, "eval_batch_size": 100,
            "results_dir": pair.results_dir}
    config_path.write_text(yaml.safe_dump(data))
    landscape.output_stem(pair, 0, "curvilinear").with_suffix(".pdf").unlink()
    kept = stamp(landscape.output_stem(pair, 0, "linear").with_suffix(".png"))
    result = cli("landscape", config_path, check=True)
    assert result.stdout.split() == [str(landscape.output_stem(pair, 0, p).with_suffix(".csv"))
                                     for p in ("linear", "curvilinear")]
    assert "skipping" in result.stderr
    for p in ("linear", "curvilinear"):  # the command draws a missing figure from the files
        assert landscape.output_stem(pair, 0, p).with_suffix(".pdf").read_bytes()[:5] == PDF_MAGIC
    assert stamp(landscape.output_stem(pair, 0, "linear").with_suffix(".png")) == kept
    result = cli("landscape", config_path, "--set", "seeds=[5]")
    assert result.returncode == 0 and "train them first" in result.stderr


def test_a_curve_from_other_weights_than_its_runs_hold_is_refused(pair, tmp_path):
    # A copy of the trial whose SB run was "retrained" (other final weights) after its curves. The
    # sidecars still name the original runs: the check reads the runs of the folder it loads.
    copy = tmp_path / "results"
    shutil.copytree(pair.results_dir, copy)
    trial = next(copy.iterdir())
    assert compare.landscape_rows(results.load(copy))  # untouched weights: accepted
    weights = trial / "sb" / "seed0" / "final.weights.h5"
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(results.ResultsError, match="other SB weights"):
        compare.landscape_rows(results.load(copy))
    weights.unlink()  # no weights at all (a fresh clone): nothing to check against, accepted
    assert compare.landscape_rows(results.load(copy))
