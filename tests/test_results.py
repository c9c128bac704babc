"""The results loader believes no impossible number and no run whose identity its files contradict
(issue 24: build items 1 and 6, example 4). One table walks every kind of result file the loader
reads, each with values no result can hold, and asserts one error line naming the file, exit 2 and
no report; another walks the identity rules (a run copied to another seed's folder, relabelled, or
its files mixed). The runs are the committed quick-profile Hessian runs (results/hessian-quick),
with a noise scale and a parametric-plot curve added by hand."""

import json
import math
import shutil

import numpy as np
import pytest
import yaml

from conftest import ROOT, one_error_line
from replication import storage
from replication.analysis import results

COMMITTED = ROOT / "results" / "hessian-quick" / "F1_fashion_mnist"
TRIAL = "F1_fashion_mnist"
DELETE = object()  # a value that removes its key
ALPHAS = np.linspace(-1, 2, 7)


def _noise(regime):
    return {"b_simple": 1701.9, "b_simple_standard_error": 100.4, "batch_size": 256, "batches": 100,
            "batchnorm": "batch_statistics", "dataset": "fashion_mnist", "grad_norm_sq": 0.27, "network": "F1",
            "num_examples": 10000, "regime": regime, "resolved": True, "run_batch_size": 256, "run_seed": 0,
            "trace_sigma": 457.8, "wall_seconds": 64.0, "note": None,
            "adam": {"b_simple": 2580.2, "b_simple_standard_error": 138.4, "resolved": True},
            "settings": {"batch_size": 256, "batches": 100, "point": "final", "seed": 0, "subset": 10000}}


@pytest.fixture
def tree(tmp_path):
    """A results folder holding every kind of file the loader reads, all of it valid."""
    root = tmp_path / "results"
    shutil.copytree(COMMITTED, root / TRIAL, ignore=shutil.ignore_patterns("*.png", "*.pdf"))
    x0 = storage.read_json(root / TRIAL / "sb/seed0/metrics.json")["x0_sha256"]
    for regime in ("sb", "lb"):
        storage.atomic_write_json(root / TRIAL / regime / "seed0/noise/final.json", _noise(regime))
    stem = root / TRIAL / "landscape" / "seed0_linear"
    xent = 0.1 + (ALPHAS - 0.3) ** 2
    storage.atomic_write_csv(stem.with_suffix(".csv"), [
        {"alpha": a, "train_xent": f, "test_xent": f + 0.05, "train_acc_pct": 100 - 5 * f, "test_acc_pct": 95 - 5 * f}
        for a, f in zip(ALPHAS, xent)])
    storage.atomic_write_json(stem.with_suffix(".json"), {
        "figure": "Figure 3", "path": "linear", "network": "F1", "dataset": "fashion_mnist",
        "dataset_label": "Fashion-MNIST (stand-in for MNIST)", "seed": 0, "x0_sha256": x0,
        "batchnorm_mode": "batch statistics", "deviations": [], "wall_seconds": 3.0,
        "settings": {"train_examples": 60000, "test_examples": 10000, "batchnorm": "batch_statistics",
                     "eval_batch_size": 5000}})
    return root


def report_error(root, capsys) -> str:
    """`python -m replication report ROOT` (its main, in this process): the one error line."""
    from replication import __main__ as entry

    code = entry.main(["report", str(root)])
    line = one_error_line(code, capsys.readouterr().err)
    assert not (root / "REPORT.md").exists()
    return line


def edit(path, where: str, value):
    """Set the dotted key `where` (list indexes as numbers) of the JSON file at `path` to `value`."""
    record = json.loads(path.read_text())
    *parents, last = where.split(".")
    target = record
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if value is DELETE:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    path.write_text(json.dumps(record, allow_nan=True) + "\n")


def edit_csv(path, row: int, column: str, value):
    rows = storage.read_csv(path)
    if value is DELETE:
        rows = [{k: v for k, v in r.items() if k != column} for r in rows]
    else:
        rows[row][column] = value
    storage.atomic_write_csv(path, rows)


def test_the_tree_is_valid_and_makes_a_report(tree):
    from replication.analysis import report

    loaded = results.load(tree)
    assert len(loaded.runs) == 2 and len(loaded.curves) == 1
    assert {"final"} == set(loaded.runs[0].noise) and len(loaded.runs[0].hessian) == 6
    assert report.build(tree).exists()


