"""The SB/LB protocol of Keskar et al. (2017), section 2.2 and appendix B, for one run: this module
only trains; where a run lives and how it loads back is replication/rundir.py.

Protocol: Adam (Keras 1 defaults: lr 1e-3, betas 0.9/0.999, epsilon 1e-8), mean cross-entropy,
SB batch 256, LB batch 10% of the training set, SB and LB from the same x0 with fresh Adam state.
Each epoch's shuffle and dropout masks are derived from (seed, epoch) alone, and the Adam state is
checkpointed with the weights after every epoch, so an interrupted run resumes from its last
completed epoch and ends with exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from replication import config as config_lib
from replication import backend, progress, regimes, rundir, storage


def load_x0(model, config: config_lib.Config, seed: int, log) -> str:
    """Give `model` the trial's x0 and return the digest of its weights.

    x0 is the model's fresh weights, made once (under a lock) and shared by every run of the trial,
    with a record of what made it. An x0 that another config made (the trial's x0 outlives a run
    directory deleted because it was refused) or that was changed since is made anew if no run
    directory started from it, else refused: SB and LB of a trial never start from different x0."""
    path = rundir.x0_path(config, seed)
    made_by = {**{key: getattr(config, key) for key in rundir.X0_KEYS}, "seed": seed, "backend": backend.name()}
    fresh = model.get_weights()
    with storage.locked(path.with_suffix(".lock")):
        problem = _x0_problem(model, path, rundir.x0_record_path(config, seed), made_by) if path.exists() else None
        if problem is not None:
            if users := _x0_users(config, seed, path):
                more = f" and {len(users) - 1} more" if len(users) > 1 else ""
                raise rundir.RunError(f"x0 file {path} {problem}, and run {users[0]}{more} started from it: "
                               f"delete {path} and the run directories that started from it, or use "
                               "another results_dir")
            print(f"[{path}] {problem} and no run started from it: making it anew", file=log)
        if problem is not None or not path.exists():
            model.set_weights(fresh)
            # Record first: a kill between the two leaves no x0, which is then made again.
            storage.atomic_write_json(rundir.x0_record_path(config, seed),
                                      {"made_by": made_by, "weights_sha256": storage.weights_digest(fresh)})
            storage.save_weights(model, path)
    return storage.weights_digest(model.get_weights())


def _x0_problem(model, path: Path, record_path: Path, made_by: dict) -> str | None:
    """Load the x0 file into `model`; None if it is the x0 `made_by` makes, else what is wrong."""
    record = storage.read_json(record_path) if record_path.exists() else None
    for key, value in made_by.items():
        if record is not None and record["made_by"].get(key) != value:
            return f"was made for {key} {record['made_by'].get(key)!r}, not {value!r}"
    try:
        model.load_weights(path)
    except (OSError, ValueError, KeyError) as err:  # damaged, or made for other shapes
        return f"cannot be loaded into this network ({(str(err).splitlines() or [type(err).__name__])[0]})"
    digest = storage.weights_digest(model.get_weights())
    if record is None:  # made before x0 had a record, and it fits: record it as it is
        storage.atomic_write_json(record_path, {"made_by": made_by, "weights_sha256": digest})
    elif digest != record["weights_sha256"]:
        return f"holds other weights than it was made with (sha256 {digest}, made {record['weights_sha256']})"
    return None


def _x0_users(config: config_lib.Config, seed: int, path: Path) -> list[Path]:
    """Run directories of the trial whose initial.weights.h5 is a copy of the x0 file at `path`."""
    digest = storage.sha256_file(path)
    return sorted(copy.parent for copy in rundir.trial_directory(config).glob(f"*/seed{seed}/initial.weights.h5")
                  if storage.sha256_file(copy) == digest)


def _reseed_dropout(model, seed: int, epoch: int) -> None:
    """Dropout masks (and a remedy run's augmentations) depend on (seed, epoch) only, so a resumed
    epoch draws the same masks."""
    from replication import models  # imports Keras: not at the top, so a bad config is refused before it starts
    for index, generator in models.seed_generators(model):
        generator.state.assign(backend.seed_state(seed * 1_000_003 + epoch * 1009 + index, generator.state))


def _failpoint_callbacks(epoch: int) -> list:
    """A callback that triggers the "epoch:<n>:mid" failpoint, only when a test asks for one."""
    if os.environ.get(storage.FAILPOINT_VARIABLE) != f"epoch:{epoch}:mid":
        return []
    import keras

    class MidEpoch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 >= max(1, self.params["steps"] // 2):
                storage.failpoint(f"epoch:{epoch}:mid")

    return [MidEpoch()]


def should_stop(config: config_lib.Config, history: list[dict], tracker=None) -> str | None:
    """Why a run with this `history` stops now ("diverged", "target", "not_reached", "fixed",
    "max_epochs", "plateau"), or None to train on; measure/matched.py replays it on kept histories."""
    if history and not all(math.isfinite(float(history[-1][k])) for k in ("train_loss", "test_loss")):
        return "diverged"
    if tracker is not None:  # stopping: target (replication/target.py)
        if tracker.reached:
            return "target"
        if tracker.out_of_budget(len(history)) or len(history) >= config.epochs:
            return "not_reached"
    if len(history) >= config.epochs:
        return "fixed" if config.stopping == "fixed" else "max_epochs"
    if config.stopping == "plateau" and len(history) > config.patience:
        losses = [float(r["train_loss"]) for r in history]
        best_before = min(losses[:-config.patience])
        if min(losses[-config.patience:]) > best_before - config.min_delta:
            return "plateau"
    return None


def train(config: config_lib.Config, regime: regimes.RunSpec | str, seed: int, log=None) -> Path:
    """Train one run (or finish an interrupted one) and return its directory.

    `regime` is the run's RunSpec, or its name (parsed here, once: replication/regimes.py lists
    them): "sb", "lb", or one of the runs the config adds (a sweep, the remedies, the piggyback
    runs) or the batch-size study trains. `Config.for_regime` says what the run trains with."""
    log = log or sys.stderr
    spec = regimes.parse(regime) if isinstance(regime, str) else regime
    if not 0 <= seed < 2 ** 32:  # NumPy's generators and Keras' seeding take 32-bit seeds
        raise config_lib.ConfigError(f"seed {seed} is out of range: use a seed in [0, 2**32)")
    rundir.require_backend(config)
    deviations = config.run_deviations(spec)
    warm_start = config.warm_start_settings(spec)
    config = config.for_regime(spec)
    path = rundir.run_directory(config, spec.name, seed)
    inputs = _inputs(config, spec, seed) if not (path / "metrics.json").exists() else None
    with storage.locked(path.parent / f".seed{seed}.lock"):
        if (path / "metrics.json").exists():
            rundir.check_finished(config, spec, seed, path, warm_start)
            print(f"[{path}] already finished; skipping", file=log)
            return path
        arrays, parallel = inputs or _inputs(config, spec, seed)
        return _train_locked(config, spec, seed, path, log, arrays, deviations, warm_start, parallel)


def _inputs(config: config_lib.Config, spec: regimes.RunSpec, seed: int) -> tuple:
    """(the arrays, backend.distribution's record) of a run to train. Missing data, an impossible
    batch size, a piggyback run's missing start or a batch the devices cannot split fail here,
    before anything is written."""
    arrays = rundir.load_arrays(config)
    batch_size = config.batch_size(spec, len(arrays[1]))
    piggyback_start(config, spec, seed)
    # Before the model is built: its variables take the distribution's layout.
    return arrays, backend.distribution(batch_size, len(arrays[1]))


def piggyback_start(config: config_lib.Config, spec: regimes.RunSpec, seed: int) -> Path | None:
    """The SB iterate a piggyback run (lb-from-sb<k>, k >= 1) starts from; None for any other run
    (lb-from-sb0 starts from x0, as every run does). RunError if it is not there: the SB run has
    to be finished first (its iterate is final only then)."""
    sb_epoch = spec.sb_epoch
    if not sb_epoch:
        return None
    sb_run = rundir.run_directory(config, "sb", seed)
    iterate = rundir.iterate_path(sb_run, sb_epoch)
    if not (sb_run / "metrics.json").exists():
        raise rundir.RunError(f"{spec.name} starts from the SB run's iterate of epoch {sb_epoch} ({iterate}), and the "
                       f"SB run {sb_run} is not finished: train the SB run first: python -m replication train "
                       f"CONFIG --seed {seed} --regime sb")
    if not iterate.exists():
        raise rundir.RunError(f"{spec.name} starts from {iterate}, which the finished SB run {sb_run} does not hold "
                       f"(deleted, or made before it kept iterates): delete {sb_run} and train the SB run "
                       f"first: python -m replication train CONFIG --seed {seed} --regime sb")
    return iterate


def _train_locked(config, spec, seed, path, log, arrays, deviations, warm_start=None, parallel=None) -> Path:
    """Train under the run's lock: prepare (or resume), one epoch at a time, finish."""
    session = _prepare(config, spec, seed, path, log, arrays, warm_start, parallel)
    while (reason := should_stop(config, session.history, session.tracker)) is None:
        _train_epoch(session)
    return _finish(session, reason, deviations)


@dataclasses.dataclass
class _Session:
    """A run in progress: what its epochs and its finish need."""

    config: config_lib.Config
    spec: regimes.RunSpec
    seed: int
    path: Path
    log: object
    arrays: tuple  # (dataset, x_train, y_train, x_test, y_test)
    batch_size: int
    resolved: dict
    model: object
    x0_digest: str
    env: dict
    history: list[dict]
    objectives: tuple  # (train, test) objective.Objective
    epoch_data: tuple  # (x, y) as backend.training_data holds them
    started: float
    tracker: object = None  # target.Tracker of a run with stopping: target
    warm_start: dict | None = None  # a piggyback run's settings and the weights it started from


# What env.json keeps of each earlier process of a resumed run (its top level describes the process
# that trains on): the code and machine that made those epochs, which may differ from the last one's.
PROCESS_KEYS = ("git_commit", "git_dirty", "device", "backend", "backend_version", "keras", "numpy",
                "python", "platform", "xla", "deterministic_ops")


def _resumed(previous: dict, done: int) -> dict:
    """env.json's record of the processes before this one: `previous` is env.json as the last process
    left it, `done` the epochs finished. A process that finished no epoch made nothing, so it is left
    out. Written at the resume (not only at the end), so a run resumed several times keeps each."""
    first = previous.get("resumed_after_epoch", 0) + 1
    earlier = list(previous.get("earlier_processes", []))
    if done >= first:
        earlier.append({"first_epoch": first, "last_epoch": done,
                        **{key: previous[key] for key in PROCESS_KEYS if key in previous}})
    return {"earlier_processes": earlier, "resumed_after_epoch": done}


def _prepare(config, spec, seed, path, log, arrays, warm_start=None, parallel=None) -> _Session:
    """Start the run, or resume it after its last completed epoch. Each start-up file (config.yaml,
    initial.weights.h5, env.json) is written if missing, so a run killed between two of them
    resumes too. `parallel`: backend.distribution's record, already applied ({} or None: one device)."""
    from replication import objective

    dataset, x_train, y_train, x_test, y_test = arrays
    batch_size = config.batch_size(spec, len(x_train))
    resolved = rundir.resolved_config(config, spec, seed, batch_size, warm_start)
    if (path / "config.yaml").exists():
        rundir.check_same_config(path, resolved)
    determinism = backend.setup_determinism(seed, deterministic_ops=not config.jit_compile)
    model = rundir.build_model(config, x_train.shape[1:], dataset.num_classes, remedy=spec.remedy)
    x0_digest = load_x0(model, config, seed, log)
    start = piggyback_start(config, spec, seed)
    if warm_start is not None:  # a piggyback run: from SB's iterate (x0 at 0 SB epochs), fresh Adam
        warm_start = {**warm_start, **_load_start(model, config, path, start, seed)}
    # Keras 3 saves a compiled model's optimizer variables with its weights, learning rate included,
    # so loading x0 sets the rate of whichever run wrote x0: give this run its own (a scaled sweep
    # run's differs; test_sweep proves it takes effect).
    model.optimizer.learning_rate.assign(config.learning_rate)
    model.optimizer.build(model.trainable_variables)  # so a checkpoint can restore Adam's state

    env = {**rundir.environment(seed), **determinism, "xla": bool(model.jit_compile), "start_time": rundir.now()}
    if parallel:  # only then: the env.json of a one-device run is what it was before the switch existed
        env["data_parallel"] = parallel
    if not (path / "config.yaml").exists():
        storage.atomic_write_text(path / "config.yaml", config_lib.yaml.safe_dump(resolved, sort_keys=False))
    if not (path / "initial.weights.h5").exists():
        storage.atomic_write_bytes(path / "initial.weights.h5", (start or rundir.x0_path(config, seed)).read_bytes())
    if not (path / "env.json").exists():
        storage.atomic_write_json(path / "env.json", env)
    # env.json describes the process that trains on: a run resumed without the switch drops its record.
    previous = storage.read_json(path / "env.json")  # as the last process left it
    env = {**{k: v for k, v in previous.items() if k != "data_parallel"},
           **{k: v for k, v in env.items() if k != "start_time"}}

    history = storage.read_csv(path / "history.csv") if (path / "history.csv").exists() else []
    if history:
        storage.load_weights(model, path / f"checkpoint-{len(history)}.weights.h5")
        print(f"[{path}] resuming after epoch {len(history)}", file=log)
        env.update(_resumed(previous, len(history)))
    if config.stopping == "target":
        from replication import target

        checks = target.read_resumed_trace(path)
    # A resumed run passed check_same_config, so only keys that do not change training (or ones its
    # first process predates) may differ: its config.yaml becomes the config it finishes under, which
    # metrics.json records, else the two disagree and the loader refuses the run as mixed. After its
    # files were read: a resume refused for a damaged file writes nothing.
    if storage.read_yaml(path / "config.yaml") != resolved:
        storage.atomic_write_text(path / "config.yaml", config_lib.yaml.safe_dump(resolved, sort_keys=False))
    if history:  # now, so a process killed before the end is still on record at the next resume
        storage.atomic_write_json(path / "env.json", env)
    objectives = (objective.Objective(model, x_train, y_train, config.eval_batch_size),
                  objective.Objective(model, x_test, y_test, config.eval_batch_size))
    tracker = None
    if config.stopping == "target":
        tracker = target.Tracker(config, model, x_train, y_train, batch_size, len(history), checks)
    session = _Session(config, spec, seed, path, log, arrays, batch_size, resolved, model, x0_digest, env,
                       history, objectives, backend.training_data(x_train, y_train), time.time(), tracker,
                       warm_start=warm_start)
    if tracker:
        tracker.on_milestone = lambda value: _save_milestone(session, value)
    return session


def _load_start(model, config: config_lib.Config, path: Path, start: Path | None, seed: int) -> dict:
    """Give a piggyback run's `model` (holding x0) the weights of the SB iterate `start` (None: keep
    x0) and say where they came from: the file, its SHA-256 and the weight values' digest. A run
    resumed after its start file changed (the SB run retrained) would mix two starts: refused, by
    initial.weights.h5, which keeps the first start's bytes."""
    source = start or rundir.x0_path(config, seed)
    file_digest = storage.sha256_file(source)
    initial = path / "initial.weights.h5"
    if initial.exists() and storage.sha256_file(initial) != file_digest:
        raise rundir.RunError(f"{source} changed since the piggyback run {path} started from it (its "
                       f"initial.weights.h5 differs): delete {path} and train it again")
    if start is not None:  # an iterate is a plain model's file (train._save_plain)
        plain = rundir.build_model(config, model.input_shape[1:], model.output_shape[-1], compiled=False)
        storage.load_weights(plain, start)
        model.set_weights(plain.get_weights())  # the model's variables only: Adam's state stays fresh
    root, start = Path(config.results_dir), source
    return {"start": str(start.relative_to(root) if start.is_relative_to(root) else start),
            "start_file_sha256": file_digest, "initial_sha256": storage.weights_digest(model.get_weights())}


def _tag(session: _Session) -> str:
    return (f"{session.config.network} {session.spec.name.upper()} (batch {session.batch_size}) "
            f"seed {session.seed}")


def epoch_order(seed: int, epoch: int, examples: int) -> np.ndarray:
    """The order of the training examples in epoch `epoch` (0 first) of seed `seed`'s runs: the
    same for every run of that seed, whatever its batch size. The examples measured are drawn
    apart from it (data.measurement_subset)."""
    return np.random.default_rng([seed, epoch]).permutation(examples)


def _train_epoch(session: _Session) -> None:
    """One epoch: shuffle and dropout masks from (seed, epoch) alone, fit, evaluate, then a
    checkpoint and the history row that names it."""
    config, model, path, history = session.config, session.model, session.path, session.history
    epoch = len(history)
    tick = time.time()
    _reseed_dropout(model, session.seed, epoch)
    order = epoch_order(session.seed, epoch, len(session.arrays[1]))
    # Conservative training's outer step: each batch `inner_steps` times in a row (remedies.py).
    repeat = config.conservative.inner_steps if session.spec.remedy == "conservative" else 1
    model.fit(**backend.epoch_inputs(*session.epoch_data, order, session.batch_size, repeat=repeat), epochs=1,
              verbose=1 if progress.on_terminal() else 0,  # a batch bar on a terminal only
              callbacks=_failpoint_callbacks(epoch + 1) +
              ([session.tracker.callback(epoch)] if session.tracker else []))
    train_loss, train_acc = session.objectives[0].evaluate()
    test_loss, test_acc = session.objectives[1].evaluate()
    history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": 100 * train_acc,
                    "test_loss": test_loss, "test_accuracy": 100 * test_acc,
                    "seconds": round(time.time() - tick, 3)})
    # Checkpoint first, then history: history's length always names an existing checkpoint.
    storage.save_weights(model, path / f"checkpoint-{epoch + 1}.weights.h5")
    if epoch + 1 in config.kept_epochs():  # before history: a resumed run redoes this epoch, iterate too
        _save_plain(session, rundir.iterate_path(path, epoch + 1))
    if session.tracker:  # before history: a resumed run drops the rows of the epoch it redoes
        session.tracker.write(path)
    storage.atomic_write_csv(path / "history.csv", history, rundir.HISTORY_FIELDS)
    old = path / f"checkpoint-{epoch}.weights.h5"
    if old.exists():
        old.unlink()
    storage.failpoint(f"epoch:{epoch + 1}:end")
    print(f"[{_tag(session)}] epoch {epoch + 1}/{config.epochs}: train loss {train_loss:.4f} "
          f"acc {100 * train_acc:.2f}% | test loss {test_loss:.4f} acc {100 * test_acc:.2f}% "
          f"({time.time() - tick:.1f} s)", file=session.log, flush=True)


