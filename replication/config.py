"""Experiment configuration: YAML -> validated, frozen dataclasses.

A YAML file holds only what differs from the defaults below (the defaults are the paper's
protocol, PAPER.md "Training protocol"). Unknown keys and bad values are errors that name the key,
the value and the file; `--set key=value` overrides use the same checks.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from pathlib import Path

import yaml

NETWORKS = ("F1", "F2", "C1", "C2", "C3", "C4")
DATASETS = (
    "mnist", "fashion_mnist", "timit", "cifar10", "cifar100", "cifar10_jpeg",
    "synthetic_mnist", "synthetic_cifar10",
)
# The dataset each network was trained on in the paper (Table 1); anything else is a stand-in.
PAPER_DATASET = {"F1": "mnist", "F2": "timit", "C1": "cifar10", "C2": "cifar10",
                 "C3": "cifar100", "C4": "cifar100"}
# Datasets whose inputs and classes fit each network.
COMPATIBLE = {
    "F1": ("mnist", "fashion_mnist", "synthetic_mnist"),
    "F2": ("timit",),
    "C1": ("cifar10", "cifar10_jpeg", "synthetic_cifar10"),
    "C2": ("cifar10", "cifar10_jpeg", "synthetic_cifar10"),
    "C3": ("cifar100",),
    "C4": ("cifar100",),
}
BATCHNORM = ("batch_statistics", "moving_average")
BACKENDS = ("tensorflow", "jax")
STOPPING = ("fixed", "plateau")
REGIMES = ("sb", "lb")
# Learning rate of a sweep run: learning_rate * (batch / sb_batch_size) ** exponent.
LR_SCALINGS = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
PAPER_EPOCHS = 100
PAPER_SEEDS = 5


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names key, value and file."""


@dataclasses.dataclass(frozen=True)
class SharpnessConfig:
    """Metric 2.1 settings (PAPER.md "Sharpness")."""

    epsilons: tuple[float, ...] = (1e-3, 5e-4)
    spaces: tuple[str, ...] = ("full", "random")
    dim: int = 100                 # p, columns of A in the random subspace
    iterations: int = 10           # L-BFGS-B iterations (the paper's inexact solve)
    start: str = "zero"            # y0: "zero" (natural) or "random" (uniform in the box)
    restarts: int = 1              # independent solves; >1 only makes sense with start=random
    subset: int | None = None      # training examples used for f; None = the whole training set
    seed: int = 0                  # seed of A and of random starts

    def validate(self, where: str) -> None:
        for e in self.epsilons:
            _check(math.isfinite(e) and e > 0, "sharpness.epsilons", e, where,
                   "each epsilon must be a finite number > 0")
        _check(len(self.epsilons) > 0, "sharpness.epsilons", self.epsilons, where, "give at least one")
        for s in self.spaces:
            _check(s in ("full", "random"), "sharpness.spaces", s, where, "use 'full' or 'random'")
        _check(self.dim >= 1, "sharpness.dim", self.dim, where, "must be >= 1")
        _check(self.iterations >= 1, "sharpness.iterations", self.iterations, where, "must be >= 1")
        _check(self.start in ("zero", "random"), "sharpness.start", self.start, where,
               "use 'zero' or 'random'")
        _check(self.restarts >= 1, "sharpness.restarts", self.restarts, where, "must be >= 1")
        _check(self.subset is None or self.subset >= 1, "sharpness.subset", self.subset, where,
               "must be >= 1 or null")


