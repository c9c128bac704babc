"""The Hessian tables say when a top eigenvalue is only a lower bound: a Lanczos draw that did not
converge gives a Ritz value below lambda_max, so its cell, its LB/SB ratio, its draws to separate,
its order-survives verdict and the report's sentence on convergence all say so (issue 24, example 7)."""

import pytest

from replication import storage
from replication.analysis import hessian_tables, report, results


def _draw(value, converged):
    return {"eigenvalue": value, "converged": converged, "residual": 0.01 if converged else 5.0, "products": 9,
            "lowest_ritz_value": -1.0, "seconds": 1.0, "seed": 0, "draw": 0, "invariant_subspace": False}


def write_eigenvalue(run_dir, regime, values, converged, reparam_converged=True):
    """top_eigenvalue.json with one draw per value, and a batchnorm reparametrisation record whose
    before/after draws converged as `reparam_converged` says."""
    base = {"network": "F1", "regime": regime, "run_seed": 0, "num_examples": 100, "wall_seconds": 1.0,
            "settings": {"epsilon": 1e-3}}
    draws = [_draw(v, c) for v, c in zip(values, converged)]
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    storage.atomic_write_json(run_dir / "hessian/top_eigenvalue.json", {
        **base, "per_draw": draws, "spread": {"mean": mean, "std": std, "draws": len(values)}})
    storage.atomic_write_json(run_dir / "hessian/reparametrization_batchnorm_a10.json", {
        **base, "kind": "batchnorm", "factor": 10.0,
        "before": {"top_eigenvalue": draws[0], **OTHERS},
        "after": {"top_eigenvalue": _draw(values[0] / 10, reparam_converged), **OTHERS}})


OTHERS = {"phi_full": {"phi": 30.0}, "trace": {"trace": 100.0}, "filter_rise": {"rise": 0.1}}


@pytest.fixture
def pair(tmp_path):
    from test_report import write_run

    root = tmp_path / "results"
    return root, write_run(root, "sb", 0, 99.0, 90.0), write_run(root, "lb", 0, 99.0, 89.0)


def eigen_row(root):
    rows = hessian_tables.rows(results.load(root))
    return next(r for r in rows if r["measure"] == "top eigenvalue of H"), rows


def test_converged_eigenvalues_are_estimates_and_the_report_says_they_converged(pair):
    root, sb, lb = pair
    write_eigenvalue(sb, "sb", [3.0, 3.1, 2.9], [True] * 3)
    write_eigenvalue(lb, "lb", [26.0, 26.2, 25.8], [True] * 3)
    row, rows = eigen_row(root)
    assert row["sb"] == "3 ± 0.1 (n = 3)" and row["ratio"] == pytest.approx(26 / 3) and row["lb_sharper"]
    assert (row["sb_lanczos_converged"], row["lb_lanczos_converged"]) == ("3 of 3", "3 of 3")
    assert row["survives_batchnorm"].startswith("no: transformed LB 2.6 vs SB 3")  # judged: all converged
    assert "Lanczos converged (residual of the top Ritz pair <= tol |theta|) in every draw" in \
        hessian_tables.separation_summary(rows)


def test_an_unconverged_eigenvalue_is_a_lower_bound_in_the_table_and_the_report(pair):
    # 0 of 2 LB draws converged (the example): before, LB's value was printed as lambda_max,
    # its LB/SB ratio as a measured one, and convergence appeared nowhere.
    root, sb, lb = pair
    write_eigenvalue(sb, "sb", [3.0, 3.1, 2.9], [True] * 3)
    write_eigenvalue(lb, "lb", [1.0, 1.0], [False, False], reparam_converged=False)
    row, rows = eigen_row(root)
    assert row["lb"] == ">= 1 ± 0 (lower bound: Lanczos converged in 0 of 2 draws)"
    assert row["sb"] == "3 ± 0.1 (n = 3)" and row["lb_lower_bound"] and not row["sb_lower_bound"]
    # LB >= 1 while SB = 3: LB/SB >= 0.33 orders nothing; the draws to separate are not computed.
    assert row["ratio"] == ">= 0.33" and row["lb_sharper"] is None
    assert row["draws_to_separate"] == "n/a (lower bound)"
    assert row["survives_batchnorm"] == "not judged: a lower bound (Lanczos did not converge)"
    summary = hessian_tables.separation_summary(rows)
    assert "Lanczos did not converge in every draw of F1 seed 0 LB (0 of 2 draws converged)" in summary
    assert "lower bounds on lambda_max (marked >=)" in summary
    section = report.build(root).read_text().split("## Do SB and LB minimisers differ")[1].split("\n## ")[0]
    assert ">= 1 ± 0 (lower bound: Lanczos converged in 0 of 2 draws)" in section and "| >= 0.33 |" in section
    assert "lower bounds on lambda_max" in section
    assert "lower bound" in (root / "tables" / "hessian.md").read_text()


