"""A run directory: where a run of Keskar et al. (2017)'s protocol lives, what it holds, how it
loads back, and which keys of a config make it the same run. replication/train.py writes it; the
measures, the pipeline, the study, the bench and the analysis read it.

One run = (network, regime, seed) -> a self-describing run directory:

    <results_dir>/<network>_<dataset>/<regime>/seed<N>/
        config.yaml         resolved config (plus regime, seed, batch size)
        env.json            git commit/dirty, versions, device, seed, start/end time, wall time
                            (of the process that finished it; a resumed run also keeps each earlier
                            process's and its epochs: earlier_processes)
        history.csv         one row per epoch: train/test loss and accuracy
        metrics.json        final numbers, stopping reason, divergence, deviations from the paper
        initial.weights.h5  x0, shared by the SB and LB runs of the trial (same SHA-256)
        final.weights.h5    the minimiser
        iterates/epoch<N>.weights.h5  the weights at the end of epoch N, for each of the config's
                            kept_epochs() (keep_iterates, keep_every); none unless asked
    <results_dir>/<network>_<dataset>/x0/seed<N>.weights.h5, seed<N>.json: the trial's x0, and
        what made it (network, dataset, batchnorm, seed, backend) with its weights' SHA-256

"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

from replication import config as config_lib
from replication import backend, data, regimes, storage
from replication.errors import UserError


# Keys that do not change what training computes: a run directory made with other values of
# these is still the same run.
# The remedy sections only add runs (sb-augmented, lb-conservative, ...), and each of those records
# its remedy's settings in its own `run` entry (Config.remedy_settings), which is compared; so do
# the warm starts (lb-from-sb<k>: Config.warm_start_settings).
NON_TRAINING_KEYS = ("description", "profile", "seeds", "sharpness", "landscape", "sweep", "results_dir",
                     "augmentation", "conservative", "hessian", "batch_size_study", "warm_start",
                     "iterate_measure")


# Keys that do not change what training computes but do change which files a run directory holds:
# they are not in NON_TRAINING_KEYS, so a run made with other values is refused (an iterate that
# was not kept cannot be made afterwards, and one resumed with another list would hold a mix);
# their numbers still compare with any other run's.
RUN_FILE_KEYS = ("keep_iterates", "keep_every")


HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"]


class RunError(UserError, RuntimeError):
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


def iterate_path(run_dir, epoch: int) -> Path:
    """The weights a run kept at the end of `epoch` (a plain model's, as final.weights.h5)."""
    return Path(run_dir) / "iterates" / f"epoch{epoch}.weights.h5"


def load_arrays(config: config_lib.Config):
    """(dataset, x_train, y_train, x_test, y_test) with the config's subsets applied."""
    dataset = data.load(config.dataset, config.data_dir)
    config.check_subsets(len(dataset.x_train), len(dataset.x_test))
    x_train, y_train = data.subset(dataset.x_train, dataset.y_train, config.train_subset)
    x_test, y_test = data.subset(dataset.x_test, dataset.y_test, config.test_subset)
    return dataset, x_train, y_train, x_test, y_test


def training_examples(config: config_lib.Config, subset: int | None):
    """(inputs, labels): the run's training set (train_subset applied), then the `subset` of it f is
    measured on (data.measurement_subset: sharpness, noise scale)."""
    _, x_train, y_train, _, _ = load_arrays(config)
    return data.measurement_subset(x_train, y_train, subset)


def build_model(config: config_lib.Config, input_shape, num_classes: int, compiled: bool = True,
                remedy: str | None = None):
    """The network (compiled with the protocol's Adam). With a remedy run's `remedy` (its
    RunSpec's: "augmentation", "conservative") the same network and weights, trained its way
    (replication/remedies.py): with augmentation layers in front, or with the proximal Adam of
    conservative training."""
    import keras

    from replication import models, remedies

    model = models.build(config.network, input_shape, num_classes, config.batchnorm)
    if config.ghost_batch_size:
        # Ghost batch norm changes training, not x0 (X0_KEYS): the ghost copy starts from the plain
        # network's draw (models.with_ghost_batch_norm's clone draws other weights), so a ghost run
        # makes the x0 a plain run of the trial makes, whichever of them comes first.
        plain, model = model, models.with_ghost_batch_norm(model, config.ghost_batch_size)
        model.set_weights(plain.get_weights())
    if remedy == "augmentation":
        model = remedies.augmented(model, config.augmentation)
    if compiled:
        adam = {"learning_rate": config.learning_rate, "beta_1": config.beta_1, "beta_2": config.beta_2,
                "epsilon": config.adam_epsilon}
        model.compile(
            optimizer=(remedies.ProximalAdam(proximal_lambda=config.conservative.proximal_lambda,
                                             inner_steps=config.conservative.inner_steps, **adam)
                       if remedy == "conservative" else keras.optimizers.Adam(**adam)),
            loss="sparse_categorical_crossentropy",
            jit_compile=backend.keras_jit_compile(config.jit_compile),
        )
    return model


def git_state(root: Path = storage.PROJECT_ROOT) -> dict:
    """The commit of the code in `root` and whether it differs from that commit (tracked files only).
    Result files do not count: `results/` is what runs write, so a finished report or a results
    folder linked in from elsewhere would otherwise mark every later run as made by uncommitted code."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"git_commit": git("rev-parse", "HEAD") or "unknown",
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"))}


def environment(seed: int) -> dict:
    """Where and with what a result was computed: git state, versions, backend, device, seed."""
    return {
        **git_state(),
        "python": platform.python_version(),
        **backend.describe(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "seed": seed,
    }


def now() -> str:
    """The time a result records (UTC, ISO 8601, whole seconds): env.json, bench.json."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def resolved_config(config: config_lib.Config, spec: regimes.RunSpec, seed: int, batch_size: int,
                    warm_start: dict | None = None) -> dict:
    """config.yaml of the run `spec`: `config` (for_regime applied) and the run entry; `warm_start`
    is a piggyback run's Config.warm_start_settings, from the trial's config (for_regime changes epochs)."""
    run = {"regime": spec.name, "seed": seed, "batch_size": batch_size, "backend": backend.name()}
    if (remedy := config.remedy_settings(spec)) is not None:
        run["remedy"] = remedy
    if warm_start is not None:
        run["warm_start"] = warm_start
    return {**config.to_dict(), "run": run}