@dataclasses.dataclass(frozen=True)
class LandscapeConfig:
    """Parametric plots (Figures 3 and 7)."""

    points: int = 25
    alpha_min: float = -1.0
    alpha_max: float = 2.0
    # Only for batchnorm=moving_average: "interpolate" the moving statistics along the path like
    # every other variable, or "recompute" them from training batches at each point.
    moving_statistics: str = "interpolate"
    subset: int | None = None      # training examples evaluated; None = all

    def validate(self, where: str) -> None:
        _check(self.points >= 2, "landscape.points", self.points, where,
               "an alpha grid needs at least 2 points")
        _check(self.alpha_max > self.alpha_min, "landscape.alpha_max", self.alpha_max, where,
               "must be greater than landscape.alpha_min")
        _check(self.moving_statistics in ("interpolate", "recompute"),
               "landscape.moving_statistics", self.moving_statistics, where,
               "use 'interpolate' or 'recompute'")
        _check(self.subset is None or self.subset >= 1, "landscape.subset", self.subset, where,
               "must be >= 1 or null")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Batch-size sweep (PAPER.md Figure 4, claim 4), optionally with the learning rate scaled.

    Each (batch size, scaling) is one more run of the trial, from the same x0 as SB and LB, named
    `b<batch>` (scaling "none", the paper's fixed learning rate) or `b<batch>-<scaling>`. Scaling
    goes beyond the paper: "linear" is Goyal et al. (2017)'s rule for SGD, "sqrt" the square-root
    rule argued for Adam (Hoffer et al. 2017; Malladi et al. 2022), both relative to sb_batch_size.
    """

    batch_sizes: tuple[int, ...] = ()          # empty: no sweep
    lr_scalings: tuple[str, ...] = ("none",)
    # Gradient noise scale (replication/noise.py): mini-batches of sb_batch_size drawn per
    # estimate, at x0 and at every minimiser of a config with a sweep.
    noise_batches: int = 100

    def validate(self, where: str) -> None:
        for b in self.batch_sizes:
            _check(b >= 1, "sweep.batch_sizes", b, where, "each batch size must be >= 1")
        _check(len(set(self.batch_sizes)) == len(self.batch_sizes), "sweep.batch_sizes",
               self.batch_sizes, where, "batch sizes repeat")
        _check(len(self.lr_scalings) >= 1, "sweep.lr_scalings", self.lr_scalings, where,
               f"give at least one of {tuple(LR_SCALINGS)}")
        for s in self.lr_scalings:
            _check(s in LR_SCALINGS, "sweep.lr_scalings", s, where, f"use one of {tuple(LR_SCALINGS)}")
        _check(len(set(self.lr_scalings)) == len(self.lr_scalings), "sweep.lr_scalings",
               self.lr_scalings, where, "scalings repeat")
        _check(self.noise_batches >= 3, "sweep.noise_batches", self.noise_batches, where,
               "the noise-scale estimate needs at least 3 mini-batches")


def sweep_regime(batch_size: int, scaling: str = "none") -> str:
    """The run name of one sweep point: b<batch> or b<batch>-<scaling>."""
    return f"b{batch_size}" + ("" if scaling == "none" else f"-{scaling}")


def parse_regime(regime: str) -> tuple[int, str] | None:
    """(batch size, scaling) of a sweep run name, or None for anything else (sb, lb, typos)."""
    match = re.fullmatch(r"b([1-9][0-9]*)(?:-(sqrt|linear))?", regime)
    return (int(match.group(1)), match.group(2) or "none") if match else None


@dataclasses.dataclass(frozen=True)
class Config:
    """One experiment: a network trained on a dataset under the SB and LB regimes, several seeds."""

    network: str
    dataset: str
    profile: str = "paper"                 # names results/<profile>/ and the report
    description: str = ""
    data_dir: str | None = None            # offline directory with the standard files; None = TFDS
    train_subset: int | None = None        # first N examples of a fixed shuffle; None = all
    test_subset: int | None = None
    batchnorm: str = "batch_statistics"    # the paper's Keras 1 mode=2, or "moving_average"
    sb_batch_size: int = 256
    lb_batch_size: int | None = None       # None = 10% of the training set (the paper's LB)
    learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.999
    adam_epsilon: float = 1e-8             # Keras 1's default; tf.keras would use 1e-7
    stopping: str = "fixed"                # "fixed": exactly `epochs`; "plateau": <= `epochs`
    epochs: int = PAPER_EPOCHS
    patience: int = 5                      # plateau: epochs without train-loss improvement
    min_delta: float = 1e-4                # plateau: improvement smaller than this does not count
    eval_batch_size: int = 5000            # the paper evaluated in batches of 5000
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    jit_compile: bool = False              # TensorFlow: XLA for the training step; JAX: always XLA
    backend: str | None = None             # the Keras backend this profile must run on; None = either
    results_dir: str = "results/paper"
    sharpness: SharpnessConfig = SharpnessConfig()
    landscape: LandscapeConfig = LandscapeConfig()
    sweep: SweepConfig = SweepConfig()

    def validate(self, where: str) -> "Config":
        _check(self.network in NETWORKS, "network", self.network, where, f"use one of {NETWORKS}")
        _check(self.dataset in DATASETS, "dataset", self.dataset, where, f"use one of {DATASETS}")
        _check(self.dataset in COMPATIBLE[self.network], "dataset", self.dataset, where,
               f"network {self.network} takes {COMPATIBLE[self.network]}")
        _check(self.batchnorm in BATCHNORM, "batchnorm", self.batchnorm, where, f"use one of {BATCHNORM}")
        _check(self.stopping in STOPPING, "stopping", self.stopping, where, f"use one of {STOPPING}")
        for key in ("train_subset", "test_subset", "lb_batch_size"):
            value = getattr(self, key)
            _check(value is None or value >= 1, key, value, where, "must be >= 1 or null")
        for key in ("sb_batch_size", "epochs", "patience", "eval_batch_size"):
            _check(getattr(self, key) >= 1, key, getattr(self, key), where, "must be >= 1")
        _check(self.learning_rate > 0, "learning_rate", self.learning_rate, where, "must be > 0")
        for key in ("beta_1", "beta_2"):
            _check(0 <= getattr(self, key) < 1, key, getattr(self, key), where, "must be in [0, 1)")
        _check(self.adam_epsilon > 0, "adam_epsilon", self.adam_epsilon, where, "must be > 0")
        _check(self.min_delta >= 0, "min_delta", self.min_delta, where, "must be >= 0")
        _check(len(self.seeds) >= 1, "seeds", self.seeds, where, "give at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, where, "seeds repeat")
        for s in self.seeds:
            _check(0 <= s < 2 ** 32, "seeds", s, where, "seeds must be in [0, 2**32)")
        _check(self.backend is None or self.backend in BACKENDS, "backend", self.backend, where,
               f"use one of {BACKENDS} or null")
        _check(bool(self.profile) and "/" not in self.profile, "profile", self.profile, where,
               "a non-empty name without '/'")
        self.sharpness.validate(where)
        self.landscape.validate(where)
        self.sweep.validate(where)
        for b in self.sweep.batch_sizes:  # these would train an exact copy of the SB or LB run
            _check(b != self.sb_batch_size, "sweep.batch_sizes", b, where,
                   "the SB batch size is already a point of every curve (scaling is 1 there)")
            _check(b != self.lb_batch_size or "none" not in self.sweep.lr_scalings, "sweep.batch_sizes",
                   b, where, "the LB batch size is already a point of the unscaled curve")
        return self

    def sweep_regimes(self) -> list[str]:
        """Run names of the sweep, batch sizes in order, each scaling in turn."""
        return [sweep_regime(b, s) for s in self.sweep.lr_scalings for b in sorted(self.sweep.batch_sizes)]

    def regimes(self) -> list[str]:
        """Every run of one seed: SB, LB, then the sweep."""
        return [*REGIMES, *self.sweep_regimes()]

    def for_regime(self, regime: str) -> "Config":
        """The config a run of `regime` trains with: a scaled sweep run gets its learning rate."""
        self._check_regime(regime)
        point = parse_regime(regime)
        if point is None or point[1] == "none":
            return self
        batch, scaling = point
        factor = (batch / self.sb_batch_size) ** LR_SCALINGS[scaling]
        return dataclasses.replace(self, learning_rate=self.learning_rate * factor)

    def run_deviations(self, regime: str) -> list[str]:
        """deviations() of the run `regime`: a scaled sweep run says its learning rate."""
        scaled = self.for_regime(regime)
        if scaled is self:
            return self.deviations()
        batch, scaling = parse_regime(regime)
        return [*self.deviations(), f"learning rate {scaled.learning_rate:.3g} ({scaling}-scaled with "
                f"batch {batch} from {self.learning_rate:g} at {self.sb_batch_size}; sweep run)"]

    def _check_regime(self, regime: str) -> None:
        if regime not in REGIMES and regime not in self.sweep_regimes():
            sweep = (f", or a sweep run of this config: {', '.join(self.sweep_regimes())}"
                     if self.sweep.batch_sizes else " (this config has no sweep.batch_sizes)")
            raise ConfigError(f"unknown regime {regime!r}: use sb or lb{sweep}")

    def batch_size(self, regime: str, num_train: int) -> int:
        """SB: 256; LB: 10% of the training set unless set (PAPER.md "Training protocol");
        a sweep run: its batch size."""
        self._check_regime(regime)
        ten_percent = max(1, round(num_train / 10))  # TIMIT: 72133, as the paper prints
        point = parse_regime(regime)
        size = (point[0] if point else self.sb_batch_size if regime == "sb"
                else (self.lb_batch_size or ten_percent))
        if size > num_train:
            name = f"{regime}_batch_size" if regime in REGIMES else f"sweep batch size ({regime})"
            raise ConfigError(f"{name} {size} is larger than the training set ({num_train} examples): "
                              "lower it or use a larger train_subset")
        return size

    def deviations(self) -> list[str]:
        """Every way this config departs from the paper's protocol, said out loud in results."""
        out = []
        if self.dataset != PAPER_DATASET[self.network]:
            out.append(f"dataset {self.dataset} instead of the paper's {PAPER_DATASET[self.network]}")
        if self.train_subset:
            out.append(f"training set reduced to {self.train_subset} examples")
        if self.test_subset:
            out.append(f"test set reduced to {self.test_subset} examples")
        if self.batchnorm != "batch_statistics":
            out.append("batch norm with moving averages (the paper normalised with batch statistics)")
        if self.epochs != PAPER_EPOCHS or self.stopping != "fixed":
            rule = f"{self.epochs} epochs" if self.stopping == "fixed" else (
                f"plateau stopping (patience {self.patience}, at most {self.epochs} epochs)")
            out.append(f"{rule} instead of the figures' {PAPER_EPOCHS}")
        if len(self.seeds) != PAPER_SEEDS:
            out.append(f"{len(self.seeds)} seed(s) instead of {PAPER_SEEDS}")
        if self.sb_batch_size != 256:
            out.append(f"SB batch {self.sb_batch_size} instead of 256")
        if self.lb_batch_size is not None:
            out.append(f"LB batch fixed at {self.lb_batch_size} instead of 10% of the training set")
        if (self.learning_rate, self.beta_1, self.beta_2, self.adam_epsilon) != (1e-3, 0.9, 0.999, 1e-8):
            out.append("Adam hyper-parameters differ from Keras 1 defaults")
        if self.eval_batch_size != 5000:
            out.append(f"evaluation batch {self.eval_batch_size} instead of 5000")
        if self.sharpness.subset:
            out.append(f"sharpness on {self.sharpness.subset} training examples, not the whole set")
        if self.sharpness.iterations != 10:
            out.append(f"sharpness with {self.sharpness.iterations} L-BFGS-B iterations instead of 10")
        if self.landscape.subset:
            out.append(f"parametric plots on {self.landscape.subset} training examples")
        return out

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


def _check(ok: bool, key: str, value, where: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: bad value {value!r} for '{key}': {fix}")


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(cls, data: dict, where: str, prefix: str = ""):
    """Build dataclass `cls` from `data`, type-checking every field against its annotation."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown config key '{prefix}{unknown[0]}' "
                          f"(known keys: {', '.join(prefix + k for k in fields)})")
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _coerce(hint, value, where, key + ".")
        else:
            kwargs[name] = _convert(hint, value, key, where)
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required config key '{prefix}{missing[0]}'")
    return cls(**kwargs)


def _convert(hint, value, key: str, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: bad value {value!r} for '{key}': expected a list")
        return tuple(_convert(args[0], v, key, where) for v in value)
    if hint is float and not isinstance(value, bool):
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" as a string
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # inf passes every "> 0" check below
                raise ConfigError(f"{where}: bad value {value!r} for '{key}': must be a finite number")
            return number
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where}: bad value {value!r} for '{key}': expected {hint.__name__}")


def _set_dotted(data: dict, dotted: str, raw: str, where: str) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: cannot set '{dotted}': '{k}' is not a section")
    try:
        node[keys[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: the value is not valid YAML ({str(err).splitlines()[0]}): "
                          "quote it or fix its syntax") from None


def load(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> Config:
    """Read and validate a YAML config, applying `key=value` overrides (dotted keys allowed)."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ConfigError(f"{where}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not a text (UTF-8) file: give a YAML config") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of keys to values")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), raw, f"{where} (--set {item})")
    if overrides:
        where = f"{where} (--set {' --set '.join(overrides)})"
    return _coerce(Config, data, where).validate(where)


def from_dict(data: dict, where: str = "<dict>") -> Config:
    return _coerce(Config, data, where).validate(where)


def dump(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
