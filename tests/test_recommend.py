"""`python -m replication recommend CONFIG` (issue 25 item 6; docs/noise-scale.md, "The
recommendation"): the budget, the power-of-two batch, the steps formula, the end-to-end command on
a tiny synthetic study, its reuse on a rerun, and bad configs refused in one line."""

import math
import os
import shutil
from pathlib import Path

import pytest
import yaml

from replication import errors, recommend, storage
from replication import config as config_lib

from conftest import TINY, cli, one_error_line, stamp

pytestmark = pytest.mark.backend

STUDY = {"stopping": "target", "epochs": 20,
         "target": {"metric": "train_loss", "value": 1.0, "every_steps": 3, "eval_subset": 200, "max_steps": 200},
         "batch_size_study": {"batch_sizes": [16, 64], "lr_multipliers": [0.5, 1, 2]},
         "sharpness": {"subset": 300}, "sweep": {"noise_batches": 4}}


# Pure functions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value, batch", [(1, 1), (1.5, 1), (2, 2), (3.999, 2), (4, 4), (1000, 512), (1024, 1024),
                                          (2.0 ** 40 + 1, 2 ** 40), (0.4, 1), (0, 1), (-5, 1)])
def test_power_of_two_floor_is_the_largest_power_of_two_not_above(value, batch):
    assert recommend.power_of_two_floor(value) == batch


def test_power_of_two_floor_refuses_what_is_no_number():
    for value in (math.nan, math.inf):
        with pytest.raises(ValueError):
            recommend.power_of_two_floor(value)


def test_expected_steps_follow_mccandlish_eq_2_11():
    # S = S_min (1 + B_crit / B): 300 steps at batch 100 with B_crit 200 -> S_min 100, 150 at 400.
    assert recommend.expected_steps(300, 100, 200, 400) == pytest.approx((100, 150))
    assert recommend.expected_steps(300, 100, 200, 100)[1] == pytest.approx(300)  # the run's own batch
    assert recommend.expected_steps(300, 100, 0, 4096) == (300, 300)  # no noise: no gain from a larger batch


def test_the_budget_is_a_fraction_of_the_grid_and_never_more_than_one_run():
    config = config_lib.from_dict({**TINY, **STUDY, "seeds": [0, 1]})
    assert recommend.study_steps(config) == 200 * 2 * 3 * 2
    assert recommend.budget_steps(config, 0.05) == 120
    assert recommend.budget_steps(config, 0.3) == 200  # capped at target.max_steps
    with pytest.raises(config_lib.ConfigError, match="less than one step: raise --budget"):
        recommend.budget_steps(config, 1e-4)
    for fraction in (0, -0.1, 1.5, math.nan):
        with pytest.raises(config_lib.ConfigError, match="not a fraction in"):
            recommend.budget_steps(config, fraction)


def test_the_predictor_is_b_adam_then_b_noise_then_none():
    assert recommend.predictor(300.0, 100.0) == "B_adam"
    assert recommend.predictor(0.4, 100.0) == "B_adam"  # below 1: batch 1 (power_of_two_floor)
    assert recommend.predictor(None, 100.0) == "B_noise"
    assert recommend.predictor(None, None) is None


def test_the_interval_is_the_jackknifes_and_its_ends_round_down():
    span = recommend.interval(100.0, 10.0)
    assert (span["low"], span["high"]) == pytest.approx((80.4, 119.6)) and span["batches"] == [64, 64]
    assert recommend.interval(10.0, 20.0)["batches"] == [1, 32]  # a lower end below 1 is batch 1
    assert recommend.interval(10.0, None) is None


def _measured(b_adam, b_noise, adam_se=None, noise_se=None):
    return {"b_adam": b_adam, "b_adam_standard_error": adam_se, "b_adam_note": None if b_adam else "not resolved",
            "b_noise": b_noise, "b_noise_standard_error": noise_se, "b_noise_note": None if b_noise else "not resolved"}