@pytest.mark.parametrize("sb_converged, lb_converged, ratio, sharper", [
    ([False, True], [True, True], "<= 8.67", None),    # SB >= 3, LB = 26: SB's true value may exceed 26
    ([True, True], [False, True], ">= 8.67", True),    # LB >= 26 > SB = 3: LB is sharper for sure
    ([False, True], [False, True], "n/a (both lower bounds)", None),
])
def test_a_ratio_with_a_bound_is_a_bound(pair, sb_converged, lb_converged, ratio, sharper):
    root, sb, lb = pair
    write_eigenvalue(sb, "sb", [3.0, 3.0], sb_converged)
    write_eigenvalue(lb, "lb", [26.0, 26.0], lb_converged)
    row, _ = eigen_row(root)
    assert row["ratio"] == ratio
    assert row["lb_sharper"] is sharper


def _filter(run_dir, regime, f_x):
    storage.atomic_write_json(run_dir / "hessian/filter_landscape.json", {
        "network": "F1", "regime": regime, "run_seed": 0, "num_examples": 100, "wall_seconds": 1.0,
        "settings": {}, "f_x": f_x, "step": 0.5, "spread": {"mean": 0.1, "std": 0.01, "draws": 3}})


@pytest.mark.parametrize("lb_f, words", [(0.0015, "LB/SB 0.75, matched"), (3e-5, "LB/SB 0.015, not matched")])
def test_the_section_states_both_training_losses_and_whether_they_match(pair, lb_f, words):
    # Standards: every sharpness verdict states the training loss of both sides and whether they were
    # matched; the Hessian section compares final points, which need not be at equal f.
    root, sb, lb = pair
    write_eigenvalue(sb, "sb", [3.0, 3.1, 2.9], [True] * 3)
    write_eigenvalue(lb, "lb", [26.0, 26.2, 25.8], [True] * 3)
    _filter(sb, "sb", 0.002)
    _filter(lb, "lb", lb_f)
    loaded = results.load(root)
    text = hessian_tables.training_loss_summary(hessian_tables.rows(loaded))
    assert f"F1 seed 0 at f = 0.002 (SB) and {lb_f:.3g} (LB), {words}" in text
    assert ("different stages of training" in text) == ("not matched" in words)
    assert "Each minimiser is its run's final weights" in report._hessian_section(loaded)


def test_the_readme_clause_says_final_points_with_or_without_reparametrisations(pair):
    # Both branches compare the runs' final weights (not matched in f), so both say so; before, only the
    # pair without reparametrisations did.
    from replication.analysis import readme

    root, sb, lb = pair
    write_eigenvalue(sb, "sb", [3.0, 3.1, 2.9], [True] * 3)
    write_eigenvalue(lb, "lb", [26.0, 26.2, 25.8], [True] * 3)
    clause = readme._hessian_clause(results.load(root))
    assert clause.startswith("F1 seed 0 (final points), LB/SB: top eigenvalue of H 8.67")
    assert "order survives both reparametrisations" in clause


