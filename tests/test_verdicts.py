"""The verdict rules on hand-made paired seeds: the sign test and its margin (paired.py), each
claim's branches (pass, partial, fail, inconclusive, not run), the training losses stated beside
every sharpness comparison, and the generated sentences that depend on the numbers' sign."""

import math

import numpy as np
import pytest
from scipy import stats

from replication.analysis import iterate_tables, paired, remedy_tables, report, sweep, verdicts, warmstart

DATA = "Fashion-MNIST (stand-in for MNIST)"


# The test and its margin ----------------------------------------------------------------------------
def test_sign_test_is_exact_and_ties_count_against():
    assert paired.sign_p([1.0] * 5) == pytest.approx(1 / 32)
    assert paired.sign_p([1.0, 1.0, 1.0, 1.0, -1.0]) == pytest.approx(6 / 32)
    assert paired.sign_p([1.0, 1.0, 1.0, 1.0, 0.0]) == pytest.approx(6 / 32)  # a tie is no agreement
    assert paired.sign_p([1.0] * 4) == pytest.approx(1 / 16)  # four seeds can never reach 0.05
    assert paired.sign_p([2.0] * 7 + [-1.0]) == pytest.approx(9 / 256)
    assert math.isnan(paired.sign_p([]))


def test_paired_test_needs_five_seeds_the_sign_and_the_margin():
    values = [1.0, 1.2, 0.8, 1.1, 0.9]
    held = paired.paired(values, 0.5, "gap")
    assert held["result"] == "holds" and held["n"] == 5 and held["agree"] == 5 and held["p"] == pytest.approx(1 / 32)
    low, high = stats.t.interval(0.95, 4, loc=np.mean(values), scale=stats.sem(values))
    assert (held["low"], held["high"]) == (pytest.approx(low), pytest.approx(high))
    assert (held["min"], held["max"]) == (0.8, 1.2)
    assert paired.paired(values, 1.0, "gap")["result"] == "does not hold"       # effect not beyond the margin
    assert paired.paired([*values[:4], -0.1], 0.5, "gap")["result"] == "does not hold"  # p = 6/32
    assert paired.paired(values[:4], 0.5, "gap")["result"] == "inconclusive"
    assert paired.paired([math.nan] * 5, 0.5, "gap")["result"] == "not computed"
    # The claim may predict a fall: the same numbers, negated, hold with direction -1.
    assert paired.paired([-v for v in values], 0.5, "fall", direction=-1)["result"] == "holds"
    assert paired.paired(values, 0.5, "fall", direction=-1)["result"] == "does not hold"


def test_ratios_are_tested_on_logs_and_reported_as_ratios():
    ratios = [3.0, 4.0, 2.5, 5.0, 3.5]
    test = paired.paired([math.log(r) for r in ratios], 2.0, "LB / SB", "ratio")
    assert test["result"] == "holds"
    assert test["effect"] == pytest.approx(math.exp(np.mean(np.log(ratios))))
    assert (test["min"], test["max"]) == (pytest.approx(2.5), pytest.approx(5.0))
    assert paired.paired([math.log(r) for r in ratios], 4.0, "LB / SB", "ratio")["result"] == "does not hold"
    flatter = paired.paired([-math.log(r) for r in ratios], 2.0, "k / 0", "ratio", direction=-1)
    assert flatter["result"] == "holds" and paired.margin_text(flatter) == "< 0.5x"
    assert paired.log_ratio(2.0, 0.0) == math.inf and paired.log_ratio(0.0, 1.0) == -math.inf
    assert paired.log_ratio(-1.0, -1.0) == -math.inf  # the LB end does not rise at all
    assert math.isnan(paired.log_ratio(math.nan, 1.0))
    mixed = paired.paired([math.inf, -math.inf, 1.0, 1.0, 1.0], 2.0, "r", "ratio")
    assert math.isnan(mixed["effect"]) and mixed["result"] == "does not hold"


