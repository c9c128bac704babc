"""The batch-size study (issue 13): target stopping, the learning-rate grid and its extension, the
critical-batch fit, the noise scale along training, the report; configs refused in one line."""

import dataclasses
import types
from pathlib import Path

import numpy as np
import pytest

from replication import data, regimes, rundir, storage, target, train
from replication import config as config_lib
from replication.experiments import batchsize
from replication.analysis import batchsize_report, critical_batch

from conftest import cli, one_error_line, stamp

pytestmark = pytest.mark.backend

STUDY = {"stopping": "target", "epochs": 20,
         "target": {"metric": "train_loss", "value": 1.0, "every_steps": 3, "eval_subset": 200, "max_steps": 200},
         "batch_size_study": {"batch_sizes": [16, 64], "lr_multipliers": [0.5, 1, 2], "max_extensions": 1,
                              "bootstrap": 50},
         "sharpness": {"subset": 300}, "sweep": {"noise_batches": 4}}


def _config(tiny_config, **overrides):
    return config_lib.load(tiny_config(**{**STUDY, **overrides}))


# Target stopping ----------------------------------------------------------------------------------
def test_a_run_stops_at_the_first_check_that_meets_the_target(tiny_config):
    config = _config(tiny_config, target={**STUDY["target"], "value": 0.3})
    path = train.train(config, "b16-x0.5", 0)
    metrics = storage.read_json(path / "metrics.json")
    trace = storage.read_csv(target.trace_path(path))
    losses = [float(r["train_loss"]) for r in trace]
    assert metrics["stopped"] == "target" and metrics["target"]["reached"]
    # Every check but the last missed the target; the last met it, and the run stopped there.
    assert len(losses) >= 3 and all(loss > 0.3 for loss in losses[:-1]) and losses[-1] <= 0.3
    steps = [int(r["step"]) for r in trace]
    assert steps == list(range(3, 3 * len(trace) + 1, 3))
    assert metrics["target"]["steps"] == steps[-1] and metrics["target"]["examples"] == 16 * steps[-1]
    # The run stopped mid-way: fewer steps than its epochs would hold (400 examples / 16 = 25 a epoch).
    assert metrics["target"]["steps_run"] == steps[-1] < 25 * metrics["epochs_run"]


def test_an_unreachable_target_stops_at_the_step_budget(tiny_config):
    config = _config(tiny_config, target={**STUDY["target"], "value": 1e-6, "max_steps": 30})
    path = train.train(config, "b64-x1", 0)
    metrics = storage.read_json(path / "metrics.json")
    assert metrics["stopped"] == "not_reached" and not metrics["target"]["reached"]
    assert metrics["target"]["steps"] is None and metrics["target"]["steps_run"] == 30
    assert int(storage.read_csv(target.trace_path(path))[-1]["step"]) == 30


def test_the_examples_a_run_trained_on_are_the_ones_unseen_inputs_derives(tiny_config, monkeypatch):
    """analysis/unseen_inputs.examples_trained re-derives which examples a run had trained on by a step
    (for B_adam's v = 0 weights); checked against training itself: a pixel lit in one example only
    leaves Adam's v exactly 0 on its first-layer weights until that example is trained on."""
    from replication.analysis import unseen_inputs

    real, pixels = rundir.load_arrays, list(range(0, 40, 4))

    def one_example_per_pixel(config):
        dataset, x, y, x_test, y_test = real(config)
        x = x.copy()
        flat = x.reshape(len(x), -1)
        flat[:, pixels] = 0
        for k, pixel in enumerate(pixels):
            flat[37 * k + 5, pixel] = 1.0  # example 37k + 5 alone lights pixel k
        return dataset, x, y, x_test, y_test

    monkeypatch.setattr(rundir, "load_arrays", one_example_per_pixel)
    # 400 examples at batch 16: 25 steps an epoch; stopped at step 12, mid-way through the first.
    config = _config(tiny_config, target={**STUDY["target"], "value": 1e-6, "max_steps": 12})
    path = train.train(config, "b16-x1", 0)
    state = np.load(path / "final.adam.npz")
    assert int(state["t"]) == 12
    kernel_v = state["v"][:784 * 512].reshape(784, 512)  # the first Dense layer's kernel, row per pixel
    trained = set(unseen_inputs.examples_trained(0, 16, 12, 400).tolist())
    assert 0 < sum(37 * k + 5 in trained for k in range(len(pixels))) < len(pixels)  # both kinds occur
    for k, pixel in enumerate(pixels):
        assert (kernel_v[pixel] == 0).all() == (37 * k + 5 not in trained), (pixel, 37 * k + 5)


def test_an_interrupted_target_run_resumes_to_the_same_trace(tiny_config):
    config = _config(tiny_config, target={**STUDY["target"], "value": 0.0006})
    whole = storage.read_csv(target.trace_path(train.train(config, "b64-x0.5", 0)))
    assert int(whole[-1]["epoch"]) > 3  # the run spans more than 3 epochs (7 steps each)
    other = _config(tiny_config, target={**STUDY["target"], "value": 0.0006}, results_dir=str(config.results_dir) + "-b")
    again_path = tiny_config(**{**STUDY, "target": {**STUDY["target"], "value": 0.0006},
                                "results_dir": other.results_dir})
    # Killed mid-epoch 3 (its checks only in memory), then where epoch 3's checks are written but
    # its history row is not (the resumed run must drop them and redo the epoch).
    for failpoint in ("epoch:3:mid", "write:history.csv"):
        killed = cli("train", again_path, "--regime", "b64-x0.5", env={storage.FAILPOINT_VARIABLE: failpoint})
        assert killed.returncode != 0 and not (rundir.run_directory(other, "b64-x0.5", 0) / "metrics.json").exists()
    resumed = train.train(other, "b64-x0.5", 0)
    again = storage.read_csv(target.trace_path(resumed))
    assert [r["step"] for r in again] == [r["step"] for r in whole]
    np.testing.assert_allclose([float(r["train_loss"]) for r in again], [float(r["train_loss"]) for r in whole],
                               rtol=1e-5)


