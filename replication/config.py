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

from replication import data

NETWORKS = ("F1", "F2", "C1", "C2", "C3", "C4")
DATASETS = tuple(data.DATASETS)
# The dataset each network was trained on in the paper (Table 1); anything else is a stand-in.
PAPER_DATASET = {"F1": "mnist", "F2": "timit", "C1": "cifar10", "C2": "cifar10",
                 "C3": "cifar100", "C4": "cifar100"}
# Datasets whose inputs and classes fit each network: those shaped like its paper dataset.
COMPATIBLE = {network: tuple(name for name, spec in data.DATASETS.items()
                             if (spec.input_shape, spec.num_classes) ==
                             (data.DATASETS[paper].input_shape, data.DATASETS[paper].num_classes))
              for network, paper in PAPER_DATASET.items()}
# Characters a results_dir cannot hold: make's rules and their shell commands name it unquoted.
UNSAFE_PATH = re.compile(r"""[\s#$%:;=&|<>()'"`*?\[\]\\]""")
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


# The remedies of section 4 / appendix E (replication/remedies.py): config section -> the suffix of
# its runs' names (sb-augmented, lb-conservative, ...).
REMEDIES = {"augmentation": "augmented", "conservative": "conservative"}
AUGMENTED_IN_PAPER = ("C1", "C2", "C3", "C4")  # Table 6
FILL_MODES = ("nearest", "reflect", "wrap", "constant")
INTERPOLATIONS = ("nearest", "bilinear")


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """Data augmentation (Table 6; section 4, appendix E): with `enabled`, every seed also trains the runs
    sb-augmented and lb-augmented, from the trial's x0, on randomly flipped, rotated and shifted
    training images; evaluation, sharpness and the plots use the images as they are. The defaults
    are the paper's; fill and interpolation follow Keras 1's ImageDataGenerator (nearest pixel;
    the paper does not say)."""

    enabled: bool = False
    horizontal_flip: bool = True
    rotation_degrees: float = 10.0     # uniform in [-10, 10] degrees
    translation: float = 0.2           # uniform in [-0.2, 0.2] of the height and of the width
    fill_mode: str = "nearest"
    interpolation: str = "nearest"

    def validate(self, where: str) -> None:
        _check(0 <= self.rotation_degrees <= 180, "augmentation.rotation_degrees", self.rotation_degrees,
               where, "must be in [0, 180]")
        _check(0 <= self.translation < 1, "augmentation.translation", self.translation, where,
               "a fraction of the image size in [0, 1)")
        _check(self.fill_mode in FILL_MODES, "augmentation.fill_mode", self.fill_mode, where,
               f"use one of {FILL_MODES}")
        _check(self.interpolation in INTERPOLATIONS, "augmentation.interpolation", self.interpolation,
               where, f"use one of {INTERPOLATIONS}")
        _check(not self.enabled or self.horizontal_flip or self.rotation_degrees or self.translation,
               "augmentation.enabled", self.enabled, where,
               "turn on at least one of horizontal_flip, rotation_degrees, translation")

    def deviations(self) -> list[str]:
        paper = (self.horizontal_flip, self.rotation_degrees, self.translation) == (True, 10.0, 0.2)
        return [] if paper else [
            f"augmentation: flips {'on' if self.horizontal_flip else 'off'}, rotations up to "
            f"{self.rotation_degrees:g} degrees, shifts up to {self.translation:g} (paper: on, 10, 0.2)"]


@dataclasses.dataclass(frozen=True)
class ConservativeConfig:
    """Conservative training (Table 7, appendix E.2): with `enabled`, every seed also trains the runs
    sb-conservative and lb-conservative, from the trial's x0: each outer step approximately solves
    min_x mean_batch f_i(x) + (proximal_lambda / 2) ||x - x_k||^2 with `inner_steps` Adam steps on
    its batch (x_k: the weights at the start of the outer step)."""

    enabled: bool = False
    proximal_lambda: float = 1e-3      # the paper's lambda
    inner_steps: int = 3

    def validate(self, where: str) -> None:
        _check(self.proximal_lambda >= 0, "conservative.proximal_lambda", self.proximal_lambda, where,
               "must be >= 0")
        _check(self.inner_steps >= 1, "conservative.inner_steps", self.inner_steps, where, "must be >= 1")

    def deviations(self) -> list[str]:
        return [] if (self.proximal_lambda, self.inner_steps) == (1e-3, 3) else [
            f"conservative training with lambda {self.proximal_lambda:g} and {self.inner_steps} inner "
            "Adam steps (paper: 1e-3 and 3)"]


