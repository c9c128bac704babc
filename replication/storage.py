"""Atomic files and locks: nothing half-written is ever read, concurrent jobs never collide.

Every result goes through a temporary file in the same directory, fsync, then os.replace, so a
reader sees the old file or the new one, never a partial one. Locks are fcntl.flock on a
`.lock` file: `make -j` jobs that ask for the same run wait for each other instead of both
writing it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import sys
import signal
import tempfile
from pathlib import Path

import numpy as np
import yaml

from replication.errors import UserError


FAILPOINT_VARIABLE = "REPLICATION_KILL_AT"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_directory() -> Path:
    """Where regenerated caches live (the decoded JPEG stand-in, XLA's compiled programs under
    JAX): $REPLICATION_CACHE, else <project>/.cache, which git ignores."""
    return Path(os.environ.get("REPLICATION_CACHE", PROJECT_ROOT / ".cache"))


def failpoint(label: str) -> None:
    """Test hook: SIGKILL this process at `label` if $REPLICATION_KILL_AT names it.

    Labels: "write:<file name>" (temp file written, not yet renamed), "epoch:<n>:mid" (half-way
    through epoch n's batches), "epoch:<n>:end" (epoch n checkpointed). Used by the interruption
    tests to prove that a run killed anywhere resumes to the same numbers.
    """
    if os.environ.get(FAILPOINT_VARIABLE) == label:
        os.kill(os.getpid(), signal.SIGKILL)


class StorageError(UserError, OSError):
    """An output location cannot be written, or a result file is missing or damaged; the message
    names the path and the fix."""


def _explain(path: Path, err: OSError) -> StorageError:
    if err.errno == errno.ENOSPC:
        return StorageError(f"{path}: no space left on the device: free space or point "
                            "results_dir at another disk")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"{path}: cannot write here (permission denied or read-only): "
                            "choose a writable results_dir")
    return StorageError(f"{path}: cannot write: {err}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside `path`; on success rename it over `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix=suffix)
        os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by others
    except OSError as err:
        raise _explain(path, err) from None
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        failpoint(f"write:{path.name}")
        os.replace(tmp, path)
    except OSError as err:
        raise _explain(path, err) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def atomic_write_csv(path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    fieldnames = fieldnames or (list(rows[0]) if rows else [])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def atomic_savez(path, **arrays) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def save_weights(model, path) -> None:
    """model.save_weights through a temporary file (Keras wants the .weights.h5 suffix)."""
    with atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)


def save_figure(figure, stem) -> tuple[Path, Path]:
    """A matplotlib figure as `stem`.png and `stem`.pdf, each written atomically, then closed (a
    report draws many: pyplot keeps every open one). The PDF carries no creation date, so a
    figure redrawn from the same numbers is byte-identical."""
    from matplotlib import pyplot

    written = []
    for suffix in (".png", ".pdf"):
        target = Path(stem).with_suffix(suffix)
        with atomic_path(target, suffix=suffix) as tmp:
            figure.savefig(tmp, dpi=150, metadata={"CreationDate": None} if suffix == ".pdf" else None)
        written.append(target)
    pyplot.close(figure)
    return tuple(written)


# The command that remakes each measurement folder of a run directory (<run>/<folder>/<file>).
_REMADE_BY = {"sharpness": "sharpness {run}", "noise": "noise {run} --point {stem}",
              "evaluations": "evaluate {run}", "hessian": "hessian {run}"}


def repair(path: Path) -> str:
    """How to remake the result file at `path`: what to delete and which command writes it again."""
    folder = path.parent
    if folder.name in _REMADE_BY:
        command = _REMADE_BY[folder.name].format(run=folder.parent, stem=path.name.split(".")[0])
        return f"delete it and rerun `python -m replication {command}`"
    if folder.name == "iterates":  # a kept iterate is made by training, its measurements by `iterates`
        if path.name.endswith(".weights.h5"):
            return (f"delete {folder.parent} and train that run again (an iterate is kept only while "
                    "the run trains)")
        return f"delete it and rerun `python -m replication iterates {folder.parent}`"
    if folder.name == "landscape":
        return "delete it and rerun `python -m replication landscape CONFIG`"
    if folder.name == "x0":
        return (f"delete it and the runs of {path.name.split('.')[0].split('-')[0]} under {folder.parent}, "
                "then train them again")
    if folder.name.startswith("seed") and folder.name[4:].isdigit():  # a run directory
        return (f"delete {folder} and rerun `python -m replication train CONFIG --seed {folder.name[4:]} "
                f"--regime {folder.parent.name}` (its measurements go with it)")
    return "delete it and rerun the command that wrote it"


def _unreadable(path: Path, err: BaseException) -> StorageError:
    if isinstance(err, FileNotFoundError):
        return StorageError(f"{path}: missing: {repair(path)}")
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return StorageError(f"{path}: damaged or truncated ({detail}): {repair(path)}")


def _read_text(path: Path) -> str:
    """The text of a file this package wrote (UTF-8, ending in a newline: one without was cut)."""
    try:
        text = path.read_bytes().decode()
    except (OSError, UnicodeDecodeError) as err:
        raise _unreadable(path, err) from None
    if not text.endswith("\n"):
        raise _unreadable(path, ValueError("no final newline"))
    return text


def read_json(path) -> dict:
    """A JSON object this package wrote; StorageError (path and fix) if missing or damaged."""
    path = Path(path)
    try:
        value = json.loads(_read_text(path))
    except ValueError as err:
        raise _unreadable(path, err) from None
    if not isinstance(value, dict):
        raise _unreadable(path, ValueError(f"a JSON {type(value).__name__}, not an object"))
    return value


def read_yaml(path) -> dict:
    """A YAML mapping this package wrote (a run's config.yaml); StorageError if missing or damaged."""
    path = Path(path)
    try:
        value = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as err:
        raise _unreadable(path, err) from None
    if not isinstance(value, dict):
        raise _unreadable(path, ValueError("not a mapping of keys to values"))
    return value


class _Row(dict):
    """A CSV row; a column the file lacks is a StorageError naming the file, not a KeyError."""

    path: Path

    def __missing__(self, key):
        raise _unreadable(self.path, KeyError(f"no column {key!r}"))


def read_csv(path) -> list[dict]:
    """The rows of a CSV file this package wrote, each with every column of the header;
    StorageError (path and fix) if missing or damaged."""
    path = Path(path)
    try:
        reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
        rows = [_Row(row) for row in reader]
    except csv.Error as err:
        raise _unreadable(path, err) from None
    if not reader.fieldnames or any(None in row or None in row.values() for row in rows):
        raise _unreadable(path, ValueError("rows do not match the header"))
    for row in rows:
        row.path = path
    return rows


def load_weights(model, path) -> None:
    """model.load_weights(path); StorageError (path and fix) if the file is missing, damaged or
    made for another network."""
    path = Path(path)
    try:
        model.load_weights(path)
    except (OSError, ValueError, KeyError) as err:
        raise _unreadable(path, FileNotFoundError() if not path.exists() else err) from None


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(arrays) -> str:
    """SHA-256 of weight values in order (independent of file layout and layer names)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def locked(path: str | os.PathLike):
    """Exclusive lock on `path` (created if needed); blocks while another process holds it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError as err:
        raise _explain(path, err) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def reusable(path: str | os.PathLike, settings: dict, force: bool = False, log=None) -> dict | None:
    """The result JSON at `path` if it was computed with exactly `settings` (and not `force`d),
    else None: a measurement (sharpness, noise scale) is never redone for the same inputs."""
    path = Path(path)
    if force or not path.exists():
        return None
    previous = read_json(path)
    if previous.get("settings") != settings:
        return None
    print(f"[{path}] already computed with these settings; skipping", file=log or sys.stderr)
    return previous
