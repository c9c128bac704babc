"""Does a rerun reproduce a results folder? Compare every number of two folders of one profile.

`python -m replication diff COMMITTED REGENERATED` reads every JSON and CSV result file of both
folders (run metrics, per-epoch history, sharpness, noise, landscape curves, tables) and compares
their numbers: exactly by default, because on the same CPU model, backend and library versions
the code is bit-reproducible (training by the backend's determinism switch; measurements because
their passes are XLA programs, `backend.compiled`). What is not a result is skipped, by IGNORED_RULE
(timing and host fields, and the location of the folder itself), and so are the `evaluations/` that
`evaluate` adds. Files present in one folder only are differences too. A tolerance must be in [0, 1):
at 1 any two numbers of one sign agree, so nothing could fail.

Bit-identity is promised only on the same device and versions (docs/guarantees.md). When the run
environments differ, the differences are listed but not judged, and the command says so.

`--summary` (what `make quick` ends with: FIRST is the committed reference, SECOND the folder this
machine just made) prints the first differences, then a few lines: how many files and numbers were
reproduced exactly, which files differ and by how much, which device and library versions differ
between the two folders' runs (their env.json), the exit status that follows, the report to open
and the time taken.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from pathlib import Path

from replication import config as config_lib
from replication.errors import UserError

# Keys (at any depth) that record when, how long, on which host or where a result was made, not what it is.
HOST_KEYS = {"environment", "git_commit", "git_dirty", "platform"}
LOCATION_KEYS = {"run", "path", "sb_run", "lb_run"}  # the run directory a result was made in, as text
IGNORED_RULE = ("ignored, at any depth of a JSON file or as a CSV column: timing fields (a key with the word "
                "'seconds' in it, e.g. wall_seconds, train_seconds_total, seconds_per_step, or ending in "
                "'_time', e.g. start_time); host fields (" + ", ".join(sorted(HOST_KEYS)) + "); and the "
                "folder's own location (" + ", ".join(sorted(LOCATION_KEYS)) + " when they hold a path). "
                "Every other value is compared")
# Made by other commands than a profile's make target (`evaluate` for the cross-backend table).
EXTRA_DIRECTORIES = {"evaluations"}
ENVIRONMENT_KEYS = ("device", "backend_version", "keras", "numpy", "python", "deterministic_ops", "data_parallel")


class DiffError(UserError, ValueError):
    """A folder to compare is missing or holds no result files, or the tolerance accepts everything
    (one line, exit 2)."""


def _ignored(key: str, value=None) -> bool:
    """IGNORED_RULE."""
    return (key in HOST_KEYS or "seconds" in key.split("_") or key.endswith("_time")
            or (key in LOCATION_KEYS and isinstance(value, str)))


def check_tolerance(rtol: float) -> None:
    """DiffError unless 0 <= rtol < 1 (at 1 every pair of numbers of one sign agrees)."""
    if isinstance(rtol, (int, float)) and 0 <= rtol < 1:
        return
    problem = ("accepts everything (at 1 any two numbers of one sign agree)" if isinstance(rtol, (int, float))
               and rtol >= 1 else "is not a tolerance")
    raise DiffError(f"--rtol {rtol} {problem}: give a relative tolerance in [0, 1), e.g. --rtol 1e-6 "
                    "(default 0: exact)")


def result_files(root: Path) -> set[str]:
    """Relative paths of the JSON and CSV result files under root (locks, figures and the
    EXTRA_DIRECTORIES excluded)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".json", ".csv")
            and not EXTRA_DIRECTORIES & set(p.relative_to(root).parts)}


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return None


def _same(a, b, rtol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a == b
    if math.isnan(a) and math.isnan(b):
        return True
    return a == b or abs(a - b) <= rtol * max(abs(a), abs(b))


def _with_defaults(config: dict, defaults: dict, other: dict) -> dict:
    """`config` with each key `other` has and it lacks set to its default, inside sections too (a
    key added to a section, such as batch_size_study.compare_epochs, is as new as a top-level one)."""
    out = dict(config)
    for key, default in defaults.items():
        if key in other and key not in out:
            out[key] = default
        elif isinstance(default, dict) and isinstance(out.get(key), dict) and isinstance(other.get(key), dict):
            out[key] = _with_defaults(out[key], default, other[key])
    return out


@dataclasses.dataclass
class Comparison:
    """What `compare` found: one line per differing value or file, and the counts behind a summary."""
    first: Path
    second: Path
    rtol: float
    lines: list[str] = dataclasses.field(default_factory=list)
    files: int = 0                       # result files in either folder
    differing: dict[str, int] = dataclasses.field(default_factory=dict)  # file in both -> its differences
    only: list[str] = dataclasses.field(default_factory=list)            # files in one folder only
    numbers: int = 0                     # pairs of numbers compared
    relative: list[tuple[float, str]] = dataclasses.field(default_factory=list)  # each differing pair's
    # relative difference |a - b| / max(|a|, |b|) (inf where one is not finite), and where

    @property
    def comparable(self) -> bool:
        """Were both folders' runs made on the same device and library versions?"""
        return environments(self.first) == environments(self.second)


def _relative(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))  # a != b here, so the denominator is > 0