def _save_plain(session: _Session, target: Path) -> None:
    """The model's weights without the optimizer's slots (a plain model loads them), atomically."""
    dataset, x_train = session.arrays[0], session.arrays[1]
    plain = rundir.build_model(session.config, x_train.shape[1:], dataset.num_classes, compiled=False)
    plain.set_weights(session.model.get_weights())
    storage.save_weights(plain, target)


def adam_state_path(run_dir) -> Path:
    """Where a run with stopping: target keeps Adam's state at its final point (_save_adam_state)."""
    return Path(run_dir) / "final.adam.npz"


def _save_adam_state(session: _Session, target: Path) -> None:
    """Adam's second moment v at the final point, for the noise scale's B_adam (docs/noise-scale.md,
    Definition 2: P from v_hat = v_t / (1 - beta_2^t)): v flat in model.trainable_variables order,
    the step t, beta_2, epsilon, and the digest of the weights it belongs to; atomically."""
    model = session.model
    optimizer = model.optimizer
    # Keras' Adam keeps v per variable; _get_variable_index is how its own update step finds it.
    velocities = [optimizer._velocities[optimizer._get_variable_index(v)] for v in model.trainable_variables]
    v = np.concatenate([np.asarray(velocity.numpy(), np.float32).ravel() for velocity in velocities])
    storage.atomic_savez(target, v=v, t=np.int64(int(optimizer.iterations.numpy())),
                         beta_2=np.float64(optimizer.beta_2), epsilon=np.float64(optimizer.epsilon),
                         weights_sha256=np.str_(storage.weights_digest(model.get_weights())))


