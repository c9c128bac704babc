"""Shared fixtures: tiny configs on generated data, and a way to run the CLI in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Variables that would put more than the one promised line on a subprocess's stderr (warnings) or
# stop `python -m replication` importing this checkout from its folder (safe path): the tests'
# subprocesses run without them, whatever the shell that started the suite sets.
for _name in ("PYTHONWARNINGS", "PYTHONDEVMODE", "PYTHONSAFEPATH"):
    os.environ.pop(_name, None)
ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "network": "F1",
    "dataset": "synthetic_mnist",
    "profile": "test",
    "train_subset": 400,
    "test_subset": 100,
    "sb_batch_size": 32,
    "eval_batch_size": 100,
    "epochs": 2,
    "seeds": [0],
}


@pytest.fixture
def tiny_config(tmp_path):
    """Write a tiny config YAML (overrides merged in) and return its path."""

    def make(**overrides):
        data = {**TINY, "results_dir": str(tmp_path / "results"), **overrides}
        path = tmp_path / f"config-{len(list(tmp_path.glob('config-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return make


def cli(*args, env=None, check=False):
    """Run `python -m replication ARGS` and return the CompletedProcess."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    result = subprocess.run([sys.executable, "-m", "replication", *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, env=full_env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def planned_commands(rules: str, goal: str, folder) -> list[str]:
    """The commands `make -n goal` plans from generated rules (PY := echo), run in `folder`: result
    paths in the rules are relative to it, so an empty folder plans every step."""
    makefile = Path(folder) / "rules.mk"
    makefile.write_text("PY := echo\n" + rules)
    # --no-print-directory: under `make test` this is a sub-make, which would otherwise print
    # "Entering/Leaving directory" lines around the commands.
    dry = subprocess.run(["make", "-n", "--no-print-directory", "-f", str(makefile), goal],
                         capture_output=True, text=True, cwd=folder)
    assert dry.returncode == 0, dry.stderr
    return dry.stdout.splitlines()


def stamp(path) -> tuple[int, int]:
    """A file's inode and modification time, to tell a file left alone from one written again:
    storage writes a new file and renames it over the old, so a rewrite changes the inode even where
    the filesystem's clock has not ticked since (a time alone could miss it)."""
    status = Path(path).stat()
    return status.st_ino, status.st_mtime_ns


def one_error_line(code, err: str) -> str:
    """The promise for every bad input: exit status 2 and a stderr of exactly one non-empty line,
    "error: <problem>: <fix>". Returns that line."""
    assert code == 2, f"exit status {code}, not 2; stderr:\n{err}"
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n") and lines[0].startswith("error: ") and lines[0][7:].strip(), \
        f"stderr is not one 'error: ...' line:\n{err}"
    return lines[0]