def test_describe_says_test_n_effect_interval_margin_and_p():
    text = paired.describe(paired.paired([1.0, 1.2, 0.8, 1.1, 0.9], 0.42, "test accuracy SB - LB"))
    assert text.startswith("test accuracy SB - LB: 5 of 5 seeds agree, sign test p = 0.0312; mean +1.00 points "
                           "(95% t interval +0.80 to +1.20; seeds +0.80 to +1.20); margin > +0.42 points: holds")
    two = paired.describe(paired.paired([1.0, 2.0], 0.42, "gap"))
    assert "sign test p = 0.25 (2 seeds; the rule needs 5)" in two and two.endswith(": inconclusive")
    assert "one seed: +1.74 points" in paired.describe(paired.paired([1.74], 0.07, "gap"))
    assert paired.inconclusive([2, 2]) == "inconclusive (2 seeds; the rule needs 5)"
    assert paired.inconclusive([1, 2]) == "inconclusive (1-2 seeds; the rule needs 5)"
    assert paired.inconclusive([1]) == "inconclusive (1 seed; the rule needs 5)"


def test_levels_of_a_unit():
    holds, fails = (paired.paired(v, 0.1, "x") for v in ([1.0] * 5, [-1.0] * 5))
    few, none = paired.paired([1.0] * 3, 0.1, "x"), paired.not_computed("x", 0.1)
    assert paired.level([holds, holds]) == "pass" and paired.level([fails, fails]) == "fail"
    assert paired.level([holds, fails]) == "partial"
    assert paired.level([holds, none]) == "partial"   # a half not computed does not hold
    assert paired.level([holds, few]) == "inconclusive"
    assert paired.level([none, none]) is None


def test_losses_are_matched_within_a_factor_or_named():
    assert paired.losses([0.10, 0.12], [0.11, 0.13]).startswith("losses matched within 1.5x: SB f = 0.11, LB f = 0.12")
    text = paired.losses([0.0937], [0.397])
    assert text == ("not matched: SB f = 0.0937, LB f = 0.397 (f on the sharpness examples; 4.24x apart, "
                    "more than 1.5x)")
    assert paired.losses([math.nan], [0.1]) == "training loss not recorded"
    assert paired.loss(0.2, 0.3) == (0.2, "f on the sharpness examples")
    assert paired.loss(None, 0.3) == (0.3, "final training loss")


def test_the_accuracy_margin_is_the_papers_larger_seed_std():
    assert paired.accuracy_margin("C1") == 0.42 and paired.accuracy_margin("F1") == 0.07
    assert math.isnan(paired.accuracy_margin("X9"))


# Claim 1 -------------------------------------------------------------------------------------------
def run(network, regime, seed, train, test, diverged=False):
    return {"network": network, "dataset": "fashion_mnist", "dataset_label": DATA, "regime": regime, "seed": seed,
            "train_accuracy": train, "test_accuracy": test, "train_loss": 0.1, "diverged": diverged,
            "deviations": ["5 epochs"]}


def pairs(gaps, sb_train=99.5, lb_train=99.0, network="F1"):
    return [r for s, gap in enumerate(gaps) for r in (run(network, "sb", s, sb_train, 90.0 + gap),
                                                      run(network, "lb", s, lb_train, 90.0))]


@pytest.mark.parametrize("gaps, sb_train, lb_train, verdict", [
    ([1.0, 1.5, 0.8, 1.2, 1.1], 99.5, 99.0, "reproduced"),
    ([1.0, 1.5, 0.8, 1.2, -0.1], 99.5, 99.0, "not reproduced"),  # one seed disagrees: p = 6/32
    ([0.05, 0.06, 0.05, 0.04, 0.06], 99.5, 99.0, "not reproduced"),  # under the 0.07-point margin
    ([1.0, 1.5, 0.8, 1.2, 1.1], 99.5, 95.0, "partly reproduced"),  # LB did not fit the training set
    # SB trained 9 points less than LB: not "the same training accuracy" either (|SB - LB|)
    ([1.0, 1.5, 0.8, 1.2, 1.1], 90.0, 99.0, "partly reproduced"),
    ([1.0, 1.5, 0.8, 1.2], 99.5, 99.0, "inconclusive (4 seeds; the rule needs 5)"),
    ([1.74], 99.5, 99.0, "inconclusive (1 seed; the rule needs 5)"),
])
def test_claim1_rule(gaps, sb_train, lb_train, verdict):
    result = verdicts.claim1(pairs(gaps, sb_train, lb_train))
    assert result["verdict"] == verdict, result["reason"]
    assert len(result["tests"]) == 1 and result["tests"][0]["n"] == len(gaps)


def test_claim1_uses_the_absolute_training_difference():
    """A mutation dropping abs() would call SB 9 points below LB 'the same training accuracy'."""
    result = verdicts.claim1(pairs([1.0, 1.5, 0.8, 1.2, 1.1], sb_train=90.0, lb_train=99.0))
    assert result["verdict"] == "partly reproduced"
    assert "training accuracy SB - LB -9.00 points (more than 3: not the same training accuracy)" in result["reason"]


