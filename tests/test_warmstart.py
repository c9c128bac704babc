"""Warm starts (Figure 5, claim 5): the warm_start config section, piggyback runs that start
exactly from the SB iterate (and resume), the missing-iterate error, claim 5's rule on the
published curves and on curves that must fail, the report section and the Make rules."""

import math
import shutil

import numpy as np
import pytest
import yaml

from conftest import TINY, cli, one_error_line
from replication import pipeline, regimes, rundir, storage, train
from replication import config as config_lib
from replication.measure import sharpness
from replication.analysis import report, results, verdicts, warmstart

pytestmark = pytest.mark.backend

WARM = {**TINY, "epochs": 2, "keep_iterates": [1, 2], "warm_start": {"enabled": True},
        "sharpness": {"spaces": ["full"], "subset": 100, "iterations": 2}}


# Config -----------------------------------------------------------------------------------------
def test_warm_start_section_adds_piggyback_runs():
    base = {"network": "F1", "dataset": "synthetic_mnist", "epochs": 10, "keep_iterates": [1, 3]}
    assert config_lib.from_dict(base).regimes() == ["sb", "lb"]  # nothing unless enabled
    same = config_lib.from_dict({**base, "warm_start": {"enabled": True}})
    # As many epochs as LB trains: the plain LB run is the point at 0 SB epochs.
    assert same.regimes() == ["sb", "lb", "lb-from-sb1", "lb-from-sb3"]
    assert same.warm_start_points() == {0: regimes.pair("lb"), 1: regimes.warm_start(1), 3: regimes.warm_start(3)}
    short = config_lib.from_dict({**base, "warm_start": {"enabled": True, "epochs": 4}})
    assert {k: spec.name for k, spec in short.warm_start_points().items()} == \
        {0: "lb-from-sb0", 1: "lb-from-sb1", 3: "lb-from-sb3"}
    piggyback, lb = regimes.parse("lb-from-sb3"), regimes.parse("lb")
    run = short.for_regime(piggyback)
    assert (run.epochs, run.kept_epochs(), run.warm_start.enabled) == (4, (), False)
    assert short.batch_size(piggyback, 1000) == run.batch_size(piggyback, 1000) == short.batch_size(lb, 1000) == 100
    assert short.warm_start_settings(piggyback) == {"from_regime": "sb", "sb_epoch": 3, "epochs": 4,
                                                    "trial_epochs": 10}
    assert short.warm_start_settings(lb) is None
    assert any("piggyback LB run (Figure 5) from SB's iterate of epoch 3 of a 10-epoch SB run, for 4 epochs"
               in d for d in short.run_deviations(piggyback))
    with pytest.raises(config_lib.ConfigError, match="piggyback run of this config: lb-from-sb0, lb-from-sb1"):
        short.for_regime(regimes.parse("lb-from-sb2"))  # epoch 2 is not kept
    for bad, key in (({"warm_start": {"enabled": True, "epochs": 0}}, "warm_start.epochs"),
                     ({"warm_start": {"epochs": "ten"}}, "warm_start.epochs"),
                     ({"warm_start": {"enabled": True}, "keep_iterates": []}, "warm_start.enabled")):
        with pytest.raises(config_lib.ConfigError, match=f"'{key}'"):
            config_lib.from_dict({**base, **bad})
    with pytest.raises(config_lib.ConfigError, match="unknown config key 'warm_start.epoch'"):
        config_lib.from_dict({**base, "warm_start": {"epoch": 3}})


def test_a_bad_warm_start_section_is_one_error_line(tiny_config):
    result = cli("check", tiny_config(warm_start={"enabled": True}))  # no kept iterates
    line = one_error_line(result.returncode, result.stderr)
    assert "'warm_start.enabled'" in line and "keep_iterates or keep_every" in line


def test_the_section_does_not_change_finished_runs(tiny_config):
    """A non-training key: adding it to a config keeps its finished SB and LB runs valid."""
    plain = config_lib.load(tiny_config(epochs=2, keep_iterates=[1, 2]))
    train.train(plain, "sb", 0)
    enabled = config_lib.load(tiny_config(epochs=2, keep_iterates=[1, 2],
                                          warm_start={"enabled": True, "epochs": 1}))
    assert rundir.check(enabled) == 1


# Piggyback runs -------------------------------------------------------------------------------------
def test_a_piggyback_run_needs_the_sb_run_first(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**WARM, "results_dir": str(tmp_path / "r")}))
    result = cli("train", path, "--seed", "0", "--regime", "lb-from-sb2")
    line = one_error_line(result.returncode, result.stderr)
    assert "train the SB run first: python -m replication train CONFIG --seed 0 --regime sb" in line
    assert not (tmp_path / "r" / "F1_synthetic_mnist" / "lb-from-sb2").exists()  # nothing half-written


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    """SB (iterates of epochs 1 and 2), LB, and the piggyback runs from both iterates, measured."""
    config = config_lib.from_dict({**WARM, "results_dir": str(tmp_path_factory.mktemp("warm"))})
    runs = {regime: train.train(config, regime, 0) for regime in config.regimes()}
    for run in runs.values():
        sharpness.sharpness_all(run)
    return config, runs