def _compare(a, b, where: str, rtol: float, out: list[str], found: Comparison | None = None) -> None:
    """Append one line per difference between two parsed JSON values (and count pairs of numbers in
    `found`)."""
    if where.endswith("resolved_config") and isinstance(a, dict) and isinstance(b, dict):
        # A config key one run predates had its default (as train's config check reads it), so a
        # run made before a key existed still compares with one made after.
        defaults = config_lib.defaults()
        a = _with_defaults(a, defaults, b)
        b = _with_defaults(b, defaults, a)
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if _ignored(key, a.get(key, b.get(key))):
                continue
            if key not in a or key not in b:
                out.append(f"{where}.{key}: only in {'the first' if key in a else 'the second'}")
            else:
                _compare(a[key], b[key], f"{where}.{key}", rtol, out, found)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _compare(x, y, f"{where}[{i}]", rtol, out, found)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
        numbers = found is not None and not isinstance(a, bool) and not isinstance(b, bool)
        if numbers:
            found.numbers += 1
        if not _same(a, b, rtol):
            out.append(f"{where}: {a!r} vs {b!r}")
            if numbers:
                found.relative.append((_relative(a, b), where))
    elif a != b:
        out.append(f"{where}: {a!r} vs {b!r}")


def _read(path: Path):
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text())
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [{k: (n if (n := _number(v)) is not None else v) for k, v in row.items()} for row in rows]
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise DiffError(f"{path} cannot be read ({err}): regenerate it, or restore it with git") from err


def environments(root: Path) -> set[tuple]:
    """The distinct (device, versions) that made the runs under root (from each env.json)."""
    found = set()
    for path in root.rglob("env.json"):
        env = _read(path)
        if not isinstance(env, dict):
            raise DiffError(f"{path} is not a run's environment record (a JSON object): regenerate it, "
                            "or restore it with git")
        found.add(tuple((key, env.get(key)) for key in ENVIRONMENT_KEYS))
    return found


def environment_changes(first, second) -> list[str]:
    """'key FIRST's values vs SECOND's' for each of ENVIRONMENT_KEYS whose values differ between the
    runs of two folders (why numbers may differ where bit-identity is not promised)."""
    a, b = environments(Path(first)), environments(Path(second))
    changes = []
    for i, key in enumerate(ENVIRONMENT_KEYS):
        values_a, values_b = (" / ".join(sorted({str(env[i][1]) for env in envs})) for envs in (a, b))
        if values_a != values_b:
            changes.append(f"{key} {values_a} vs {values_b}")
    return changes


def compare(first, second, rtol: float = 0.0) -> Comparison:
    """Compare every result file of two folders (the module docstring says what counts)."""
    check_tolerance(rtol)
    first, second = Path(first), Path(second)
    for root in (first, second):
        if not root.is_dir() or not result_files(root):
            raise DiffError(f"{root} holds no result files (JSON/CSV): give the two results folders to compare")
    found = Comparison(first, second, rtol)
    names_a, names_b = result_files(first), result_files(second)
    found.files = len(names_a | names_b)
    found.only = [f"{name}: only in {first}" for name in sorted(names_a - names_b)]
    found.only += [f"{name}: only in {second}" for name in sorted(names_b - names_a)]
    found.lines += found.only
    for name in sorted(names_a & names_b):
        before = len(found.lines)
        _compare(_read(first / name), _read(second / name), name, rtol, found.lines, found)
        if len(found.lines) > before:
            found.differing[name] = len(found.lines) - before
    return found


def diff(first, second, rtol: float = 0.0) -> tuple[list[str], bool]:
    """(differences, comparable): one line per differing number or file; comparable is False when
    the two folders' runs were made on different devices or library versions."""
    found = compare(first, second, rtol)
    return found.lines, found.comparable