def test_claim1_pairs_by_seed_and_leaves_out_the_unpaired_and_diverged():
    runs = pairs([1.0, 1.5, 0.8, 1.2, 1.1]) + [run("F1", "sb", 7, 99.0, 99.0)]
    runs[1] = {**runs[1], "diverged": True}  # LB seed 0
    result = verdicts.claim1(runs)
    assert result["verdict"] == "inconclusive (4 seeds; the rule needs 5)"
    # SB seed 7 has no LB; LB seed 0 diverged, which leaves its SB partner out too
    assert "3 run(s) left out (diverged, or no finished run of the other regime with its seed)" in result["reason"]
    assert verdicts.claim1([run("F1", "sb", 0, 99.0, 90.0)])["verdict"] == "not run"
    assert verdicts.claim1([])["verdict"] == "not run"


def test_inconclusive_units_stay_out_of_a_judged_verdict_and_its_scope():
    runs = pairs([1.0, 1.5, 0.8, 1.2, 1.1]) + pairs([2.0, 2.5], network="C1")
    result = verdicts.claim1(runs)
    assert result["verdict"] == "reproduced" and result["scope"].startswith("F1 only")
    assert "C1 (Fashion-MNIST (stand-in for MNIST)): test accuracy SB - LB: 2 of 2 seeds agree" in result["reason"]
    assert "-> inconclusive" in result["reason"]


# Claims 2 and 3 ---------------------------------------------------------------------------------------
def sharp(regime, space, epsilon, phi, seed, failed=False, f_x=0.1):
    return {"network": "F1", "dataset": "fashion_mnist", "dataset_label": DATA, "regime": regime, "seed": seed,
            "space": space, "epsilon": epsilon, "phi": phi, "failed": failed, "deviations": [],
            "record": {"f_x": f_x}, "train_loss": 0.5}


def sharpness_results(ratio=10.0, seeds=5, spaces=("full", "random"), lb_f=0.1):
    return [sharp(g, space, eps, (ratio if g == "lb" else 1.0) * (1 + s / 10), s, f_x=lb_f if g == "lb" else 0.1)
            for g in ("sb", "lb") for space in spaces for eps in (1e-3, 5e-4) for s in range(seeds)]


def test_claim2_rule():
    assert verdicts.claim2(sharpness_results())["verdict"] == "reproduced"
    assert verdicts.claim2(sharpness_results(ratio=1.5))["verdict"] == "not reproduced"  # under 2x
    assert verdicts.claim2(sharpness_results(ratio=0.1))["verdict"] == "not reproduced"
    full_only = verdicts.claim2(sharpness_results(spaces=("full",)))
    assert full_only["verdict"] == "partly reproduced" and "not computed: random space" in full_only["reason"]
    assert verdicts.claim2(sharpness_results(seeds=2))["verdict"] == "inconclusive (2 seeds; the rule needs 5)"
    # A failed solve is left out (never a sharpness of 0) and counted: four pairs are left.
    failed = sharpness_results() + [sharp("lb", "full", 1e-3, None, 0, failed=True)]
    failed = [r for r in failed if not (r["regime"] == "lb" and r["seed"] == 0 and r["space"] == "full"
                                        and r["epsilon"] == 1e-3 and r["phi"] is not None)]
    result = verdicts.claim2(failed)
    assert result["verdict"] == "reproduced"
    assert "full eps 0.001: sharpness LB / SB: 4 of 4 seeds agree" in result["reason"]
    assert "1 failed solve(s) left out -> inconclusive" in result["reason"]
    assert verdicts.claim2([])["verdict"] == "not run"


def test_sharpness_verdicts_state_both_losses():
    matched = verdicts.claim2(sharpness_results())["reason"]
    assert "losses matched within 1.5x: SB f = 0.1, LB f = 0.1 (f on the sharpness examples)" in matched
    unmatched = verdicts.claim2(sharpness_results(lb_f=0.4))["reason"]
    assert "not matched: SB f = 0.1, LB f = 0.4 (f on the sharpness examples; 4x apart, more than 1.5x)" in unmatched
    # Without a recorded f, the runs' final training loss stands in, and says so.
    no_f = [{**r, "record": {}} for r in sharpness_results()]
    assert "SB f = 0.5, LB f = 0.5 (final training loss)" in verdicts.claim2(no_f)["reason"]


