"""A run's name (its regime) and what it says, parsed once into a `RunSpec`.

Every run directory is <trial>/<regime>/seed<N>, and the regime names the run:

    sb, lb                                   the paper's two regimes (section 2.2)
    b<batch>[-sqrt|-linear]                  a point of the batch-size sweep (Figure 4), its
                                             learning rate scaled with the batch or not
    b<batch>-x<multiplier>                   a run of the batch-size study (experiments/batchsize.py)
    b<batch>-fixed-e<epochs>[-g<ghost>]      a fair-comparison run of the study at the fixed
    b<batch>-x<multiplier>-e<epochs>[-g<ghost>]  learning rate, or at the tuned one (x its multiplier)
    sb|lb-augmented, sb|lb-conservative      a remedy run (Tables 6 and 7; replication/remedies.py)
    lb-from-sb<k>                            a piggyback LB run from SB's iterate of epoch k (Figure 5)

`parse` reads a name into a RunSpec, the builders (`pair`, `sweep`, `study`, `compare`, `remedy`,
`warm_start`) make one, and `RunSpec.name` writes it back; each run has one spelling, so two
directories never hold the same run. What a run of a given config trains with (its learning rate,
batch, epochs) is the config's to say (Config.for_regime, batch_size, run_deviations). This
module is the ground floor: it imports only the standard library and replication.errors.
"""

from __future__ import annotations

import dataclasses
import re

from replication.errors import UserError

REGIMES = ("sb", "lb")
# Learning rate of a sweep run: learning_rate * (batch / sb_batch_size) ** exponent; a sweep run's
# name carries every scaling but "none" (the paper's fixed learning rate) as its suffix.
LR_SCALINGS = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
# The remedies of section 4 / appendix E: config section -> the suffix of its runs' names.
REMEDIES = {"augmentation": "augmented", "conservative": "conservative"}
KINDS = ("pair", "sweep", "study", "compare", "remedy", "warm_start")

GRAMMAR = ("sb or lb; a sweep run b<batch>[-sqrt|-linear]; a batch-size study run b<batch>-x<multiplier>; "
           "a fair-comparison run b<batch>-fixed-e<epochs>[-g<ghost batch>] or "
           "b<batch>-x<multiplier>-e<epochs>[-g<ghost batch>]; a remedy run sb|lb-augmented or "
           "sb|lb-conservative; a piggyback run lb-from-sb<epoch>")


class RegimeError(UserError, ValueError):
    """A name that is no run's name; the message lists the names there are."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a run's name says. `base` is the paper regime whose batch the run takes (sb or lb:
    SB, LB, a remedy run, a piggyback run, which is LB's); the others name their `batch`."""

    kind: str                          # one of KINDS
    base: str | None = None            # "sb" or "lb"; None where the name gives the batch
    batch: int | None = None           # sweep, study, compare
    scaling: str | None = None         # sweep: a key of LR_SCALINGS
    multiplier: float | None = None    # study; compare at the tuned rate (None: the fixed rate)
    epochs: int | None = None          # compare
    ghost: int | None = None           # compare with ghost batch norm over batches of this many
    remedy: str | None = None          # remedy: a key of REMEDIES (its config section)
    sb_epoch: int | None = None        # warm_start: the SB epoch it starts from (0: x0)

    @property
    def name(self) -> str:
        """The run's name: its directory, and `regime` in config.yaml and metrics.json."""
        if self.kind == "pair":
            return self.base
        if self.kind == "sweep":
            return f"b{self.batch}" + ("" if self.scaling == "none" else f"-{self.scaling}")
        if self.kind == "study":
            return f"b{self.batch}-x{self.multiplier:.6g}"
        if self.kind == "compare":
            rate = "fixed" if self.multiplier is None else f"x{self.multiplier:.6g}"
            return f"b{self.batch}-{rate}-e{self.epochs}" + (f"-g{self.ghost}" if self.ghost else "")
        if self.kind == "remedy":
            return f"{self.base}-{REMEDIES[self.remedy]}"
        return f"lb-from-sb{self.sb_epoch}"