def training_seconds(root: Path) -> float:
    """The epochs' wall times that the runs under root record (history.csv's `seconds`)."""
    total = 0.0
    for path in sorted(root.glob("*/*/seed*/history.csv")):
        for row in _read(path):
            if "seconds" not in row:  # a run made before epochs were timed
                continue
            value = row["seconds"]
            if not isinstance(value, float) or not math.isfinite(value) or value < 0:
                raise DiffError(f"{path}: an epoch's seconds is {value!r}, not a time >= 0: regenerate it, "
                                "or restore it with git")
            total += value
    return total


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def summary(found: Comparison, started: float | None = None) -> tuple[list[str], int]:
    """(lines, exit status) of a short summary: FIRST is the reference, SECOND the rerun. The status
    is main's: 1 only when numbers differ on the reference's own device and versions."""
    from replication.analysis import readme  # measurement_seconds: the README's rule; loads only here

    first, second = found.first, found.second
    rule = "exactly" if found.rtol == 0 else f"within relative tolerance {found.rtol:g}"
    same = found.files - len(found.differing) - len(found.only)
    lines = [f"== does {second} reproduce the reference {first}? ==",
             f"reproduced {rule}: {same} of {found.files} result files, "
             f"{found.numbers - len(found.relative):,} of {found.numbers:,} numbers"]
    if found.differing:
        most = sorted(found.differing.items(), key=lambda item: (-item[1], item[0]))
        lines.append(f"differ: {len(most)} file(s), {len(found.lines) - len(found.only):,} value(s): "
                     + ", ".join(f"{name} ({count})" for name, count in most[:3])
                     + (f" and {len(most) - 3} more" if len(most) > 3 else ""))
        if found.relative:
            ordered = sorted(found.relative)
            lines.append(f"relative differences of the {len(ordered):,} differing numbers: median "
                         f"{ordered[len(ordered) // 2][0]:.2g}, largest {ordered[-1][0]:.2g} ({ordered[-1][1]})")
    if found.only:
        lines.append(f"in one folder only: {len(found.only)} file(s), e.g. {found.only[0]}")
    changes = "; ".join(environment_changes(first, second)) or "the same ones, paired differently"
    if not found.lines:
        status = 0
        lines.append("why: nothing differs" + (f", although the runs' environments do ({changes})"
                                               if not found.comparable else " (same device and library versions)"))
    elif not found.comparable:
        status = 0
        lines.append(f"why: the runs were made on another device or library versions ({changes}); "
                     "floating-point results depend on both, and bit-identity is promised only on the same "
                     "ones (docs/guarantees.md): the differences are listed, not judged (exit status 0)")
    else:
        status = 1
        lines.append("why: not the device or versions (the runs' env.json agree), where every number must "
                     "agree: NOT reproduced (exit status 1); a code or data change is the likely cause")
    report = second / "REPORT.md"
    lines.append(f"report: {report}" if report.is_file() else f"report: none yet ({report} is missing)")
    recorded = (f"the files of {second} record training {_duration(training_seconds(second))}, measurements "
                f"{_duration(readme.measurement_seconds(second))}")
    lines.append(f"time: {_duration(time.time() - started)} wall, {recorded}" if started is not None
                 else f"time: {recorded}")
    return lines, status


def main(first, second, rtol: float = 0.0, brief: bool = False, started: float | None = None) -> int:
    """Print the verdict; 0 when every number agrees (or the environments differ), 1 otherwise.
    brief: the first 10 differences and the summary (make quick) instead of 200 lines and a verdict."""
    if started is not None and not (math.isfinite(started) and 0 < started <= time.time()):
        raise DiffError(f"--started {started} is not a Unix time in the past: give the start's `date +%s`")
    if brief and not (Path(first).is_dir() and result_files(Path(first))):  # make quick's reference
        raise DiffError(f"the reference {first} holds no result files: restore it (git checkout -- {first}) "
                        "or rebuild it on purpose (make quick-reference)")
    found = compare(first, second, rtol)
    lines, comparable = found.lines, found.comparable
    shown = 10 if brief else 200
    for line in lines[:shown]:
        print(line)
    if len(lines) > shown:
        print(f"... and {len(lines) - shown} more" + (f" (python -m replication diff {first} {second} "
                                                       "lists 200)" if brief else ""))
    if brief:
        text, status = summary(found, started)
        print("\n".join(text))
        return status
    rule = "exactly" if rtol == 0 else f"within relative tolerance {rtol:g}"
    count = len(result_files(Path(first)))
    if not lines:
        print(f"reproduced: every number of the {count} result files of {first} agrees {rule} with {second} "
              "(timing, host and location fields ignored: see --help)")
        return 0
    if not comparable:
        print(f"{len(lines)} difference(s), not judged: the runs of {first} and {second} were made on "
              f"different devices or library versions ({sorted(environments(Path(first)))} vs "
              f"{sorted(environments(Path(second)))}), where bit-identity is not promised")
        return 0
    print(f"NOT reproduced: {len(lines)} difference(s) between {first} and {second} (compared {rule})")
    return 1
