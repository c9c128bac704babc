"""Matched-loss points, the plateau rule replayed on a kept history (and checked against a real
plateau-stopped run), and the solver-budget measurements (measure/matched.py, measure/budget.py)."""

import dataclasses
import json
import math

import pytest

from conftest import cli, one_error_line
from replication import config as config_lib
from replication import rundir, storage, train
from replication.measure import budget, iterates, matched
from tests.test_iterates import assert_same_weights


def history(losses):
    return [{"epoch": i + 1, "train_loss": loss, "test_loss": 1.0} for i, loss in enumerate(losses)]


def test_nearest_epoch_is_nearest_in_log_scale_and_only_within_the_factor():
    rows = history([0.5, 0.2, 0.09, 0.05, 0.031, 0.02])
    assert matched.nearest_epoch(rows, 0.1) == 3        # 0.09 beats 0.2 (log distance 0.105 vs 0.69)
    assert matched.nearest_epoch(rows, 0.03) == 5
    assert matched.nearest_epoch(rows, 0.003) is None   # nearest 0.02 is 6.7x away: not reached
    assert matched.nearest_epoch(rows, 0.0135) == 6     # 0.02 / 0.0135 = 1.48 <= 1.5
    assert matched.nearest_epoch(rows, 0.013) is None   # 0.02 / 0.013 = 1.54 > 1.5
    assert matched.nearest_epoch(history([float("nan"), 0.1]), 0.1) == 2


def test_plateau_epoch_replays_the_trainers_rule():
    config = config_lib.from_dict({"network": "F1", "dataset": "synthetic_mnist", "epochs": 10, "min_delta": 0.0})
    # Best 0.1 at epoch 3; epochs 4 and 5 do not improve on it: patience 2 stops at epoch 5.
    rows = history([0.3, 0.2, 0.1, 0.15, 0.12, 0.05, 0.04, 0.03, 0.02, 0.01])
    assert matched.plateau_epoch(config, rows, 2) == (5, "plateau")
    assert matched.plateau_epoch(config, rows, 3) == (10, "max_epochs")  # epoch 6 improves in time
    points = matched.select(config, rows, levels=(0.1, 0.001), patiences=(2, 3))
    assert [(p["epoch"], p["why"]) for p in points] == [
        (3, ["level 0.1"]), (5, ["plateau patience 2"]), (10, ["plateau patience 3 (max_epochs)", "final"])]


def test_a_plateau_stopped_run_is_the_fixed_runs_iterate_at_its_stopping_epoch(tiny_config, tmp_path):
    """The claim measure/matched.py rests on: shuffles and dropout depend on (seed, epoch) only, so
    stopping early changes nothing before the stop. min_delta 10 makes every epoch 'no better'."""
    fixed = train.train(config_lib.load(tiny_config(epochs=4, keep_every=1, min_delta=10.0)), "sb", 0)
    plateau_config = config_lib.load(tiny_config(epochs=4, stopping="plateau", patience=1, min_delta=10.0,
                                                 results_dir=str(tmp_path / "plateau")))
    stopped = train.train(plateau_config, "sb", 0)
    metrics = storage.read_json(stopped / "metrics.json")
    assert metrics["stopped"] == "plateau" and metrics["epochs_run"] == 2
    fixed_config = config_lib.load(tiny_config(epochs=4, keep_every=1, min_delta=10.0))
    epoch, reason = matched.plateau_epoch(fixed_config, storage.read_csv(fixed / "history.csv"), 1)
    assert (epoch, reason) == (2, "plateau")
    assert_same_weights(rundir.iterate_path(fixed, epoch), stopped / "final.weights.h5")


def test_matched_measures_the_selected_iterates_and_refuses_runs_that_did_not_keep_every_epoch(
        tiny_config, tmp_path):
    config = config_lib.load(tiny_config(epochs=3, keep_every=1, sharpness={"subset": 200}))
    run = train.train(config, "sb", 0)
    summary = storage.read_json(matched.measure(run, levels=(10.0,), patiences=(1,), epsilons=[1e-3],
                                                spaces=["full"]))
    epochs = [p["epoch"] for p in summary["points"]]
    assert 3 in epochs and summary["files"]
    for epoch in epochs:
        record = storage.read_json(iterates.sharpness_path(run, epoch, "full", 1e-3))
        assert record["iterate_epoch"] == epoch and record["phi"] >= 0
        assert storage.read_json(iterates.xent_path(run, epoch))["train_xent"] > 0
    assert not list((run / "iterates").glob("lambda_epoch*"))  # lambda_max only when asked for
    some = train.train(config_lib.load(tiny_config(epochs=2, keep_iterates=[2],
                                                   results_dir=str(tmp_path / "some"))), "sb", 0)
    result = cli("matched", some)
    assert "did not keep every epoch's iterate" in one_error_line(result.returncode, result.stderr)