# (file under the trial folder, key or (row, column), impossible value, what the line must say)
NAN, INF = math.nan, math.inf
IMPOSSIBLE = [
    ("sb/seed0/metrics.json", "test_accuracy", 123.0, "test_accuracy is 123.0, which no result can be (expected "
                                                      "a finite number in [0, 100])"),
    ("sb/seed0/metrics.json", "train_accuracy", -1.0, "in [0, 100]"),
    ("sb/seed0/metrics.json", "train_loss", -0.5, "train_loss is -0.5"),
    ("sb/seed0/metrics.json", "test_loss", NAN, "a finite number >= 0 (the run did not diverge)"),
    ("sb/seed0/metrics.json", "epochs_run", 2.5, "epochs_run is 2.5, which no result can be (expected a whole "
                                                 "number >= 1)"),
    ("sb/seed0/metrics.json", "epochs_run", 0, "a whole number >= 1"),
    ("sb/seed0/metrics.json", "seed", "0", "seed is '0'"),
    ("lb/seed0/metrics.json", "batch_size", 0, "batch_size is 0"),
    ("lb/seed0/metrics.json", "diverged", "no", "expected true or false"),
    ("lb/seed0/metrics.json", "dataset_label", 3, "expected text"),
    ("lb/seed0/metrics.json", "test_accuracy", DELETE, "no 'test_accuracy', which every such file has"),
    ("lb/seed0/metrics.json", "diverged_epoch", 0.5, "diverged_epoch is 0.5"),
    ("sb/seed0/env.json", "train_seconds_this_process", -3.0, "train_seconds_this_process is -3.0"),
    ("sb/seed0/env.json", "seed", 0.5, "seed is 0.5"),
    ("sb/seed0/history.csv", (0, "seconds"), "-1.5", "row 1's seconds is '-1.5', which no result can be "
                                                     "(expected a finite number >= 0 or null)"),
    ("sb/seed0/history.csv", (2, "train_accuracy"), "101", "row 3's train_accuracy is '101'"),
    ("sb/seed0/history.csv", (1, "epoch"), "1.5", "row 2's epoch is '1.5'"),
    ("sb/seed0/history.csv", (0, "test_loss"), "low", "row 1's test_loss is 'low'"),
    ("sb/seed0/history.csv", (4, "train_loss"), "nan", "(the run did not diverge)"),
    ("sb/seed0/history.csv", (9, "epoch"), "12", "do not rise to the 10 epochs metrics.json records"),
    ("sb/seed0/sharpness/full_eps0.001.json", "phi", -2.0, "phi is -2.0, which no result can be (expected a "
                                                           "finite number >= 0 or null)"),
    ("sb/seed0/sharpness/full_eps0.001.json", "phi", NAN, "phi is nan"),
    ("sb/seed0/sharpness/full_eps0.001.json", "phi", None, "since the solve did not fail"),
    ("sb/seed0/sharpness/full_eps0.001.json", "solves.0.phi", -1.0, "solves[0].phi is -1.0"),
    ("sb/seed0/sharpness/full_eps0.001.json", "epsilon", 0, "epsilon is 0"),
    ("sb/seed0/sharpness/full_eps0.001.json", "failed", "false", "failed is 'false'"),
    ("sb/seed0/sharpness/random_eps0.001.json", "space", "half", "expected 'full' or 'random'"),
    ("sb/seed0/sharpness/random_eps0.001.json", "num_examples", 0, "num_examples is 0"),
    ("sb/seed0/sharpness/random_eps0.001.json", "wall_seconds", -1.0, "wall_seconds is -1.0"),
    ("sb/seed0/noise/final.json", "b_simple", -5.0, "b_simple is -5.0"),
    ("sb/seed0/noise/final.json", "adam.b_simple_standard_error", -1.0, "adam.b_simple_standard_error is -1.0"),
    ("sb/seed0/noise/final.json", "batches", 2.5, "batches is 2.5"),
    ("sb/seed0/noise/final.json", "wall_seconds", INF, "wall_seconds is inf"),
    ("sb/seed0/hessian/top_eigenvalue.json", "per_draw.0.eigenvalue", NAN, "per_draw[0].eigenvalue is nan"),
    ("sb/seed0/hessian/top_eigenvalue.json", "per_draw.1.residual", -1.0, "per_draw[1].residual is -1.0"),
    ("sb/seed0/hessian/top_eigenvalue.json", "per_draw.0.products", 0, "per_draw[0].products is 0"),
    ("sb/seed0/hessian/top_eigenvalue.json", "per_draw.0.converged", "yes", "expected true or false"),
    ("sb/seed0/hessian/top_eigenvalue.json", "spread.std", -1.0, "spread.std is -1.0"),
    ("sb/seed0/hessian/top_eigenvalue.json", "spread.draws", 1.5, "spread.draws is 1.5"),
    ("sb/seed0/hessian/top_eigenvalue.json", "spread.mean", DELETE, "no 'spread.mean'"),
    ("lb/seed0/hessian/trace.json", "per_draw.0.trace", INF, "per_draw[0].trace is inf"),
    ("lb/seed0/hessian/trace.json", "per_draw.0.standard_error", -1.0, "per_draw[0].standard_error is -1.0"),
    ("lb/seed0/hessian/trace.json", "per_draw.2.values.3", NAN, "per_draw[2].values[3] is nan"),
    ("lb/seed0/hessian/sharpness_random_eps0.001.json", "per_draw.0.phi", -1.0, "per_draw[0].phi is -1.0"),
    ("lb/seed0/hessian/sharpness_random_eps0.001.json", "settings.epsilon", -1e-3, "settings.epsilon is -0.001"),
    ("lb/seed0/hessian/filter_landscape.json", "f_x", -1.0, "f_x is -1.0"),
    ("lb/seed0/hessian/filter_landscape.json", "evaluations", 0, "evaluations is 0"),
    ("lb/seed0/hessian/filter_landscape.json", "rises.t=1.0", NAN, "rises.t=1[0] is nan"),
    ("lb/seed0/hessian/reparametrization_relu_a10.json", "factor", 0.0, "factor is 0.0"),
    ("lb/seed0/hessian/reparametrization_relu_a10.json", "output_change.max_abs_probability_change", 2.0,
     "in [0, 1]"),
    ("lb/seed0/hessian/reparametrization_relu_a10.json", "ratio_after_to_before.trace", INF,
     "ratio_after_to_before.trace is inf"),
    ("lb/seed0/hessian/reparametrization_relu_a10.json", "moved.trace", "yes", "true, false or null"),
    ("lb/seed0/hessian/reparametrization_batchnorm_a10.json", "before.phi_full.phi", -3.0,
     "before.phi_full.phi is -3.0"),
    ("lb/seed0/hessian/reparametrization_batchnorm_a10.json", "after.trace", DELETE, "no 'after.trace.trace'"),
    ("lb/seed0/hessian/filter_landscape_1d.csv", (3, "loss"), "-1", "row 4's loss is '-1'"),
    ("lb/seed0/hessian/filter_landscape_1d.csv", (0, "accuracy"), "1.5", "expected a finite number in [0, 1]"),
    ("lb/seed0/hessian/filter_landscape_1d.csv", (2, "t"), "nan", "row 3's t is 'nan'"),
    ("lb/seed0/hessian/filter_landscape_2d.csv", (0, "a"), "inf", "row 1's a is 'inf'"),
    ("landscape/seed0_linear.csv", (2, "train_acc_pct"), "120", "row 3's train_acc_pct is '120'"),
    ("landscape/seed0_linear.csv", (0, "train_xent"), "-0.1", "row 1's train_xent is '-0.1'"),
    ("landscape/seed0_linear.csv", (1, "alpha"), "nan", "row 2's alpha is 'nan'"),
    ("landscape/seed0_linear.csv", (0, "test_xent"), DELETE, "no column 'test_xent'"),
    ("landscape/seed0_linear.json", "seed", -1, "seed is -1"),
    ("landscape/seed0_linear.json", "wall_seconds", -1.0, "wall_seconds is -1.0"),
    ("landscape/seed0_linear.json", "figure", DELETE, "no 'figure'"),
]