def check_same_config(path: Path, resolved: dict) -> None:
    previous = storage.read_yaml(path / "config.yaml")
    # Runs made before the JAX port name no backend: they ran on TensorFlow.
    previous.get("run", {}).setdefault("backend", "tensorflow")
    # A key a run's config did not have yet (a run made before it existed) had its default.
    filled = config_lib.with_defaults(previous)
    for key in sorted(set(previous) | set(resolved)):
        if key in NON_TRAINING_KEYS:
            continue
        before = filled.get(key)
        if before != resolved.get(key):
            raise RunError(
                f"run directory {path} was made by another config ('{key}' was "
                f"{before!r}, now {resolved.get(key)!r}): use another "
                "results_dir or delete that directory")


def x0_path(config: config_lib.Config, seed: int) -> Path:
    """x0 of a trial. Keras draws it through the backend's own generator, so each backend has its
    own (TensorFlow keeps the name it had before the JAX port): an SB run on one backend and an LB
    run on the other never share an x0, and the pair check refuses them."""
    suffix = "" if backend.name() == "tensorflow" else f"-{backend.name()}"
    return trial_directory(config) / "x0" / f"seed{seed}{suffix}.weights.h5"


# What x0 depends on besides the seed, the backend and the code: the network's shapes. Nothing else
# that a config sets changes the initial weights: not ghost batch norm (build_model gives a ghost
# network the plain network's draw), nor a remedy (same layers, so same weights) or the optimizer.
X0_KEYS = ("network", "dataset", "batchnorm")


def x0_record_path(config: config_lib.Config, seed: int) -> Path:
    """What made x0 and its weights' digest, beside it (x0/seed0.weights.h5 -> x0/seed0.json)."""
    path = x0_path(config, seed)
    return path.with_name(path.name.removesuffix(".weights.h5") + ".json")


def check_finished(config: config_lib.Config, spec: regimes.RunSpec, seed: int, path: Path,
                   warm_start: dict | None = None) -> None:
    """The finished run `spec` at `path` was made by `config` (for_regime applied; `warm_start` as
    resolved_config's); else RunError naming the key that differs."""
    num_train = storage.read_json(path / "metrics.json")["num_train"]
    check_same_config(path, resolved_config(config, spec, seed, config.batch_size(spec, num_train), warm_start))


def require_backend(config: config_lib.Config) -> None:
    """ConfigError unless this process runs the backend `config` is bound to (if any)."""
    if config.backend is not None and config.backend != backend.name():
        raise config_lib.ConfigError(
            f"profile {config.profile} runs on the {config.backend} backend, this process on "
            f"{backend.name()}: set KERAS_BACKEND={config.backend}")


def check(config: config_lib.Config) -> int:
    """Every finished run of `config` was made by it (RunError names the first key that differs);
    returns how many there are. `make` runs this before a profile's steps: a finished run is a
    file target it never remakes, so without this an edited config would have its old runs
    reported beside new ones. A process on the wrong backend is refused first: its runs differ
    from the finished ones only in the backend, and the fix is KERAS_BACKEND, not deleting them."""
    require_backend(config)
    finished = 0
    for seed in config.seeds:
        for spec in config.runs() + _study_runs_on_disk(config):
            scaled = config.for_regime(spec)
            path = run_directory(scaled, spec.name, seed)
            if (path / "metrics.json").exists():
                check_finished(scaled, spec, seed, path, config.warm_start_settings(spec))
                finished += 1
    return finished


def _study_runs_on_disk(config: config_lib.Config) -> list[regimes.RunSpec]:
    """The batch-size study's runs in `config`'s trial folder that it names. The study decides its
    runs as it goes (grid extensions, the fair comparison's rates), so `Config.runs` cannot list
    them; a run of a batch the config no longer names is left to the report, which reads it."""
    def named(spec: regimes.RunSpec) -> bool:
        try:
            config.for_regime(spec)
        except config_lib.ConfigError:
            return False
        return True

    on_disk = (regimes.parse_or_none(p.name) for p in sorted(trial_directory(config).glob("b*-*")))
    return [spec for spec in on_disk if spec is not None and spec.kind in ("study", "compare") and named(spec)]


def run_config(path: Path, metrics: dict) -> config_lib.Config:
    """The config a finished run at `path` was made by, from its metrics.json's resolved config."""
    resolved = dict(metrics["resolved_config"])
    resolved.pop("run")
    resolved["results_dir"] = str(path.parents[2])
    return config_lib.from_dict(resolved, where=str(path / "config.yaml"))


def load_run(path: str | os.PathLike) -> Run:
    """A finished run: its config, metrics and a model holding the final weights."""
    path = Path(path)
    if not (path / "metrics.json").is_file():
        raise RunError(f"{path} is not a finished run directory (no metrics.json): "
                       "train it first with `python -m replication train CONFIG`")
    metrics = storage.read_json(path / "metrics.json")
    config = run_config(path, metrics)
    spec = data.DATASETS[config.dataset]
    model = build_model(config, spec.input_shape, spec.num_classes, compiled=False)
    storage.load_weights(model, path / "final.weights.h5")
    return Run(path, config, metrics, model)

