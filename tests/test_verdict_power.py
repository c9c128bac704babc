"""The verdict rules' error rates, by simulation (issue 23).

Each claim's rule is run on simulated paired seeds: with no effect (every measure drawn with the
paper's published seed spread around one mean) a half of a rule may hold at most 5% of the time;
with the paper's effect sizes (the published means, Tables 2-4, 6, 7 and Figures 3-6) every rule
must pass at least 80% of the time with 5 seeds. Accuracies are normal with the published seed
std; sharpness and curvatures are log-normal with the published mean and std (a published std of
0.00 is under the table's rounding: 0.005). Figures 3-6 publish no spread: their noise is Table 3's
(full space, eps 1e-3) coefficient of variation of the same network and regime, Figure 4's accuracy
noise the network's larger Table 2 test std. The simulated seeds are independent (SB and LB from
one x0 may correlate; independence is the conservative case for the effect sizes, and the sign
test's false-pass rate does not depend on it). Fixed seeds: the rates below are deterministic.
"""

import math

import numpy as np
import pytest

from replication import config as config_lib
from replication import regimes
from replication.analysis import compare, iterate_tables, paired, results, sweep, verdicts, warmstart

SEEDS = 5
SIMS = 300          # per case: a 3% false-pass rate has a standard error of 1%, a 90% pass rate 1.7%
NULL_LIMIT, POWER_LIMIT = 0.05, 0.80
NETWORKS = config_lib.NETWORKS
TABLE2 = compare.published("table2_accuracy")
SHARPNESS = {"full": compare.published("table3_sharpness_full_space"),
             "random": compare.published("table4_sharpness_random_subspace_p100")}
REMEDY = {"augmentation": compare.published("table6_data_augmentation"),
          "conservative": compare.published("table7_conservative_training")}
REMEDY_LB = {"augmentation": "augmented_lb", "conservative": "conservative_lb"}


# Draws -------------------------------------------------------------------------------------------------
def accuracy(rng, mean, std, size=SEEDS):
    return np.clip(rng.normal(mean, std, size), 0.0, 100.0)


def lognormal(rng, mean, std, size=SEEDS):
    """Positive draws with this mean and std."""
    sigma2 = math.log(1 + (max(std, 0.005) / mean) ** 2)
    return rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), size)


def cv(network, regime, space="full", tag="eps1e-3"):
    """The published coefficient of variation of a sharpness (Table 3 or 4)."""
    row = SHARPNESS[space][network]
    return max(row[f"{tag}_{regime}_std"], 0.005) / row[f"{tag}_{regime}_mean"]


def base(network, seed):
    return {"network": network, "dataset": config_lib.PAPER_DATASET[network], "data": "simulated",
            "dataset_label": "simulated", "seed": seed, "deviations": []}


# Simulated evidence, one claim each: `null` names the halves drawn with no effect -------------------------
def claim1_runs(rng, network, null=()):
    p = TABLE2[network]
    lb_test = p["test_sb_mean"] if "accuracy" in null else p["test_lb_mean"]
    tests = {"sb": accuracy(rng, p["test_sb_mean"], p["test_sb_std"]), "lb": accuracy(rng, lb_test, p["test_lb_std"])}
    trains = {"sb": accuracy(rng, p["train_sb_mean"], p["train_sb_std"]),
              "lb": accuracy(rng, p["train_lb_mean"], p["train_lb_std"])}
    return [{**base(network, s), "regime": g, "test_accuracy": float(tests[g][s]),
             "train_accuracy": float(trains[g][s]), "train_loss": 0.01, "diverged": False}
            for g in ("sb", "lb") for s in range(SEEDS)]