def curve(seed, path, rise_sb, rise_lb):
    return {"network": "F1", "dataset": "fashion_mnist", "data": DATA, "seed": seed, "path": path,
            "rise_sb": rise_sb, "rise_lb": rise_lb, "paper_rise_ratio": 2000.0, "deviations": "none",
            "f_sb": 0.1, "f_lb": 0.3}


def curves(rise_lb, seeds=5, paths=("linear", "curvilinear")):
    return [curve(s, p, 0.001 * (1 + s / 10), rise_lb * (1 + s / 10)) for p in paths for s in range(seeds)]


def test_claim3_rule():
    assert verdicts.claim3(curves(0.1))["verdict"] == "reproduced"              # 100x
    assert verdicts.claim3(curves(0.005))["verdict"] == "not reproduced"        # steeper, but 5x < 10x
    assert verdicts.claim3(curves(0.0))["verdict"] == "not reproduced"          # the LB end does not rise
    assert verdicts.claim3(curves(0.1, paths=("linear",)))["verdict"] == "partly reproduced"
    assert verdicts.claim3(curves(0.1, seeds=1))["verdict"] == "inconclusive (1 seed; the rule needs 5)"
    assert verdicts.claim3([])["verdict"] == "not run"
    result = verdicts.claim3(curves(0.1))
    assert result["scope"].startswith("F1 only") and "(the paper's curve: 2e+03)" in result["reason"]
    assert "not matched: SB f = 0.1, LB f = 0.3 (train cross-entropy at alpha 0 and 1 of the plot" in result["reason"]
    # A flat or concave SB end with a rising LB end counts for the claim (an infinite ratio).
    concave = [{**r, "rise_sb": -0.001} for r in curves(0.1)]
    assert verdicts.claim3(concave)["verdict"] == "reproduced"


# Claim 4 -------------------------------------------------------------------------------------------
def point(seed, batch, test, phi, train=99.0):
    return {"network": "F1", "dataset": "fashion_mnist", "data": DATA, "lr_scaling": "none", "batch_size": batch,
            "seed": seed, "diverged": False, "test": test, "train": train, "train_loss": 0.1,
            "phi_full_eps0.001": phi, "f_full_eps0.001": 0.1 if batch < 1000 else 0.3, "deviations": []}


def sweep_rows(fall=2.0, rise=10.0, seeds=5, train_fall=0.0, batches=(64, 256, 6000)):
    rows = []
    for s in range(seeds):
        for i, b in enumerate(batches):
            share = i / (len(batches) - 1)
            rows.append(point(s, b, 90.0 - fall * share + s / 10, 10.0 * rise ** share * (1 + s / 20),
                              99.0 - train_fall * share))
    return rows


def test_claim4_rule():
    result = verdicts.claim4(sweep_rows())
    assert result["verdict"] == "reproduced", result["reason"]
    assert "test accuracy at batch 64 minus at 6000: 5 of 5 seeds agree" in result["reason"]
    assert "full-space sharpness, eps 0.001 at batch 6000 / at 64: 5 of 5 seeds agree" in result["reason"]
    assert "not matched: batch 64 f = 0.1, batch 6000 f = 0.3" in result["reason"]
    assert "largest test-accuracy drop 1.00 points between batch 64 and 256" in result["reason"]
    assert verdicts.claim4(sweep_rows(fall=-2.0))["verdict"] == "partly reproduced"      # accuracy rises
    assert verdicts.claim4(sweep_rows(fall=-2.0, rise=0.5))["verdict"] == "not reproduced"
    under = verdicts.claim4(sweep_rows(train_fall=5.0))
    assert under["verdict"] == "partly reproduced" and "not only a generalization gap" in under["reason"]
    unmeasured = [{**r, "phi_full_eps0.001": math.nan} for r in sweep_rows()]
    result = verdicts.claim4(unmeasured)
    assert result["verdict"] == "partly reproduced" and "sharpness not computed" in result["reason"]
    assert verdicts.claim4(sweep_rows(seeds=2))["verdict"] == "inconclusive (2 seeds; the rule needs 5)"
    few = verdicts.claim4(sweep_rows(batches=(64, 6000)))
    assert few["verdict"] == "not run" and "2 batch sizes with results, at least 3" in few["reason"]


