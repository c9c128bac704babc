"""The critical-batch fit and its bootstrap (McCandlish et al. 2018, eq. 2.11; issue 24): relative
residuals on noisy points against an independent optimiser, round-off is no critical batch, the
bootstrap's unresolved resamples bound nothing, and properties that hold for any data (hypothesis)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import optimize

from replication.analysis import batchsize_report as report
from replication.analysis import critical_batch

BATCHES = np.array([16, 32, 64, 128, 256, 512, 1024, 2048], float)
# Multiplicative noise of a few percent, fixed so the test is exact: steps to a target scatter
# in proportion to themselves (the checks are every so many examples).
NOISE = np.array([1.12, 0.9, 1.07, 0.95, 1.1, 0.92, 1.05, 0.94])


def test_the_fit_minimises_relative_residuals_on_noisy_points():
    """The only earlier test fitted exact data, which every weighting fits: here noisy points,
    against scipy's minimiser of the sum of squared relative residuals (S - fit) / S."""
    steps = 300 * (1 + 700 / BATCHES) * NOISE
    fit = critical_batch.fit_critical_batch(BATCHES, steps)
    expected = optimize.least_squares(lambda p: (steps - p[0] - p[1] / BATCHES) / steps, [100.0, 1e5],
                                      xtol=1e-14, ftol=1e-14, gtol=1e-14).x
    assert fit["s_min"] == pytest.approx(expected[0], rel=1e-6)
    assert fit["e_min"] == pytest.approx(expected[1], rel=1e-6)
    assert fit["b_crit"] == pytest.approx(expected[1] / expected[0], rel=1e-6)
    # Absolute residuals (S - fit) weight the small batches' many steps: another answer here, so the
    # assertions above tell the two weightings apart.
    absolute = np.linalg.lstsq(np.stack([np.ones_like(BATCHES), 1 / BATCHES], 1), steps, rcond=None)[0]
    assert abs(absolute[1] / absolute[0] / fit["b_crit"] - 1) > 0.1
    # And the answer is near the truth the noise was put on (B_crit 700, S_min 300).
    assert fit["b_crit"] == pytest.approx(700, rel=0.25) and fit["s_min"] == pytest.approx(300, rel=0.1)


def test_a_flat_pair_and_steps_as_1_over_b_resolve_no_critical_batch():
    """Issue 24, example 1: two batches needing the same steps fitted a slope of 8.6e-15, reported
    as B_crit = 2.14e-15."""
    flat = critical_batch.fit_critical_batch([16, 32], [10, 10])
    assert flat["b_crit"] is None and flat["s_min"] is None and flat["unresolved"] == "below"
    assert "do not fall" in report.unresolved_reason(flat)
    proportional = critical_batch.fit_critical_batch([16, 32], [4, 2])
    assert proportional["b_crit"] is None and proportional["unresolved"] == "above"
    assert "as fast as 1/B" in report.unresolved_reason(proportional)
    # Just above round-off on both terms: a real, if tiny, critical batch.
    tiny = critical_batch.fit_critical_batch([16, 32, 64], 1000 * (1 + 1e-3 / np.array([16, 32, 64])))
    assert tiny["b_crit"] == pytest.approx(1e-3, rel=1e-4)
    with pytest.raises(ValueError, match="positive, finite"):
        critical_batch.fit_critical_batch([16, 32], [10, float("nan")])