def claim2_results(rng, network, null=()):
    out = []
    for space, table in SHARPNESS.items():
        for tag, epsilon in compare.SHARPNESS_EPSILONS.items():
            row = table[network]
            lb_mean = row[f"{tag}_sb_mean"] if "sharpness" in null else row[f"{tag}_lb_mean"]
            phis = {"sb": lognormal(rng, row[f"{tag}_sb_mean"], row[f"{tag}_sb_std"]),
                    "lb": lognormal(rng, lb_mean, cv(network, "lb", space, tag) * lb_mean)}
            out += [{**base(network, s), "regime": g, "space": space, "epsilon": epsilon, "phi": float(phis[g][s]),
                     "failed": False, "diverged_run": False, "record": {"f_x": 0.01}}
                    for g in ("sb", "lb") for s in range(SEEDS)]
    return out


PAPER_RISES = {(n, path): [compare.end_rise(curve, a) for a in (0.0, 1.0)]
               for n in NETWORKS for path in ("linear", "curvilinear")
               for curve in [results.read_curve(next(iter(compare.published_figures(n, path).values())))]}


def claim3_rows(rng, network, null=()):
    rows = []
    for path in ("linear", "curvilinear"):
        rise_sb, rise_lb = PAPER_RISES[network, path]
        rise_lb = rise_sb if "steepness" in null else rise_lb
        sb = lognormal(rng, rise_sb, cv(network, "sb") * rise_sb)
        lb = lognormal(rng, rise_lb, cv(network, "lb") * rise_lb)
        rows += [{**base(network, s), "path": path, "rise_sb": float(sb[s]), "rise_lb": float(lb[s]),
                  "rise_ratio": float(lb[s] / sb[s]), "paper_rise_ratio": math.nan, "f_sb": 0.01, "f_lb": 0.01}
                 for s in range(SEEDS)]
    return rows


FIGURE4_BATCHES = {"C1": (100, 300, 1000, 5000), "F2": (1500, 5000, 15000, 61500)}


FIGURE4 = {network: sweep.published_figure4(network) for network in FIGURE4_BATCHES}


def claim4_rows(rng, network, null=()):
    curves, batches = FIGURE4[network], FIGURE4_BATCHES[network]
    at = lambda column, b: sweep.published_at(curves[column], b)  # noqa: E731
    spread = max(cv(network, "sb"), cv(network, "lb"))
    rows = []
    for b in batches:
        mean_acc = at("test_acc_pct", batches[0] if "accuracy" in null else b)
        mean_phi = at("sharpness_eps1e-3", batches[0] if "sharpness" in null else b)
        tests = accuracy(rng, mean_acc, paired.accuracy_margin(network))
        phis = lognormal(rng, mean_phi, spread * mean_phi)
        rows += [{**base(network, s), "lr_scaling": "none", "batch_size": b, "diverged": False,
                  "test": float(tests[s]), "train": 99.9, "train_loss": 0.01,
                  "phi_full_eps0.001": float(phis[s]), "f_full_eps0.001": 0.01} for s in range(SEEDS)]
    return rows


FIGURE5_KS = (0, 5, 10, 25, 50, 99)


def claim5_rows(rng, network, null=()):
    curves = warmstart.published_figure5(network)
    acc, phi = curves["piggyback_lb_test_acc_pct"], curves["lb_sharpness_eps1e-3"]
    at = lambda curve, name, k: float(np.interp(k, curve["sb_epochs"], curve[name]))  # noqa: E731
    rows = []
    for k in FIGURE5_KS:
        mean_acc = at(acc, "piggyback_lb_test_acc_pct", 0 if "accuracy" in null else k)
        mean_phi = at(phi, "lb_sharpness_eps1e-3", 0 if "sharpness" in null else k)
        tests = accuracy(rng, mean_acc, TABLE2[network]["test_lb_std"])
        phis = lognormal(rng, mean_phi, cv(network, "lb") * mean_phi)
        rows += [{**base(network, s), "sb_epochs": k, "sb_test_accuracy": math.nan,
                  "piggyback_test_accuracy": float(tests[s]), "piggyback_train_accuracy": 99.0,
                  "piggyback_train_loss": 0.01, "lb_epochs": 100, "diverged": 0, "phi_full_eps0.001": float(phis[s]),
                  "phi_full_eps0.001_failed": 0, "f_full_eps0.001": 0.01, "run": f"lb-from-sb{k}/seed{s}"}
                 for s in range(SEEDS)]
    return rows