def test_the_largest_drop_sentence_follows_its_sign():
    assert sweep.drop_text((256, 6000, 1.0)) == "largest test-accuracy drop 1.00 points between batch 256 and 6000"
    assert sweep.drop_text((256, 6000, -0.3)) == ("mean test accuracy does not fall between any two consecutive "
                                                  "batch sizes")
    assert sweep.drop_text(None) == "fewer than two batch sizes with a test accuracy"
    rising = [{"batch_size": b, "test_mean": 90.0 + b / 1000} for b in (64, 256, 6000)]
    assert sweep.largest_drop(rising)[2] < 0  # no fall: the sentence must not call it a drop


def test_the_noise_scale_sentence_follows_the_numbers():
    assert report.growth_text(100.0, [300.0, 500.0]) == "larger at every minimiser (300-500): it grew during training"
    assert report.growth_text(1000.0, [300.0, 500.0]) == ("smaller at every minimiser (300-500): it did not grow "
                                                          "during training")
    assert report.growth_text(400.0, [300.0, 500.0, math.nan]) == (
        "larger at 1 of 2 minimisers (300-500): it did not grow at every batch size")
    assert report.growth_text(400.0, [math.nan]) == "not measured at the minimisers"


# Claims 5-7 -----------------------------------------------------------------------------------------
def piggyback(seed, k, test, phi):
    return {"network": "F1", "dataset": "fashion_mnist", "data": DATA, "seed": seed, "sb_epochs": k,
            "sb_test_accuracy": math.nan, "piggyback_test_accuracy": test, "piggyback_train_accuracy": 99.0,
            "piggyback_train_loss": 0.2, "lb_epochs": 5, "diverged": 0, "phi_full_eps0.001": phi,
            "phi_full_eps0.001_failed": 0, "f_full_eps0.001": 0.1, "deviations": "none", "run": f"r{k}/{seed}"}


def warm(gain=3.0, ratio=0.1, seeds=5):
    return [piggyback(s, k, 85.0 + gain * k / 10 + s / 10, 50.0 * ratio ** (k / 10) * (1 + s / 20))
            for s in range(seeds) for k in (0, 2, 5, 10)]


@pytest.mark.parametrize("gain, ratio, level", [(3.0, 0.1, "pass"), (0.05, 0.1, "partial"), (3.0, 10.0, "partial"),
                                                (-3.0, 10.0, "fail")])
def test_claim5_rule(gain, ratio, level):
    units, notes = warmstart.judge(warm(gain, ratio))
    assert [u["level"] for u in units] == [level] and not notes, units
    assert "piggyback LB test accuracy at k = 10 minus at k = 0: " in units[0]["evidence"]
    assert "losses matched within 1.5x: k = 0 f = 0.1, k = 10 f = 0.1" in units[0]["evidence"]


def test_claim5_needs_values_of_k_and_seeds():
    units, notes = warmstart.judge([r for r in warm() if r["sb_epochs"] in (0, 10)])
    assert units == [] and "at least 3 values of k" in notes[0]
    assert verdicts.claim5(warm(seeds=1))["verdict"] == "inconclusive (1 seed; the rule needs 5)"
    assert "half the mean gain by 5 SB epochs" in verdicts.claim5(warm())["reason"]
    assert warmstart.enough([0, 2, 5], [85.0, 86.0, 87.0]) == 2  # half the 2-point gain by k = 2
    assert math.isnan(warmstart.enough([0, 2, 5], [85.0, 84.0, 83.0]))  # no gain: no "enough"


def iterate_rows(lb_phis, sb_phis, seeds=5):
    rows = []
    for regime, phis in (("lb", lb_phis), ("sb", sb_phis)):
        for s in range(seeds):
            for e, (x, y) in enumerate(zip([1.0, 0.5, 0.2, 0.1, 0.05], phis)):
                rows.append({"network": "F1", "dataset": "fashion_mnist", "data": DATA, "regime": regime, "seed": s,
                             "epoch": e, "train_xent": x, "phi_full_eps0.001": y * (1 + s / 20),
                             "phi_full_eps0.001_failed": 0, "deviations": "none"})
    return rows


GROWS, FALLS = [10.0, 30.0, 90.0, 200.0, 400.0], [40.0, 20.0, 10.0, 5.0, 2.0]


@pytest.mark.parametrize("lb, sb, level", [(GROWS, FALLS, "pass"), (GROWS, GROWS, "partial"),
                                           (FALLS, GROWS, "fail")])