def test_unresolved_resamples_bound_nothing():
    """A resample whose fit resolves no B_crit enters no percentile as a number; it is ranked at its
    side, so a bound that falls among such resamples is reported as unbounded there."""
    # Steps flat over the three smallest batches: a resample without batch 800 (about a third) has
    # a round-off slope, B_crit below its smallest batch.
    boot = critical_batch.bootstrap_critical_batch([100, 200, 400, 800], [50, 50, 50, 30], 400)
    assert boot["resolved"] + boot["unresolved_below"] + boot["unresolved_above"] == boot["resamples"]
    assert boot["unresolved_above"] == 0 and 0.2 < boot["unresolved_below"] / boot["resamples"] < 0.45
    assert boot["p2_5"] is None and boot["p16"] is None and boot["unbounded"] == {"p2_5": "below", "p16": "below"}
    assert boot["median"] > 10 and boot["p84"] >= boot["median"]  # resolved values, not round-off (1e-15)
    # Steps exactly as 1/B over the smallest three: those resamples put B_crit beyond their largest.
    boot = critical_batch.bootstrap_critical_batch([100, 200, 400, 800], [80, 40, 20, 15], 400)
    assert boot["unresolved_below"] == 0 and boot["unresolved_above"] / boot["resamples"] > 0.2
    assert boot["p97_5"] is None and boot["p84"] is None and boot["unbounded"] == {"p84": "above", "p97_5": "above"}
    assert boot["p2_5"] is not None and 0 < boot["p2_5"] <= boot["p16"] <= boot["median"]
    # The report says so: the unbounded side in words, and how many resamples resolved.
    words = report._bootstrap_words(boot)
    assert f"{boot['resolved']} of {boot['resamples']} resamples resolved a B_crit" in words
    assert "16-84% " in words and "to no upper bound" in words


def test_percentiles_match_numpy_where_every_resample_resolves():
    batches = np.array([32, 100, 316, 1000, 3162])
    steps = 250 * (1 + 600 / batches) * np.array([1.03, 0.98, 1.02, 0.97, 1.01])
    boot = critical_batch.bootstrap_critical_batch(batches, steps, 300)
    assert boot["resolved"] == boot["resamples"] and boot["unbounded"] == {}
    values = []
    rng = np.random.default_rng(0)
    for _ in range(300):
        pick = rng.integers(0, 5, 5)
        if len(set(pick)) >= 2:
            values.append(critical_batch.fit_critical_batch(batches[pick], steps[pick])["b_crit"])
    np.testing.assert_allclose([boot[k] for k in ("median", "p16", "p84", "p2_5", "p97_5")],
                               np.percentile(values, [50, 16, 84, 2.5, 97.5]), rtol=1e-12)


# Properties ---------------------------------------------------------------------------------------
batch_sets = st.lists(st.integers(1, 100_000), min_size=2, max_size=7, unique=True).map(sorted)
positive = st.floats(1.0, 1e4)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(batch_sets, positive, st.floats(1.0, 1e5))
def test_exact_points_give_back_their_s_min_and_b_crit(batches, s_min, b_crit):
    b = np.array(batches, float)
    fit = critical_batch.fit_critical_batch(b, s_min * (1 + b_crit / b))
    assert fit["unresolved"] is None
    assert fit["s_min"] == pytest.approx(s_min, rel=1e-6) and fit["b_crit"] == pytest.approx(b_crit, rel=1e-6)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(batch_sets, positive, st.floats(1.0, 1e5), st.lists(st.floats(0.7, 1.4), min_size=7, max_size=7),
       st.floats(0.01, 100), st.floats(0.01, 100))
def test_the_fit_scales_with_its_units_and_ignores_order(batches, s_min, b_crit, noise, step_unit, batch_unit):
    b = np.array(batches, float)
    steps = s_min * (1 + b_crit / b) * np.array(noise[:len(b)])
    fit = critical_batch.fit_critical_batch(b, steps)
    scaled = critical_batch.fit_critical_batch(b * batch_unit, steps * step_unit)
    order = np.arange(len(b))[::-1]
    reversed_fit = critical_batch.fit_critical_batch(b[order], steps[order])
    assert scaled["unresolved"] == fit["unresolved"] == reversed_fit["unresolved"]
    if fit["unresolved"] is None:
        assert fit["s_min"] > 0 and 0 < fit["b_crit"] < math.inf
        assert scaled["s_min"] == pytest.approx(fit["s_min"] * step_unit, rel=1e-6)
        assert scaled["b_crit"] == pytest.approx(fit["b_crit"] * batch_unit, rel=1e-6)
        assert reversed_fit["b_crit"] == pytest.approx(fit["b_crit"], rel=1e-9)
    else:
        assert fit["b_crit"] is None and fit["s_min"] is None and fit["e_min"] is None


