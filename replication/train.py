"""The SB/LB protocol of Keskar et al. (2017), section 2.2 and appendix B, for one run.

One run = (network, regime, seed) -> a self-describing run directory:

    <results_dir>/<network>_<dataset>/<regime>/seed<N>/
        config.yaml         resolved config (plus regime, seed, batch size)
        env.json            git commit/dirty, versions, device, seed, start/end time, wall time
        history.csv         one row per epoch: train/test loss and accuracy
        metrics.json        final numbers, stopping reason, divergence, deviations from the paper
        initial.weights.h5  x0, shared by the SB and LB runs of the trial (same SHA-256)
        final.weights.h5    the minimiser

Protocol: Adam (Keras 1 defaults: lr 1e-3, betas 0.9/0.999, epsilon 1e-8), mean cross-entropy,
SB batch 256, LB batch 10% of the training set, SB and LB from the same x0 with fresh Adam state.
Each epoch's shuffle and dropout masks are derived from (seed, epoch) alone, and the Adam state is
checkpointed with the weights after every epoch, so an interrupted run resumes from its last
completed epoch and ends with exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from replication import config as config_lib
from replication import backend, data, storage

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Keys that do not change what training computes: a run directory made with other values of
# these is still the same run.
NON_TRAINING_KEYS = ("description", "profile", "seeds", "sharpness", "landscape", "sweep", "results_dir")
HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"]


class RunError(RuntimeError):
    """A run directory conflicts with the request, or a run cannot proceed."""


@dataclasses.dataclass
class Run:
    """A finished run loaded back from its directory."""

    path: Path
    config: config_lib.Config
    metrics: dict
    model: object  # keras.Model holding the final weights


def trial_directory(config: config_lib.Config) -> Path:
    return Path(config.results_dir) / f"{config.network}_{config.dataset}"


def run_directory(config: config_lib.Config, regime: str, seed: int) -> Path:
    return trial_directory(config) / regime / f"seed{seed}"


def load_arrays(config: config_lib.Config):
    """(dataset, x_train, y_train, x_test, y_test) with the config's subsets applied."""
    dataset = data.load(config.dataset, config.data_dir)
    x_train, y_train = data.subset(dataset.x_train, dataset.y_train, config.train_subset)
    x_test, y_test = data.subset(dataset.x_test, dataset.y_test, config.test_subset)
    return dataset, x_train, y_train, x_test, y_test


def build_model(config: config_lib.Config, input_shape, num_classes: int, compiled: bool = True):
    import keras

    from replication import models

    model = models.build(config.network, input_shape, num_classes, config.batchnorm)
    if compiled:
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate, beta_1=config.beta_1,
                                            beta_2=config.beta_2, epsilon=config.adam_epsilon),
            loss="sparse_categorical_crossentropy",
            jit_compile=backend.keras_jit_compile(config.jit_compile),
        )
    return model


