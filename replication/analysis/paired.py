"""The paired-seed test behind every verdict on the claims of Keskar et al. (2017).

The SB and LB runs of one seed start from one x0 (so do a seed's sweep, piggyback and remedy
runs), so each claim is judged within seeds: one number per seed (a difference in accuracy
points, the log of a sharpness or curvature ratio, a Spearman rho), oriented so that the claim
predicts it is positive.

- Null hypothesis: each seed's number is as likely negative as positive (no effect).
- Test: the exact one-sided sign test (the number of positive seeds under Binomial(n, 1/2)). It
  assumes nothing about the numbers' distribution (sharpness ratios are far from normal) and can
  reject at ALPHA = 0.05 only from MIN_SEEDS = 5 seeds on (all five agreeing: p = 1/32); with fewer
  seeds a test is "inconclusive", never a pass. Ties and missing values count against the claim.
- Margin: the effect must also be practically relevant: the mean over seeds (for ratios the
  geometric mean) must exceed a margin that each rule states.

A test "holds" if p <= ALPHA and the effect exceeds the margin. The report gives, per test, n, the
effect with its 95% t interval and the seeds' min and max, the margin and p. How often these rules
pass with no effect and with the paper's effects is simulated in tests/test_verdict_power.py.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from replication.analysis import compare

ALPHA = 0.05
MIN_SEEDS = 5                  # the fewest seeds at which the one-sided sign test can reach ALPHA
TEST = "exact one-sided sign test"
LOSS_MATCH_FACTOR = 1.5        # two training losses are "matched" within this factor of each other
# The least sharpness ratio that counts ("much sharper", "stays sharp", "flatter"): the paper's
# smallest LB/SB ratio in Tables 3-4 is 8.7 (C3), its Figure 5 sharpness falls over 100-fold.
SHARP_FACTOR = 2.0
KINDS = ("points", "ratio", "rho")


def sign_p(values: list[float]) -> float:
    """One-sided exact sign-test p: P(Binomial(n, 1/2) >= the number of positive values)."""
    n, k = len(values), sum(1 for v in values if v > 0)
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n if n else math.nan


@functools.lru_cache(maxsize=None)
def _t_quantile(df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def log_ratio(a: float, b: float) -> float:
    """log(a / b) of two non-negative measures (sharpness, curvature); -inf if a <= 0 (no rise at
    all on a's side), +inf if only b <= 0, nan if either is missing."""
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return math.nan
    if a <= 0:
        return -math.inf
    return math.inf if b <= 0 else math.log(a / b)


def paired(values, margin: float, what: str, kind: str = "points", direction: int = 1) -> dict:
    """The sign test and the margin on one number per seed (`values`; for kind "ratio" the log
    ratios, and `margin` a factor > 1). The claim predicts them positive (`direction` 1) or negative
    (-1); missing (nan) values are left out. Returns what, test, n, agree (seeds on the predicted
    side), p, effect (the mean; the geometric mean for ratios), low and high (its 95% t interval,
    n >= 2), min, max, margin, direction, kind and result: "holds", "does not hold", "inconclusive"
    (fewer than MIN_SEEDS seeds) or "not computed" (none). Numbers are as measured, not oriented."""
    if kind not in KINDS or direction not in (1, -1):
        raise ValueError(f"kind must be one of {KINDS} and direction 1 or -1, not {kind!r}, {direction!r}")
    values = [float(v) for v in values if v is not None and not math.isnan(v)]
    oriented = [direction * v for v in values]
    n = len(values)
    out = {"what": what, "test": TEST, "n": n, "agree": sum(1 for v in oriented if v > 0), "p": sign_p(oriented),
           "effect": math.nan, "low": math.nan, "high": math.nan, "min": math.nan, "max": math.nan,
           "margin": margin, "direction": direction, "kind": kind}
    if n:
        # inf and -inf together (one seed's side not rising at all, another's) have no mean
        mean = math.nan if math.inf in values and -math.inf in values else float(np.mean(values))
        out.update(effect=mean, min=min(values), max=max(values))
        if n >= 2 and all(math.isfinite(v) for v in values):
            half = _t_quantile(n - 1) * float(np.std(values, ddof=1)) / math.sqrt(n)
            out.update(low=mean - half, high=mean + half)
    threshold = math.log(margin) if kind == "ratio" else margin
    beyond = direction * out["effect"] > threshold  # False for nan
    if kind == "ratio":  # reported as ratios
        out.update({k: math.exp(out[k]) for k in ("effect", "low", "high", "min", "max") if not math.isnan(out[k])})
    out["result"] = ("not computed" if n == 0 else "inconclusive" if n < MIN_SEEDS
                     else "holds" if out["p"] <= ALPHA and beyond else "does not hold")
    return out


def not_computed(what: str, margin: float, kind: str = "points", direction: int = 1) -> dict:
    """A test with no values (a measurement that was not made)."""
    return paired([], margin, what, kind, direction)


def level(tests: list[dict]) -> str | None:
    """A unit's level from its tests (the halves of a claim): "inconclusive" if a computed test has
    too few seeds; else "pass" if every test holds, "fail" if none does, "partial" otherwise (a test
    not computed does not hold). None if no test was computed."""
    computed = [t for t in tests if t["result"] != "not computed"]
    if not computed:
        return None
    if any(t["result"] == "inconclusive" for t in computed):
        return "inconclusive"
    held = sum(t["result"] == "holds" for t in tests)
    return "pass" if held == len(tests) else "fail" if held == 0 else "partial"


# Text -------------------------------------------------------------------------------------------
def _number(value: float, kind: str) -> str:
    if math.isnan(value):
        return "n/a"
    if kind == "ratio":
        return "inf" if math.isinf(value) else f"{value:.3g}x"
    return f"{value:+.2f}"


def effect_text(test: dict) -> str:
    """'mean +2.10 points (95% t interval +1.50 to +2.70; seeds +1.20 to +3.00)', or one seed's value."""
    kind, unit = test["kind"], " points" if test["kind"] == "points" else ""
    if test["n"] == 0:
        return "n/a"
    if test["n"] == 1:
        return f"one seed: {_number(test['effect'], kind)}{unit}"
    name = {"points": "mean", "ratio": "geometric mean", "rho": "mean rho"}[kind]
    interval = (f"95% t interval {_number(test['low'], kind)} to {_number(test['high'], kind)}; "
                if not math.isnan(test["low"]) else "")
    return (f"{name} {_number(test['effect'], kind)}{unit} ({interval}seeds {_number(test['min'], kind)} "
            f"to {_number(test['max'], kind)})")


def margin_text(test: dict) -> str:
    """The margin the effect must pass, on its side: '> +0.42 points', '> 2x', '< 0.5x', '< -0.50'."""
    margin, up = test["margin"], test["direction"] > 0
    if test["kind"] == "ratio":
        return f"> {margin:g}x" if up else f"< {1 / margin:g}x"
    return (f"> {margin:+.2f}" if up else f"< {-margin:+.2f}") + (" points" if test["kind"] == "points" else "")


def describe(test: dict) -> str:
    """One line: what, seeds agreeing, p, the effect with its interval, the margin and the result."""
    if test["n"] == 0:
        return f"{test['what']}: not computed"
    seeds = f"{test['n']} seed{'s' if test['n'] != 1 else ''}"
    p = f"sign test p = {test['p']:.3g}" + (f" ({seeds}; the rule needs {MIN_SEEDS})" if test["n"] < MIN_SEEDS else "")
    agree = f"{test['agree']} of {seeds} agree{'s' if test['n'] == 1 else ''}"
    return (f"{test['what']}: {agree}, {p}; {effect_text(test)}; margin "
            f"{margin_text(test)}: {test['result']}")


def inconclusive(ns: list[int]) -> str:
    """The verdict of a claim whose every unit has too few seeds."""
    low, high = min(ns), max(ns)
    count = f"{low}" if low == high else f"{low}-{high}"
    return f"inconclusive ({count} seed{'s' if high != 1 else ''}; the rule needs {MIN_SEEDS})"


def losses(a: list[float], b: list[float], names: tuple[str, str] = ("SB", "LB"),
           source: str = "f on the sharpness examples") -> str:
    """Whether a sharpness comparison was made at matched training loss: the mean loss of each side
    (over the paired seeds), matched if within LOSS_MATCH_FACTOR of each other."""
    a_mean, b_mean = (float(np.mean(v)) if v else math.nan
                      for v in ([x for x in side if x is not None and math.isfinite(x)] for side in (a, b)))
    if math.isnan(a_mean) or math.isnan(b_mean):
        return "training loss not recorded"
    pair = f"{names[0]} f = {a_mean:.3g}, {names[1]} f = {b_mean:.3g}"
    low, high = sorted((a_mean, b_mean))
    if high <= LOSS_MATCH_FACTOR * low:
        return f"losses matched within {LOSS_MATCH_FACTOR:g}x: {pair} ({source})"
    apart = f"{high / low:.3g}x apart" if low > 0 else "one is 0"
    return f"not matched: {pair} ({source}; {apart}, more than {LOSS_MATCH_FACTOR:g}x)"


def loss(record_f, train_loss) -> tuple[float, str]:
    """The training loss of one side: the f recorded with its sharpness if there is one, else the
    run's final training loss (metrics.json), with which it was."""
    if record_f is not None and math.isfinite(float(record_f)):
        return float(record_f), "f on the sharpness examples"
    if train_loss is not None and math.isfinite(float(train_loss)):
        return float(train_loss), "final training loss"
    return math.nan, ""


def loss_source(sources: list[str]) -> str:
    found = sorted({s for s in sources if s})
    return " / ".join(found) or "not recorded"


def side_losses(a: list[tuple[float, str]], b: list[tuple[float, str]], names=("SB", "LB")) -> str:
    """losses() of two sides given as (loss, source) pairs (loss()'s), the sources named once."""
    return losses([x for x, _ in a], [x for x, _ in b], names, loss_source([s for _, s in [*a, *b]]))


def unit(name: str, network: str, tests: list[dict], level: str, evidence: str) -> dict:
    """One judged unit of a claim: its tests (labelled with the unit), level and evidence line."""
    counts = [t["n"] for t in tests if t["result"] != "not computed"]
    return {"unit": name, "network": network, "level": level, "n": min(counts, default=0),
            "tests": [{**t, "unit": name} for t in tests], "evidence": f"{evidence} -> {level}"}


@functools.lru_cache(maxsize=None)
def accuracy_margin(network: str) -> float:
    """The smallest accuracy effect (points) a rule counts: the larger of the paper's SB and LB
    seed standard deviations of test accuracy for `network` (Table 2), nan for another network."""
    row = compare.published("table2_accuracy").get(network)
    return max(row["test_sb_std"], row["test_lb_std"]) if row else math.nan


def cap_words(capped: list[tuple[bool, bool]]) -> str:
    """Which seeds' SB and LB Metric 2.1 solves stopped at their iteration cap, from (SB capped, LB
    capped) per seed (results.at_cap). A verdict is on the paper's metric, a 10-iteration solve, so a
    capped phi is that metric's value; as the maximum over the box it is a lower bound, which makes a
    seed's LB/SB an upper bound where SB's solve alone is capped, a lower bound where LB's alone is,
    and no bound either way where both are. "" where none is capped."""
    sb, lb = sum(a for a, _ in capped), sum(b for _, b in capped)
    if not sb and not lb:
        return ""
    kinds = [(sum(a and not b for a, b in capped), "an upper bound"), (sum(b and not a for a, b in capped), "a lower bound"),
             (sum(a and b for a, b in capped), "no bound either way")]
    return (f"; at the iteration cap: SB on {sb} of {len(capped)} seeds, LB on {lb} (the paper's 10-iteration "
            "metric; as the maximum over the box a capped phi is a lower bound, so as a ratio of maxima "
            + ", ".join(f"{n} seed{'s' if n > 1 else ''} {'give' if n > 1 else 'gives'} {what}" for n, what in kinds if n)
            + ")")