# The grid -----------------------------------------------------------------------------------------
def test_the_grid_comes_first_then_extends_past_a_strictly_best_edge():
    study = config_lib.BatchSizeStudyConfig(batch_sizes=(32,), lr_multipliers=(0.5, 1.0, 2.0), max_extensions=2)
    assert study.multipliers() == (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    assert batchsize.next_multiplier({}, study) == (0.5, "grid")
    assert batchsize.next_multiplier({0.5: 100, 1.0: 120}, study) == (2.0, "grid")
    # Best at the low edge -> one more below; then interior -> done.
    assert batchsize.next_multiplier({0.5: 100, 1.0: 120, 2.0: 200}, study) == (0.25, "extended low")
    assert batchsize.next_multiplier({0.25: 110, 0.5: 100, 1.0: 120, 2.0: 200}, study) == (None, "interior")
    # Best at the high edge (lower rates never reached the target) -> above, until the cap.
    steps = {0.5: None, 1.0: 300, 2.0: 150}
    assert batchsize.next_multiplier(steps, study) == (4.0, "extended high")
    assert batchsize.next_multiplier({**steps, 4.0: 90, 8.0: 80}, study) == (None, "capped high")
    # Nothing reached -> nothing to extend towards.
    assert batchsize.next_multiplier({0.5: None, 1.0: None, 2.0: None}, study) == (None, "none reached")


@pytest.mark.parametrize("steps, best, extends", [
    ({0.5: 100, 1.0: 100, 2.0: 200}, 1.0, (0.25, "extended low")),              # tie with the low edge
    ({0.5: 200, 1.0: 100, 2.0: 100}, 1.0, (4.0, "extended high")),              # tie with the high edge
    ({0.5: 80, 1.0: 80, 2.0: 80}, 1.0, (0.25, "extended low")),                 # C1 CPU, batch 1000
    ({0.25: 23, 0.5: 23, 1.0: 37, 2.0: 66}, 0.5, (0.125, "extended low")),      # F1, batch 2000
    ({0.5: 9360, 1.0: 8112, 2.0: 6708, 4.0: 6396, 8.0: 6396}, 4.0, (None, "capped high")),  # C1 GPU, batch 32
])
def test_a_tie_with_an_edge_counts_as_an_edge(steps, best, extends):
    """Issue 25 item 3: a rate tied with an edge has not been shown to beat the rate beyond that
    edge, so the grid extends there (the committed studies held such ties and called them interior);
    the best reported among tied rates is the one nearest the middle."""
    study = config_lib.BatchSizeStudyConfig(batch_sizes=(32,), lr_multipliers=(0.5, 1.0, 2.0), max_extensions=2)
    assert batchsize.best_multiplier(steps) == best
    assert batchsize.next_multiplier(steps, study) == extends
    # Strictly best at either edge extends, and so does a win by no more than the check resolution.
    assert batchsize.next_multiplier({0.5: 200, 1.0: 150, 2.0: 100}, study) == (4.0, "extended high")
    assert batchsize.next_multiplier({0.5: 90, 1.0: 150, 2.0: 100}, study) == (0.25, "extended low")


def test_a_win_within_the_check_resolution_is_a_tie():
    study = config_lib.BatchSizeStudyConfig(batch_sizes=(32,), lr_multipliers=(0.5, 1.0, 2.0), max_extensions=2)
    steps = {0.5: 105, 1.0: 100, 2.0: 200}
    assert batchsize.next_multiplier(steps, study, resolution=0) == (None, "interior")
    assert batchsize.tied(steps, resolution=5) == [0.5, 1.0]
    assert batchsize.next_multiplier(steps, study, resolution=5) == (0.25, "extended low")
    # Both edges tied and nothing left beyond either: both named.
    flat = {0.125: 50, 0.25: 50, 0.5: 50, 1.0: 50, 2.0: 50, 4.0: 50, 8.0: 50}
    assert batchsize.next_multiplier(flat, study) == (None, "capped low and capped high")


def test_the_study_trains_the_grid_and_its_extension(tiny_config, monkeypatch):
    config = _config(tiny_config)
    fake = {1.0: 40, 0.5: 30, 2.0: 60, 0.25: 35}  # best at 0.5 after one extension below
    trained = []

    def fake_train(cfg, spec, seed, log=None):
        trained.append(spec.name)
        path = rundir.run_directory(cfg, spec.name, seed)
        steps = fake[spec.multiplier] * 64 // spec.batch
        storage.atomic_write_json(path / "metrics.json", {"target": {"reached": True, "steps": steps, "examples": steps * spec.batch, "steps_run": steps, "train_seconds": 1.0,
                                                                     "eval_examples": data.MEASUREMENT_SUBSET}})
        return path

    monkeypatch.setattr(train, "train", fake_train)
    rows = batchsize.run_study(config, 0)
    assert trained == ["b16-x0.5", "b16-x1", "b16-x2", "b16-x0.25", "b64-x0.5", "b64-x1", "b64-x2", "b64-x0.25"]
    assert [(r["batch_size"], r["best_multiplier"], r["grid"]) for r in rows] == [(16, 0.5, "interior"),
                                                                                  (64, 0.5, "interior")]
    assert batchsize.run_study(config, 0) == rows and len(trained) == 8  # finished runs are not redone


# The critical batch size --------------------------------------------------------------------------
def test_the_fit_recovers_s_min_and_b_crit_from_exact_data():
    batches = np.array([32, 100, 316, 1000, 3162])
    steps = 250 * (1 + 600 / batches)
    fit = critical_batch.fit_critical_batch(batches, steps)
    assert fit["s_min"] == pytest.approx(250, rel=1e-9) and fit["b_crit"] == pytest.approx(600, rel=1e-9)
    assert fit["e_min"] == pytest.approx(250 * 600, rel=1e-9)
    assert abs(fit["worst_residual"]) < 1e-9
    # A batch that needs more steps than the curve allows is named with its relative residual.
    bumped = steps * np.where(batches == 32, 1.3, 1.0)
    off = critical_batch.fit_critical_batch(batches, bumped)
    assert off["worst_residual_batch"] == 32 and off["worst_residual"] > 0.1
    boot = critical_batch.bootstrap_critical_batch(batches, steps, 200)
    assert boot["median"] == pytest.approx(600, rel=1e-6) and boot["unresolved"] == 0
    # Steps falling at least as fast as 1/B everywhere: no positive S_min, so no critical batch.
    assert critical_batch.fit_critical_batch(batches, 1e5 / batches - 5)["b_crit"] is None
    # Steps exactly proportional to 1/B (C2's CPU smoke run: 4 steps at 16, 2 at 32) fit S_min = 0
    # up to round-off, which must not read as a critical batch of 1e16.
    assert critical_batch.fit_critical_batch([16, 32], [4, 2])["b_crit"] is None
    assert critical_batch.fit_critical_batch(batches, 64 * 100 / batches)["b_crit"] is None
    # The report names the reason: steps falling as 1/B, or steps not falling at all.
    assert "as fast as 1/B" in batchsize_report.unresolved_reason(critical_batch.fit_critical_batch([16, 32], [4, 2]))
    rising = critical_batch.fit_critical_batch([16, 32, 64], [10, 12, 14])
    assert rising["b_crit"] is None and "do not fall" in batchsize_report.unresolved_reason(rising)
    with pytest.raises(ValueError):
        critical_batch.fit_critical_batch([32, 32], [10, 10])


def test_seconds_per_step_leaves_the_first_interval_and_epoch_ends_out():
    trace = [{"step": 10, "epoch": 1, "train_seconds": 5.0}, {"step": 20, "epoch": 1, "train_seconds": 6.0},
             {"step": 30, "epoch": 1, "train_seconds": 7.0}, {"step": 40, "epoch": 1, "train_seconds": 8.0}]
    assert batchsize_report.seconds_per_step(trace) == pytest.approx(0.1)
    assert batchsize_report.seconds_per_step(trace[:2]) is None
    # A trace of the timer before 2026-12-07: epochs of 25 steps, the 5 after an epoch's last check
    # untimed, so the interval across the epoch's end (20 -> 30) shows 10 steps in 0.5 s. The slope
    # over every check gave 0.0833 s per step; within epochs it is the true 0.1.
    old = [{"step": 10, "epoch": 1, "train_seconds": 5.0}, {"step": 20, "epoch": 1, "train_seconds": 6.0},
           {"step": 30, "epoch": 2, "train_seconds": 6.5}, {"step": 40, "epoch": 2, "train_seconds": 7.5},
           {"step": 50, "epoch": 2, "train_seconds": 8.5}]
    assert batchsize_report.seconds_per_step(old) == pytest.approx(0.1)
    assert batchsize_report.seconds_per_step(old[:3]) is None  # no two checks after the first in one epoch


# End to end: runs, noise along training, report -------------------------------------------------
@pytest.fixture(scope="module")
def two_seed_study(tmp_path_factory):
    """A tiny study trained once for this module, with two seeds (issue 24, example 3): its config
    path and config. Tests that edit its files work on a copy (_copy)."""
    import yaml

    from conftest import TINY

    folder = tmp_path_factory.mktemp("two-seed-study")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({**TINY, **STUDY, "seeds": [0, 1], "results_dir": str(folder / "results"),
                                    "keep_iterates": [1], "target": {**STUDY["target"], "milestones": [1.5]},
                                    "sweep": {**STUDY["sweep"], "noise_definition": "training"},
                                    "batch_size_study": {
                                        **STUDY["batch_size_study"], "lr_multipliers": [1, 4], "max_extensions": 0}}))
    return path, batchsize.study(str(path))


def _copy(study, tmp_path):
    """A copy of the trained study's results folder, to edit."""
    import shutil

    return Path(shutil.copytree(study[1].results_dir, tmp_path / "results"))