@settings(max_examples=150, deadline=None, derandomize=True)
@given(batch_sets, positive)
def test_flat_steps_and_steps_as_1_over_b_are_never_a_critical_batch(batches, steps):
    b = np.array(batches, float)
    assert critical_batch.fit_critical_batch(b, np.full_like(b, steps))["unresolved"] == "below"
    assert critical_batch.fit_critical_batch(b, steps * 1000 / b)["unresolved"] == "above"


@settings(max_examples=60, deadline=None, derandomize=True)
@given(batch_sets, st.lists(st.floats(1.0, 1e4), min_size=7, max_size=7), st.integers(0, 2 ** 16))
def test_the_bootstrap_counts_every_resample_and_orders_its_bounds(batches, steps, seed):
    b = np.array(batches, float)
    boot = critical_batch.bootstrap_critical_batch(b, np.array(steps[:len(b)]), 50, seed)
    assert boot["resolved"] + boot["unresolved_below"] + boot["unresolved_above"] == boot["resamples"] <= 50
    order = ["p2_5", "p16", "median", "p84", "p97_5"]
    sides = [boot["unbounded"].get(k) for k in order]
    # Unbounded below is a prefix of the order, unbounded above a suffix; the rest rise.
    assert sides == sorted(sides, key=lambda s: {"below": 0, None: 1, "above": 2}[s])
    values = [boot[k] for k in order if k not in boot["unbounded"]]
    assert all(v is not None and v > 0 for v in values) and values == sorted(values)


def _point(seed: int, batch: int, steps: int | None, multiplier: float = 1.0) -> critical_batch.Point:
    return critical_batch.Point(path=None, network="F1", dataset="d", seed=seed, batch_size=batch, multiplier=multiplier,
                        learning_rate=1e-3, reached=steps is not None, steps=steps, examples=steps and steps * batch, steps_run=steps or 99,
                        seconds_per_step=None, check_every=None, train_seconds=1.0, test_accuracy=0.9,
                        diverged=False, trace=(), targets=((0.1, steps),))


def test_the_seed_bootstrap_draws_each_seed_for_every_batch_at_once():
    """A seed is one x0 and one data order for all its batches: the bootstrap resamples seeds as
    units. Seed 1 takes exactly twice seed 0's steps at every batch, which changes S_min, never
    B_crit, so every resample gives B_crit back; drawing seeds anew per batch (the old code) mixed
    the two seeds' curves and spread B_crit out."""
    s_min, b_crit = 400.0, 1000.0
    points = [_point(seed, int(b), round((1 + seed) * s_min * (1 + b_crit / b)))
              for seed in (0, 1) for b in BATCHES]
    boot = critical_batch.bootstrap_seeds_and_batches(points, 0.1, [0, 1], resamples=200)
    assert boot["p2_5"] == pytest.approx(b_crit, rel=2e-3) and boot["p97_5"] == pytest.approx(b_crit, rel=2e-3)


def test_one_multiplier_is_the_smallest_worst_case_excess_over_every_batch():
    """Issue 25 item 3: the rule the data support. 1x is fastest at two batches but 50% slower at the
    third; 0.5x is never fastest yet at most 10% slower anywhere, so 0.5x is the one rule; 2x never
    met the target at batch 64, so it cannot be a rule."""
    steps = {16: {0.5: 110, 1.0: 100, 2.0: 150}, 64: {0.5: 55, 1.0: 50, 2.0: None}, 256: {0.5: 20, 1.0: 30, 2.0: 40}}
    points = [_point(seed, b, s and s + seed, m) for seed in (0, 1) for b, row in steps.items() for m, s in row.items()]
    one = critical_batch.one_multiplier(points, 0.1, [0, 1])
    assert one["multiplier"] == 0.5 and one["worst_batch"] in (16, 64) and one["batches"] == [16, 64, 256]
    assert one["excess"] == pytest.approx(max(110.5 / 100.5, 55.5 / 50.5) - 1)
    # A rate one seed did not run at some batch is not pooled there, so it cannot be the rule.
    assert critical_batch.one_multiplier([p for p in points if not (p.multiplier == 0.5 and p.seed == 1 and p.batch_size == 64)],
                                 0.1, [0, 1])["multiplier"] == 1.0