def remedy_regime(base: str, remedy: str) -> str:
    """The run name of `base` ("sb" or "lb") under `remedy` (a key of REMEDIES): sb-augmented, ..."""
    return f"{base}-{REMEDIES[remedy]}"


def parse_remedy(regime: str) -> tuple[str, str] | None:
    """(base regime, remedy) of a remedy run name, or None for anything else."""
    base, _, suffix = regime.partition("-")
    remedy = next((key for key, name in REMEDIES.items() if name == suffix), None)
    return (base, remedy) if base in REGIMES and remedy else None


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
    # Iterates (Figure 6): the weights at the end of these epochs, and of every keep_every-th,
    # are kept as <run>/iterates/epoch<N>.weights.h5. Nothing is kept unless asked.
    keep_iterates: tuple[int, ...] = ()
    keep_every: int | None = None
    backend: str | None = None             # the Keras backend this profile must run on; None = either
    results_dir: str = "results/paper"
    sharpness: SharpnessConfig = SharpnessConfig()
    landscape: LandscapeConfig = LandscapeConfig()
    sweep: SweepConfig = SweepConfig()
    augmentation: AugmentationConfig = AugmentationConfig()
    conservative: ConservativeConfig = ConservativeConfig()

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
        for e in self.keep_iterates:
            _check(1 <= e <= self.epochs, "keep_iterates", e, where,
                   f"each epoch must be in [1, epochs] = [1, {self.epochs}]")
        _check(len(set(self.keep_iterates)) == len(self.keep_iterates), "keep_iterates",
               self.keep_iterates, where, "epochs repeat")
        _check(self.keep_every is None or 1 <= self.keep_every <= self.epochs, "keep_every",
               self.keep_every, where, f"must be in [1, epochs] = [1, {self.epochs}] or null")
        self.sharpness.validate(where)
        self.landscape.validate(where)
        self.sweep.validate(where)
        self.augmentation.validate(where)
        self.conservative.validate(where)
        _check(not self.augmentation.enabled or len(data.DATASETS[self.dataset].input_shape) == 3,
               "augmentation.enabled", True, where, f"{self.dataset} is not an image dataset "
               f"(inputs {data.DATASETS[self.dataset].input_shape}): augmentation flips, rotates and "
               "shifts images")
        for b in self.sweep.batch_sizes:  # these would train an exact copy of the SB or LB run
            _check(b != self.sb_batch_size, "sweep.batch_sizes", b, where,
                   "the SB batch size is already a point of every curve (scaling is 1 there)")
            _check(b != self.lb_batch_size or "none" not in self.sweep.lr_scalings, "sweep.batch_sizes",
                   b, where, "the LB batch size is already a point of the unscaled curve")
        return self

    def kept_epochs(self) -> tuple[int, ...]:
        """The epochs whose end-of-epoch weights a run keeps: keep_iterates and every multiple of
        keep_every up to `epochs`, in order (a run stopped earlier keeps those it reached)."""
        every = range(self.keep_every, self.epochs + 1, self.keep_every) if self.keep_every else ()
        return tuple(sorted({*self.keep_iterates, *every}))

    def sweep_regimes(self) -> list[str]:
        """Run names of the sweep, batch sizes in order, each scaling in turn."""
        return [sweep_regime(b, s) for s in self.sweep.lr_scalings for b in sorted(self.sweep.batch_sizes)]

    def remedy_regimes(self) -> list[str]:
        """Run names of the enabled remedies: sb-<remedy>, lb-<remedy> for each."""
        return [remedy_regime(base, remedy) for remedy in REMEDIES if getattr(self, remedy).enabled
                for base in REGIMES]

    def regimes(self) -> list[str]:
        """Every run of one seed: SB, LB, the sweep, then the remedies."""
        return [*REGIMES, *self.sweep_regimes(), *self.remedy_regimes()]

    def remedy_settings(self, regime: str) -> dict | None:
        """What a remedy run trains with ({"remedy": name, **its section}; its run entry in
        config.yaml records this, so a finished remedy run made with other settings is refused);
        None for any other run."""
        parsed = parse_remedy(regime)
        if parsed is None:
            return None
        section = dataclasses.asdict(getattr(self, parsed[1]))
        section.pop("enabled")
        return {"remedy": parsed[1], **section}

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
        """deviations() of the run `regime`: a scaled sweep run says its learning rate, a remedy
        run how its remedy departs from the paper's."""
        scaled = self.for_regime(regime)
        if parsed := parse_remedy(regime):
            remedy = parsed[1]
            extra = getattr(self, remedy).deviations()
            if remedy == "augmentation" and self.network not in AUGMENTED_IN_PAPER:
                extra.insert(0, f"data augmentation on {self.network}: the paper augments "
                             f"{', '.join(AUGMENTED_IN_PAPER)} only (Table 6)")
            return [*self.deviations(), *extra]
        if scaled is self:
            return self.deviations()
        batch, scaling = parse_regime(regime)
        return [*self.deviations(), f"learning rate {scaled.learning_rate:.3g} ({scaling}-scaled with "
                f"batch {batch} from {self.learning_rate:g} at {self.sb_batch_size}; sweep run)"]

    def _check_regime(self, regime: str) -> None:
        if regime not in REGIMES and regime not in self.sweep_regimes() and regime not in self.remedy_regimes():
            sweep = (f", or a sweep run of this config: {', '.join(self.sweep_regimes())}"
                     if self.sweep.batch_sizes else " (this config has no sweep.batch_sizes)")
            remedies = (f", or a remedy run of this config: {', '.join(self.remedy_regimes())}"
                        if self.remedy_regimes() else "")
            raise ConfigError(f"unknown regime {regime!r}: use sb or lb{sweep}{remedies}")

    def batch_size(self, regime: str, num_train: int) -> int:
        """SB: 256; LB: 10% of the training set unless set (PAPER.md "Training protocol");
        a sweep run: its batch size; a remedy run: its base regime's (sb-augmented: SB's)."""
        self._check_regime(regime)
        ten_percent = max(1, round(num_train / 10))  # TIMIT: 72133, as the paper prints
        point = parse_regime(regime)
        base = parse_remedy(regime)[0] if parse_remedy(regime) else regime
        size = (point[0] if point else self.sb_batch_size if base == "sb"
                else (self.lb_batch_size or ten_percent))
        if size > num_train:
            name = f"{base}_batch_size" if base in REGIMES else f"sweep batch size ({regime})"
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
        if self.kept_epochs():
            kept = self.kept_epochs()
            every = len(kept) == self.epochs
            out.append(f"iterates kept at {'every epoch' if every else 'epochs ' + ', '.join(map(str, kept))} "
                       f"of {self.epochs}" + ("" if every else " (Figure 6 has a point at about every epoch)"))
        return out

    def check_subsets(self, num_train: int, num_test: int) -> None:
        """Every subset key asks for at most the examples there are: a larger one would use them
        all while results said the set was reduced."""
        in_use = min(num_train, self.train_subset or num_train)
        for key, size, available, which in (
                ("train_subset", self.train_subset, num_train, "training set"),
                ("test_subset", self.test_subset, num_test, "test set"),
                ("sharpness.subset", self.sharpness.subset, in_use, "training set in use"),
                ("landscape.subset", self.landscape.subset, in_use, "training set in use")):
            if size is not None and size > available:
                raise ConfigError(f"{key} {size} is larger than the {self.dataset} {which} ({available} "
                                  "examples): lower it, or set it to null to use them all")

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
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}: fix its syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of keys to values")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), raw, f"{where} (--set {item})")
    if overrides:
        where = f"{where} (--set {' --set '.join(overrides)})"
    return _paths_checked(_coerce(Config, data, where).validate(where), where)