def test_claim6_rule(lb, sb, level):
    units, _ = iterate_tables.judge(iterate_rows(lb, sb))
    assert [u["level"] for u in units] == [level]
    assert "LB: Spearman rho of sharpness against f: " in units[0]["evidence"] and units[0]["n"] == 5
    assert verdicts.claim6(iterate_rows(lb, sb, seeds=2))["verdict"] == "inconclusive (2 seeds; the rule needs 5)"


def test_spearman_is_scipys():
    rng = np.random.default_rng(0)
    for n in (3, 6, 20):
        for _ in range(20):
            xs, ys = rng.integers(0, 4, n).astype(float), rng.normal(size=n)
            expected = stats.spearmanr(xs, ys).statistic if len(set(xs)) > 1 else math.nan
            assert iterate_tables.spearman(xs, ys) == pytest.approx(expected, nan_ok=True)


def remedy_row(seed, remedy="conservative", narrowing=1.0, ratio=5.0, plain=True):
    return {"network": "F1", "dataset": "fashion_mnist", "data": DATA, "dataset_label": DATA, "remedy": remedy,
            "seed": seed, "plain_sb_test": 90.0 if plain else math.nan, "plain_lb_test": 87.0 + seed / 10,
            "sb_test": 90.0, "lb_test": 87.0 + seed / 10 + narrowing, "sb_train_loss": 0.2, "lb_train_loss": 0.2,
            "sb_phi_full_eps0.001": 20.0, "lb_phi_full_eps0.001": 20.0 * ratio * (1 + seed / 20),
            "sb_f_full_eps0.001": 0.1, "lb_f_full_eps0.001": 0.05, "sb_phi_full_eps0.0005": math.nan,
            "lb_phi_full_eps0.0005": math.nan, "sb_f_full_eps0.0005": math.nan, "lb_f_full_eps0.0005": math.nan,
            "deviations": "none"}


@pytest.mark.parametrize("narrowing, ratio, plain, verdict", [
    (1.0, 5.0, True, "reproduced"), (-1.0, 5.0, True, "partly reproduced"), (1.0, 1.0, True, "partly reproduced"),
    (-1.0, 1.0, True, "not reproduced"), (1.0, 5.0, False, "partly reproduced")])   # no plain runs: gap not computed
def test_claim7_rule(narrowing, ratio, plain, verdict):
    result = verdicts.claim7([remedy_row(s, narrowing=narrowing, ratio=ratio, plain=plain) for s in range(5)])
    assert result["verdict"] == verdict, result["reason"]
    assert "not matched: SB f = 0.1, LB f = 0.05" in result["reason"]
    assert "not run: augmentation; adversarial training is not built" in result["reason"]


def test_claim7_with_one_seed_is_inconclusive_not_partly():
    """Issue 23: a 0.28-point narrowing on one seed used to pass."""
    result = verdicts.claim7([remedy_row(0, narrowing=0.28)])
    assert result["verdict"] == "inconclusive (1 seed; the rule needs 5)"
    assert remedy_tables.claim7([]) == ([], [])
    assert verdicts.claim7([])["verdict"] == "not run"


def test_claim_2_names_the_seeds_whose_solves_stopped_at_their_cap():
    # paper-cpu's random subspace at eps 1e-3: SB capped on seeds 0-2, LB on none; the evidence read
    # "19.1x ... holds" with no word that three of its ratios are upper bounds of a ratio of maxima.
    capped, done = {"solves": [{"status": 1}]}, {"solves": [{"status": 0}]}
    sb = {0: capped, 1: capped, 2: capped, 3: done, 4: done}
    lb = {s: done for s in range(5)}
    results = [{"network": "F1", "dataset": "mnist", "dataset_label": "MNIST", "space": "random", "epsilon": 1e-3,
                "regime": regime, "seed": seed, "failed": False, "phi": phi, "deviations": [],
                "record": {**record, "f_x": 0.001}}  # as compare.sharpness_results gives them
               for regime, side, phi in (("sb", sb, 0.03), ("lb", lb, 0.5)) for seed, record in side.items()]
    reason = verdicts.claim2(results)["reason"]
    assert "at the iteration cap: SB on 3 of 5 seeds, LB on 0" in reason and "3 seeds give an upper bound" in reason
    both = paired.cap_words([(True, True), (True, False), (True, False), (False, False)])
    assert "2 seeds give an upper bound, 1 seed gives no bound either way" in both
    assert paired.cap_words([(False, False)]) == ""
