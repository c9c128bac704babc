"""Published vs produced: the comparison arithmetic on hand-made numbers, the verdict rules, and
REPORT.md built from a hand-made results tree (files only, no training)."""

import json
import math
import re
import shutil

import numpy as np
import pytest

from conftest import cli
from replication import storage
from replication.measure import sharpness
from replication.analysis import compare, report, results, verdicts

PNG_MAGIC, PDF_MAGIC = b"\x89PNG\r\n\x1a\n", b"%PDF-"
ALPHAS = np.linspace(-1, 2, 25)
FASHION = "Fashion-MNIST (stand-in for MNIST)"
DEVIATIONS = ["dataset fashion_mnist instead of the paper's mnist", "10 epochs instead of the figures' 100",
              "2 seed(s) instead of 5"]


# A hand-made results tree -------------------------------------------------------------------------
def write_run(root, regime, seed, train_acc, test_acc, phis=None):
    """One finished F1 run on Fashion-MNIST; `phis` = {(space, epsilon): phi or None (failed)}."""
    path = root / "F1_fashion_mnist" / regime / f"seed{seed}"
    storage.atomic_write_json(path / "metrics.json", {
        "network": "F1", "dataset": "fashion_mnist", "dataset_label": FASHION, "profile": "handmade",
        "regime": regime, "seed": seed, "batch_size": 256 if regime == "sb" else 6000,
        "batchnorm": "batch_statistics", "eval_batch_size": 5000, "num_train": 60000, "num_test": 10000,
        "epochs_run": 10, "stopped": "fixed", "diverged": False, "diverged_epoch": None,
        "train_loss": 0.1, "train_accuracy": train_acc, "test_loss": 0.3, "test_accuracy": test_acc,
        "x0_sha256": f"x0-{seed}", "deviations": DEVIATIONS, "resolved_config": {}})
    storage.atomic_write_json(path / "env.json", {
        "git_commit": "0123456789abcdef", "git_dirty": False, "device": "test CPU", "python": "3.11",
        "tensorflow": "2.21", "keras": "3.15", "numpy": "2.4", "seed": seed,
        "start_time": "2026-01-01T00:00:00+00:00", "end_time": "2026-01-01T00:10:00+00:00"})
    storage.atomic_write_csv(path / "history.csv", [{"epoch": e, "seconds": 1.5} for e in range(1, 11)])
    storage.atomic_write_text(path / "config.yaml", "network: F1\n")
    for (space, epsilon), phi in (phis or {}).items():
        storage.atomic_write_json(sharpness.result_path(path, space, epsilon), {
            "phi": phi, "failed": phi is None, "f_x": 0.1, "max_f": None if phi is None else 0.1 + phi,
            "epsilon": epsilon, "space": space, "p": 100 if space == "random" else None,
            "iterations": 10, "start": "zero", "num_examples": 60000, "wall_seconds": 2.0,
            "environment": {"git_commit": "0123456789abcdef", "device": "test CPU"}})
    return path


def landscape_curve(sb_curvature=0.1, lb_curvature=10.0):
    """Quadratic bowls: curvature 2*sb_curvature around alpha=0, 2*lb_curvature around alpha=1."""
    xent = np.where(ALPHAS <= 0.5, 0.01 + sb_curvature * ALPHAS ** 2, 0.01 + lb_curvature * (ALPHAS - 1) ** 2)
    acc = np.clip(100 - 10 * xent, 0, 100)
    return {"alpha": ALPHAS, "train_xent": xent, "test_xent": xent + 0.05, "train_acc_pct": acc,
            "test_acc_pct": np.clip(acc - 1, 0, 100)}