def test_budget_measures_each_cap_and_random_starts_and_records_how_each_solve_ended(tiny_config):
    run = train.train(config_lib.load(tiny_config(epochs=1, sharpness={"subset": 200})), "sb", 0)
    files = budget.measure(run, iterations=(2, 5), restarts=2)
    assert [f.name for f in files] == ["full_eps0.001_it2_zero.json", "full_eps0.001_it5_zero.json",
                                       "full_eps0.001_it2_random2.json"]
    records = [storage.read_json(f) for f in files]
    assert [r["iterations"] for r in records] == [2, 5, 2]
    assert [len(r["solves"]) for r in records] == [1, 1, 2]
    assert all(s["status"] in (0, 1, 2) for r in records for s in r["solves"])
    assert records[0]["solves"][0]["status"] == 1  # 2 iterations from the minimiser: stopped at the cap
    # More iterations from the same start never find a lower maximum (max f is the best point seen).
    assert records[1]["max_f"] >= records[0]["max_f"]
    again = budget.measure(run, iterations=(2, 5), restarts=2)  # reused, not recomputed
    assert [storage.read_json(f)["wall_seconds"] for f in again] == [r["wall_seconds"] for r in records]


@pytest.mark.parametrize("args, message", [
    (["matched", "x", "--levels", "0.1,-1"], "--levels"),
    (["budget", "x", "--iterations", "0"], "--iterations"),
    (["budget", "x", "--restarts", "-1"], "--restarts")])