def test_the_study_pools_its_seeds_per_target(two_seed_study):
    """Issue 25 items 1, 3, 4: both seeds train the same rates; each target (the milestone 1.5, then
    target.value 1.0) is fitted on the seeds' mean steps, its best rate chosen within one check
    interval; the reference run keeps weights and Adam's state where it met the milestone, and the
    noise scale (training definition) is measured there."""
    path, config = two_seed_study
    report = batchsize_report.write_report(config.results_dir)
    assert config == config_lib.load(path)
    text = report.read_text()
    assert "## Target train_loss <= 1.5" in text and "## Target train_loss <= 1" in text
    assert "2 seeds (0, 1)" in text and "### In plain words" in text and "| batch |" in text
    assert "one seed" not in text.lower() and "mean of 2 seeds" in text
    # Its limits leave out what bears on no number of the study: the iterate kept at epoch 1 (a point
    # of the noise scale, not Figure 6's) and, with no fair comparison, the sharpness settings.
    limits = [line for line in text.splitlines() if line.startswith("- Limits: ")]
    assert limits and not any("iterates kept" in line or "sharpness on" in line for line in limits)
    # Under the training definition the reference run is at the smallest batch (docs/noise-scale.md).
    assert "on the best run at the study's smallest batch (the training definition" in text
    assert "the batch nearest sb_batch_size" not in text
    record = storage.read_json(report.parent / batchsize_report.SUMMARY_FILE)
    assert record["seeds"] == [0, 1] and "rows" not in record and "fit" not in record
    assert 0 < record["train_seconds_capped"] <= record["train_seconds_total"]
    assert f"{record['train_seconds_capped']:.0f} s counting each epoch after the first at most" in text
    assert [study["target"] for study in record["studies"]] == [1.5, 1.0]
    for study in record["studies"]:
        value = study["target"]
        assert [r["batch_size"] for r in study["rows"]] == [16, 64]
        for row in study["rows"]:
            per_seed = [batchsize.run_steps(config, row["batch_size"], seed, value) for seed in (0, 1)]
            assert set(per_seed[0]) == set(per_seed[1])  # every rate trained for both seeds
            pooled = batchsize.pooled_steps(config, row["batch_size"], [0, 1], value)
            check = target.check_interval(config.target, row["batch_size"])
            assert row["best_multiplier"] == batchsize.best_multiplier(pooled, check)
            assert row["steps"] == pytest.approx(pooled[row["best_multiplier"]])
            assert row["steps_per_seed"] == " ".join(str(steps[row["best_multiplier"]]) for steps in per_seed)
            if value == 1.5:  # a milestone is met no later than the target
                assert row["steps"] <= next(r for r in record["studies"][1]["rows"]
                                            if r["batch_size"] == row["batch_size"])["steps"]
        met = [r for r in study["noise"] if r["at_target"]]
        assert len(met) == 2 and {r["seed"] for r in met} == {0, 1}
        assert all(r["point"] == ("target1.5" if value == 1.5 else "final") for r in met)
        assert study["prediction"]["b_simple"] == pytest.approx(sum(r["b_simple"] for r in met) / 2)
        assert all(r["definition"] == "training" for r in study["noise"])
    reference_rate = batchsize.best_rate(config, 16, [0, 1])
    for seed in (0, 1):
        run = rundir.run_directory(config, f"b16-x{reference_rate:g}", seed)
        assert (run / "targets" / "1.5.weights.h5").is_file() and (run / "targets" / "1.5.adam.npz").is_file()
        points = [r["point"] for r in record["studies"][0]["noise"] if r["seed"] == seed]
        # In step order; a milestone met at the same check as the target shares the final point's step.
        assert points[0] == "initial" and sorted(points) == ["epoch1", "final", "initial", "target1.5"]
        measured = storage.read_json(run / "noise" / "target1.5.json")
        # B_adam at the milestone uses the optimizer state saved there, not the final one.
        assert measured["adam"]["b_simple"] is not None
        assert measured["settings"]["adam_state_sha256"] == storage.sha256_file(run / "targets" / "1.5.adam.npz")
    assert (report.parent / "batch_size_steps_1_5.png").exists() and (report.parent / "batch_size_steps.png").exists()
    assert batchsize.reference_batch(config) == 16
    # `report` on the folder rebuilds the same one-page report.
    assert cli("report", config.results_dir).returncode == 0
    # `check` counts the study's runs (named as the study decided them) and refuses an edited config.
    assert rundir.check(config) == 8
    with pytest.raises(rundir.RunError, match="'learning_rate' was"):
        rundir.check(dataclasses.replace(config, learning_rate=config.learning_rate * 2))


def _edit_json(path, edit):
    record = storage.read_json(path)
    edit(record)
    storage.atomic_write_json(path, record)


def _edit_csv(path, row, field, value):
    rows = storage.read_csv(path)
    rows[row][field] = value
    storage.atomic_write_csv(path, rows, list(rows[0]))


def test_the_capped_cost_discounts_slowed_epochs_but_keeps_the_first_and_a_short_last():
    """The C1 study shared its CPU with tests at times, so its summed epoch times overstate its cost:
    the report also counts each epoch after the first at most at its batch's median."""
    import types

    def run(batch, seconds):
        return types.SimpleNamespace(metrics={"batch_size": batch},
                                     history=[{"epoch": str(e), "seconds": str(s)} for e, s in enumerate(seconds, 1)])

    # batch 16: first epoch 5 s (compiles), later 2, 2, 10 (slowed), 1 (cut short at the target): median 2
    # batch 64: first 4, later 3 and 3: median 3
    assert batchsize_report.capped_seconds([run(16, [5, 2, 2, 10, 1]), run(64, [4, 3, 3])]) == pytest.approx(
        5 + 2 + 2 + 2 + 1 + 4 + 3 + 3)