def write_landscape(root, path, curve):
    stem = root / "F1_fashion_mnist" / "landscape" / f"seed0_{path}"
    storage.atomic_write_csv(stem.with_suffix(".csv"), [
        {k: float(curve[k][i]) for k in ("alpha", *compare.FIGURE_COLUMNS)} for i in range(len(ALPHAS))])
    storage.atomic_write_json(stem.with_suffix(".json"), {
        "figure": "Figure 3" if path == "linear" else "Figure 7", "path": path, "network": "F1",
        "dataset": "fashion_mnist", "dataset_label": FASHION, "seed": 0,
        "sb_run": str(root / "F1_fashion_mnist/sb/seed0"), "lb_run": str(root / "F1_fashion_mnist/lb/seed0"),
        "x0_sha256": "x0-0", "batchnorm_mode": "batch statistics", "deviations": DEVIATIONS,
        "settings": {"train_examples": 60000, "test_examples": 10000},
        "environment": {"git_commit": "0123456789abcdef", "device": "test CPU"}, "wall_seconds": 3.0})
    return stem


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "results" / "handmade"
    sharp = {("full", 1e-3): 200.0, ("full", 5e-4): 40.0, ("random", 1e-3): 9.0, ("random", 5e-4): 5.0}
    flat = {key: value / 100 for key, value in sharp.items()}
    for seed, jitter in ((0, 0.0), (1, 0.2)):
        write_run(root, "sb", seed, 99.5 + jitter, 90.0 + jitter, flat)
        lb_phis = {**sharp, ("full", 5e-4): None} if seed else sharp  # one failed solve
        write_run(root, "lb", seed, 99.0 + jitter, 88.0 + jitter, lb_phis)
    for path in ("linear", "curvilinear"):
        write_landscape(root, path, landscape_curve())
    return root


# Arithmetic -----------------------------------------------------------------------------------------
def test_end_rise_is_a_finite_difference_curvature():
    curve = landscape_curve(sb_curvature=0.1, lb_curvature=10.0)
    h = compare.RISE_STEP
    assert compare.end_rise(curve, 0.0) == pytest.approx(0.1 * h ** 2)
    assert compare.end_rise(curve, 1.0) == pytest.approx(10.0 * h ** 2)
    assert compare.end_rise(curve, 0.0, column="test_xent") == pytest.approx(0.1 * h ** 2)
    assert math.isnan(compare.end_rise(curve, 2.0))  # no grid beyond alpha=2
    assert compare.rise_ratio(10.0, 0.1) == pytest.approx(100.0)
    assert compare.rise_ratio(1.0, 0.0) == math.inf and math.isnan(compare.rise_ratio(0.0, 0.0))


def test_curve_distance_is_the_mean_absolute_difference():
    paper = landscape_curve()
    shifted = {k: v + (1.0 if k != "alpha" else 0.0) for k, v in paper.items()}
    distance = compare.curve_distance(shifted, paper)
    assert distance["alphas_compared"] == 25
    for column in compare.FIGURE_COLUMNS:
        assert distance[f"mad_{column}"] == pytest.approx(1.0)
    # A coarser grid of ours is interpolated onto the paper's alphas; exact for straight lines.
    line = {k: 2 * ALPHAS + 1 for k in compare.FIGURE_COLUMNS} | {"alpha": ALPHAS}
    coarse = {k: v[::8] for k, v in line.items()}
    assert compare.curve_distance(coarse, line)["mad_test_acc_pct"] == pytest.approx(0.0, abs=1e-12)
    narrow = {k: v[8:17] for k, v in line.items()}  # alpha in [0, 1] only
    assert compare.curve_distance(narrow, line)["alphas_compared"] == 9