def test_bad_arguments_are_one_line(args, message):
    result = cli(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_report_sections_read_the_measured_points(tiny_config):
    from replication.analysis import matched_tables, results

    config = config_lib.load(tiny_config(epochs=3, keep_every=1, sharpness={"subset": 200}))
    for regime in ("sb", "lb"):
        run = train.train(config, regime, 0)
        matched.measure(run, levels=(10.0,), patiences=(1,), epsilons=[1e-3], spaces=["full"])
    budget.measure(run, iterations=(2,), restarts=0)
    loaded = results.load(config.results_dir)
    rows = matched_tables.matched_rows(loaded)
    assert [r["level"] for r in rows] == [10.0, "final"]
    final = rows[-1]
    assert final["sb"]["epoch"] == final["lb"]["epoch"] == 3 and not final["matched"]
    assert final["ratio"] == pytest.approx(final["lb"]["phi"] / final["sb"]["phi"])
    text = matched_tables.matched_section(loaded)
    assert "## Sharpness at matched training loss" in text and "final (not matched)" in text
    assert "lambda_max" not in text and text.count("|\n|---|---|---|---|---|---|\n") == 1  # as before lambda_max
    stopping = matched_tables.stopping_section(loaded)
    assert "| fixed | SB | 1 | 3-3 |" in stopping and "n = 1: no interval" in stopping
    assert "| 0 | LB | full, 0.001 | 2 its from y = 0 |" in matched_tables.budget_section(loaded)


def test_the_budget_section_says_whether_the_order_of_sb_and_lb_depends_on_the_budget():
    from replication.analysis import matched_tables

    def row(regime, iterations, phi, start="zero"):
        return {"seed": 0, "regime": regime, "space": "full", "epsilon": 1e-3, "iterations": iterations,
                "start": start, "phi": phi}
    # results/paper-cpu seed 0: LB flatter at 10 iterations, far sharper at 50 and 200.
    flipped = [row("sb", 10, 0.0635), row("lb", 10, 0.00055), row("sb", 50, 0.59), row("lb", 50, 241.0),
               row("sb", 10, 0.053, start="random")]
    (line,) = matched_tables.budget_order(flipped)
    assert "10 its 0.00866, 50 its 408" in line and "10 and 50 iterations give opposite orders" in line
    same = [row("sb", 10, 1.0), row("lb", 10, 3.0), row("sb", 50, 2.0), row("lb", 50, 9.0)]
    assert matched_tables.budget_order(same)[0].endswith("the same order at both budgets measured.\n")
    # A flip at a middle budget is a flip: only the first and last budgets were compared.
    middle = [r for r in same if not (r["regime"] == "lb" and r["iterations"] == 50)] + [
        row("lb", 50, 0.5), row("sb", 200, 4.0), row("lb", 200, 12.0)]
    assert "10 and 50 iterations give opposite orders" in matched_tables.budget_order(middle)[0]
    assert matched_tables.budget_order([row("sb", 10, 1.0)]) == []  # no LB at that budget: nothing compared


@pytest.mark.parametrize("ratios, words", [
    ([2.0, 3.0], "LB was sharper than SB at every matched level and seed"),
    ([0.5, 0.8], "LB was flatter than SB at every matched level and seed"),
    ([0.5, 3.0], "LB was sharper than SB at 1 of 2 matched points")])
def test_the_plain_words_answer_follows_the_ratios(ratios, words):
    from replication.analysis import matched_tables

    solved = {"capped": False}
    rows = [{"seed": i, "level": 0.01, "matched": True, "ratio": r, "sb": solved, "lb": solved}
            for i, r in enumerate(ratios)]
    text = matched_tables.answer(rows)
    assert words in text and "n = 2 seeds" in text and "One seed" not in text and "bounded in neither" not in text
    assert "One seed" in matched_tables.answer(rows[:1])
    assert "not measured" in matched_tables.answer([{**rows[0], "matched": False}])
    # Both solves at their cap: two lower bounds, whose ratio the answer must not present as measured.
    capped = [{**rows[0], "sb": {"capped": True}, "lb": {"capped": True}}, rows[1]]
    assert "At 1 of 2 matched points both solves stopped at their iteration cap" in matched_tables.answer(capped)
    # Capped at every point: the order is of lower bounds, not "LB was sharper" (paper-cpu, 20 of 20).
    every = [{**r, "sb": {"capped": True}, "lb": {"capped": True}} for r in rows]
    text = matched_tables.answer(every)
    assert "LB's capped phi" in text and "both lower bounds: no ordering of the maxima follows" in text
    assert "LB was sharper than SB" not in text and "LB was flatter than SB" not in text


def test_the_answer_gives_lambda_max_ratios_only_where_lanczos_converged():
    from replication.analysis import matched_tables

    def side(value, bound=False):
        return {"capped": True, "lambda_max": {"value": value, "lower_bound": bound}}

    rows = [{"seed": 0, "level": 0.01, "matched": True, "ratio": 4.0, "sb": side(0.5), "lb": side(1.5),
             "lambda_ratio": 3.0},
            {"seed": 0, "level": 0.003, "matched": True, "ratio": 9.0, "sb": side(0.1), "lb": side(0.4, True),
             "lambda_ratio": 4.0},
            {"seed": 0, "level": "final", "matched": False, "ratio": 0.1, "sb": side(0.04), "lb": side(0.02),
             "lambda_ratio": 0.5}]
    text = matched_tables.answer(rows)
    # The converged pair is a measured ratio; the bounded one and the unmatched final points are left out.
    assert "LB lambda_max / SB lambda_max: f ~ 0.01: 3x (n = 1 seed)." in text
    assert "f ~ 0.003: 4" not in text and "0.5x" not in text
    assert "1 matched point where Lanczos stopped at its cap on a side (a lower bound) left out" in text
    # Without lambda_max the answer reads as before.
    plain = [{**r, "sb": {"capped": True}, "lb": {"capped": True}} for r in rows]
    assert "lambda_max" not in matched_tables.answer(plain)


def test_iterate_measure_matched_needs_every_epoch():
    base = {"network": "F1", "dataset": "synthetic_mnist", "epochs": 4, "seeds": [0]}
    with pytest.raises(config_lib.ConfigError, match="'iterate_measure'.*keep_every: 1"):
        config_lib.from_dict({**base, "keep_every": 2, "iterate_measure": "matched"})
    with pytest.raises(config_lib.ConfigError, match="'iterate_measure'"):
        config_lib.from_dict({**base, "keep_every": 1, "iterate_measure": "some"})
    assert "iterate_measure" in rundir.NON_TRAINING_KEYS  # which files make measures, not what training computes


def test_pipeline_schedules_matched_instead_of_every_iterate(tmp_path):
    from replication import pipeline

    path = tmp_path / "c.yaml"
    path.write_text("network: F1\ndataset: synthetic_mnist\nepochs: 4\nseeds: [0]\nkeep_every: 1\n"
                    f"iterate_measure: matched\nresults_dir: {tmp_path / 'r'}\n")
    rules = pipeline.rules("t", [str(path)])
    assert "matched " in rules and "--space full" in rules and " iterates " not in rules
    assert str(matched.summary_path(tmp_path / "r" / "F1_synthetic_mnist" / "sb" / "seed0")) in rules


def test_lambda_max_at_the_matched_points_is_the_hessians_top_eigenvalue_and_marks_a_lower_bound(tiny_config):
    """lambda_max at each selected iterate, on phi's examples and weights; reused; a Lanczos stopped at
    its cap is a lower bound in the file and in the table; a damaged file is refused in one line."""
    from replication.analysis import matched_tables, results
    from replication.measure import hessian

    # min_delta 10: no epoch improves, so patience 1 selects epoch 2 beside the final epoch 3.
    config = config_lib.load(tiny_config(epochs=3, keep_every=1, min_delta=10.0, sharpness={"subset": 200}))
    runs = {regime: train.train(config, regime, 0) for regime in ("sb", "lb")}
    for run in runs.values():
        matched.measure(run, levels=(10.0,), patiences=(1,), epsilons=[1e-3], spaces=["full"], lambda_max=True)
    sb = runs["sb"]
    summary = storage.read_json(matched.summary_path(sb))
    epochs = [p["epoch"] for p in summary["points"]]
    assert epochs == [2, 3]
    records = {e: storage.read_json(matched.lambda_path(sb, e)) for e in epochs}
    assert all(f"iterates/lambda_epoch{e}.json" in summary["files"] for e in epochs)
    for epoch, record in records.items():
        xent = storage.read_json(iterates.xent_path(sb, epoch))
        assert record["iterate_epoch"] == epoch and record["converged"] and not record["lower_bound"]
        assert record["train_xent"] == xent["train_xent"] and record["num_examples"] == 200
        assert record["settings"]["weights_digest"] == xent["settings"]["weights_digest"]
        assert record["settings"]["iterations"] == config.hessian.iterations and record["wall_seconds"] >= 0
    # The same number as the Hessian measure's own Lanczos on that iterate and those examples.
    loaded_run = rundir.load_run(sb)
    storage.load_weights(loaded_run.model, rundir.iterate_path(sb, epochs[-1]))
    h = hessian.curvature_objective(loaded_run.model, *rundir.training_examples(config, 200), config.eval_batch_size)
    direct = hessian.top_eigenvalue(h, h.get_flat(), config.hessian.iterations, config.hessian.tol,
                                    config.hessian.seed)
    assert records[epochs[-1]]["eigenvalue"] == pytest.approx(direct["eigenvalue"], rel=1e-5)
    assert records[epochs[-1]]["products"] == direct["products"]
    cli("matched", sb, "--levels", "10", "--patiences", "1", "--epsilon", "1e-3", "--space", "full", "--lambda-max",
        check=True)
    assert [storage.read_json(matched.lambda_path(sb, e))["wall_seconds"] for e in epochs] == \
        [r["wall_seconds"] for r in records.values()]  # reused, not recomputed

    final = matched_tables.matched_rows(results.load(config.results_dir))[-1]
    sb_value, lb_value = (final[regime]["lambda_max"]["value"] for regime in ("sb", "lb"))
    assert final["lambda_ratio"] == pytest.approx(lb_value / sb_value)
    text = matched_tables.matched_section(results.load(config.results_dir))
    assert "LB lambda_max / SB lambda_max |" in text and f", lambda_max {sb_value:.3g} |" in text
    assert f"| {final['lambda_ratio']:.3g} |" in text and ">= " not in text.split("|---|")[-1]

    # One Lanczos step cannot meet tol 1e-3 here: SB's final value becomes a lower bound.
    capped = dataclasses.replace(loaded_run, config=dataclasses.replace(
        config, hessian=dataclasses.replace(config.hessian, iterations=1)))
    matched.measure_lambda_max(capped, [epochs[-1]], force=True)
    record = storage.read_json(matched.lambda_path(sb, epochs[-1]))
    assert record["products"] == 1 and not record["converged"] and record["lower_bound"]
    assert record["eigenvalue"] <= direct["eigenvalue"] * (1 + 1e-6)  # a Ritz value: below lambda_max
    text = matched_tables.matched_section(results.load(config.results_dir))
    bounded = [line for line in text.splitlines() if line.startswith("| 0 | final")][0]
    ratio = lb_value / record["eigenvalue"]
    assert f"lambda_max >= {record['eigenvalue']:.3g}" in bounded and bounded.endswith(f"| <= {ratio:.3g} |")

    # A hand-edited file with a non-finite eigenvalue: one line naming the file, exit status 2.
    record["eigenvalue"] = math.nan
    matched.lambda_path(sb, epochs[-1]).write_text(json.dumps(record) + "\n")  # as storage writes it
    result = cli("report", config.results_dir)
    line = one_error_line(result.returncode, result.stderr)
    assert f"lambda_epoch{epochs[-1]}.json: 'eigenvalue' is nan" in line and "--lambda-max" in line


@pytest.mark.parametrize("sb_bound, lb_bound, cell", [
    (False, False, "2"), (False, True, ">= 2"), (True, False, "<= 2"), (True, True, "n/a (both lower bounds)")])
def test_a_lambda_max_ratio_with_a_lower_bound_is_a_bound(sb_bound, lb_bound, cell):
    from replication.analysis import matched_tables

    def point(value, bound):
        return {"epoch": 1, "f": 0.1, "phi": 1.0, "capped": False,
                "lambda_max": {"value": value, "lower_bound": bound}}

    row = {"sb": point(10.0, sb_bound), "lb": point(20.0, lb_bound), "lambda_ratio": 2.0}
    assert matched_tables._lambda_ratio(row) == cell
    assert matched_tables._fmt(row["lb"], True).endswith(f"lambda_max {'>= ' if lb_bound else ''}20")