def test_the_report_reads_the_study_settings_of_the_run_that_finished_last(two_seed_study, tmp_path):
    """The C1 study grew its grid (max_extensions 3 -> 6) and changed its batches while it trained;
    each run records the study section of the day it finished, and the report read the first run's,
    so it told the old rule ("up to 3 per side") under runs decided by the new one."""
    import yaml

    root = _copy(two_seed_study, tmp_path)
    runs = sorted((root / "F1_synthetic_mnist").glob("b*/seed*"))
    last = runs[len(runs) // 2]  # not the first by name: the first finished need not be that
    for run in runs:
        _edit_json(run / "env.json", lambda env: env.update(end_time="2026-12-07T08:00:00+00:00"))
    _edit_json(last / "env.json", lambda env: env.update(end_time="2026-12-07T09:00:00+00:00"))
    _edit_json(last / "metrics.json", lambda m: m["resolved_config"]["batch_size_study"].update(max_extensions=5))
    resolved = storage.read_yaml(last / "config.yaml")  # as a run resumed under the new config writes both
    resolved["batch_size_study"]["max_extensions"] = 5
    storage.atomic_write_text(last / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    text = batchsize_report.write_report(root).read_text()
    assert "up to 5 per side" in text and "up to 0 per side" not in text
    assert storage.read_json(root / batchsize_report.SUMMARY_FILE)["study"]["max_extensions"] == 5


def test_a_batch_not_yet_run_on_every_seed_is_named_without_a_budget(two_seed_study, tmp_path):
    """A partial study (C1 while its batch 2000 trained: seed 0 had met the target at each rate run,
    seed 1 had not started) was said to have stopped "at most N steps each, by `epochs` or
    target.max_steps": N was seed 0's steps to its target, and no run had stopped at a budget."""
    import shutil

    root = _copy(two_seed_study, tmp_path)
    for run in (root / "F1_synthetic_mnist").glob("b64-x*/seed1"):
        shutil.rmtree(run)
    text = batchsize_report.write_report(root).read_text()
    assert "- Batch 64 is left out of the fit: no rate has run on every seed yet, so nothing bounds it." in text
    assert "stopped by `epochs`" not in text and "stopped at" not in text.split("- Batch 64 is left out")[1].split("\n")[0]


@pytest.mark.parametrize("file, edit, message", [
    ("b16-x1/seed0/metrics.json", lambda m: m["target"].update(steps=-5), "target.steps is -5, must be > 0"),
    ("b16-x1/seed0/metrics.json", lambda m: m["target"].update(steps=2.5), "target.steps is 2.5, not an integer"),
    ("b64-x1/seed1/metrics.json", lambda m: m["target"].update(steps=float("nan")), "target.steps is nan, not an integer"),
    ("b64-x4/seed1/metrics.json", lambda m: m["target"].update(train_seconds=-167.0), "target.train_seconds is -167.0"),
    ("b16-x1/seed0/target.csv", (0, "train_seconds", "-167"), "row 1 train_seconds is '-167', must be >= 0"),
    ("b16-x1/seed0/target.csv", (0, "step", "2.5"), "row 1 step is '2.5', not an integer"),
    # The milestone's steps: after the run's own target's, or not the run's own at the end.
    ("b16-x1/seed0/metrics.json", lambda m: m["target"]["targets"][0].update(steps=m["target"]["steps"] + 1),
     "is out of order or past target.steps_run"),
    ("b16-x1/seed0/metrics.json", lambda m: m["target"]["targets"][1].update(steps=None),
     "the last of target.targets (the run's own target) has steps None"),
    ("b16-x1/seed0/metrics.json", lambda m: m["target"]["targets"][0].update(steps="3"), "target.targets[0].steps is '3'"),
    ("b16-x1/seed0/metrics.json", lambda m: m["target"]["targets"][0].update(value=0.5), "are not decreasing to target.value"),
])
def test_hand_edited_study_files_are_refused_in_one_line(two_seed_study, tmp_path, file, edit, message):
    """Issue 24, example 10: negative, fractional or NaN steps, negative times were believed ("the
    fastest batch: -167 s"). The numbers results.load reads (accuracies, losses, B_simple, phi, a
    run's identity) it checks itself; these are the ones only the study's reader uses."""
    root = _copy(two_seed_study, tmp_path)
    path = root / "F1_synthetic_mnist" / file
    if callable(edit):
        _edit_json(path, edit)
    else:
        _edit_csv(path, *edit)
    with pytest.raises(storage.StorageError) as error:
        batchsize_report.write_report(root)
    assert str(error.value).startswith(str(path)) and message in str(error.value) and "\n" not in str(error.value)
    if file.endswith("target.csv"):  # and through the CLI: one line, exit 2, nothing written
        written = [root / batchsize_report.REPORT_FILE, root / batchsize_report.SUMMARY_FILE]
        before = {p: p.read_bytes() if p.exists() else None for p in written}
        result = cli("report", root)
        assert message in one_error_line(result.returncode, result.stderr)
        assert {p: p.read_bytes() if p.exists() else None for p in written} == before


def test_a_study_under_the_other_backend_is_refused_before_anything_trains(tiny_config):
    """Issue 24, example 8: a study started under JAX and continued under TensorFlow trained and
    measured before it refused, leaving a folder of both backends."""
    from replication import backend

    other = "jax" if backend.name() == "tensorflow" else "tensorflow"
    path = tiny_config(**STUDY)
    config = config_lib.load(path)
    started = rundir.run_directory(config, "b16-x1", 0)
    started.mkdir(parents=True)
    (started / "config.yaml").write_text(f"run: {{regime: b16-x1, seed: 0, backend: {other}}}\n")
    with pytest.raises(rundir.RunError, match=f"started under the {other} backend .*: set KERAS_BACKEND={other}"):
        batchsize.study(str(path))
    result = cli("batch-size", path)
    assert f"set KERAS_BACKEND={other}" in one_error_line(result.returncode, result.stderr)
    made = sorted(p.relative_to(config.results_dir) for p in Path(config.results_dir).rglob("*"))
    assert made == [Path("F1_synthetic_mnist"), Path("F1_synthetic_mnist/b16-x1"),
                    Path("F1_synthetic_mnist/b16-x1/seed0"), Path("F1_synthetic_mnist/b16-x1/seed0/config.yaml")]


def test_compare_regimes_set_their_rate_epochs_stopping_and_ghost_batch(tiny_config):
    config = config_lib.load(tiny_config(**{**STUDY, "batch_size_study": {
        **STUDY["batch_size_study"], "compare_batch_sizes": [16, 64], "compare_ghost_batch_size": 8}}))
    fixed = config.for_regime(regimes.parse("b64-fixed-e3"))
    assert (fixed.learning_rate, fixed.epochs, fixed.stopping, fixed.ghost_batch_size) == (config.learning_rate, 3, "fixed", None)
    spec = regimes.parse("b64-x0.5-e12-g8")
    assert spec == regimes.compare(64, 0.5, 12, 8)
    ghost = config.for_regime(spec)
    assert ghost.learning_rate == pytest.approx(config.learning_rate * (64 / 32) ** 0.5 * 0.5)
    assert (ghost.epochs, ghost.stopping, ghost.ghost_batch_size) == (12, "fixed", 8)
    assert config.batch_size(spec, 400) == 64
    assert any("ghost batch norm" in d for d in config.run_deviations(spec))
    assert regimes.parse("b64-x0.5").kind == "study" and regimes.parse("b64-x0.5-e3").kind == "compare"
    for bad in ("b32-fixed-e3", "b64-x0.3-e3", "b64-x1-e3-g4"):  # not compared, off the ladder, other ghost
        with pytest.raises(config_lib.ConfigError, match="fair-comparison"):
            config.for_regime(regimes.parse(bad))


def test_the_compare_plan_matches_the_smallest_batch_steps():
    config = config_lib.from_dict({**{k: v for k, v in STUDY.items()}, "network": "F1", "dataset": "synthetic_mnist",
                                   "batch_size_study": {**STUDY["batch_size_study"], "compare_batch_sizes": [16, 64],
                                                        "compare_epochs": 2, "compare_ghost_batch_size": 16}})
    # No study run finished: (a) alone at each batch.
    assert [k for _, k, _ in batchsize.compare_plan(config, 0, 400)] == ["fixed", "fixed"]


def test_the_fair_comparison_trains_measures_and_reports(tiny_config, monkeypatch):
    study = {**STUDY["batch_size_study"], "lr_multipliers": [1, 4], "max_extensions": 0}
    sharp = {"subset": 200, "spaces": ["full"], "epsilons": [1e-3], "iterations": 2}
    # The study first, from a config without the comparison (as the committed F1 study was made).
    batchsize.run_study(config_lib.load(tiny_config(**{**STUDY, "batch_size_study": study, "sharpness": sharp})), 0)
    path = tiny_config(**{**STUDY, "batch_size_study": {
        **study, "compare_batch_sizes": [16, 64], "compare_epochs": 1, "compare_ghost_batch_size": 16},
        "sharpness": sharp})
    config = config_lib.load(path)
    plan = batchsize.compare_plan(config, 0, 400)
    kinds = [(b, k) for b, k, _ in plan]
    assert kinds == [(16, "fixed"), (16, "tuned"), (64, "fixed"), (64, "tuned"), (64, "steps"), (64, "ghost")]
    steps = dict(((b, k), spec) for b, k, spec in plan)
    # (c) at 64 takes as many steps as (b) at 16: 1 epoch of 25 steps -> 4 epochs of 7 steps.
    assert steps[(64, "steps")].epochs == 4
    assert steps[(64, "ghost")].name.endswith("-g16")
    paths = batchsize.run_compare(config, 0)
    ghost_run = storage.read_yaml(paths[-1] / "config.yaml")
    assert ghost_run["ghost_batch_size"] == 16 and ghost_run["epochs"] == 4
    # Ghost batch norm changed training: the ghost run and its plain twin end at different weights.
    assert storage.read_json(paths[-1] / "metrics.json")["train_loss"] != \
        storage.read_json(paths[-2] / "metrics.json")["train_loss"]
    for p in paths:
        assert (p / "sharpness" / "full_eps0.001.json").exists()
    report = batchsize_report.write_report(config.results_dir)
    text = report.read_text()
    assert "## Generalisation once steps and learning rate are fair" in text and "(d) as (c), ghost batch norm" in text
    # The comparison's settings come from its own runs, not the older study runs' records.
    assert "virtual batches of 16 in training" in text and "(a) 1 epoch at" in text
    record = storage.read_json(report.parent / batchsize_report.SUMMARY_FILE)
    assert len(record["compare"]) == 6 and [g["kind"] for g in record["compare_gaps"]] == list(batchsize.COMPARE_KINDS)
    assert all(r["phi_full_eps0.001"] is not None for r in record["compare"])
    # A second pass trains nothing and reuses every measurement.
    before = {p: stamp(p / "metrics.json") for p in paths}
    batchsize.run_compare(config, 0)
    assert before == {p: stamp(p / "metrics.json") for p in paths}


# Bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, key", [
    ({"stopping": "target", "target": {"value": None}}, "stopping"),
    ({"target": {"metric": "test_loss", "value": 1}}, "target.metric"),
    ({"target": {"every_steps": 0}}, "target.every_steps"),
    ({"batch_size_study": {"batch_sizes": [32, 32]}}, "batch_size_study.batch_sizes"),
    ({"batch_size_study": {"lr_multipliers": [2, 1]}}, "batch_size_study.lr_multipliers"),
    ({"batch_size_study": {"lr_multipliers": [1]}}, "batch_size_study.lr_multipliers"),
    ({"batch_size_study": {"lr_scaling": "cubic"}}, "batch_size_study.lr_scaling"),
    ({"batch_size_study": {"batch_sizes": [32], "compare_batch_sizes": [64]}}, "batch_size_study.compare_batch_sizes"),
    ({"batch_size_study": {"compare_epochs": 0}}, "batch_size_study.compare_epochs"),
    ({"target": {**STUDY["target"], "metric": "train_error", "value": 100}}, "target.value"),
    ({"ghost_batch_size": 8, "batchnorm": "moving_average"}, "ghost_batch_size"),
    ({"ghost_batch_size": 0}, "ghost_batch_size"),
])
def test_bad_study_configs_are_one_line(tiny_config, overrides, key):
    result = cli("batch-size", tiny_config(**overrides))
    assert f"'{key}'" in one_error_line(result.returncode, result.stderr)