def test_advice_from_the_noise_scales():
    config = config_lib.from_dict({**TINY, **STUDY})  # sqrt rule, learning_rate 1e-3 at sb_batch_size 32
    best = recommend.advise(config, _measured(300.0, 100.0, adam_se=50.0), batch=16, steps=90)["recommendation"]
    assert (best["from"], best["batch_size"]) == ("B_adam", 256)
    assert best["learning_rate"] == pytest.approx(1e-3 * (256 / 32) ** 0.5)
    assert best["s_min"] == pytest.approx(90 / (1 + 300 / 16))
    assert best["steps_expected"] == pytest.approx(best["s_min"] * (1 + 300 / 256))
    assert best["interval"]["batches"] == [128, 256]  # 300 -+ 98
    # B_adam below 1: batch 1, at the rule's rate there.
    tiny = recommend.advise(config, _measured(0.4, 100.0), batch=16, steps=90)["recommendation"]
    assert tiny["batch_size"] == 1 and tiny["learning_rate"] == pytest.approx(1e-3 * (1 / 32) ** 0.5)
    assert tiny["interval"] is None  # no standard error, no interval
    # B_adam not resolved: B_noise stands in; the target not reached: no steps.
    fallback = recommend.advise(config, _measured(None, 100.0), batch=16, steps=None)["recommendation"]
    assert (fallback["from"], fallback["batch_size"], fallback["steps_expected"]) == ("B_noise", 64, None)
    # Neither resolved: no recommendation, and why.
    none = recommend.advise(config, _measured(None, None), batch=16, steps=90)
    assert none["recommendation"] is None and none["no_recommendation"].startswith("neither noise scale is resolved")


# Bad configs: one line, exit 2, before anything is written ----------------------------------------
@pytest.mark.parametrize("overrides, args, message", [
    ({"batch_size_study": {}}, [], "no batch_size_study.batch_sizes"),
    ({"stopping": "fixed"}, [], "has stopping 'fixed'"),
    ({"batch_size_study": {"batch_sizes": [16, 64], "lr_multipliers": [2, 4], "max_extensions": 0}}, [],
     "cannot reach multiplier 1"),
    ({}, ["--budget", "0"], "--budget 0.0 is not a fraction"),
    ({}, ["--budget", "1e-5"], "less than one step"),
])
def test_a_config_recommend_cannot_use_is_refused_in_one_line(tiny_config, tmp_path, overrides, args, message):
    result = cli("recommend", tiny_config(**{**STUDY, **overrides}), *args)
    assert message in one_error_line(result.returncode, result.stderr)
    assert not (tmp_path / "results").exists()


# End to end on a tiny synthetic study --------------------------------------------------------------
@pytest.fixture(scope="module")
def recommended(tmp_path_factory):
    """The command run once for this module: (config path, results folder, its stdout)."""
    folder = tmp_path_factory.mktemp("recommend")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({**TINY, **STUDY, "results_dir": str(folder / "results")}))
    result = cli("recommend", path, check=True)
    return path, folder / "results", result.stdout