@pytest.mark.parametrize("file, where, value, message", IMPOSSIBLE, ids=[f"{c[0]}:{c[1]}" for c in IMPOSSIBLE])
def test_an_impossible_value_in_any_result_file_is_one_line_naming_it(tree, capsys, file, where, value, message):
    path = tree / TRIAL / file
    if path.suffix == ".csv":
        edit_csv(path, *where, value)
    else:
        edit(path, where, value)
    line = report_error(tree, capsys)
    assert line.startswith(f"error: {path}: ") and message in line, line
    assert "delete" in line and "rerun" in line  # and how to make the file again


def test_the_table_walks_every_kind_of_result_file_the_loader_reads():
    kinds = {file.split("/seed0/")[-1].split("/")[0] if "/seed0/" in file else file.split(".")[-1]
             for file, *_ in IMPOSSIBLE}
    assert kinds == {"metrics.json", "env.json", "history.csv", "sharpness", "noise", "hessian", "csv", "json"}
    # ... and that is every kind the loader reads: each registered measure's folder (a new measure
    # with no case here fails), and the kinds whose keys the tables read with [].
    from replication.measure import registry

    assert {m.files.split("/")[0] for m in registry.MEASURES.values() if m.files} <= kinds
    assert {f"{kind}.json" for kind in results.REQUIRED if kind != "curve"} <= kinds and "json" in kinds  # curves: <stem>.json
    hessian = {file.rsplit("/", 1)[1] for file, *_ in IMPOSSIBLE if "/hessian/" in file}
    assert hessian == {"top_eigenvalue.json", "trace.json", "sharpness_random_eps0.001.json", "filter_landscape.json",
                       "reparametrization_relu_a10.json", "reparametrization_batchnorm_a10.json",
                       "filter_landscape_1d.csv", "filter_landscape_2d.csv"}