def test_a_study_run_outside_the_config_and_a_config_without_a_study_are_refused(tiny_config):
    config = _config(tiny_config)
    with pytest.raises(config_lib.ConfigError, match="batch_size_study.batch_sizes"):
        config.for_regime(regimes.study(128, 1))
    with pytest.raises(config_lib.ConfigError, match="multiplier"):
        config.for_regime(regimes.study(16, 3))
    result = cli("batch-size", tiny_config())
    assert "batch_size_study.batch_sizes" in one_error_line(result.returncode, result.stderr)


def test_a_study_where_no_rate_reaches_the_target_says_what_is_missing_and_why(tiny_config):
    """The C2 profile, shrunk to a CPU smoke run, reached no target: the report said "Not finished
    here ... resumes" for (b)-(d), which no rerun could finish, and left the B_crit section empty."""
    path = tiny_config(**{**STUDY, "target": {**STUDY["target"], "value": 1e-6, "max_steps": 6},
                          "sharpness": {"subset": 100, "spaces": ["full"], "epsilons": [1e-3], "iterations": 1},
                          "batch_size_study": {**STUDY["batch_size_study"], "lr_multipliers": [1, 4],
                                               "max_extensions": 0, "compare_batch_sizes": [16, 64],
                                               "compare_epochs": 1}})
    config = batchsize.study(str(path))
    text = batchsize_report.write_report(config.results_dir).read_text()
    measured = text.split("## The critical batch size: measured and predicted")[1].split("## Generalisation")[0]
    assert "Not measured: 0 batch sizes reached the target, and the fit needs two." in measured
    assert "No noise scale yet" in measured
    # and names the batch it will be measured at; its limits describe no estimator that measured
    # nothing, and its provenance lists no noise table that was not written
    assert f"measured along the best run at batch {batchsize.reference_batch(config)} (" in measured
    assert "B_simple measured with" not in text
    assert "batch_size_noise.csv" not in text and not (Path(config.results_dir) / "tables/batch_size_noise.csv").exists()
    assert "Not run: (b) fixed epochs, tuned learning rate; (c)" in text and "at batch 16, 64: set a target" in text
    assert "raise target.max_steps and epochs" in text
    assert "Not finished here" not in text
    # Each batch left out of the fit is named, with the budget its runs stopped at: a bound on its steps.
    assert "- Batch 16 is left out of the fit: no rate met the training loss 1e-06 on every seed within its " \
           "runs (those that did not meet it stopped at 6 steps or fewer" in text and "- Batch 64 is left out of the fit" in text
    assert "at every rate its seeds all ran their mean steps to the target exceed 6 (" in text


def _point(multiplier, seed, steps, steps_run, diverged=False, batch=5000):
    return critical_batch.Point(
        path=Path(f"b{batch}-x{multiplier:g}/seed{seed}"), network="C1", dataset="cifar10", seed=seed,
        batch_size=batch, multiplier=multiplier, learning_rate=1e-3 * multiplier, reached=steps is not None,
        steps=steps, examples=None if steps is None else steps * batch, steps_run=steps_run, seconds_per_step=1.0,
        check_every=1, train_seconds=1.0, test_accuracy=50.0, diverged=diverged, trace=(), targets=((0.3, steps),))


def test_a_batch_no_rate_reached_on_every_seed_is_bounded_by_each_rates_seed_mean():
    # Seed 0 met the target at 150 steps, seed 1 stopped at 200: that rate's mean steps exceed 175,
    # not 200 (the old sentence said "exceed" the most steps any run took); a rate with a diverged
    # run never meets the target and bounds nothing, and is named.
    points = [_point(1, 0, 150, 150), _point(1, 1, None, 200), _point(2, 0, None, 200), _point(2, 1, None, 200),
              _point(4, 0, None, 40, diverged=True), _point(4, 1, None, 200)]
    bound = batchsize_report.unreached_bound(points, 0.3, [0, 1])
    assert bound == {"bound": 175, "why": None, "rates": 2, "diverged": ["4x seed 0"]}
    every = [_point(1, 0, None, 3, diverged=True), _point(1, 1, None, 200)]
    assert batchsize_report.unreached_bound(every, 0.3, [0, 1]) == {"bound": None, "why": "diverged", "rates": 0,
                                                                   "diverged": ["1x seed 0"]}
    # Seed 1 has not run this batch yet: nothing bounds it, and no run diverged.
    assert batchsize_report.unreached_bound([_point(1, 0, None, 200)], 0.3, [0, 1])["why"] == "unpooled"


def test_the_budget_named_is_that_of_the_runs_that_did_not_meet_the_target():
    # Seed 0 met the target at 1x after 500 steps; seed 1 stopped unmet at 300: the budget is 300 (the
    # most steps a run that met the target took is no budget), and the mean bounds the steps (400).
    points = [_point(1, 0, 500, 500), _point(1, 1, None, 300)]
    row = {"batch_size": 5000, "steps": None, "diverged_runs": "",
           **dict(zip(("steps_above", "no_bound"), (lambda b: (b["bound"], b["why"]))(
               batchsize_report.unreached_bound(points, 0.3, [0, 1]))))}
    words = batchsize_report.left_out_words(row, {"points": points, "target": 0.3}, "training loss", None, [32, 128])
    assert words.startswith("- Batch 5000 is left out of the fit: no rate met the training loss 0.3 on every seed within "
                            "its runs (those that did not meet it stopped at 300 steps or fewer, by `epochs`")
    assert "their mean steps to the target exceed 400 (" in words
    fit = critical_batch.fit_critical_batch([32, 128], [1000, 300])
    assert "; the fitted curve predicts" in batchsize_report.left_out_words(
        row, {"points": points, "target": 0.3}, "training loss", fit, [32, 128])


@pytest.mark.parametrize("batch, words", [(5000, "overstated"), (16, "understated"), (300, "the curve misses")])
def test_a_bound_above_the_curve_says_which_way_b_crit_moves(batch, words):
    # More steps than the curve allows past the largest fitted batch means a larger S_min (B_crit
    # = E_min / S_min smaller); below the smallest, a larger E_min (B_crit larger); between, neither.
    assert words in batchsize_report._against_bound(100, 150, batch, [32, 128, 500])
    assert batchsize_report._against_bound(150, 100, batch, [32, 128, 500]) == "above that bound, consistent with it"


def test_the_bootstrap_counts_resamples_that_fit_a_batch_the_point_estimate_left_out():
    # Batch 5000: seed 0 met the target at 150 steps, seed 1 stopped at 200. The fit leaves 5000 out,
    # but a resample that draws seed 0 twice fits it at 150, a point that exists only because that
    # seed finished within the budget; the words did not say so.
    points = [_point(1, s, steps, steps, batch=b) for b, steps in ((32, 3000), (128, 800)) for s in (0, 1)]
    points += [_point(1, 0, 150, 150), _point(1, 1, None, 200)]
    boot = critical_batch.bootstrap_seeds_and_batches(points, 0.3, [0, 1], 200)
    assert 0 < boot["outside"] < boot["resamples"]
    assert f"; {boot['outside']} resamples fitted a batch the point estimate leaves out" in \
        batchsize_report._bootstrap_words(boot)
    both = critical_batch.bootstrap_seeds_and_batches(points[:4] + [_point(1, 1, 160, 160)] + points[4:5], 0.3, [0, 1], 50)
    assert both["outside"] == 0


def test_a_fit_on_the_fewest_tied_steps_is_given_beside_the_chosen_best():
    # C1 at batch 32: 2.83x (3625 steps, the tied rate nearest the middle) was fitted while 8x took 3500.
    rows = [{"batch_size": 32, "steps": 3625, "fewest_steps": 3500}, {"batch_size": 128, "steps": 930, "fewest_steps": 930},
            {"batch_size": 500, "steps": 288, "fewest_steps": 284}, {"batch_size": 5000, "steps": None, "fewest_steps": None}]
    again = batchsize_report.fewest_fit(rows)
    assert again["batches"] == {"32": [3625, 3500], "500": [288, 284]}
    assert again["b_crit"] == pytest.approx(critical_batch.fit_critical_batch([32, 128, 500], [3500, 930, 284])["b_crit"])
    fit = critical_batch.fit_critical_batch([32, 128, 500], [3625, 930, 288])
    words = batchsize_report._fewest_words({"fit": fit, "fewest_fit": again})
    assert "At 2 batches a rate tied with the best took fewer steps (batch 32: 3500 against 3625, batch 500: 284 " \
           "against 288: tied" in words
    change = again["b_crit"] / fit["b_crit"] - 1  # the refit against the fit: the sign reads as the move
    assert change < 0 and f"B_crit = {batchsize_report._fmt(again['b_crit'])}, {-change:.0%} below the fit's " \
        f"{batchsize_report._fmt(fit['b_crit'])}." in words
    assert batchsize_report.fewest_fit([{**r, "fewest_steps": r["steps"]} for r in rows]) is None


