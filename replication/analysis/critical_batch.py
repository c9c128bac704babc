"""The statistics of a batch-size study (issue 13, issue 25): the critical batch size fitted to the
fewest steps of each batch, S = S_min (1 + B_crit / B) (McCandlish et al. 2018, eq. 2.11), its
bootstraps (over batch sizes; over seeds and batch sizes together), the one multiple of the
learning-rate rule the data support, and whether a noise scale's prediction of B_crit holds by the
rule docs/noise-scale.md fixed in advance. Pure functions of the study's points; batchsize_report
reads them from the run directories and writes the report.

Symbols -> code: S `steps`, E = B S `examples`, S_min `s_min`, E_min `e_min`, B_crit `b_crit`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from replication.experiments import batchsize


# The critical batch size --------------------------------------------------------------------------
# A fitted term smaller than this share of every point's steps is round-off, not a measurement:
# it moves no point by a billionth of its steps (far below one step, the resolution of S).
ROUND_OFF = 1e-9


def fit_critical_batch(batches, steps) -> dict:
    """Fit S = S_min + (S_min B_crit) / B by least squares on relative residuals (S - fit) / S;
    returns s_min, b_crit, e_min, or None for all three when the fit resolves no critical batch, with
    `unresolved` saying on which side B_crit lies then: "above" (S_min zero within round-off, or
    below: steps fall at least as fast as 1/B, so B_crit is beyond the largest batch) or "below"
    (the slope S_min B_crit zero within round-off, or below: steps do not fall as the batch grows,
    so B_crit is below the smallest). Round-off: a term below ROUND_OFF of every point's steps. Steps
    exactly proportional to 1/B otherwise gave B_crit = 7e16, and a flat pair of batches 2e-15."""
    batches, steps = np.asarray(batches, float), np.asarray(steps, float)
    if len(batches) < 2 or len(set(batches.tolist())) < 2:
        raise ValueError("the fit needs at least two distinct batch sizes")
    if not (np.all(np.isfinite(batches)) and np.all(np.isfinite(steps)) and np.all(batches > 0) and np.all(steps > 0)):
        raise ValueError("the fit needs positive, finite batch sizes and steps")
    design = np.stack([1 / steps, 1 / (batches * steps)], axis=1)  # rows: [1, 1/B] / S
    (s_min, slope), *_ = np.linalg.lstsq(design, np.ones_like(steps), rcond=None)
    # Each term's largest share of a point's fitted steps: S_min / S and (S_min B_crit) / (B S).
    side = ("above" if s_min <= ROUND_OFF * steps.min() else
            "below" if slope <= ROUND_OFF * (batches * steps).min() else None)
    ok = side is None
    # How well the curve fits: the largest relative residual (S - fit) / S, and where (the curve
    # cannot bend the way a batch that needs more examples than a larger one does).
    residuals = 1 - (s_min + slope / batches) / steps
    worst = int(np.argmax(np.abs(residuals)))
    return {"s_min": float(s_min) if ok else None, "b_crit": float(slope / s_min) if ok else None,
            "e_min": float(slope) if ok else None, "intercept": float(s_min), "slope": float(slope),
            "unresolved": side, "worst_residual": float(residuals[worst]), "worst_residual_batch": float(batches[worst])}


PERCENTILES = (("median", 50.0), ("p16", 16.0), ("p84", 84.0), ("p2_5", 2.5), ("p97_5", 97.5))


def bootstrap_critical_batch(batches, steps, resamples: int, seed: int = 0) -> dict:
    """B_crit over `resamples` resamples of the batch sizes (with replacement; resamples with fewer
    than two distinct sizes skipped): how many resolved a B_crit and how many did not, on each side
    (fit_critical_batch's `unresolved`), and the median and the 16-84 and 2.5-97.5 percentiles.

    A resample that resolves no B_crit is no number (its fit's ratio is round-off or negative), but
    it does say where B_crit lies: beyond every resolved value ("above") or below them ("below").
    So the percentiles rank every resample, the unresolved ones at their side, and a percentile
    that falls among them is None, named in `unbounded` with its side: that bound is not measured."""
    batches, steps = np.asarray(batches, float), np.asarray(steps, float)
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(resamples):
        pick = rng.integers(0, len(batches), len(batches))
        if len(set(batches[pick].tolist())) < 2:
            continue
        fits.append(fit_critical_batch(batches[pick], steps[pick]))
    return _ranked_fits(fits, resamples)


def _ranked_fits(fits: list[dict], drawn: int) -> dict:
    """The resamples' fits counted (resolved, unresolved on each side) and ranked: the median and the
    PERCENTILES, an unresolved fit ranked at its side, a percentile among them None and named in
    `unbounded` (bootstrap_critical_batch's docstring). `drawn` counts the skipped resamples too
    (fewer than two distinct batch sizes: no curve to fit), so a report can say how many there were."""
    values = sorted(f["b_crit"] for f in fits if f["b_crit"] is not None)
    sides = {side: sum(f["unresolved"] == side for f in fits) for side in ("below", "above")}
    out = {"drawn": drawn, "resamples": len(fits), "resolved": len(values),
           "unresolved": sides["below"] + sides["above"],
           "unresolved_below": sides["below"], "unresolved_above": sides["above"], "unbounded": {}}
    for key, q in PERCENTILES:
        out[key], side = _ranked_percentile(values, sides["below"], sides["above"], q)
        if side:
            out["unbounded"][key] = side
    return out


def _ranked_percentile(values: list[float], below: int, above: int, q: float) -> tuple[float | None, str | None]:
    """The q-th percentile (NumPy's linear rule) of `below` values under every one of the sorted
    `values` and `above` values over them: (value, None), or (None, side) where it touches those."""
    count = below + len(values) + above
    if count == 0:
        return None, None
    position = q / 100 * (count - 1)
    low, high = math.floor(position), math.ceil(position)
    if low < below:
        return None, "below"
    if high >= below + len(values):
        return None, "above"
    a, b = values[low - below], values[high - below]
    return float(a + (b - a) * (position - low)), None


# Reading the results -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Point:
    """One run of the study, read from its directory and checked (read_points)."""

    path: Path
    network: str
    dataset: str
    seed: int
    batch_size: int
    multiplier: float
    learning_rate: float
    reached: bool
    steps: int | None
    examples: int | None
    steps_run: int
    seconds_per_step: float | None
    check_every: int | None              # steps between target checks: S is known to within this
    train_seconds: float
    test_accuracy: float
    diverged: bool
    trace: tuple
    targets: tuple = ()                  # (value, steps or None) per target, loosest first
    eval_examples: str | None = None     # data.MEASUREMENT_SUBSET of its checks; None: drawn before it

    def steps_to(self, value: float) -> int | None:
        """Steps to the target `value` (the run's own or a milestone); None where not met."""
        return dict(self.targets).get(value, self.steps if value == self.targets[-1][0] else None)


def pooled(points: list[Point], value: float, seeds) -> dict[float, dict]:
    """multiplier -> {"steps": the mean over `seeds` of the steps to `value` (None where a seed did not
    meet it), "per_seed": each seed's steps, "points"} for each multiplier every seed has run at
    the points' batch (batchsize.pooled_steps' rule, from the run directories the report read)."""
    out = {}
    for multiplier in sorted({p.multiplier for p in points}):
        mine = {p.seed: p for p in points if p.multiplier == multiplier}
        if not all(seed in mine for seed in seeds):
            continue
        per_seed = [mine[seed].steps_to(value) for seed in seeds]
        mean = batchsize.seed_mean(per_seed)
        out[multiplier] = {"steps": int(mean) if mean is not None and mean.is_integer() else mean,  # 899, not 899.0
                           "per_seed": per_seed, "points": [mine[seed] for seed in seeds]}
    return out


def check_resolution(points: list[Point]) -> int:
    """Steps between target checks at one batch (its points share it): steps to a target are known
    to within this; 0 where the runs predate recording it."""
    return next((p.check_every for p in points if p.check_every), 0)


def one_multiplier(points: list[Point], value: float, seeds) -> dict | None:
    """The one multiple of the scaling rule that did best at every batch at once (issue 25 item 3:
    the rule the data support): among the multipliers every seed ran at every batch where some
    rate met `value`, the one whose largest excess of steps over that batch's fewest (the seeds'
    means) is smallest. {"multiplier", "excess" (0.04: 4% more steps), "worst_batch", "batches",
    "tied": its excess is within one check interval at every batch (steps are known to no better,
    so it tied with the fewest everywhere)}; None where no multiplier ran at every such batch or
    none met the target at all of them."""
    table, resolution = {}, {}
    for batch in sorted({p.batch_size for p in points}):
        mine = [p for p in points if p.batch_size == batch]
        steps = {m: r["steps"] for m, r in pooled(mine, value, seeds).items()}
        if any(v is not None for v in steps.values()):
            table[batch] = steps
            resolution[batch] = check_resolution(mine)
    if len(table) < 2:
        return None
    excess = {}
    for m in set.intersection(*(set(steps) for steps in table.values())):
        ratios = {b: steps[m] / min(v for v in steps.values() if v is not None) - 1 if steps[m] is not None else math.inf
                  for b, steps in table.items()}
        worst = max(ratios, key=ratios.get)
        excess[m] = (ratios[worst], worst)
    finite = {m: e for m, e in excess.items() if math.isfinite(e[0])}
    if not finite:
        return None
    m = min(finite, key=lambda k: (finite[k][0], abs(math.log(k))))  # a tie goes to the rule itself's side
    tied = all(steps[m] - min(v for v in steps.values() if v is not None) <= resolution[b] for b, steps in table.items())
    return {"multiplier": m, "excess": finite[m][0], "worst_batch": finite[m][1], "batches": sorted(table), "tied": tied}


def bootstrap_seeds_and_batches(points: list[Point], value: float, seeds, resamples: int, seed: int = 0) -> dict:
    """B_crit over `resamples` resamples of the batch sizes and of the seeds (both with replacement),
    the best rate chosen again in each resample from the resampled seeds' mean steps (issue 25 item
    1: the uncertainty from seeds and batch sizes together, and the best rate's own). The seeds are
    drawn once per resample, for every batch: a seed is one x0 and one data order shared by all of
    its batches' runs, so it is the unit resampled (a cluster bootstrap), not each run apart;
    counted and ranked as bootstrap_critical_batch does, so a bound among the unresolved resamples is
    None, named in `unbounded`. A batch where no rate met the target on every resampled seed drops
    out of that resample; one where the point estimate's seeds did not all meet it (so its fit left the
    batch out) can come in where only seeds that met it were drawn: `outside` counts those resamples."""
    rng = np.random.default_rng(seed)
    seeds = list(seeds)
    batches = sorted({p.batch_size for p in points})
    # steps[batch][multiplier] = {seed: steps or None}, for rates every seed ran
    table, resolution = {}, {}
    for batch in batches:
        mine = [p for p in points if p.batch_size == batch]
        rates = pooled(mine, value, seeds)
        table[batch] = {m: dict(zip(seeds, r["per_seed"])) for m, r in rates.items()}
        resolution[batch] = check_resolution(mine)
    # The batches the point estimate fits: some rate met the target on every seed.
    fitted = {b for b, rates in table.items()
              if batchsize.best_multiplier({m: batchsize.seed_mean([per[s] for s in seeds]) for m, per in rates.items()},
                                           resolution[b]) is not None}
    fits, outside = [], 0
    for _ in range(resamples):
        xs, ys = [], []
        drawn = [seeds[i] for i in rng.integers(0, len(seeds), len(seeds))]
        for batch in (batches[i] for i in rng.integers(0, len(batches), len(batches))):
            means = {m: batchsize.seed_mean([per[s] for s in drawn]) for m, per in table[batch].items()}
            best = batchsize.best_multiplier(means, resolution[batch])  # the point estimate's rule
            if best is not None:
                xs.append(batch)
                ys.append(means[best])
        if len(set(xs)) < 2:
            continue
        fits.append(fit_critical_batch(xs, ys))
        outside += not set(xs) <= fitted
    return {**_ranked_fits(fits, resamples), "over": "seeds and batch sizes" if len(seeds) > 1 else "batch sizes",
            "seeds": len(seeds), "outside": outside}


HOLDS_FACTOR = 2.0  # docs/noise-scale.md: a prediction "holds" within this factor (fixed before the runs)


Z = 1.96            # a 95% normal interval of the seeds' mean prediction


def measured_interval(bootstrap: dict | None) -> tuple[float, float] | None:
    """The measured B_crit's 2.5-97.5% interval as the rule reads it: a side unbounded towards 0 or
    infinity reaches there; None where there is no interval or it lies wholly beyond the batches
    measured (its 2.5% point unresolved above, or its 97.5% point below): then nothing is decided."""
    if not bootstrap:
        return None
    unbounded = bootstrap.get("unbounded", {})
    if unbounded.get("p2_5") == "above" or unbounded.get("p97_5") == "below" or \
            (bootstrap.get("p2_5") is None and "p2_5" not in unbounded):
        return None
    return (0.0 if "p2_5" in unbounded else bootstrap["p2_5"],
            math.inf if "p97_5" in unbounded or bootstrap.get("p97_5") is None else bootstrap["p97_5"])


def within_rule(value: float, measured_low: float, measured_high: float) -> bool:
    """docs/noise-scale.md's rule: the measured interval [low, high] holds a value within
    HOLDS_FACTOR of the prediction `value` (high may be inf: unbounded above)."""
    return value / HOLDS_FACTOR <= measured_high and value * HOLDS_FACTOR >= measured_low


def prediction_check(rows: list[dict], key: str, bootstrap: dict | None, b_crit: float | None) -> dict | None:
    """Whether the noise scale `key` measured where each seed's reference run met the target (`rows`)
    predicts the measured B_crit (docs/noise-scale.md, "Where, and what is predicted"): the seeds'
    mean, its interval mean +- 1.96 SE (SE the larger of the jackknife standard errors combined, a
    missing one counted 0, and the seeds' spread; with 2-3 seeds a normal interval, not a t one:
    labelled so), the ratio to
    B_crit, and `holds`: the measured 2.5-97.5% bootstrap interval contains a value within
    HOLDS_FACTOR of the prediction (the docs' rule, on the prediction itself). An interval side
    unbounded towards 0 or infinity reaches there; where the whole interval lies beyond the
    batches measured (its 2.5% point unresolved above, or its 97.5% point below), or no bootstrap
    ran, `holds` is None: not decided. None without a prediction or a measured B_crit."""
    values = [r[key] for r in rows if r[key] is not None]
    if not values or b_crit is None:
        return None
    n, mean = len(values), sum(values) / len(values)
    errors = [r[key + "_se"] or 0.0 for r in rows if r[key] is not None]
    spread = float(np.std(values, ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    se = max(math.sqrt(sum(e * e for e in errors)) / n, spread)
    low, high = max(mean - Z * se, 0.0), mean + Z * se
    # The ratio is of the two point estimates only (an interval of it would need both uncertainties
    # jointly); `holds` compares the prediction itself with the measured interval.
    # A seed whose estimate's standard error is at least the estimate, or has none (the jackknife
    # gives none where a leave-one-out |G|^2 is <= 0), has not resolved it: the rule still decides
    # on the mean, and the words say which seeds.
    measured = [r for r in rows if r[key] is not None]
    unresolved = [r for r in measured if r[key + "_se"] is None or r[key + "_se"] >= r[key]]
    out = {"n": n, "mean": mean, "se": se, "low": low, "high": high, "ratio": mean / b_crit,
           "unresolved_seeds": [r["seed"] for r in unresolved],
           "measured_low": None, "measured_high": None, "holds": None}
    span = measured_interval(bootstrap) if bootstrap and bootstrap.get("resamples") else None
    if span is None:
        return out
    measured_low, measured_high = span

    def holds(value):
        return within_rule(value, measured_low, measured_high)

    # Not a second rule: whether the verdict rests on the unresolved seeds, said beside it.
    resolved = [r[key] for r in measured if r not in unresolved]
    return {**out, "measured_low": measured_low, "measured_high": measured_high if math.isfinite(measured_high) else None,
            "holds": holds(mean),
            "resolved_only": ({"n": len(resolved), "mean": sum(resolved) / len(resolved),
                               "holds": holds(sum(resolved) / len(resolved))}
                              if out["unresolved_seeds"] and resolved else None)}
