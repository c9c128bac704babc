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

With `lambda_max` (the command's --lambda-max), also the Hessian's top eigenvalue at each selected
iterate (measure/hessian.py's Lanczos, one draw of v0, with the run's config.hessian iterations,
tol and seed) on the same examples, batch-norm semantics and evaluation batches as phi, so both are
at the same f. Opt-in because it costs up to `iterations` H v products per point (each about 2.5
gradient passes), more than the point's Metric 2.1 solves. A Lanczos that stopped at its cap gives
only a lower bound on lambda_max: the file says so (`converged`, `lower_bound`).

Files: `<run>/iterates/matched.json` (what was selected and why, written last: Make's target);
the measurements themselves are iterates/{xent,sharpness}_epoch<N>*.json and, with lambda_max,
iterates/lambda_epoch<N>.json.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

from replication import data, rundir, storage, train

LEVELS = (0.1, 0.03, 0.01, 0.003, 0.001)
MATCH_FACTOR = 1.5
PATIENCES = (2, 5, 10)


def summary_path(run_dir) -> Path:
    return Path(run_dir) / "iterates" / "matched.json"


def lambda_path(run_dir, epoch: int) -> Path:
    return Path(run_dir) / "iterates" / f"lambda_epoch{epoch}.json"


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
            log=None, lambda_max: bool = False) -> Path:
    """Measure f and phi (`epsilons`, `spaces`; None: the run's config.sharpness) at the selected
    iterates of a finished run that kept every epoch, and lambda_max there if asked; returns
    matched.json, written last."""
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
    if lambda_max:
        files += measure_lambda_max(run, [p["epoch"] for p in points], force, log)
    summary = {"run": str(run.path), "levels": list(levels), "match_factor": MATCH_FACTOR,
               "patiences": list(patiences), "min_delta": run.config.min_delta, "points": points,
               "files": [str(f.relative_to(run.path)) for f in files]}
    storage.atomic_write_json(summary_path(run.path), summary)
    print(f"[{run.path}] {len(points)} matched/stopping points measured -> {summary_path(run.path)}",
          file=log, flush=True)
    return summary_path(run.path)


def measure_lambda_max(run, epochs, force: bool = False, log=None) -> list[Path]:
    """lambda_max (hessian.top_eigenvalue, draw 0, the run's config.hessian iterations, tol and seed)
    at the kept iterates of `epochs` of a loaded run whose f is measured (iterates/xent_epoch<N>.json),
    on the sharpness examples; each written to lambda_path and reused when its settings match."""
    from replication import backend
    from replication.measure import hessian, iterates

    log = log or sys.stderr
    cfg = run.config
    made = {}

    def curvature():  # made on first use: nothing is loaded when every result is reused
        if not made:
            inputs, labels = rundir.training_examples(cfg, cfg.sharpness.subset)
            made["h"] = hessian.curvature_objective(run.model, inputs, labels, cfg.eval_batch_size)
        return made["h"]

    files = []
    for epoch in epochs:
        storage.load_weights(run.model, rundir.iterate_path(run.path, epoch))
        weights = run.model.get_weights()
        digest = storage.weights_digest(weights)
        settings = {"measure": "top eigenvalue of H", "rule": hessian.RULE, "start": hessian.START,
                    "iterations": cfg.hessian.iterations, "tol": cfg.hessian.tol, "seed": cfg.hessian.seed,
                    "draw": 0, "subset": cfg.sharpness.subset, "eval_batch_size": cfg.eval_batch_size,
                    "batchnorm": cfg.batchnorm, "backend": backend.name(), "passes": backend.PASSES,
                    "weights_digest": digest, **data.measured_examples(cfg.sharpness.subset)}
        path = lambda_path(run.path, epoch)
        with storage.locked(path.with_suffix(".lock")):
            if storage.reusable(path, settings, force, log) is None:
                # phi's f at these weights (measure_epochs wrote or checked it just now): the f lambda_max is at
                xent_file = iterates.xent_path(run.path, epoch)
                xent = storage.read_json(xent_file)
                fix = f"delete it and run `python -m replication matched {run.path}` again"
                if (xent.get("settings") or {}).get("weights_digest") != digest:
                    raise iterates.IteratesError(f"{xent_file} was measured at other weights than the iterate "
                                                 f"of epoch {epoch}: {fix}")
                _check_number(xent, "train_xent", 0.0, xent_file, fix)
                h = curvature()
                h.model.set_weights(weights)  # the iterate's weights, batch-norm statistics included
                tick = time.time()
                result = hessian.top_eigenvalue(h, h.get_flat(), cfg.hessian.iterations, cfg.hessian.tol,
                                                cfg.hessian.seed)
                storage.atomic_write_json(path, {
                    "measure": "top eigenvalue of the Hessian of f at a kept iterate (lambda_max)",
                    "run": str(run.path), "network": cfg.network, "dataset": cfg.dataset,
                    "regime": run.metrics["regime"], "run_seed": run.metrics["seed"], "iterate_epoch": epoch,
                    "weights": str(rundir.iterate_path(".", epoch)), **result,
                    # An unconverged Lanczos stops at a Ritz value below lambda_max (hessian.py).
                    "lower_bound": not result["converged"], "train_xent": xent.get("train_xent"),
                    "num_examples": h.size, "settings": settings, "wall_seconds": round(time.time() - tick, 3),
                    "environment": rundir.environment(run.metrics["seed"])})
        record = read_lambda(path, epoch, run.path)
        print(f"[{run.path}] epoch {epoch}: lambda_max {'>=' if record['lower_bound'] else '='} "
              f"{record['eigenvalue']:.4g} at f = {record['train_xent']:.4g} ({record['products']} H v products"
              f"{', not converged: a lower bound' if record['lower_bound'] else ''}) -> {path}",
              file=log, flush=True)
        files.append(path)
    return files


def read_lambda(path, epoch: int, run_dir) -> dict:
    """A lambda_epoch<N>.json record with its numbers checked (eigenvalue finite, residual and f finite
    and >= 0, converged a bool, lower_bound its negation, the epoch the file is named for);
    IteratesError (one line naming the file and the fix) if not."""
    from replication.measure import iterates

    record = storage.read_json(path)
    fix = f"delete it and run `python -m replication matched {run_dir} --lambda-max` again"
    for key, low in (("eigenvalue", -math.inf), ("residual", 0.0), ("train_xent", 0.0), ("products", 1)):
        _check_number(record, key, low, path, fix)
    if not isinstance(record.get("converged"), bool) or record.get("lower_bound") is not (not record["converged"]):
        raise iterates.IteratesError(f"{path}: 'converged' ({record.get('converged')!r}) and 'lower_bound' "
                                     f"({record.get('lower_bound')!r}) are not two opposite booleans: {fix}")
    if record.get("iterate_epoch") != epoch:
        raise iterates.IteratesError(f"{path} records epoch {record.get('iterate_epoch')!r}, not {epoch}: {fix}")
    return record


def _check_number(record: dict, key: str, low: float, path, fix: str) -> None:
    from replication.measure import iterates

    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        rule = "a finite number" + (f" >= {low:g}" if low > -math.inf else "")
        raise iterates.IteratesError(f"{path}: '{key}' is {value!r}, not {rule}: {fix}")