ITERATES = 10   # measured iterates per run (the paper's curves have 60-101 points)


def claim6_rows(rng, network, null=()):
    rows = []
    for regime in regimes.REGIMES:
        curve = iterate_tables.published_figure6(network)[regime, 1e-3]
        index = np.linspace(0, len(curve["train_xent"]) - 1, ITERATES).round().astype(int)
        xent, phi = curve["train_xent"][index], curve["sharpness"][index]
        if regime in null:  # no relation to the loss: one mean throughout
            phi = np.full_like(phi, float(np.exp(np.mean(np.log(phi)))))
        for s in range(SEEDS):
            noisy = phi * lognormal(rng, 1.0, cv(network, regime), len(phi))
            rows += [{**base(network, s), "regime": regime, "epoch": e, "train_xent": float(x),
                      "phi_full_eps0.001": float(y), "phi_full_eps0.001_failed": 0}
                     for e, (x, y) in enumerate(zip(xent, noisy))]
    return rows


def claim7_rows(rng, network, remedy, null=()):
    p, table, lb = TABLE2[network], REMEDY[remedy][network], REMEDY_LB[remedy]
    plain_sb = accuracy(rng, p["test_sb_mean"], p["test_sb_std"])
    plain_lb = accuracy(rng, p["test_lb_mean"], p["test_lb_std"])
    # Table 7's SB is the plain SB run itself; Table 6's the augmented SB run.
    sb = accuracy(rng, table["baseline_sb_test_mean"], table["baseline_sb_test_std"]) if remedy == "augmentation" \
        else plain_sb
    plain_gap = p["test_sb_mean"] - p["test_lb_mean"]
    lb_mean = table["baseline_sb_test_mean"] - plain_gap if "narrows" in null else table[f"{lb}_test_mean"]
    remedy_lb = accuracy(rng, lb_mean, table[f"{lb}_test_std"])
    sb_phi_mean = SHARPNESS["full"][network]["eps1e-3_sb_mean"]  # no SB sharpness under a remedy is published
    lb_phi_mean = sb_phi_mean if "sharp" in null else table["lb_sharpness_eps1e-3_mean"]
    sb_phi = lognormal(rng, sb_phi_mean, SHARPNESS["full"][network]["eps1e-3_sb_std"])
    lb_phi = lognormal(rng, lb_phi_mean, table["lb_sharpness_eps1e-3_std"] / table["lb_sharpness_eps1e-3_mean"]
                       * lb_phi_mean)
    return [{**base(network, s), "remedy": remedy, "sb_test": float(sb[s]), "lb_test": float(remedy_lb[s]),
             "plain_sb_test": float(plain_sb[s]), "plain_lb_test": float(plain_lb[s]), "sb_train_loss": 0.01,
             "lb_train_loss": 0.01, "sb_phi_full_eps0.001": float(sb_phi[s]), "lb_phi_full_eps0.001": float(lb_phi[s]),
             "sb_f_full_eps0.001": 0.01, "lb_f_full_eps0.001": 0.01, "sb_phi_full_eps0.0005": math.nan,
             "lb_phi_full_eps0.0005": math.nan, "sb_f_full_eps0.0005": math.nan, "lb_f_full_eps0.0005": math.nan}
            for s in range(SEEDS)]


# Rates -------------------------------------------------------------------------------------------------
def rates(judge, simulate, seed: int, sims: int = SIMS) -> dict:
    """{"verdict": how often the verdict is "reproduced", (unit, what): how often that test holds}."""
    rng = np.random.default_rng(seed)
    counts: dict = {"verdict": 0}
    for _ in range(sims):
        result = judge(simulate(rng))
        counts["verdict"] += result["verdict"] == "reproduced"
        for test in result["tests"]:
            key = (test["unit"], test["what"])
            counts[key] = counts.get(key, 0) + (test["result"] == "holds")
    return {key: count / sims for key, count in counts.items()}