def test_a_piggyback_run_starts_from_the_sb_iterate(trial):
    config, runs = trial
    sb, lb, warm = runs["sb"], runs["lb"], runs["lb-from-sb1"]
    iterate = rundir.iterate_path(sb, 1)
    metrics = storage.read_json(warm / "metrics.json")
    plain = rundir.build_model(config, (28, 28, 1), 10, compiled=False)
    plain.load_weights(iterate)
    assert metrics["warm_start"]["initial_sha256"] == storage.weights_digest(plain.get_weights())
    assert metrics["warm_start"]["start_file_sha256"] == storage.sha256_file(iterate)
    assert metrics["warm_start"]["start"] == "F1_synthetic_mnist/sb/seed0/iterates/epoch1.weights.h5"
    assert (warm / "initial.weights.h5").read_bytes() == iterate.read_bytes()
    # The LB protocol from there: LB's batch, the trial's x0 recorded, its own epochs.
    lb_metrics = storage.read_json(lb / "metrics.json")
    assert metrics["batch_size"] == lb_metrics["batch_size"] == 40
    assert metrics["x0_sha256"] == lb_metrics["x0_sha256"] and metrics["epochs_run"] == 2
    assert storage.read_yaml(warm / "config.yaml")["run"]["warm_start"] == {
        "from_regime": "sb", "sb_epoch": 1, "epochs": 2, "trial_epochs": 2}
    # Not a copy of another run: its minimiser differs from SB's and LB's.
    final = rundir.load_run(warm).model.get_weights()
    for other in (sb, lb):
        assert storage.weights_digest(final) != storage.weights_digest(rundir.load_run(other).model.get_weights())


def test_the_lb_run_is_the_piggyback_run_from_x0(trial, tmp_path):
    """Why k = 0 needs no run of its own when the epochs match: lb-from-sb0 (from x0, fresh Adam,
    LB batch) trained for 1 epoch ends where a 1-epoch LB run does."""
    config = config_lib.from_dict({**WARM, "results_dir": str(tmp_path / "a"), "warm_start": {"enabled": True,
                                                                                              "epochs": 1}})
    assert config.warm_start_points()[0].name == "lb-from-sb0"
    zero = train.train(config, "lb-from-sb0", 0)
    lb = train.train(config_lib.from_dict({**WARM, "epochs": 1, "keep_iterates": [], "warm_start": {},
                                           "results_dir": str(tmp_path / "b")}), "lb", 0)
    assert storage.weights_digest(rundir.load_run(zero).model.get_weights()) == \
        storage.weights_digest(rundir.load_run(lb).model.get_weights())
    start = storage.read_json(zero / "metrics.json")["warm_start"]["start"]
    assert start.startswith("F1_synthetic_mnist/x0/seed0")


