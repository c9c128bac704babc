"""The per-run measures, registered in one place (as big_vision registers its evaluators).

Each measure says once: its name (its command, and its key in results.Run.measurements), the
config section it reads, which runs it measures (given the config and the run's RunSpec), the file
it writes last for a run (make's target) with the command line that writes it, and where its
result files lie for results.load, keyed how and with which keys required. `pipeline.rules` and
`results._read_run` loop over MEASURES, so a new measure is its module, its config section, one
`register(...)` here and a test (tests/test_registry.py registers one from the test alone).

Not here: the parametric plots (measure/landscape.py), which measure a trial's SB/LB pair rather
than a run; and the tables and report sections, which are per claim of the paper (Tables 3-4,
Figures 4-6) and mix measures, so they stay hand-written in analysis/.

This module imports no Keras: results.load reads it, and the analysis never starts a backend. A
measure's own module (sharpness.py and hessian.py import Keras) is imported only where its
targets are asked for, by make-rules, which has started Keras.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping


@dataclasses.dataclass(frozen=True)
class Target:
    """A file a measure writes for a run (the one it writes last) and the command that writes it."""

    path: Path
    command: str                       # the arguments after `python -m replication`


@dataclasses.dataclass(frozen=True)
class Measure:
    """One measure made on single runs. `applies(config, spec)`: does this run get it; `targets(config,
    spec, run_dir)`: its make targets for that run; `files`: the glob (in a run directory) of the JSON
    records results.load reads, None if the loader reads none (a table reads them itself); `key(path,
    record)`: a record's key in Run.measurements[name]; `required`: {file-stem prefix: dotted keys every
    such record has} (the first matching prefix; "" matches all)."""

    name: str
    section: str                       # the config section it reads: config.<section>
    applies: Callable[[Any, Any], bool]
    targets: Callable[[Any, Any, Path], list[Target]]
    files: str | None = None
    key: Callable[[Path, Mapping], Hashable] = lambda path, record: path.stem
    required: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


MEASURES: dict[str, Measure] = {}


def register(measure: Measure) -> Measure:
    """Add `measure` to MEASURES (after those there: make's rules and results list them in this order)."""
    if measure.name in MEASURES:
        raise ValueError(f"a measure named {measure.name!r} is registered already")
    MEASURES[measure.name] = measure
    return measure


def options(section) -> str:
    """A config section as command-line options, `--<field> <value>` in field order (tuples as
    comma lists), less `enabled`: the command then measures with exactly the section's settings."""
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.name != "enabled"}
    return " ".join(f"--{key} {','.join(map(str, value)) if isinstance(value, tuple) else value}"
                    for key, value in values.items())


# The measures, in the order make's rules list them for a run ------------------------------------------
def _sharpness(config, spec, run: Path) -> list[Target]:
    """One process measures every (space, epsilon) of a run, sharing its data and compiled passes;
    the target is the file it writes last. Figure 5 shows a piggyback run's full-space sharpness
    only: the random subspace is left out where it would be."""
    from replication.measure import sharpness

    spaces = config.sharpness.spaces
    full_only = spec.kind == "warm_start" and "full" in spaces
    last = sharpness.result_path(run, "full" if full_only else spaces[-1], config.sharpness.epsilons[-1])
    return [Target(last, f"sharpness {run}" + (" --space full" if full_only and len(spaces) > 1 else ""))]


register(Measure(
    "sharpness", "sharpness", applies=lambda config, spec: True, targets=_sharpness,
    files="sharpness/*.json", key=lambda path, record: (record["space"], float(record["epsilon"])),
    required={"": ("space", "epsilon", "failed", "phi")}))


def _noise(config, spec, run: Path) -> list[Target]:
    """At every minimiser, and at x0 once (the SB run's)."""
    from replication.measure import noise

    return [Target(noise.result_path(run, point), f"noise {run} --point {point}")
            for point in (("final", "initial") if spec.name == "sb" else ("final",))]


# A sweep also measures the gradient noise scale (sweep.noise_batches).
register(Measure("noise", "sweep", applies=lambda config, spec: bool(config.sweep.batch_sizes),
                 targets=_noise, files="noise/*.json"))


def _kept_iterates(config, spec, matched: bool) -> bool:
    """SB and LB runs that kept iterates, measured all (Figure 6) or only the matched ones."""
    return bool(config.kept_epochs()) and spec.kind == "pair" and (config.iterate_measure == "matched") == matched


def _iterates(config, spec, run: Path) -> list[Target]:
    from replication.measure import iterates

    return [Target(iterates.summary_path(run), f"iterates {run}")]


def _matched(config, spec, run: Path) -> list[Target]:
    from replication.measure import matched

    return [Target(matched.summary_path(run), f"matched {run} --space full")]


# Kept iterates of SB and LB (Figure 6): one process measures them all, then writes the summary it
# is named by; with iterate_measure: matched, only the iterates at matched training loss and at the
# plateau rule's stops (measure/matched.py), in the full space. Their files are read by
# analysis/iterate_tables.py and matched_tables.py, per iterate.
register(Measure("iterates", "sharpness", applies=lambda config, spec: _kept_iterates(config, spec, False),
                 targets=_iterates))
register(Measure("matched", "sharpness", applies=lambda config, spec: _kept_iterates(config, spec, True),
                 targets=_matched))


def _hessian(config, spec, run: Path) -> list[Target]:
    """One process measures every Hessian result of a run, with the section's settings."""
    from replication.measure import hessian

    settings = config.hessian
    last = hessian.last_result(run, settings.measures, settings.kinds, settings.factor, settings.epsilon)
    return [Target(last, f"hessian {run} {options(settings)}")]


SPREAD = ("spread.mean", "spread.std", "spread.draws")
# Beyond the paper (issue 14), where the config's hessian section asks: each SB and LB run. The
# filter-normalised slices (hessian/*.csv) are read with their record by results._read_run.
register(Measure(
    "hessian", "hessian", applies=lambda config, spec: config.hessian.enabled and spec.kind == "pair",
    targets=_hessian, files="hessian/*.json",
    required={"top_eigenvalue": SPREAD + ("per_draw",), "trace": SPREAD + ("per_draw",),
              "sharpness_random_eps": SPREAD + ("settings.epsilon", "settings.p"),
              "filter_landscape": SPREAD + ("step",),
              "reparametrization_": ("kind", "factor", "settings.epsilon") + tuple(
                  f"{side}.{measure}" for side in ("before", "after") for measure in
                  ("phi_full.phi", "top_eigenvalue.eigenvalue", "trace.trace", "filter_rise.rise"))}))
