"""Sharpness along the training iterates: Figure 6 and claim 6 of Keskar et al. (2017).

Figure 6 (PAPER.md "Figures") plots, for one SB and one LB run, the sharpness (Metric 2.1, eps
1e-3 and 5e-4) of the iterate x_k against the training cross-entropy f(x_k); claim 6 says that as
the loss falls, sharpness grows for LB and falls for SB. A run keeps its iterates when its config
asks (`keep_iterates`, `keep_every`: rundir.iterate_path); `python -m replication iterates RUN_DIR`
then measures each kept iterate, with the run's config.sharpness settings (both epsilons, the
full space and the random subspace where configured), into the run directory:

    iterates/epoch<N>.weights.h5                          kept by training
    iterates/xent_epoch<N>.json                           f(x_k) and accuracy on the sharpness examples
    iterates/sharpness_epoch<N>_<space>_eps<eps>.json     phi(x_k, f, eps, A)
    iterates/measured.json                                what was measured (written last: Make's target)

Symbols -> code: x_k is the iterate kept at the end of epoch k (`epoch`); f is the mean training
cross-entropy on the sharpness examples (config sharpness.subset, the f of Metric 2.1), reported
as `train_xent`; phi is `phi_<space>_eps<eps>`. Each result is reused when its settings (the
iterate's weight digest included) match, and written atomically, as `sharpness` does.

What reads these files (rows, claim 6's rule, Figure 6 and its report section) is
analysis/iterate_tables.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from replication import backend, data, rundir, storage


class IteratesError(rundir.RunError):
    """A run has no kept iterates to measure."""


# Files ----------------------------------------------------------------------------------------------
def xent_path(run_dir, epoch: int) -> Path:
    return Path(run_dir) / "iterates" / f"xent_epoch{epoch}.json"


def sharpness_path(run_dir, epoch: int, space: str, epsilon: float) -> Path:
    return Path(run_dir) / "iterates" / f"sharpness_epoch{epoch}_{space}_eps{epsilon:g}.json"


def summary_path(run_dir) -> Path:
    return Path(run_dir) / "iterates" / "measured.json"


def kept(metrics: dict) -> list[int]:
    """The epochs whose iterates a finished run kept (metrics.json; runs made before: none)."""
    return list(metrics.get("kept_iterates") or [])


# Measurement ----------------------------------------------------------------------------------------
def measure(run_dir, force: bool = False, log=None) -> Path:
    """f and phi (every epsilon and space of the run's config.sharpness) at every kept iterate of a
    finished run; returns iterates/measured.json, written last. IteratesError if none was kept."""
    log = log or sys.stderr
    run = rundir.load_run(run_dir)
    epochs = kept(run.metrics)
    files = measure_epochs(run, epochs, force=force, log=log)
    summary = {"run": str(run.path), "epochs": epochs,
               "files": [str(f.relative_to(run.path)) for f in files],
               "config_sharpness": run.config.to_dict()["sharpness"]}
    storage.atomic_write_json(summary_path(run.path), summary)
    print(f"[{run.path}] {len(epochs)} iterates measured -> {summary_path(run.path)}", file=log, flush=True)
    return summary_path(run.path)


def measure_epochs(run, epochs, epsilons=None, spaces=None, force: bool = False, log=None) -> list[Path]:
    """f and phi at the kept iterates of `epochs` of a loaded run (rundir.load_run), for `epsilons` and
    `spaces` (None: the run's config.sharpness); returns the files, each reused when its settings
    match. IteratesError if the run kept none of them (or not one asked for)."""
    from replication.measure import sharpness

    log = log or sys.stderr
    have = kept(run.metrics)
    if not have:
        raise IteratesError(f"{run.path} kept no iterates: set keep_iterates (or keep_every) in its config, "
                            "delete the run and train it again")
    if missing := [e for e in epochs if e not in have]:
        raise IteratesError(f"{run.path} kept no iterate of epoch {missing[0]}: it kept epochs "
                            f"{have[0]}-{have[-1]} ({len(have)} iterates); ask for one of those")
    objective = sharpness.lazy_objective(run)  # one compiled objective for every iterate
    files = []
    for epoch in epochs:
        storage.load_weights(run.model, rundir.iterate_path(run.path, epoch))
        digest = storage.weights_digest(run.model.get_weights())
        files.append(_xent(run, epoch, digest, objective, force, log))
        extra = {"iterate_epoch": epoch, "weights": str(rundir.iterate_path(".", epoch))}
        records = sharpness.measure_weights(
            run, lambda path, space, eps, epoch=epoch: sharpness_path(path, epoch, space, eps),
            epsilons, spaces, force=force, log=log, objective=objective, record=extra)
        files += [sharpness_path(run.path, epoch, r["space"], r["epsilon"]) for r in records]
    return files


def _xent(run, epoch: int, digest: str, objective, force: bool, log) -> Path:
    """f and the accuracy at the iterate in `run.model`, on the sharpness examples."""
    cfg = run.config
    settings = {"subset": cfg.sharpness.subset, "eval_batch_size": cfg.eval_batch_size,
                "backend": backend.name(), "passes": backend.PASSES, "weights_digest": digest,
                **data.measured_examples(cfg.sharpness.subset)}
    path = xent_path(run.path, epoch)
    with storage.locked(path.with_suffix(".lock")):
        if storage.reusable(path, settings, force, log) is not None:
            return path
        tick = time.time()
        f = objective()
        loss, accuracy = f.evaluate()
        storage.atomic_write_json(path, {
            "measure": "training cross-entropy at a kept iterate (the f of Metric 2.1)",
            "run": str(run.path), "network": cfg.network, "dataset": cfg.dataset,
            "regime": run.metrics["regime"], "run_seed": run.metrics["seed"], "iterate_epoch": epoch,
            "weights": str(rundir.iterate_path(".", epoch)), "train_xent": loss,
            "train_accuracy": 100 * accuracy, "num_examples": f.size, "batchnorm": cfg.batchnorm,
            "settings": settings, "wall_seconds": round(time.time() - tick, 3),
            "environment": rundir.environment(run.metrics["seed"])})
    print(f"[{run.path}] epoch {epoch}: f = {loss:.4g} -> {path}", file=log, flush=True)
    return path