# The report ------------------------------------------------------------------------------------------
def test_report_from_a_handmade_tree(tree):
    path = report.build(tree)
    text = path.read_text()
    judged = {v["claim"]: v for v in verdicts.verdicts(results.load(tree))}
    # Two seeds (one parametric plot per path): every rule needs five.
    assert [judged[c]["verdict"] for c in range(1, 8)] == [
        "inconclusive (2 seeds; the rule needs 5)", "inconclusive (1-2 seeds; the rule needs 5)",  # a failed solve
        "inconclusive (1 seed; the rule needs 5)"] + ["not run"] * 4
    for claim in (1, 2, 3):  # the scope is said even so
        assert "data other than the paper's (Fashion-MNIST (stand-in for MNIST))" in judged[claim]["scope"]
        assert "F1 only" in judged[claim]["scope"] and "10 epochs" in judged[claim]["reason"]
    assert "1 failed solve(s) left out" in judged[2]["reason"]
    assert "| inconclusive (2 seeds; the rule needs 5) | F1 only; on data other than the paper's" in text
    assert "sign test p = 0.25 (2 seeds; the rule needs 5)" in text
    for heading in ("## Verdicts", "### Rules", "## Table 2", "## Table 3", "## Table 4",
                    "## Figures 3 and 7", "## Provenance"):
        assert heading in text
    # Our numbers and the paper's, side by side (Table 2: paper F1 SB test 98.03 +- 0.07).
    assert "90.10 ± 0.14" in text and "98.03 ± 0.07" in text
    assert "0123456789ab" in text and "test CPU" in text
    # Every relative link resolves; the figures were redrawn from the CSV files and are valid.
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links and all((tree / link).exists() for link in links)
    for stem in tree.glob("F1_fashion_mnist/landscape/seed0_*.csv"):
        assert stem.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
        assert stem.with_suffix(".pdf").read_bytes()[:5] == PDF_MAGIC
    for name in ("table2", "table3", "table4", "figures", "verdicts", "verdict_tests"):
        for suffix in (".csv", ".md", ".tex"):
            assert (tree / "tables" / f"{name}{suffix}").stat().st_size > 0
    assert "\\begin{tabular}" in (tree / "tables" / "table2.tex").read_text()
    # The figure distance: our bowl against the paper's F1 curve, computed by hand.
    figures = storage.read_csv(tree / "tables" / "figures.csv")
    ours = landscape_curve()
    paper = results.read_curve(compare.published_figures("F1", "linear")["paper Figure 3"])
    expected = np.mean(np.abs(ours["test_acc_pct"] - paper["test_acc_pct"]))
    assert float(figures[0]["mad_test_acc_pct"]) == pytest.approx(expected)
    assert float(figures[0]["rise_ratio"]) == pytest.approx(100.0)
    # Rebuilding from the same files gives the same report.
    assert report.build(tree).read_text() == text


def test_report_without_optional_results(tmp_path):
    root = tmp_path / "results"
    write_run(root, "sb", 0, 99.0, 90.0)
    write_run(root, "lb", 0, 99.0, 89.0)
    text = report.build(root).read_text()
    assert "## Table 3" not in text and "## Figures 3 and 7" not in text
    judged = {v["claim"]: v["verdict"] for v in verdicts.verdicts(results.load(root))}
    assert judged == {1: "inconclusive (1 seed; the rule needs 5)", 2: "not run", 3: "not run", 4: "not run",
                      5: "not run", 6: "not run", 7: "not run"}


def test_report_prints_each_verdicts_tests(tmp_path):
    """Five paired seeds: claims 1 and 2 are judged, and the report gives per verdict the test, n,
    the effect with its interval, the margin, p and both sides' training loss."""
    root = tmp_path / "results"
    phis = {("full", 1e-3): 2.0, ("full", 5e-4): 1.0, ("random", 1e-3): 0.5, ("random", 5e-4): 0.2}
    for seed in range(5):
        write_run(root, "sb", seed, 99.5, 90.0 + seed / 10, phis)
        write_run(root, "lb", seed, 99.0, 88.0 + seed / 5, {k: 30 * v for k, v in phis.items()})
    text = report.build(root).read_text()
    judged = {v["claim"]: v["verdict"] for v in verdicts.verdicts(results.load(root))}
    assert judged[1] == judged[2] == "reproduced"
    assert ("test accuracy SB - LB: 5 of 5 seeds agree, sign test p = 0.0312; mean +1.80 points (95% t interval "
            "+1.60 to +2.00; seeds +1.60 to +2.00); margin > +0.07 points: holds") in text
    assert "sharpness LB / SB: 5 of 5 seeds agree, sign test p = 0.0312; geometric mean 30x" in text
    assert "losses matched within 1.5x: SB f = 0.1, LB f = 0.1 (f on the sharpness examples)" in text
    tests = storage.read_csv(root / "tables" / "verdict_tests.csv")
    assert len(tests) == 1 + 4 and {t["result"] for t in tests} == {"holds"}
    assert float(tests[0]["p"]) == pytest.approx(1 / 32) and tests[0]["n"] == "5"