def test_a_fit_without_the_batches_at_a_grid_edge_is_given_beside_the_fit():
    # C1 at 0.3: batch 32's best rate sat at the capped high edge, so its 3625 steps are an upper bound.
    rows = [{"batch_size": 32, "steps": 3625, "grid": "capped high"},
            {"batch_size": 128, "steps": 930, "grid": "interior"}, {"batch_size": 500, "steps": 284, "grid": "interior"},
            {"batch_size": 5000, "steps": None, "grid": "capped high"}]
    again = batchsize_report.uncapped_fit(rows)
    assert again["left_out"] == {"32": "capped"}  # 5000 was never fitted: nothing to leave out
    assert again["b_crit"] == pytest.approx(critical_batch.fit_critical_batch([128, 500], [930, 284])["b_crit"])
    fit = critical_batch.fit_critical_batch([32, 128, 500], [3625, 930, 284])
    words = batchsize_report._uncapped_words({"fit": fit, "uncapped_fit": again})
    assert words == (" Fitted without the batch whose best rate sits at an edge of its grid (32: capped; steps an upper "
                     "bound there; a sensitivity check, not a correction), B_crit = "
                     f"{batchsize_report._fmt(again['b_crit'])}, {1 - again['b_crit'] / fit['b_crit']:.0%} below the "
                     f"fit's {batchsize_report._fmt(fit['b_crit'])}.")  # 1801, 9% below 1988: the refit's move
    # An edge a study stopped before extending (the one-seed studies' older rule) is an upper bound too.
    rows[1]["grid"] = "unfinished (extended low)"
    again = batchsize_report.uncapped_fit(rows)
    assert again == {"left_out": {"32": "capped", "128": "to be extended"}, "b_crit": None, "unresolved": "too few"}
    assert "(32: capped; 128: to be extended; steps an upper bound there;" in \
        batchsize_report._uncapped_words({"fit": fit, "uncapped_fit": again})
    assert batchsize_report.uncapped_fit([{**r, "grid": "interior"} for r in rows]) is None
    assert batchsize_report.uncapped_fit([{**r, "grid": "unfinished (grid)"} for r in rows]) is None


def test_the_bootstrap_says_what_it_resampled():
    # A pooled study resamples seeds with the batch sizes (bootstrap_seeds_and_batches records it);
    # the words said "over the batch sizes" for every study.
    boot = {"resamples": 10, "resolved": 10, "unresolved": 0, "unresolved_above": 0, "unresolved_below": 0,
            "median": 100.0, "p16": 90.0, "p84": 110.0, "p2_5": 80.0, "p97_5": 120.0, "unbounded": {}}
    assert batchsize_report._bootstrap_words({**boot, "over": "seeds and batch sizes"}).startswith(
        "bootstrap over the seeds and batch sizes: 10 of 10")
    assert batchsize_report._bootstrap_words(boot).startswith("bootstrap over the batch sizes: 10 of 10")


def test_the_bootstrap_counts_the_resamples_it_left_out():
    # A resample that drew one batch size only fits no curve and was skipped; the words said "829 of
    # 829 resamples" where 1000 were drawn, so the 171 left out were nowhere.
    boot = critical_batch.bootstrap_critical_batch([100, 200], [80, 45], 400)
    assert boot["drawn"] == 400 and 120 < 400 - boot["resamples"] < 280  # each draw: one size with p = 1/2
    words = batchsize_report._bootstrap_words(boot)
    assert (f"{boot['resolved']} of {boot['resamples']} resamples resolved a B_crit (of 400 drawn, "
            f"{400 - boot['resamples']} held fewer than two distinct batch sizes") in words
    points = [_point(1.0, s, steps, steps, batch=b) for s in (0, 1) for b, steps in ((16, 400), (64, 130))]
    pooled = critical_batch.bootstrap_seeds_and_batches(points, 0.3, [0, 1], 100)
    assert pooled["drawn"] == 100 and pooled["resamples"] < 100
    every = critical_batch.bootstrap_critical_batch([100, 200, 400, 800], [80, 45, 30, 25], 50)
    assert "drawn" not in batchsize_report._bootstrap_words({**every, "drawn": every["resamples"]})


def test_a_bootstrap_over_few_seeds_says_it_is_coarse():
    # Two seeds drawn with replacement give 3 distinct draws ({0,0}, {1,1}, {0,1}); the words said
    # nothing of it, so a 2-seed interval read as a full measure of the seeds' spread.
    boot = {"resamples": 10, "resolved": 10, "unresolved": 0, "unresolved_above": 0, "unresolved_below": 0,
            "median": 100.0, "p16": 90.0, "p84": 110.0, "p2_5": 80.0, "p97_5": 120.0, "unbounded": {},
            "over": "seeds and batch sizes"}
    assert "one of only 3 distinct sets of seeds" in batchsize_report._bootstrap_words({**boot, "seeds": 2})
    assert "one of only 10 distinct sets" in batchsize_report._bootstrap_words({**boot, "seeds": 3})
    assert "distinct sets" not in batchsize_report._bootstrap_words({**boot, "seeds": 5})
    points = [critical_batch.Point(Path(f"r/b{b}/seed{s}"), "F1", "mnist", s, b, 1.0, 0.001, True, steps, None,
                                   steps, None, 10, None, 90.0, False, (), ((0.1, steps),), None)
              for s in (0, 1) for b, steps in ((16, 400), (64, 130), (256, 60))]
    assert critical_batch.bootstrap_seeds_and_batches(points, 0.1, [0, 1], 20)["seeds"] == 2


# Studies kept apart, diverged runs left out ---------------------------------------------------------
def _run(network, regime, scaling="sqrt"):
    return types.SimpleNamespace(network=network, dataset="synthetic_mnist", regime=regime,
                                 spec=regimes.parse_or_none(regime),  # as results.Run gives it
                                 path=Path(f"r/{network}_synthetic_mnist/{regime}/seed0"),
                                 metrics={"resolved_config": {"batch_size_study": {"lr_scaling": scaling}}})


def test_two_networks_studies_in_one_folder_are_refused_not_merged():
    """Issue 24, example 2: F1's and C1's runs were grouped by batch size into one table and one fit."""
    batchsize_report._check_one_study(Path("r"), types.SimpleNamespace(runs=[_run("F1", "b16-x1"), _run("F1", "sb")]))
    with pytest.raises(batchsize_report.results_lib.ResultsError,
                       match=r"r holds batch-size study runs of two networks or datasets: .*F1_synthetic_mnist/b16-x1"
                             r"/seed0 \(F1 on synthetic_mnist\) and .*\(C1 on synthetic_mnist\); a report is one study"):
        batchsize_report._check_one_study(Path("r"), types.SimpleNamespace(runs=[_run("F1", "b16-x1"),
                                                                                 _run("C1", "b64-fixed-e3")]))
    with pytest.raises(batchsize_report.results_lib.ResultsError, match="two learning-rate scaling rules"):
        batchsize_report._check_one_study(Path("r"), types.SimpleNamespace(runs=[_run("F1", "b16-x1"),
                                                                                 _run("F1", "b64-x1", "linear")]))


def _compare_row(kind, batch, accuracy, diverged=False):
    regime = {"fixed": f"b{batch}-fixed-e1", "tuned": f"b{batch}-x1-e1", "steps": f"b{batch}-x1-e4"}[kind]
    return {"kind": kind, "batch_size": batch, "regime": regime, "test_accuracy": accuracy, "steps": 10,
            "diverged": diverged, "phi_full_eps0.001": 1.0}


def test_a_diverged_run_drives_no_verdict_of_the_fair_comparison():
    """Issue 24, example 6: a diverged (a) run at the large batch "moved its gap by -90.00 points"."""
    rows = [_compare_row("fixed", 16, 80.0), _compare_row("fixed", 64, 10.0, diverged=True),
            _compare_row("tuned", 16, 81.0), _compare_row("tuned", 64, 79.0), _compare_row("steps", 64, 82.0)]
    gaps = batchsize_report.compare_gaps(rows)
    assert [g["kind"] for g in gaps] == ["tuned", "steps"]
    assert gaps[1]["test_accuracy_difference"] == pytest.approx(1.0)
    [text] = batchsize_report._compare_plain(gaps, "phi_full_eps0.001", "one seed",
                                             [r for r in rows if r["diverged"]])
    assert "moved its gap" not in text and "(a)" not in text.split("left out")[0]
    assert "1 diverged run (b64-fixed-e1) left out: a diverged run is no minimiser" in text
    # Every comparison diverged: no verdict, and the count is still said.
    everything = [{**r, "diverged": True} for r in rows]
    assert batchsize_report.compare_gaps(everything) == []
    [text] = batchsize_report._compare_plain([], None, "one seed", everything)
    assert "no comparison. 5 diverged runs" in text


