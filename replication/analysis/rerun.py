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
"""

from __future__ import annotations

import csv
import json
import math
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


def _compare(a, b, where: str, rtol: float, out: list[str]) -> None:
    """Append one line per difference between two parsed JSON values."""
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
                _compare(a[key], b[key], f"{where}.{key}", rtol, out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _compare(x, y, f"{where}[{i}]", rtol, out)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if not _same(a, b, rtol):
            out.append(f"{where}: {a!r} vs {b!r}")
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
        found.add(tuple((key, env.get(key)) for key in ENVIRONMENT_KEYS))
    return found


def diff(first, second, rtol: float = 0.0) -> tuple[list[str], bool]:
    """(differences, comparable): one line per differing number or file; comparable is False when
    the two folders' runs were made on different devices or library versions."""
    check_tolerance(rtol)
    first, second = Path(first), Path(second)
    for root in (first, second):
        if not root.is_dir() or not result_files(root):
            raise DiffError(f"{root} holds no result files (JSON/CSV): give the two results folders to compare")
    lines = []
    names_a, names_b = result_files(first), result_files(second)
    lines += [f"{name}: only in {first}" for name in sorted(names_a - names_b)]
    lines += [f"{name}: only in {second}" for name in sorted(names_b - names_a)]
    for name in sorted(names_a & names_b):
        found: list[str] = []
        _compare(_read(first / name), _read(second / name), "", rtol, found)
        lines += [f"{name}{line}" for line in found]
    return lines, environments(first) == environments(second)


def main(first, second, rtol: float = 0.0) -> int:
    """Print the verdict; 0 when every number agrees (or the environments differ), 1 otherwise."""
    lines, comparable = diff(first, second, rtol)
    rule = "exactly" if rtol == 0 else f"within relative tolerance {rtol:g}"
    for line in lines[:200]:
        print(line)
    if len(lines) > 200:
        print(f"... and {len(lines) - 200} more")
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