def test_latex_escapes_and_converts_the_markdown_table():
    markdown = report.markdown_table([{"a": "50% a_b & c", "b": 1.23456}]) + "\nnote: x ± y\n"
    latex = report.markdown_to_latex(markdown, "caption")
    assert "50\\% a\\_b \\& c & 1.23 \\\\" in latex
    assert "\\caption{caption. note: x $\\pm$ y}" in latex


def test_report_cli(tree, tmp_path):
    result = cli("report", tree, check=True)
    assert result.stdout.strip() == str(tree / "REPORT.md")
    result = cli("report", tmp_path / "nowhere")
    assert result.returncode == 2 and "error:" in result.stderr and "nowhere" in result.stderr


# One view of a results folder: read once, and never two protocols averaged ---------------------------
def edit_json(path, update):
    """Rewrite the JSON file at `path` with `update(record)` applied."""
    record = storage.read_json(path)
    update(record)
    storage.atomic_write_json(path, record)


def run_dir(root, regime, seed):
    return root / "F1_fashion_mnist" / regime / f"seed{seed}"


@pytest.mark.parametrize("regime, seed, key, ours, theirs", [
    ("sb", 1, "epochs", "100", "5"),                    # one seed trained for other epochs
    ("lb", 0, "learning_rate", "0.001", "0.01"),        # an SB/LB pair made with different --set values
    ("lb", 1, "backend", "'tensorflow'", "'jax'"),      # one run on the other backend
])
def test_runs_of_another_protocol_are_refused(tree, capsys, regime, seed, key, ours, theirs):
    from replication import __main__ as entry

    changed = run_dir(tree, regime, seed)
    if key == "backend":
        edit_json(changed / "env.json", lambda env: env.update(backend="jax"))
    else:
        edit_json(changed / "metrics.json", lambda m: m["resolved_config"].update({key: json.loads(theirs)}))
    # The first run (lb/seed0) is the reference; when it is the changed one, the next run differs from it.
    other = run_dir(tree, "lb", 1) if changed == run_dir(tree, "lb", 0) else run_dir(tree, "lb", 0)
    if changed == run_dir(tree, "lb", 0):
        ours, theirs = theirs, ours
    for command in ("report", "table2", "table3", "table4"):  # every command that averages runs
        code = entry.main([command, str(tree)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, command
        assert str(changed) in err and str(other) in err
        assert f"'{key}' is {ours} in the first, {theirs} in the second" in err
        assert "delete one set, or put them in separate results_dir" in err
    assert not (tree / "REPORT.md").exists() and not (tree / "tables").exists()


def test_diverged_runs_are_counted_not_averaged(tree):
    # A third SB seed that diverged at 10% accuracy, its sharpness measured anyway.
    phis = {("full", 1e-3): 1e6, ("full", 5e-4): 1e6, ("random", 1e-3): 1e6, ("random", 5e-4): 1e6}
    diverged = write_run(tree, "sb", 2, 10.0, 10.0, phis)
    edit_json(diverged / "metrics.json", lambda m: m.update(diverged=True, diverged_epoch=3))
    loaded = results.load(tree)
    sb = next(r for r in compare.table2(loaded) if r["regime"] == "SB")
    assert (sb["seeds"], sb["diverged"]) == (3, 1)
    assert sb["test_mean"] == pytest.approx((90.0 + 90.2) / 2) and sb["train_mean"] == pytest.approx(99.6)
    for space, phi in (("full", 2.0), ("random", 0.09)):  # the finished seeds' phi at eps 1e-3
        row = next(r for r in compare.table_sharpness(loaded, space) if r["regime"] == "SB")
        key = results.sharpness_column("phi", space, 1e-3)
        assert (row["seeds"], row["diverged"], row[f"{key}_n"]) == (3, 1, 2)
        assert row[f"{key}_mean"] == pytest.approx(phi)
    text = report.build(tree).read_text()
    assert "| F1 | Fashion-MNIST (stand-in for MNIST) | SB | 256 | 3 (1) |" in text


def test_report_reads_each_result_file_once(tree, monkeypatch):
    reads = {}
    read_json, read_csv = storage.read_json, storage.read_csv

    def counted(reader):
        def read(path):
            reads[str(path)] = reads.get(str(path), 0) + 1
            return reader(path)
        return read

    monkeypatch.setattr(storage, "read_json", counted(read_json))
    monkeypatch.setattr(storage, "read_csv", counted(read_csv))
    report.build(tree)
    run_files = [p for name in ("metrics.json", "env.json", "history.csv", "sharpness/*.json")
                 for p in tree.glob(f"F1_fashion_mnist/*/seed*/{name}")]
    assert len(run_files) == 4 * 3 + 4 * 4  # 4 runs, each with 4 sharpness results
    assert {str(p): reads.get(str(p), 0) for p in run_files} == {str(p): 1 for p in run_files}
    curves = list(tree.glob("F1_fashion_mnist/landscape/*.csv"))
    assert curves and all(reads[str(p)] == 1 for p in curves)


def test_measurements_that_do_not_match_are_refused(tree):
    sb1 = run_dir(tree, "sb", 1)
    curve = tree / "F1_fashion_mnist" / "landscape" / "seed0_linear"
    cases = [  # (file, change, what the one-line error must say)
        (sb1 / "sharpness" / "full_eps0.001.json", lambda r: r.update(iterations=5),
         r"full_eps0.001.json and .*sb/seed1/sharpness/full_eps0.001.json were measured with different "
         r"settings \('iterations' is 10 in the first, 5 in the second\)"),
        (sb1 / "sharpness" / "random_eps0.001.json", lambda r: r.update(p=50),
         r"'p' is 100 in the first, 50 in the second"),
        (sb1 / "sharpness" / "full_eps0.001.json", lambda r: r.update(run_seed=0),
         r"sb/seed1/sharpness/full_eps0.001.json is not a measurement of the run it lies in \('seed' is 0 there, "
         r"1 in .*sb/seed1/metrics.json\)"),
        (curve.with_suffix(".json"), lambda m: m.update(x0_sha256="x0-other"),
         r"seed0_linear.csv was computed with x0_sha256 'x0-other', but its SB run .*sb/seed0 has 'x0-0'"),
        (curve.with_suffix(".json"), lambda m: m["settings"].update(batchnorm="moving_average"),
         r"seed0_linear.csv was computed with batchnorm 'moving_average', but its SB run"),
        (curve.with_suffix(".json"), lambda m: m["settings"].update(eval_batch_size=256),
         r"seed0_linear.csv was computed with eval_batch_size 256, but its SB run .* has 5000"),
        (sb1 / "sharpness" / "full_eps0.001.json", lambda r: r.setdefault("settings", {}).update(eval_batch_size=256),
         r"full_eps0.001.json is not a measurement of the run it lies in \('eval_batch_size' is 256 there, 5000"),
    ]
    for path, change, message in cases:
        before = path.read_bytes()
        edit_json(path, change)
        with pytest.raises(results.ResultsError, match=message):
            results.load(tree)
        path.write_bytes(before)
    results.load(tree)  # restored: accepted
    storage.atomic_write_json(sb1 / "noise" / "initial.json", {  # B_simple at x0 of another x0
        "network": "F1", "regime": "sb", "run_seed": 1, "batchnorm": "batch_statistics", "b_simple": 100.0,
        "settings": {"point": "initial", "weights_digest": "x0-0"}})
    with pytest.raises(results.ResultsError, match=r"initial.json is not a measurement .*'x0' is 'x0-0' there"):
        results.load(tree)
    (sb1 / "noise" / "initial.json").unlink()
    shutil.rmtree(run_dir(tree, "lb", 0))  # a curve whose LB run is not in the folder
    with pytest.raises(results.ResultsError, match=r"seed0_curvilinear.csv was computed from runs that are "
                                                   r"not finished in this folder \(.*lb/seed0\): delete"):
        results.load(tree)


def test_sharpness_columns_one_naming_and_order_for_every_table():
    """Every table's sharpness columns come from one place: the paper's headline measure (full space,
    eps 1e-3) first, then the full space, larger epsilons first; a quantity over seeds carries its
    statistic as a suffix (phi_full_eps0.001_mean, _std, ...), which names the same quantity."""
    keys = [results.sharpness_column("phi", space, eps)
            for space, eps in [("random", 5e-4), ("full", 5e-4), ("random", 1e-3), ("full", 1e-3)]]
    rows = [{k: 1.0 for k in keys} | {"phi_full_eps0.001_failed": 0, "phi_full_eps0.0005_std": 0.1, "train_xent": 1.0}]
    assert results.sharpness_columns(rows, "phi") == [
        "phi_full_eps0.001", "phi_full_eps0.0005", "phi_random_eps0.001", "phi_random_eps0.0005"]
    over_seeds = [{"phi_random_eps0.001_mean": 1.0, "phi_full_eps0.0005_n": 2, "paper_phi_full_eps0.001_mean": 3.0,
                   "f_full_eps0.001": 0.1}]
    assert results.sharpness_columns(over_seeds, "phi") == ["phi_full_eps0.0005", "phi_random_eps0.001"]
    assert results.sharpness_setting("phi_random_eps0.0005_ratio_to_paper", "phi") == ("random", "0.0005")
    assert results.f_column("phi_full_eps0.001") == "f_full_eps0.001"
    assert results.sharpness_columns(rows, "sharpness") == []


def test_a_small_sharpness_keeps_three_significant_figures():
    """Metric 2.1 at a flat minimiser is 1e-4 and below: printed with 2 decimals it read 0.00 beside
    the paper's 232 (Table 7, paper-cpu); a sharpness cell keeps 3 significant figures below 0.1,
    its standard deviation at the same decimals, and the 2 decimals elsewhere."""
    assert compare.phi_cell(7.09e-5, math.nan) == "0.0000709"
    assert compare.phi_cell(0.0221, 0.0235) == "0.0221 ± 0.0235"
    assert compare.phi_cell(27.25, 60.92) == compare.cell(27.25, 60.92) == "27.25 ± 60.92"
    assert compare.phi_cell(0.0, 0.0) == "0.00 ± 0.00"
    assert compare.phi_cell(0.5, math.nan, digits=3) == "0.500"
    assert compare.phi_cell(math.nan, math.nan) == "n/a"
    row = {"network": "F1", "data": "MNIST", "regime": "LB", "batch_size": 6000, "seeds": 5, "diverged": 0,
           "settings": "s", "deviations": "none",
           "paper_phi_full_eps0.001_mean": 205.14, "paper_phi_full_eps0.001_std": 69.52,
           "phi_full_eps0.001_mean": 0.000549, "phi_full_eps0.001_std": 0.00003, "phi_full_eps0.001_n": 5,
           "phi_full_eps0.001_at_cap": 5, "phi_full_eps0.001_failed": 0, "phi_full_eps0.001_missing": 0}
    assert "| 0.000549 ± 0.000030 | 205.14 ± 69.52 |" in compare.table_sharpness_markdown([row])


def test_sharpness_tables_count_the_solves_that_ended_at_their_cap(tree):
    """A solve stopped at its iteration limit (status 1) reports a lower bound: Tables 3-4 count them."""
    edit_json(sharpness.result_path(run_dir(tree, "sb", 0), "full", 1e-3),
              lambda r: r.update(solves=[{"status": 1, "message": "STOP: ITERATION LIMIT"}]))
    edit_json(sharpness.result_path(run_dir(tree, "sb", 1), "full", 1e-3),
              lambda r: r.update(solves=[{"status": 2, "message": "ABNORMAL"}]))
    row = next(r for r in compare.table_sharpness(results.load(tree), "full") if r["regime"] == "SB")
    assert (row["phi_full_eps0.001_n"], row["phi_full_eps0.001_at_cap"]) == (2, 1)
    assert "| 2 (1) / 0 / 0 |" in compare.table_sharpness_markdown([row])