# Generated sentences follow from their numbers (issue 23 item 4) ----------------------------------
def _noise(point, step, plain, adam, se=1.0, at_target=False):
    return {"point": point, "step": step, "b_simple": plain, "b_simple_se": se, "adam_b_simple": adam,
            "adam_b_simple_se": se, "at_target": at_target}


@pytest.mark.parametrize("series, words", [
    # F1 on the CPU: both grew.
    ([(278, 550), (803, 1556), (1702, 2580)], ["plain B_simple grew from 278 at x0 to 1702",
                                               "Adam-preconditioned one grew from 550", "measure it near the loss"]),
    # C1 on the CPU: plain fell (649 -> 184) while the preconditioned one grew.
    ([(649, 845), (180, 1865), (184, 2440)], ["plain B_simple fell from 649 at x0 to 184 (x0.28)",
                                              "Adam-preconditioned one grew", "measure it near the loss"]),
    # C1 on the GPU: plain about the same at the ends, after a dip to 152 on the way.
    ([(498, 817), (152, 1809), (526, 4534)], ["plain B_simple stayed about the same (498 at x0, 526 at the target",
                                              "after falling to 152 at step 1 on the way"]),
    # Within 25% at both ends, and nothing in between: hardly moved.
    ([(500, 800), (560, 900)], ["plain B_simple stayed about the same", "one stayed about the same",
                                "hardly moved, so where it is measured matters little"]),
    # A large ratio within noise is no trend.
    ([(100, 100), (180, 100)], ["plain B_simple stayed about the same"]),
    # A peak between equal ends.
    ([(300, 300), (900, 300), (310, 300)], ["after rising to 900 at step 1 on the way", "measure it near the loss"]),
])
def test_the_noise_scale_trend_sentence_is_chosen_by_sign_and_size(series, words):
    se = 60.0 if series == [(100, 100), (180, 100)] else 1.0
    rows = [_noise("initial" if i == 0 else "final" if i == len(series) - 1 else f"epoch{i}", i, plain, adam, se,
                   at_target=i == len(series) - 1) for i, (plain, adam) in enumerate(series)]
    text = batchsize_report.noise_trend(rows)
    for expected in words:
        assert expected in text, text
    assert "grows as the loss falls" not in text


def test_the_trend_names_no_point_measured_after_the_target():
    # A run that went on to a tighter target has noise points after this target's; the sentence
    # called F1 Fashion's final point (step 5642, target met at 1798) a rise "on the way".
    rows = [_noise("initial", 0, 227, 500), _noise("target", 1798, 2629, 600, at_target=True),
            _noise("final", 5642, 3619, 700)]
    text = batchsize_report.noise_trend(rows)
    assert "grew from 227 at x0 to 2629" in text and "3619" not in text and "on the way" not in text


def test_the_trend_needs_x0_and_the_target():
    assert batchsize_report.noise_trend([_noise("final", 5, 10, 20, at_target=True)]) is None
    assert batchsize_report.noise_trend([_noise("initial", 0, 10, 20), _noise("final", 5, 30, 40)]) is None


def _row(batch, best, steps, rule_steps="not run", check=None):
    return {"batch_size": batch, "best_multiplier": best, "steps": steps, "check_every_steps": check,
            "rule_ran": rule_steps != "not run", "rule_steps": None if rule_steps == "not run" else rule_steps}


def test_the_best_rate_sentence_says_whether_the_rule_alone_would_do():
    config = config_lib.from_dict({**STUDY, "network": "F1", "dataset": "synthetic_mnist"})
    rows = [_row(16, 2.0, 90, 100), _row(64, 1.0, 30, 30)]
    text = batchsize_report.best_rate_words(rows, config)
    assert "best learning rate per batch was 2x, 1x the sqrt-rule value" in text
    assert "the rule's own value (1x) took more steps at batch 16 (100 against 90 steps): the rule alone was " \
           "not enough at 1 of the 2 batches where it ran" in text
    rows[0] = _row(16, 2.0, 90, None)
    assert "batch 16 (did not reach the target on every seed; 90 steps at 2x)" in \
        batchsize_report.best_rate_words(rows, config)
    # A tie with the rule's value (the middle won), or a loss within one check interval: the rule lost nothing.
    for rule in (_row(16, 2.0, 90, 90), _row(16, 2.0, 90, 100, check=10)):
        assert "was as fast as the best at every batch where it ran: on this grid the rule alone was enough" in \
            batchsize_report.best_rate_words([rule, rows[1]], config)
    assert batchsize_report.best_rate_words([_row(16, 2.0, 90)], config).endswith("^0.5).")
    assert batchsize_report.best_rate_words([_row(16, None, None)], config) is None


def _timed(batch, mean, per_seed):
    return {"batch_size": batch, "seconds_to_target": mean, "seconds_to_target_per_seed": per_seed}


def test_each_seeds_time_to_target_is_its_own_steps_times_its_own_step_time():
    config = config_lib.from_dict({**STUDY, "network": "C1", "dataset": "synthetic_cifar10"})
    points = [_point(1, 0, 100, 100), dataclasses.replace(_point(1, 1, 120, 120), seconds_per_step=2.0)]
    row, = batchsize_report._best_rows(points, config.batch_size_study, 0.3, [0, 1], own=False)
    assert row["seconds_to_target_per_seed"] == [100.0, 240.0]
    assert row["seconds_to_target"] == 110 * 1.5  # the seeds' mean steps times their mean step time
    assert batchsize_report._best_rows([dataclasses.replace(p, seconds_per_step=None) for p in points],
                                       config.batch_size_study, 0.3, [0, 1], own=False)[0][
        "seconds_to_target_per_seed"] == [None, None]


def test_the_fastest_batch_is_compared_with_the_runner_up_seed_by_seed():
    """The fastest batch by the seeds' means, the runner-up, and on how many seeds (paired: each
    seed's own runs at the two batches) the fastest was faster; a seed missing a time is not compared."""
    rows = [_timed(32, 30.0, [20.0, 40.0, 30.0]), _timed(128, 10.0, [9.0, 9.5, None]),
            _timed(512, 11.0, [12.0, 10.0, 11.0]), _timed(2048, None, [])]
    fastest, runner_up, faster, compared = batchsize_report.fastest_two(rows)
    assert (fastest["batch_size"], runner_up["batch_size"], faster, compared) == (128, 512, 2, 2)
    rows[1]["seconds_to_target_per_seed"] = [13.0, 9.5, 8.0]  # seed 0 slower at the fastest batch
    assert batchsize_report.fastest_two(rows)[2:] == (2, 3)
    assert batchsize_report.fastest_two(rows[:1] + rows[3:]) == (rows[0], None, 0, 0)
    assert batchsize_report.fastest_two(rows[3:]) == (None, None, 0, 0)


def test_a_sqrt2_grid_extends_by_exact_powers():
    """Issue 25 item 3's finer grid: [0.707107, 1, 1.41421] (sqrt(2) steps written to 6 digits)
    extends to 2 and 0.5, not to 1.99999 and 0.500001 (other names, other runs)."""
    study = config_lib.BatchSizeStudyConfig(batch_sizes=(32,), lr_multipliers=(0.707107, 1.0, 1.41421), max_extensions=2)
    assert study.multipliers() == (0.353553, 0.5, 0.707107, 1.0, 1.41421, 2.0, 2.82843)
    assert batchsize.next_multiplier({0.707107: 90, 1.0: 100, 1.41421: 120}, study) == (0.5, "extended low")