def test_a_killed_piggyback_run_resumes_to_the_same_numbers(trial, tmp_path):
    config, runs = trial
    root = tmp_path / "r"
    shutil.copytree(runs["sb"].parents[2], root)  # the trial, x0 and SB included
    shutil.rmtree(root / "F1_synthetic_mnist" / "lb-from-sb2")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**WARM, "results_dir": str(root)}))
    args = ("train", path, "--seed", "0", "--regime", "lb-from-sb2")
    killed = cli(*args, env={storage.FAILPOINT_VARIABLE: "epoch:1:end"})
    assert killed.returncode == -9, killed.stderr
    resumed = cli(*args, check=True)
    assert "resuming after epoch 1" in resumed.stderr
    run = root / "F1_synthetic_mnist" / "lb-from-sb2" / "seed0"
    reference = runs["lb-from-sb2"]
    assert (run / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    assert (run / "final.weights.h5").read_bytes() == (reference / "final.weights.h5").read_bytes()
    # The SB run trained again (other weights at its iterates: here, swapped): an unfinished
    # piggyback run is refused when it resumes...
    shutil.rmtree(run)
    assert cli(*args, env={storage.FAILPOINT_VARIABLE: "epoch:1:end"}).returncode == -9
    first, second = (rundir.iterate_path(root / "F1_synthetic_mnist" / "sb" / "seed0", k) for k in (1, 2))
    swapped = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(swapped)
    result = cli(*args)
    line = one_error_line(result.returncode, result.stderr)
    assert "changed since the piggyback run" in line and "delete" in line
    # ... and a finished one (lb-from-sb1) by the report.
    with pytest.raises(results.ResultsError, match="started from other weights than"):
        warmstart.rows(results.load(root))


# Report and claim 5 ----------------------------------------------------------------------------
def test_report_has_figure5_and_judges_claim5(trial):
    config, runs = trial
    root = runs["sb"].parents[2]
    rows = warmstart.rows(results.load(root))
    assert [r["sb_epochs"] for r in rows] == [0, 1, 2]
    assert [r["run"] for r in rows] == ["F1_synthetic_mnist/lb/seed0", "F1_synthetic_mnist/lb-from-sb1/seed0",
                                        "F1_synthetic_mnist/lb-from-sb2/seed0"]
    history = storage.read_csv(runs["sb"] / "history.csv")
    assert math.isnan(rows[0]["sb_test_accuracy"])
    assert rows[2]["sb_test_accuracy"] == pytest.approx(float(history[1]["test_accuracy"]))
    for row in rows:
        measured = storage.read_json(runs[row["run"].split("/")[1]] / "sharpness" / "full_eps0.001.json")
        assert row["phi_full_eps0.001"] == pytest.approx(measured["phi"])
    path = report.build(root)
    text = path.read_text()
    assert "## Figure 5: warm-starting LB from SB iterates" in text
    assert (root / "F1_synthetic_mnist" / "warmstart" / "figure5.png").exists()
    assert len(storage.read_csv(root / "tables" / "figure5.csv")) == 3
    claim5 = next(v for v in verdicts.verdicts(results.load(root)) if v["claim"] == 5)
    # One seed: the five-seed rule cannot decide, whatever the piggyback runs show.
    assert claim5["verdict"] == "inconclusive (1 seed; the rule needs 5)", claim5["verdict"]
    assert "piggyback LB test accuracy" in claim5["reason"]


def synthetic(accuracy, phi, seeds=1, std=0.0):
    rows = []
    for seed in range(seeds):
        for k, (a, p) in enumerate(zip(accuracy, phi)):
            rows.append({"network": "F1", "dataset": "fashion_mnist", "data": "Fashion-MNIST", "seed": seed,
                         "sb_epochs": k, "sb_test_accuracy": math.nan,
                         "piggyback_test_accuracy": a + (std if seed % 2 else -std),
                         "piggyback_train_accuracy": 99.0, "piggyback_train_loss": 0.1,
                         "lb_epochs": 5, "diverged": 0, "phi_full_eps0.001": p, "phi_full_eps0.001_failed": 0,
                         "deviations": "none", "run": f"F1/lb-from-sb{k}/seed{seed}"})
    return rows


@pytest.mark.parametrize("accuracy, phi, level", [
    ([85.0, 86.0, 87.0, 88.0], [50.0, 30.0, 20.0, 10.0], "pass"),
    ([85.0, 85.01, 85.02, 85.05], [50.0, 30.0, 20.0, 10.0], "partial"),   # gain under F1's 0.07-point margin
    ([85.0, 86.0, 87.0, 88.0], [10.0, 20.0, 30.0, 50.0], "partial"),   # sharper, not flatter
    ([88.0, 87.0, 86.0, 85.0], [10.0, 20.0, 30.0, 50.0], "fail"),
])
def test_claim5_rule_on_synthetic_curves(accuracy, phi, level):
    units, notes = warmstart.judge(synthetic(accuracy, phi, seeds=5))
    assert [u["level"] for u in units] == [level] and not notes, units
    assert units[0]["evidence"].endswith(f"-> {level}")


def test_claim5_rule_needs_points_and_seeds():
    units, notes = warmstart.judge(synthetic([85.0, 88.0], [50.0, 10.0]))
    assert units == [] and "at least 3 values of k" in notes[0]
    assert verdicts.claim5(synthetic([85.0, 88.0], [50.0, 10.0]))["verdict"] == "not run"
    # A 1.5-point gain with one seed is inconclusive; five seeds that agree pass.
    assert verdicts.claim5(synthetic([85.0, 86.0, 86.5], [3.0, 2.0, 1.0]))["verdict"] == (
        "inconclusive (1 seed; the rule needs 5)")
    assert verdicts.claim5(synthetic([85.0, 86.0, 86.5], [3.0, 2.0, 1.0], seeds=5, std=2.0))["verdict"] == "reproduced"


def test_make_rules_order_piggyback_runs_after_sb(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**WARM, "results_dir": str(tmp_path / "r"),
                                    "sharpness": {"spaces": ["full", "random"]}}))
    rules = pipeline.rules("t", [str(path)])
    trial_dir = tmp_path / "r" / "F1_synthetic_mnist"
    assert f"{trial_dir}/lb-from-sb2/seed0/metrics.json: | t-check-0 {trial_dir}/sb/seed0/metrics.json" in rules
    assert f"{trial_dir}/lb/seed0/metrics.json: | t-check-0\n" in rules
    assert f"sharpness {trial_dir}/lb-from-sb2/seed0 --space full" in rules
    assert f"sharpness {trial_dir}/lb/seed0\n" in rules  # every space for the plain runs
    assert f"{trial_dir}/lb-from-sb2/seed0/sharpness/full_eps0.0005.json" in rules.split("REPORT.md:")[1]
    assert np.all([r in rules for r in ("lb-from-sb1", "lb-from-sb2")])