def test_a_diverged_run_may_end_on_a_non_finite_loss(tree):
    metrics = tree / TRIAL / "lb/seed0/metrics.json"
    for key, value in (("diverged", True), ("diverged_epoch", 10), ("train_loss", NAN), ("test_loss", INF)):
        edit(metrics, key, value)
    edit_csv(tree / TRIAL / "lb/seed0/history.csv", 9, "train_loss", "nan")
    assert results.load(tree).runs[0].diverged


# Identity: a run is the run its directory names, and it is counted once ---------------------------------
def relabel(run, seed):
    """Make every file of the run directory `run` say `seed` (a copy passed off as another seed)."""
    edit(run / "metrics.json", "seed", seed)
    edit(run / "metrics.json", "resolved_config.run.seed", seed)
    edit(run / "env.json", "seed", seed)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["run"]["seed"] = seed
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def copy_run(tree, source, target):
    shutil.copytree(tree / TRIAL / source, tree / TRIAL / target)
    return tree / TRIAL / target


def test_a_run_copied_to_another_seeds_folder_is_not_a_second_seed(tree, capsys):
    # The example 4: Table 2 showed 2 seeds with +- 0.00 and claim 1 a seed std of 0.
    copy = copy_run(tree, "sb/seed0", "sb/seed1")
    line = report_error(tree, capsys)
    assert f"{copy}/metrics.json records seed 'seed0', but its directory says 'seed1'" in line
    assert f"move {copy} to {tree / TRIAL / 'sb' / 'seed0'} if it is the run its files record, else delete it" in line


def test_a_relabelled_copy_is_one_run_counted_twice(tree, capsys):
    copy = copy_run(tree, "sb/seed0", "sb/seed1")
    relabel(copy, 1)  # every file now says seed 1, but the x0 is seed 0's
    line = report_error(tree, capsys)  # lb/seed0 comes first, and started from seed 0's x0 too
    assert f"{tree / TRIAL / 'lb/seed0'} and {copy} record seeds 0 and 1 but start from the same x0, and every " \
           "seed draws its own: one of them is a copy of the other seed's run" in line
    assert "delete the copy" in line
    edit(copy / "metrics.json", "x0_sha256", "0" * 64)  # the x0 digest forged too: its training is seed 0's
    line = report_error(tree, capsys)
    assert f"{tree / TRIAL / 'sb/seed0'} and {copy} record seeds 0 and 1 but hold the same training, loss for " \
           "loss" in line


@pytest.mark.parametrize("file, where, value, message", [
    ("sb/seed0/metrics.json", "network", "F2", "records network and dataset 'F2_fashion_mnist', but its directory "
                                               "says 'F1_fashion_mnist'"),
    ("sb/seed0/metrics.json", "regime", "lb", "records regime 'lb', but its directory says 'sb'"),
    ("sb/seed0/metrics.json", "resolved_config.run.seed", 1, "metrics.json (seed) records seed 0, metrics.json "
                                                             "(resolved_config.run.seed) 1"),
    ("sb/seed0/env.json", "backend", "jax", "records backend 'tensorflow', env.json (backend) 'jax'"),
    ("sb/seed0/env.json", "seed", 3, "env.json (seed) 3"),
    ("lb/seed0/config.yaml", "learning_rate", 0.01, "config.yaml has learning_rate 0.01, but metrics.json's "
                                                    "resolved config 0.001"),
    ("lb/seed0/config.yaml", "run.regime", "sb", "config.yaml (run.regime) 'sb'"),
])
def test_files_of_one_run_that_disagree_are_refused(tree, capsys, file, where, value, message):
    path = tree / TRIAL / file
    if path.suffix == ".yaml":
        config = yaml.safe_load(path.read_text())
        *parents, last = where.split(".")
        target = config
        for part in parents:
            target = target[part]
        target[last] = value
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    else:
        edit(path, where, value)
    line = report_error(tree, capsys)
    assert line.startswith(f"error: {path.parent}") and message in line, line