def _full_space(run_dir, regime, before, after, status):
    """The run's own full-space Metric 2.1 (eps 1e-3) with its solve's status, and a batchnorm
    reparametrisation record whose phi before (as the Hessian command wrote it, with no status) and
    after are given; `status` 1: both solves stopped at their iteration cap, 0: converged."""
    path = run_dir / "sharpness" / "full_eps0.001.json"
    digest = f"weights of {regime}"
    record = {**storage.read_json(path), "phi": before, "solves": [{"status": status}],
              "settings": {"weights_digest": digest, "iterations": 10, "subset": 100, "restarts": 1}}
    storage.atomic_write_json(path, record)
    base = {"network": "F1", "regime": regime, "run_seed": 0, "num_examples": 100, "wall_seconds": 1.0,
            "settings": {"epsilon": 1e-3, "weights_digest": digest, "sharpness_iterations": 10, "subset": 100}}
    storage.atomic_write_json(run_dir / "hessian/reparametrization_batchnorm_a10.json", {
        **base, "kind": "batchnorm", "factor": 10.0,
        "before": {**OTHERS, "top_eigenvalue": _draw(3.0, True), "phi_full": {"phi": before}},
        "after": {**OTHERS, "top_eigenvalue": _draw(3.0, True), "phi_full": {"phi": after, "solves": [{"status": status}]}}})


@pytest.mark.parametrize("status, verdict", [
    (1, "not established (4 of 4 solves at their iteration cap; a capped phi is a lower bound): "
        "transformed LB 20 vs SB 30"),
    (0, "no: transformed LB 20 vs SB 30")])
def test_a_full_space_order_flipped_between_capped_solves_is_not_established(tmp_path, status, verdict):
    # Each phi is the best f its solve reached: stopped at the iteration cap it is a lower bound on the
    # maximum, so LB's transformed 20 below SB's 30 reverses nothing that is known. Before, the table
    # said "no" and the cap "not recorded", though the runs' own solves at those weights record it.
    from test_report import write_run

    root = tmp_path / "results"
    sb = write_run(root, "sb", 0, 99.0, 90.0, phis={("full", 1e-3): 30.0})
    lb = write_run(root, "lb", 0, 99.0, 89.0, phis={("full", 1e-3): 300.0})
    _full_space(sb, "sb", 30.0, 30.0, status)
    _full_space(lb, "lb", 300.0, 20.0, status)
    rows = hessian_tables.rows(results.load(root))
    row = next(r for r in rows if r["measure"].startswith("Metric 2.1, full space"))
    capped = "SB 1 of 1, LB 1 of 1 (lower bounds)" if status else "SB 0 of 1, LB 0 of 1"
    assert row["measure"] == f"Metric 2.1, full space (eps 0.001; at the iteration cap: {capped})"
    assert row["survives_batchnorm"] == verdict
    # The run's own solve stands in only where it is the same solve: other weights, and it does not.
    record = storage.read_json(lb / "sharpness" / "full_eps0.001.json")
    storage.atomic_write_json(lb / "sharpness" / "full_eps0.001.json",
                              {**record, "settings": {**record["settings"], "weights_digest": "other weights"}})
    row = next(r for r in hessian_tables.rows(results.load(root)) if r["measure"].startswith("Metric 2.1, full"))
    assert row["measure"] == (f"Metric 2.1, full space (eps 0.001; at the iteration cap: SB {1 if status else 0} of 1, "
                              "LB not recorded (lower bounds))")


def _solve(phi, status):
    return {"phi": phi, "solves": [{"status": status}]} if status is not None else {"phi": phi}


@pytest.mark.parametrize("solves, verdict", [
    # SB's 30 only a lower bound: LB's 300 above it is not known, so no order is judged.
    ((30, 1, 300, 0, 30, 0, 20, 0), "not established (1 of 4 solves at their iteration cap; a capped phi is a "
                                    "lower bound): transformed LB 20 vs SB 30"),
    # LB's values are lower bounds above SB's exact ones: the order holds whatever LB's maxima are.
    ((30, 0, 300, 1, 30, 0, 200, 1), "yes"),
    # LB's transformed 20 is a lower bound: below SB's 30 proves nothing.
    ((30, 0, 300, 1, 30, 0, 20, 1), "not established (2 of 4 solves at their iteration cap; a capped phi is a "
                                    "lower bound): transformed LB 20 vs SB 30"),
    # A converged 20 below an exact 30 is a reversal, whatever the other pair's caps.
    ((30, 0, 300, 1, 30, None, 20, 0), "no: transformed LB 20 vs SB 30")])
def test_an_order_between_lower_bounds_counts_only_where_it_is_established(solves, verdict):
    sb_before, lb_before, sb_after, lb_after = (_solve(*solves[i:i + 2]) for i in range(0, 8, 2))
    assert hessian_tables._survives_capped(sb_before, lb_before, sb_after, lb_after) == verdict