def halves(found: dict, word: str) -> dict:
    """The rates of the tests whose measure names `word`."""
    return {key: rate for key, rate in found.items() if key != "verdict" and word in key[1]}


CASES = {  # claim -> (judge, simulate(rng, network, null), networks, {half: word in its test's name})
    1: (verdicts.claim1, claim1_runs, NETWORKS, {"accuracy": "test accuracy"}),
    2: (verdicts.claim2, claim2_results, NETWORKS, {"sharpness": "sharpness"}),
    3: (verdicts.claim3, claim3_rows, NETWORKS, {"steepness": "rise"}),
    4: (verdicts.claim4, claim4_rows, tuple(FIGURE4_BATCHES), {"accuracy": "test accuracy", "sharpness": "sharpness"}),
    5: (verdicts.claim5, claim5_rows, warmstart.PUBLISHED, {"accuracy": "test accuracy", "sharpness": "space"}),
    6: (verdicts.claim6, claim6_rows, iterate_tables.PUBLISHED, {"lb": "LB:", "sb": "SB:"}),
}


@pytest.mark.parametrize("claim", sorted(CASES))
def test_each_rule_passes_the_papers_effects_and_no_null_half(claim):
    judge, simulate, networks, words = CASES[claim]
    for index, network in enumerate(networks):
        found = rates(judge, lambda rng: simulate(rng, network), seed=1000 * claim + index)
        assert found["verdict"] >= POWER_LIMIT, (claim, network, found)
        for half, word in words.items():
            null = rates(judge, lambda rng: simulate(rng, network, null=(half,)), seed=1000 * claim + 100 + index)
            tested = halves(null, word)
            assert tested and max(tested.values()) <= NULL_LIMIT, (claim, network, half, null)
            assert null["verdict"] <= NULL_LIMIT, (claim, network, half, null)


# Table 7's F2 narrowing is 64.02 - 59.45 - (64.02 - 61.94) = 2.49 points, the conservative LB minus
# the plain LB, each with a seed std of about 1.1: 1.6 standard deviations per seed, so one seed agrees
# 95% of the time and all five 77%. No 5-seed test free of assumptions on the distribution does better.
LOW_POWER = {("conservative", "F2"): 0.70}


def test_claim7_rule_passes_the_papers_effects_and_no_null_half():
    for index, (remedy, network) in enumerate((r, n) for r in REMEDY for n in REMEDY[r]):
        simulate = lambda rng, null=(): claim7_rows(rng, network, remedy, null)  # noqa: E731
        found = rates(verdicts.claim7, simulate, seed=7000 + index)
        if (remedy, network) == ("conservative", "C3"):  # the paper's own gap widens there (RULE)
            assert max(halves(found, "narrowing").values()) <= NULL_LIMIT, found
            assert min(halves(found, "sharpness").values()) >= POWER_LIMIT, found
        else:
            assert found["verdict"] >= LOW_POWER.get((remedy, network), POWER_LIMIT), (remedy, network, found)
        for half, word in (("narrows", "narrowing"), ("sharp", "sharpness")):
            null = rates(verdicts.claim7, lambda rng: simulate(rng, (half,)), seed=7100 + index)
            assert max(halves(null, word).values()) <= NULL_LIMIT, (remedy, network, half, null)
            assert null["verdict"] <= NULL_LIMIT, (remedy, network, half, null)


def test_four_seeds_are_inconclusive_even_at_the_papers_effects():
    rng = np.random.default_rng(4)
    runs = [r for r in claim1_runs(rng, "C1") if r["seed"] < 4]
    assert verdicts.claim1(runs)["verdict"] == "inconclusive (4 seeds; the rule needs 5)"