def test_recommend_writes_a_consistent_recommendation(recommended):
    path, results, stdout = recommended
    made = storage.read_json(results / "recommend" / "recommendation.json")
    run = Path(made["short_run"]["path"])
    # The short run lives under recommend/ and the study's own folders are untouched.
    assert run == results / "recommend" / "F1_synthetic_mnist" / "b16-x1" / "seed0"
    assert sorted(os.listdir(results)) == ["recommend"]
    resolved = storage.read_json(run / "metrics.json")["resolved_config"]
    assert resolved["sweep"]["noise_definition"] == "training" and resolved["target"]["max_steps"] == 60
    # The budget: 5% of 200 steps x 2 batches x 3 multipliers x 1 seed.
    assert made["budget"]["study_steps"] == 1200 and made["budget"]["max_steps"] == 60
    assert made["short_run"]["steps_run"] <= 60 and made["short_run"]["reached"]
    assert made["short_run"]["learning_rate"] == pytest.approx(1e-3 * (16 / 32) ** 0.5)
    # The noise numbers are the training definition's record at the final point.
    record = storage.read_json(run / "noise" / "final.json")
    assert made["definition"] == record["definition"] == "training"
    assert made["noise"]["b_noise"] == record["b_simple"] and made["noise"]["b_adam"] == record["adam"]["b_simple"]
    assert made["noise"]["noise_seconds"] == record["wall_seconds"]
    # Counted as the study counts its runs: history.csv's epoch times, evaluations included.
    assert made["short_run"]["train_seconds"] == pytest.approx(
        sum(float(row["seconds"]) for row in storage.read_csv(run / "history.csv")))
    # B: B_adam rounded down to a power of two; the sqrt rule's rate there; eq. 2.11's steps.
    best, b_adam = made["recommendation"], made["noise"]["b_adam"]
    assert best["from"] == "B_adam" and best["b_crit"] == b_adam
    size = best["batch_size"]
    assert size & (size - 1) == 0 and size <= b_adam < 2 * size
    assert best["learning_rate"] == pytest.approx(1e-3 * (size / 32) ** 0.5)
    s_min = made["short_run"]["steps"] / (1 + b_adam / 16)
    assert best["s_min"] == pytest.approx(s_min)
    assert best["steps_expected"] == pytest.approx(s_min * (1 + b_adam / size))
    low, high = b_adam - 1.96 * best["b_crit_standard_error"], b_adam + 1.96 * best["b_crit_standard_error"]
    assert best["interval"]["batches"] == [recommend.power_of_two_floor(low), recommend.power_of_two_floor(high)]
    assert made["environment"]["git_commit"] and made["cost_seconds"] > 0
    assert f"recommended batch: {size} " in stdout and "step budget 1200" in stdout
    assert "likely needs a larger batch" in stdout and "a bound in neither direction" in stdout  # no longer "a lower bound"
    # The synthetic clusters light every input: no measured batch holds a feature the run never saw.
    assert made["unseen_inputs"]["features_never_nonzero"] == 0 and "warning:" not in stdout


def test_a_measured_batch_lighting_inputs_the_run_never_saw_is_warned_of(recommended):
    # F1 MNIST seed 2 at training loss 0.1: 4 never-seen pixels lit in 3 of 100 batches, B_adam 80x.
    made = storage.read_json(recommended[1] / "recommend" / recommend.RESULT_FILE)
    made["unseen_inputs"] = {"features_never_nonzero": 80, "of_them_nonzero_in_measured_batches": 4,
                             "measured_batches_with_one": 3, "measured_examples_with_one": 3}
    words = recommend.summary(made)
    assert "warning: 3 of the measured batches hold 3 example(s) lighting 4 input feature(s)" in words
    assert recommend.unseen_warning(None) is None  # a recommendation made before the count


def _copy(recommended, tmp_path) -> tuple[Path, list[str]]:
    """A copy of the recommend folder to edit, and the override that points the config at it."""
    path, results, _ = recommended
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    return path, [f"results_dir={copy}"]


def test_a_rerun_reuses_the_run_and_the_noise_result(recommended, tmp_path):
    path, overrides = _copy(recommended, tmp_path)
    run = tmp_path / "results" / "recommend" / "F1_synthetic_mnist" / "b16-x1" / "seed0"
    before = {name: stamp(run / name) for name in ("metrics.json", "noise/final.json")}
    again = recommend.recommend(path, overrides)
    assert {name: stamp(run / name) for name in before} == before
    first = storage.read_json(recommended[1] / "recommend" / "recommendation.json")
    assert again["recommendation"] == first["recommendation"] and again["noise"] == {
        **first["noise"], "path": str(run / "noise" / "final.json")}