# Measurement settings are compared across SB and LB, not per regime -------------------------------------
@pytest.mark.parametrize("file, key, value", [
    ("lb/seed0/sharpness/full_eps0.001.json", "settings.iterations", 5),
    ("lb/seed0/noise/final.json", "settings.batches", 50),
    ("lb/seed0/hessian/top_eigenvalue.json", "settings.tol", 0.05),
])
def test_sb_and_lb_measured_with_different_settings_are_refused(tree, file, key, value):
    # With one run per regime, a check that compared settings per regime only would pass this folder.
    edit(tree / TRIAL / file, key, value)
    name = file.split("/seed0/")[1]
    with pytest.raises(results.ResultsError, match=rf"lb/seed0/{name} and .*sb/seed0/{name} were measured with "
                                                   rf"different settings \('{key.split('.')[1]}' is"):
        results.load(tree)


# Seeds: the one rule every table averages by (issue 26 item 5) -----------------------------------------
def _run(seed, test, diverged=False, phi=None, failed=False):
    """A Run with only what over_seeds and sharpness_value read; phi None and not failed: not measured."""
    measured = phi is not None or failed
    sharpness = {("full", 1e-3): results.Measurement(ROOT / f"seed{seed}.json", {"failed": failed, "phi": phi})}
    return results.Run(ROOT / f"sb/seed{seed}", {"seed": seed, "diverged": diverged, "test_accuracy": test}, {}, 0.0,
                       "tensorflow", {}, sharpness if measured else {}, {})


def test_over_seeds_drops_and_counts_diverged_failed_and_missing_runs():
    runs = [_run(0, 90.0, phi=2.0), _run(1, 91.0, phi=4.0), _run(2, 92.0, phi=9.0),
            _run(3, 10.0, diverged=True, phi=1e6),  # measured anyway: never averaged in
            _run(4, 93.0, failed=True), _run(5, 94.0)]
    phi = results.over_seeds(runs, lambda run: results.sharpness_value(run, "full", 1e-3))
    assert (phi.n, phi.seeds, phi.diverged, phi.failed, phi.missing) == (3, 6, 1, 1, 1)
    assert phi.mean == pytest.approx(5.0) and phi.std == pytest.approx(math.sqrt(13.0))  # (9 + 1 + 16) / 2
    test = results.over_seeds(runs, lambda run: run.metrics["test_accuracy"])
    assert (test.mean, test.n, test.diverged, test.failed, test.missing) == (92.0, 5, 1, 0, 0)
    assert test.std == pytest.approx(math.sqrt(2.5))
    # One vocabulary: '<quantity>_<statistic>', the quantity named by sharpness_column.
    key = "lb_" + results.sharpness_column("phi", "full", 1e-3)
    assert phi.columns(key) == {f"{key}_mean": phi.mean, f"{key}_std": phi.std, f"{key}_n": 3,
                                f"{key}_failed": 1, f"{key}_missing": 1}
    assert test.columns("test", results.MEAN_STD) == {"test_mean": 92.0, "test_std": test.std}


def test_over_seeds_reads_rows_and_says_when_nothing_is_left():
    """A row of one run (a mapping with 'diverged') counts as the run; a NaN is a missing value, one
    value has no std, and a group with none left has no mean."""
    rows = [{"diverged": 0, "v": 1.5}, {"diverged": 1, "v": 7.0}, {"diverged": 0, "v": math.nan}]
    one = results.over_seeds(rows, lambda r: r["v"])
    assert (one.mean, one.n, one.diverged, one.missing) == (1.5, 1, 1, 1) and math.isnan(one.std)
    none = results.over_seeds(rows[1:2], lambda r: r["v"])
    assert math.isnan(none.mean) and (none.n, none.seeds, none.diverged) == (0, 1, 1)
    failed = results.over_seeds(rows[:1], lambda r: results.FAILED)
    assert (failed.n, failed.failed) == (0, 1) and math.isnan(failed.mean)