def test_a_prediction_holds_within_a_factor_of_two_of_the_measured_interval():
    """docs/noise-scale.md's rule: the measured B_crit's 2.5-97.5% interval holds a value within a
    factor 2 of the prediction itself; an interval unbounded towards 0 or infinity reaches there,
    and one lying wholly beyond the batches measured (or no bootstrap) decides nothing."""
    rows = [{"b": 1200.0, "b_se": 50.0}, {"b": 1400.0, "b_se": 50.0}]
    boot = {"resamples": 1000, "p2_5": 2500.0, "p97_5": 4000.0, "unbounded": {}}
    check = critical_batch.prediction_check(rows, "b", boot, 3000.0)
    # Seeds' spread (std 141 / sqrt 2 = 100) beats the combined jackknife errors (35).
    assert check["mean"] == pytest.approx(1300) and check["se"] == pytest.approx(100)
    assert check["holds"] and check["ratio"] == pytest.approx(1300 / 3000)   # 1300 x 2 >= 2500
    # The rule is on the prediction, not its interval: 2200 < 2500 fails though 1296 x 2 would pass.
    low = [{"b": 1000.0, "b_se": 50.0}, {"b": 1200.0, "b_se": 50.0}]
    assert critical_batch.prediction_check(low, "b", boot, 3000.0)["holds"] is False
    # Unbounded above at the 97.5% point: a prediction far above holds, one far below does not.
    high = {"resamples": 1000, "p2_5": 5000.0, "p97_5": None, "unbounded": {"p97_5": "above"}}
    assert critical_batch.prediction_check([{"b": 9e4, "b_se": 1.0}], "b", high, 6000.0)["holds"] is True
    assert critical_batch.prediction_check(rows, "b", high, 6000.0)["holds"] is False
    # Wholly beyond the batches measured, or no bootstrap: not decided (it was "holds" for anything).
    beyond = {"resamples": 1000, "p2_5": None, "p97_5": None, "unbounded": {"p2_5": "above", "p97_5": "above"}}
    assert critical_batch.prediction_check(rows, "b", beyond, 100.0)["holds"] is None
    assert critical_batch.prediction_check(rows, "b", {**boot, "resamples": 0, "p2_5": None}, 3000.0)["holds"] is None
    assert critical_batch.prediction_check(rows, "b", boot, None) is None
    assert critical_batch.prediction_check([{"b": None, "b_se": None}], "b", boot, 3000.0) is None
    # A seed whose estimate's standard error is at least the estimate: named, the rule unchanged.
    shaky = [{"seed": 0, "b": 2000.0, "b_se": 50.0}, {"seed": 1, "b": 9e5, "b_se": 1.3e6}]
    check = critical_batch.prediction_check(shaky, "b", boot, 3000.0)
    assert check["unresolved_seeds"] == [1] and check["holds"] is False
    # Beside the verdict, whether it rests on the unresolved seed: seed 0 alone (2000) holds.
    assert check["resolved_only"] == {"n": 1, "mean": 2000.0, "holds": True}
    words = batchsize_report._holds_words("plain", check)
    assert "unresolved at seed 1" in words and "seeds alone (n = 1) predict 2000, which holds" in words
    # A seed without a standard error (a jackknife replicate's |G|^2 not positive) is unresolved too.
    none = critical_batch.prediction_check([{**shaky[0], "b_se": None}, shaky[1]], "b", boot, 3000.0)
    assert none["unresolved_seeds"] == [0, 1] and none["resolved_only"] is None
    assert critical_batch.prediction_check(rows, "b", boot, 3000.0)["resolved_only"] is None
    assert "unresolved" not in batchsize_report._holds_words("plain", critical_batch.prediction_check(rows, "b", boot, 3000.0))


def test_of_two_tied_rates_equally_central_the_faster_is_best():
    """The committed CPU C1 study, batch 32, check interval 125: 1x and 2x are both half a rate from
    the middle; 2x took 1500 steps, 1x 1625, so 2x is the best (the smaller multiplier won before)."""
    steps = {0.5: 1875, 1.0: 1625, 2.0: 1500, 4.0: 1625}
    assert batchsize.tied(steps, 125) == [1.0, 2.0, 4.0]
    assert batchsize.best_multiplier(steps, 125) == 2.0


def test_a_study_run_checked_on_the_old_examples_is_refused(tiny_config, monkeypatch):
    """A run whose target checks measured the examples seed 0 trained on first (made before
    data.MEASUREMENT_SUBSET) is not set beside runs of today: the study names it and the fix."""
    config = _config(tiny_config)

    def fake_train(cfg, spec, seed, log=None):
        path = rundir.run_directory(cfg, spec.name, seed)
        storage.atomic_write_json(path / "metrics.json", {"target": {
            "reached": True, "steps": 10, "examples": 10 * spec.batch, "steps_run": 10, "train_seconds": 1.0}})
        return path

    monkeypatch.setattr(train, "train", fake_train)
    with pytest.raises(storage.StorageError, match=r"b16-x0\.5/seed0/metrics.json: its target checks were measured on "
                                                   r"the examples drawn before .*: delete .*b16-x0\.5/seed0 and rerun"):
        batchsize.run_study(config, 0)


def test_a_fitted_batch_whose_best_rate_is_capped_is_named_as_an_upper_bound():
    rows = [{"batch_size": 32, "grid": "interior"}, {"batch_size": 16384, "grid": "capped low"}]
    assert batchsize_report._capped_words(rows) == (
        " At batch 16384 the best rate is at a capped edge of the grid, so the steps fitted there are an upper bound.")
    assert batchsize_report._capped_words(rows[:1]) == ""
    assert batchsize_report._capped_words([{"batch_size": 32, "grid": "capped high"}, *rows]).startswith(
        " At batches 32 and 16384 the best rate")


def test_the_smaller_last_batch_of_each_epoch_is_named_and_the_fit_redone_on_average_batches():
    # model.fit ends each epoch with the examples left over: at 16384 on 60000 a quarter of the steps
    # take 10848, so "batch 16384" averaged 15000 examples per step, and the reports never said so.
    batches, n = [32, 512, 4096, 16384], 60000
    steps = [100 * (1 + 2000 / b) for b in batches]  # exactly S_min (1 + B_crit / B) at the nominal batches
    again = batchsize_report.mean_batch_fit(batches, steps, n)
    assert again["mean_batches"] == {"4096": 4000.0, "16384": 15000.0}  # 32 and 512 are within 1%
    assert again["b_crit"] == pytest.approx(critical_batch.fit_critical_batch(
        [32, 60000 / 118, 4000, 15000], steps)["b_crit"]) != pytest.approx(2000, rel=1e-3)  # every batch averaged
    study = {"fit": critical_batch.fit_critical_batch(batches, steps), "mean_batch_fit": again}
    words = batchsize_report._mean_batch_words(study)
    assert "Each epoch of 60000 examples ends with the examples left over as one smaller batch" in words
    assert "batch 4096 averages 4000, batch 16384 averages 15000 examples" in words
    assert f"B_crit = {batchsize_report._fmt(again['b_crit'])}, {again['b_crit'] / 2000 - 1:.0%} above the nominal " \
        "fit's 2000." in words and "a sensitivity check, not a correction" in words
    assert batchsize_report.mean_batch_fit([32, 64, 100], [300, 200, 150], 6400) is None  # whole batches only
    assert batchsize_report._mean_batch_words({**study, "mean_batch_fit": None}) == ""
    # 64 and 100 on 128 examples both average 64 per step: no fit (it raised on two equal batches).
    merged = batchsize_report.mean_batch_fit([64, 100], [30, 25], 128)
    assert merged["b_crit"] is None and "no refit: the averages leave fewer than two distinct batches" in \
        batchsize_report._mean_batch_words({"fit": critical_batch.fit_critical_batch([64, 100], [30, 25]),
                                            "mean_batch_fit": merged})


def test_a_comparison_run_off_the_present_best_rate_is_named():
    # The GPU study's (b) at batch 256 ran at 4x, the best by the grid rule of its day; the present
    # rule ties 4x with the best 2x. The section said "(b) as many epochs at the rate the study found
    # best" and nothing else.
    rows = [{"batch_size": 256, "best_multiplier": 2.0, "tied": "2 4"},
            {"batch_size": 5000, "best_multiplier": 0.5, "tied": "-"}]
    compare = [{"batch_size": 256, "multiplier": None}, {"batch_size": 256, "multiplier": 4.0},
               {"batch_size": 5000, "multiplier": 0.5}]
    words = batchsize_report._compare_off_best(compare, rows)
    assert words == ("The comparison's tuned-rate runs ran at batch 256 at 4x the rule, not the best 2x the study "
                     "finds now (tied with it).")
    rows[0]["tied"] = "2"
    assert "not the best 2x the study finds now (not tied with it)" in batchsize_report._compare_off_best(compare, rows)
    rows[1]["best_multiplier"] = None  # no rate meets the target at 5000 now
    assert "at batch 5000 at 0.5x the rule, where no rate meets the target now" in \
        batchsize_report._compare_off_best(compare, rows)
    rows[1]["best_multiplier"] = 0.5
    assert batchsize_report._compare_off_best(compare[::2], rows) is None  # at the best: nothing to say