def _save_milestone(session: _Session, value: float) -> None:
    """The weights and Adam's state where a milestone (target.milestones) is first met, so the noise
    scale can be measured there (docs/noise-scale.md: at the first check meeting each target). A
    resumed run that redoes the epoch writes the same files again (the epoch is redone exactly)."""
    from replication import target

    _save_plain(session, target.milestone_path(session.path, value))
    _save_adam_state(session, target.milestone_path(session.path, value, ".adam.npz"))


def _finish(session: _Session, reason: str, deviations: list[str]) -> Path:
    """Final weights, env.json, then metrics.json; drop the checkpoints."""
    config, path, history = session.config, session.path, session.history
    dataset, x_train, _, x_test, _ = session.arrays
    final = history[-1]
    diverged = reason == "diverged"
    metrics = {
        "network": config.network, "dataset": config.dataset, "dataset_label": dataset.label,
        "profile": config.profile, "regime": session.spec.name, "seed": session.seed,
        "batch_size": session.batch_size, "batchnorm": config.batchnorm,
        "eval_batch_size": config.eval_batch_size, "num_train": len(x_train), "num_test": len(x_test),
        "epochs_run": len(history), "stopped": reason, "diverged": diverged,
        "diverged_epoch": len(history) if diverged else None,
        "train_loss": float(final["train_loss"]), "train_accuracy": float(final["train_accuracy"]),
        "test_loss": float(final["test_loss"]), "test_accuracy": float(final["test_accuracy"]),
        "x0_sha256": session.x0_digest,  # of the weight values: the SB/LB pair check compares these
        "deviations": deviations,
        "kept_iterates": [epoch for epoch in config.kept_epochs() if epoch <= len(history)],
        # A piggyback run (Figure 5): what it started from, as a file and as weight values.
        **({"warm_start": session.warm_start} if session.warm_start is not None else {}),
        # Where the run lives is its path, not part of what it computed: leaving results_dir out
        # makes metrics.json identical wherever the same run is made (and moved trees still load).
        "resolved_config": {k: v for k, v in session.resolved.items() if k != "results_dir"},
    }
    if session.tracker:
        metrics["target"] = session.tracker.summary(len(history))
    _save_plain(session, path / "final.weights.h5")
    if session.tracker and not diverged:  # the batch-size study's runs: B_adam's v_hat at this point
        _save_adam_state(session, adam_state_path(path))
    session.env.update(end_time=rundir.now(), train_seconds_this_process=round(time.time() - session.started, 1))
    storage.atomic_write_json(path / "env.json", session.env)
    storage.atomic_write_json(path / "metrics.json", metrics)  # last: its presence means "done"
    for leftover in path.glob("checkpoint-*.weights.h5"):
        leftover.unlink()
    print(f"[{_tag(session)}] done ({reason}): {path}", file=session.log, flush=True)
    return path