def environment(seed: int) -> dict:
    """Where and with what a result was computed: git state, versions, backend, device, seed."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        **backend.describe(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "seed": seed,
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _resolved(config: config_lib.Config, regime: str, seed: int, batch_size: int) -> dict:
    return {**config.to_dict(),
            "run": {"regime": regime, "seed": seed, "batch_size": batch_size, "backend": backend.name()}}


def _check_same_config(path: Path, resolved: dict) -> None:
    previous = config_lib.yaml.safe_load((path / "config.yaml").read_text())
    # Runs made before the JAX port name no backend: they ran on TensorFlow.
    previous.get("run", {}).setdefault("backend", "tensorflow")
    for key in sorted(set(previous) | set(resolved)):
        if key in NON_TRAINING_KEYS:
            continue
        if previous.get(key) != resolved.get(key):
            raise RunError(
                f"run directory {path} was made by another config ('{key}' was "
                f"{previous.get(key)!r}, now {resolved.get(key)!r}): use another results_dir "
                "or delete that directory")


def x0_path(config: config_lib.Config, seed: int) -> Path:
    """x0 of a trial. Keras draws it through the backend's own generator, so each backend has its
    own (TensorFlow keeps the name it had before the JAX port): an SB run on one backend and an LB
    run on the other never share an x0, and the pair check refuses them."""
    suffix = "" if backend.name() == "tensorflow" else f"-{backend.name()}"
    return trial_directory(config) / "x0" / f"seed{seed}{suffix}.weights.h5"


def _initial_weights(model, config, seed: int) -> Path:
    """x0 of the trial: made once (under a lock) and shared by its SB and LB runs."""
    path = x0_path(config, seed)
    with storage.locked(path.with_suffix(".lock")):
        if not path.exists():
            storage.save_weights(model, path)
    return path


def _reseed_dropout(model, seed: int, epoch: int) -> None:
    """Dropout masks depend on (seed, epoch) only, so a resumed epoch draws the same masks."""
    for index, layer in enumerate(model.layers):
        generator = getattr(layer, "seed_generator", None)
        if generator is not None:
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


def _should_stop(config: config_lib.Config, history: list[dict]) -> str | None:
    if history and not all(math.isfinite(float(history[-1][k])) for k in ("train_loss", "test_loss")):
        return "diverged"
    if len(history) >= config.epochs:
        return "fixed" if config.stopping == "fixed" else "max_epochs"
    if config.stopping == "plateau" and len(history) > config.patience:
        losses = [float(r["train_loss"]) for r in history]
        best_before = min(losses[:-config.patience])
        if min(losses[-config.patience:]) > best_before - config.min_delta:
            return "plateau"
    return None


def train(config: config_lib.Config, regime: str, seed: int, log=None) -> Path:
    """Train one run (or finish an interrupted one) and return its directory.

    `regime` is "sb", "lb" or a sweep run of the config ("b<batch>[-<scaling>]"), whose learning
    rate `Config.for_regime` scales."""
    log = log or sys.stderr
    if not 0 <= seed < 2 ** 32:  # NumPy's generators and Keras' seeding take 32-bit seeds
        raise config_lib.ConfigError(f"seed {seed} is out of range: use a seed in [0, 2**32)")
    if config.backend is not None and config.backend != backend.name():
        raise config_lib.ConfigError(
            f"profile {config.profile} runs on the {config.backend} backend, this process on "
            f"{backend.name()}: set KERAS_BACKEND={config.backend}")
    deviations = config.run_deviations(regime)
    config = config.for_regime(regime)
    path = run_directory(config, regime, seed)
    arrays = None
    if not (path / "metrics.json").exists():
        # Missing data or an impossible batch size fail here, before anything is written.
        arrays = load_arrays(config)
        config.batch_size(regime, len(arrays[1]))
    with storage.locked(path.parent / f".seed{seed}.lock"):
        if (path / "metrics.json").exists():
            _check_finished(config, regime, seed, path)
            print(f"[{path}] already finished; skipping", file=log)
            return path
        return _train_locked(config, regime, seed, path, log, arrays or load_arrays(config), deviations)


def _check_finished(config: config_lib.Config, regime: str, seed: int, path: Path) -> None:
    """The finished run at `path` was made by `config` (for_regime applied); else RunError naming
    the key that differs."""
    num_train = storage.read_json(path / "metrics.json")["num_train"]
    _check_same_config(path, _resolved(config, regime, seed, config.batch_size(regime, num_train)))


def check(config: config_lib.Config) -> int:
    """Every finished run of `config` was made by it (RunError names the first key that differs);
    returns how many there are. `make` runs this before a profile's steps: a finished run is a
    file target it never remakes, so without this an edited config would have its old runs
    reported beside new ones."""
    finished = 0
    for seed in config.seeds:
        for regime in config.regimes():
            scaled = config.for_regime(regime)
            path = run_directory(scaled, regime, seed)
            if (path / "metrics.json").exists():
                _check_finished(scaled, regime, seed, path)
                finished += 1
    return finished


def _train_locked(config, regime, seed, path, log, arrays, deviations) -> Path:
    from replication import objective

    dataset, x_train, y_train, x_test, y_test = arrays
    batch_size = config.batch_size(regime, len(x_train))
    resolved = _resolved(config, regime, seed, batch_size)
    if (path / "config.yaml").exists():
        _check_same_config(path, resolved)
    determinism = backend.setup_determinism(seed, deterministic_ops=not config.jit_compile)
    model = build_model(config, x_train.shape[1:], dataset.num_classes)
    model.load_weights(_initial_weights(model, config, seed))
    # Keras 3 saves a compiled model's optimizer variables with its weights, learning rate included,
    # so loading x0 sets the rate of whichever run wrote x0: give this run its own (a scaled sweep
    # run's differs; test_sweep proves it takes effect).
    model.optimizer.learning_rate.assign(config.learning_rate)
    x0_digest = storage.weights_digest(model.get_weights())
    model.optimizer.build(model.trainable_variables)  # so a checkpoint can restore Adam's state

    env = {**environment(seed), **determinism, "xla": bool(model.jit_compile), "start_time": _now()}
    if not (path / "config.yaml").exists():
        storage.atomic_write_text(path / "config.yaml", config_lib.yaml.safe_dump(resolved, sort_keys=False))
        storage.atomic_write_bytes(path / "initial.weights.h5",
                                   x0_path(config, seed).read_bytes())
        storage.atomic_write_json(path / "env.json", env)
    env = {**storage.read_json(path / "env.json"), **{k: v for k, v in env.items() if k != "start_time"}}

    history = storage.read_csv(path / "history.csv") if (path / "history.csv").exists() else []
    if history:
        model.load_weights(path / f"checkpoint-{len(history)}.weights.h5")
        print(f"[{path}] resuming after epoch {len(history)}", file=log)

    train_objective = objective.Objective(model, x_train, y_train, config.eval_batch_size)
    test_objective = objective.Objective(model, x_test, y_test, config.eval_batch_size)
    x_epoch, y_epoch = backend.training_data(x_train, y_train)
    tag = f"{config.network} {regime.upper()} (batch {batch_size}) seed {seed}"
    started = time.time()
    while (reason := _should_stop(config, history)) is None:
        epoch = len(history)
        tick = time.time()
        _reseed_dropout(model, seed, epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(x_train))
        model.fit(**backend.epoch_inputs(x_epoch, y_epoch, order, batch_size), epochs=1,
                  verbose=0, callbacks=_failpoint_callbacks(epoch + 1))
        train_loss, train_acc = train_objective.evaluate()
        test_loss, test_acc = test_objective.evaluate()
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": 100 * train_acc,
                        "test_loss": test_loss, "test_accuracy": 100 * test_acc,
                        "seconds": round(time.time() - tick, 3)})
        # Checkpoint first, then history: history's length always names an existing checkpoint.
        storage.save_weights(model, path / f"checkpoint-{epoch + 1}.weights.h5")
        storage.atomic_write_csv(path / "history.csv", history, HISTORY_FIELDS)
        old = path / f"checkpoint-{epoch}.weights.h5"
        if old.exists():
            old.unlink()
        storage.failpoint(f"epoch:{epoch + 1}:end")
        print(f"[{tag}] epoch {epoch + 1}/{config.epochs}: train loss {train_loss:.4f} "
              f"acc {100 * train_acc:.2f}% | test loss {test_loss:.4f} acc {100 * test_acc:.2f}% "
              f"({time.time() - tick:.1f} s)", file=log, flush=True)

    final = history[-1]
    diverged = reason == "diverged"
    metrics = {
        "network": config.network, "dataset": config.dataset, "dataset_label": dataset.label,
        "profile": config.profile, "regime": regime, "seed": seed, "batch_size": batch_size,
        "batchnorm": config.batchnorm, "eval_batch_size": config.eval_batch_size,
        "num_train": len(x_train), "num_test": len(x_test),
        "epochs_run": len(history), "stopped": reason, "diverged": diverged,
        "diverged_epoch": len(history) if diverged else None,
        "train_loss": float(final["train_loss"]), "train_accuracy": float(final["train_accuracy"]),
        "test_loss": float(final["test_loss"]), "test_accuracy": float(final["test_accuracy"]),
        "x0_sha256": x0_digest,  # of the weight values: the SB/LB pair check compares these
        "deviations": deviations,
        # Where the run lives is its path, not part of what it computed: leaving results_dir out
        # makes metrics.json identical wherever the same run is made (and moved trees still load).
        "resolved_config": {k: v for k, v in resolved.items() if k != "results_dir"},
    }
    # Final weights without the optimizer's slots: a plain model loads them.
    plain = build_model(config, x_train.shape[1:], dataset.num_classes, compiled=False)
    plain.set_weights(model.get_weights())
    storage.save_weights(plain, path / "final.weights.h5")
    env.update(end_time=_now(), train_seconds_this_process=round(time.time() - started, 1))
    storage.atomic_write_json(path / "env.json", env)
    storage.atomic_write_json(path / "metrics.json", metrics)  # last: its presence means "done"
    for leftover in path.glob("checkpoint-*.weights.h5"):
        leftover.unlink()
    print(f"[{tag}] done ({reason}): {path}", file=log, flush=True)
    return path


def load_run(path: str | os.PathLike) -> Run:
    """A finished run: its config, metrics and a model holding the final weights."""
    path = Path(path)
    if not (path / "metrics.json").is_file():
        raise RunError(f"{path} is not a finished run directory (no metrics.json): "
                       "train it first with `python -m replication train CONFIG`")
    metrics = storage.read_json(path / "metrics.json")
    resolved = dict(metrics["resolved_config"])
    resolved.pop("run")
    resolved["results_dir"] = str(path.parents[2])
    config = config_lib.from_dict(resolved, where=str(path / "config.yaml"))
    model = build_model(config, data.INPUT_SHAPE[config.dataset], data.NUM_CLASSES[config.dataset],
                        compiled=False)
    model.load_weights(path / "final.weights.h5")
    return Run(path, config, metrics, model)