# Builders. A multiplier is kept as its name writes it (6 significant digits), so a spec built here
# and the spec parsed from its name are equal, and so are the learning rates made from them.
def pair(base: str) -> RunSpec:
    return RunSpec("pair", base=base)


def sweep(batch: int, scaling: str = "none") -> RunSpec:
    return RunSpec("sweep", batch=batch, scaling=scaling)


def study(batch: int, multiplier: float) -> RunSpec:
    return RunSpec("study", batch=batch, multiplier=_rounded(multiplier))


def compare(batch: int, multiplier: float | None, epochs: int, ghost: int | None = None) -> RunSpec:
    """(a) the fixed learning rate (multiplier None) or (b) the tuned one, for `epochs` epochs,
    with ghost batch norm over `ghost` examples or none (experiments/batchsize.compare_plan)."""
    return RunSpec("compare", batch=batch, multiplier=None if multiplier is None else _rounded(multiplier),
                   epochs=epochs, ghost=ghost or None)


def remedy(base: str, remedy: str) -> RunSpec:
    """`base` ("sb" or "lb") under `remedy` (a key of REMEDIES): sb-augmented, ..."""
    return RunSpec("remedy", base=base, remedy=remedy)


def warm_start(sb_epoch: int) -> RunSpec:
    """The piggyback LB run from SB's iterate at `sb_epoch` (0: from x0)."""
    return RunSpec("warm_start", base="lb", sb_epoch=sb_epoch)


def _rounded(multiplier: float) -> float:
    return float(f"{float(multiplier):.6g}")


_COUNT = "[1-9][0-9]*"
_NUMBER = "[0-9]+(?:\\.[0-9]+)?(?:e[-+]?[0-9]+)?"  # as f"{m:.6g}" writes it
_SCALED = "|".join(s for s in LR_SCALINGS if s != "none")
# One pattern per kind; no name matches two (tests/test_regimes.py).
_PATTERNS = {
    "pair": re.compile("(?P<base>sb|lb)"),
    "sweep": re.compile(f"b(?P<batch>{_COUNT})(?:-(?P<scaling>{_SCALED}))?"),
    "study": re.compile(f"b(?P<batch>{_COUNT})-x(?P<multiplier>{_NUMBER})"),
    "compare": re.compile(f"b(?P<batch>{_COUNT})-(?:fixed|x(?P<multiplier>{_NUMBER}))-e(?P<epochs>{_COUNT})"
                          f"(?:-g(?P<ghost>{_COUNT}))?"),
    "remedy": re.compile(f"(?P<base>sb|lb)-(?P<remedy>{'|'.join(REMEDIES.values())})"),
    "warm_start": re.compile("(?P<base>lb)-from-sb(?P<sb_epoch>0|[1-9][0-9]*)"),
}
_SECTION = {suffix: section for section, suffix in REMEDIES.items()}


def parse(name: str) -> RunSpec:
    """The RunSpec of the run named `name`; RegimeError if it is no run's name (or not the one
    spelling of it, e.g. b64-x0.50 for b64-x0.5)."""
    for kind, pattern in _PATTERNS.items():
        if match := pattern.fullmatch(name):
            fields = {key: _decode(key, value) for key, value in match.groupdict().items() if value is not None}
            if kind == "sweep":
                fields.setdefault("scaling", "none")
            spec = RunSpec(kind, **fields)
            if spec.name != name:
                raise RegimeError(f"regime {name!r} is spelled {spec.name!r}: use that name")
            return spec
    raise RegimeError(f"unknown regime {name!r}: a run's name is {GRAMMAR}")


def parse_or_none(name: str) -> RunSpec | None:
    """parse(name), or None where `name` is no run's name (a trial folder's x0/, landscape/, ...)."""
    try:
        return parse(name)
    except RegimeError:
        return None


def _decode(key: str, value: str):
    if key == "multiplier":
        return float(value)
    if key == "remedy":
        return _SECTION[value]
    return value if key in ("base", "scaling") else int(value)