def _paths_checked(config: Config, where: str) -> Config:
    """`config` with `~` in results_dir expanded (data.load expands data_dir the same way), once
    both paths are usable: not empty, and a results_dir that make's rules can name unquoted."""
    for key in ("results_dir", "data_dir"):
        _check(getattr(config, key) != "", key, "", where, "give a directory (an empty path would "
               "mean the current one)" + ("; null downloads through TFDS" if key == "data_dir" else ""))
    results_dir = os.path.expanduser(config.results_dir)
    _check(not UNSAFE_PATH.search(results_dir), "results_dir", results_dir, where,
           "use a path without spaces or any of # $ % : ; = & | < > ( ) ' \" ` * ? [ ] \\ (make's rules "
           "and commands name it unquoted)")
    return dataclasses.replace(config, results_dir=results_dir)


def defaults() -> dict:
    """Every key's default as to_dict() writes it (tuples as lists, sections as mappings): what a
    run whose resolved config predates a key is taken to have had."""
    return {f.name: _plain(dataclasses.asdict(f.default) if dataclasses.is_dataclass(f.default) else f.default)
            for f in dataclasses.fields(Config) if f.default is not dataclasses.MISSING}


def from_dict(data: dict, where: str = "<dict>") -> Config:
    return _coerce(Config, data, where).validate(where)


def dump(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
