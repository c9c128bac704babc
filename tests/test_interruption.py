"""Steps after training, killed while writing (SIGKILL through storage.failpoint), leave no
partial file a later step would read, and a rerun gives what an uninterrupted step gives."""

import json

import pytest
import yaml

from conftest import TINY, cli
from replication import storage, train
from replication import config as config_lib

SETTINGS = {"sharpness": {"subset": 100, "iterations": 2, "dim": 5, "epsilons": [1e-3], "spaces": ["full"]},
            "landscape": {"points": 3}}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump({**TINY, "epochs": 1, "results_dir": str(root / "results"), **SETTINGS}))
    config = config_lib.load(path)
    for regime in ("sb", "lb"):
        train.train(config, regime, 0)
    return path, root / "results"


def test_killed_sharpness_leaves_nothing_and_reruns(pair):
    config_path, results = pair
    run = results / "F1_synthetic_mnist" / "sb" / "seed0"
    killed = cli("sharpness", run, env={storage.FAILPOINT_VARIABLE: "write:full_eps0.001.json"})
    assert killed.returncode == -9
    assert not (run / "sharpness" / "full_eps0.001.json").exists()
    cli("sharpness", run, check=True)
    first = storage.read_json(run / "sharpness" / "full_eps0.001.json")
    assert not first["failed"] and first["phi"] is not None
    # What an uninterrupted measurement gives, bit for bit (times and environment aside).
    (run / "sharpness" / "full_eps0.001.json").unlink()
    cli("sharpness", run, check=True)
    again = storage.read_json(run / "sharpness" / "full_eps0.001.json")
    assert _numbers(again) == _numbers(first)


def _numbers(record):
    """A result record less what differs between two identical measurements: times, the environment."""
    if isinstance(record, dict):
        return {k: _numbers(v) for k, v in record.items() if "seconds" not in k and k != "environment"}
    if isinstance(record, list):
        return [_numbers(v) for v in record]
    return record


@pytest.mark.parametrize("point", ["write:seed0_linear.csv", "write:seed0_linear.json", "write:seed0_linear.png"])
def test_killed_landscape_is_redone_and_complete(pair, point):
    config_path, results = pair
    stem = results / "F1_synthetic_mnist" / "landscape" / "seed0_linear"
    for suffix in (".csv", ".json", ".png", ".pdf"):
        stem.with_suffix(suffix).unlink(missing_ok=True)
    killed = cli("landscape", config_path, "--seed", "0", "--path", "linear",
                 env={storage.FAILPOINT_VARIABLE: point})
    assert killed.returncode == -9
    assert not stem.with_suffix(".pdf").exists()  # the Make target: written last
    cli("landscape", config_path, "--seed", "0", "--path", "linear", check=True)
    rows = storage.read_csv(stem.with_suffix(".csv"))
    assert len(rows) == 3
    # What an uninterrupted computation gives, number for number.
    for suffix in (".csv", ".json", ".png", ".pdf"):
        stem.with_suffix(suffix).unlink()
    cli("landscape", config_path, "--seed", "0", "--path", "linear", check=True)
    assert storage.read_csv(stem.with_suffix(".csv")) == rows
    assert len(json.loads(stem.with_suffix(".json").read_text())["settings"]["alphas"]) == 3
    assert stem.with_suffix(".pdf").read_bytes().startswith(b"%PDF")


def test_killed_report_keeps_the_previous_one(pair):
    config_path, results = pair
    cli("report", results, check=True)
    before = (results / "REPORT.md").read_text()
    # A previous page the new one would differ from, so "kept" cannot pass by rewriting the same text.
    previous = before + "\nA previous report.\n"
    (results / "REPORT.md").write_text(previous)
    killed = cli("report", results, env={storage.FAILPOINT_VARIABLE: "write:REPORT.md"})
    assert killed.returncode == -9
    assert (results / "REPORT.md").read_text() == previous
    cli("report", results, check=True)  # and a rerun completes it, to the uninterrupted page
    assert (results / "REPORT.md").read_text() == before
