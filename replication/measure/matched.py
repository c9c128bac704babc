"""Sharpness where SB and LB are comparable, and the two stopping rules, on kept iterates.

Keskar et al. (2017) compare Metric 2.1 at the SB and LB minimisers "until the loss function ceased
to improve" (section 2.2; their figures use 100 epochs). Two minimisers at different training
losses differ in how far training went as well as in the batch size, so this module picks, from a
run that kept every epoch's iterate (`keep_every: 1`), the iterates where a comparison means
something, and measures them with `iterates.measure_epochs`:

- matched loss: for each level L of the training cross-entropy f (LEVELS), the kept iterate whose f
  is nearest to L in log scale; it counts as at the level only within a factor MATCH_FACTOR of L
  (else the run never came near L and the level is reported as not reached);
- the plateau rule: the epoch at which `stopping: plateau` (patience P, the config's min_delta)
  would have stopped this run. Each epoch's shuffle and dropout masks depend on (seed, epoch) only
  and Adam's state runs on, so a plateau-stopped run is this run's iterate at that epoch
  (tests/test_matched.py trains both and compares the weights);
- the final point (the fixed-epoch rule).

f is the history's train_loss: the mean cross-entropy over the whole training set with the run's
batch-norm semantics and evaluation batch, the f of Metric 2.1 when sharpness.subset is null (the
measured xent_epoch<N>.json records the f each sharpness value was computed at, so a report never
has to trust the selection).

Files: `<run>/iterates/matched.json` (what was selected and why, written last: Make's target);
the measurements themselves are iterates/{xent,sharpness}_epoch<N>*.json.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

from replication import rundir, storage, train

LEVELS = (0.1, 0.03, 0.01, 0.003, 0.001)
MATCH_FACTOR = 1.5
PATIENCES = (2, 5, 10)


def summary_path(run_dir) -> Path:
    return Path(run_dir) / "iterates" / "matched.json"


def nearest_epoch(history: list[dict], level: float) -> int | None:
    """The epoch (1-based) whose train_loss is nearest `level` in log scale, if within MATCH_FACTOR."""
    best, distance = None, math.inf
    for row in history:
        loss = float(row["train_loss"])
        if not (math.isfinite(loss) and loss > 0):
            continue
        d = abs(math.log(loss / level))
        if d < distance:
            best, distance = int(row["epoch"]), d
    return best if distance <= math.log(MATCH_FACTOR) else None


def plateau_epoch(config, history: list[dict], patience: int) -> tuple[int, str]:
    """(epoch, reason) at which `stopping: plateau` with `patience` (and the config's min_delta and
    epochs) stops a run whose fixed-epoch history is `history`: train.should_stop's own rule, applied
    epoch by epoch. reason "plateau", or "max_epochs" when the loss never stopped improving."""
    plateau = dataclasses.replace(config, stopping="plateau", patience=patience)
    for epoch in range(1, len(history) + 1):
        if (reason := train.should_stop(plateau, history[:epoch])) is not None:
            return epoch, reason
    return len(history), "max_epochs"


def select(config, history: list[dict], levels=LEVELS, patiences=PATIENCES) -> list[dict]:
    """The points to measure: {"epoch", "train_loss", "why"} per matched level reached, per
    patience's plateau epoch, and the final epoch; an epoch chosen for several reasons appears once
    with all of them."""
    chosen: dict[int, list[str]] = {}
    for level in levels:
        if (epoch := nearest_epoch(history, level)) is not None:
            chosen.setdefault(epoch, []).append(f"level {level:g}")
    for patience in patiences:
        epoch, reason = plateau_epoch(config, history, patience)
        chosen.setdefault(epoch, []).append(f"plateau patience {patience}" +
                                            ("" if reason == "plateau" else f" ({reason})"))
    chosen.setdefault(len(history), []).append("final")
    return [{"epoch": e, "train_loss": float(history[e - 1]["train_loss"]), "why": chosen[e]}
            for e in sorted(chosen)]


def measure(run_dir, levels=LEVELS, patiences=PATIENCES, epsilons=None, spaces=None, force: bool = False,
            log=None) -> Path:
    """Measure f and phi (`epsilons`, `spaces`; None: the run's config.sharpness) at the selected
    iterates of a finished run that kept every epoch; returns matched.json, written last."""
    from replication.measure import iterates

    log = log or sys.stderr
    run = rundir.load_run(run_dir)
    history = storage.read_csv(Path(run.path) / "history.csv")
    kept = iterates.kept(run.metrics)
    if kept != list(range(1, len(history) + 1)):
        raise iterates.IteratesError(f"{run.path} did not keep every epoch's iterate (it kept {len(kept)} of "
                                     f"{len(history)}): matched points need keep_every: 1; delete the run "
                                     "and train it again with that key")
    points = select(run.config, history, levels, patiences)
    files = iterates.measure_epochs(run, [p["epoch"] for p in points], epsilons, spaces, force, log)
    summary = {"run": str(run.path), "levels": list(levels), "match_factor": MATCH_FACTOR,
               "patiences": list(patiences), "min_delta": run.config.min_delta, "points": points,
               "files": [str(f.relative_to(run.path)) for f in files]}
    storage.atomic_write_json(summary_path(run.path), summary)
    print(f"[{run.path}] {len(points)} matched/stopping points measured -> {summary_path(run.path)}",
          file=log, flush=True)
    return summary_path(run.path)