def _edit_noise(run: Path, edit) -> None:
    record = storage.read_json(run / "noise" / "final.json")
    edit(record)
    storage.atomic_write_json(run / "noise" / "final.json", record)


def test_b_noise_stands_in_where_b_adam_is_not_resolved_and_none_where_neither_is(recommended, tmp_path):
    path, overrides = _copy(recommended, tmp_path)
    run = tmp_path / "results" / "recommend" / "F1_synthetic_mnist" / "b16-x1" / "seed0"
    _edit_noise(run, lambda r: r["adam"].update(b_simple=None, b_simple_standard_error=None, resolved=False,
                                                 note="not resolved: the estimate of |G|^2 is not positive"))
    made = recommend.recommend(path, overrides)
    best = made["recommendation"]
    assert best["from"] == "B_noise" and best["b_crit"] == made["noise"]["b_noise"]
    assert best["batch_size"] == recommend.power_of_two_floor(made["noise"]["b_noise"])
    assert "B_adam is not resolved: B_noise instead" in recommend.summary(made)

    _edit_noise(run, lambda r: r.update(b_simple=None, b_simple_standard_error=None, resolved=False,
                                        note="not resolved: the estimate of |G|^2 is not positive"))
    made = recommend.recommend(path, overrides)
    assert made["recommendation"] is None and made["no_recommendation"].startswith("neither noise scale is resolved")
    assert storage.read_json(tmp_path / "results" / "recommend" / "recommendation.json")["recommendation"] is None
    assert "no recommendation: neither noise scale is resolved" in recommend.summary(made)


def test_a_short_run_that_missed_the_target_gives_no_steps(recommended, tmp_path):
    path, overrides = _copy(recommended, tmp_path)
    run = tmp_path / "results" / "recommend" / "F1_synthetic_mnist" / "b16-x1" / "seed0"
    metrics = storage.read_json(run / "metrics.json")
    missed = dict(steps=None, examples=None, train_seconds=None)
    metrics["target"].update(reached=False, **missed)
    for record in metrics["target"].get("targets", []):
        record.update(missed)
    storage.atomic_write_json(run / "metrics.json", metrics)
    made = recommend.recommend(path, overrides)
    assert made["recommendation"]["batch_size"] >= 1 and made["recommendation"]["steps_expected"] is None
    assert "steps expected: not estimated" in recommend.summary(made)


def test_a_hand_edited_target_record_is_refused_with_recommends_own_fix(recommended, tmp_path):
    # The short run's target record is checked as the study checks its runs (target.check_summary),
    # with the rerun that remakes it here: recommend's, not the study's.
    path, overrides = _copy(recommended, tmp_path)
    run = tmp_path / "results" / "recommend" / "F1_synthetic_mnist" / "b16-x1" / "seed0"
    metrics = storage.read_json(run / "metrics.json")
    metrics["target"]["steps"] = metrics["target"]["steps_run"] + 1
    storage.atomic_write_json(run / "metrics.json", metrics)
    with pytest.raises(errors.UserError, match=r"metrics.json: target.steps \d+ is more than target.steps_run .*"
                                               r"rerun `python -m replication recommend CONFIG`"):
        recommend.recommend(path, overrides)


def test_a_hand_edited_noise_result_is_refused_and_nothing_is_written(recommended, tmp_path):
    path, overrides = _copy(recommended, tmp_path)
    run = tmp_path / "results" / "recommend" / "F1_synthetic_mnist" / "b16-x1" / "seed0"
    written = tmp_path / "results" / "recommend" / "recommendation.json"
    before = stamp(written)
    _edit_noise(run, lambda r: r["adam"].update(b_simple=-3.0))
    # A UserError: the CLI prints it as one line and exits 2.
    with pytest.raises(errors.UserError, match=r"noise/final.json: adam.b_simple is -3.0, must be >= 0 .*delete"):
        recommend.recommend(path, overrides)
    assert stamp(written) == before
