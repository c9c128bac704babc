"""The SB/LB protocol end to end on generated data: run directories, determinism, resumption,
divergence and concurrency. Subprocess tests SIGKILL real runs through storage.failpoint."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, cli
from replication import config as config_lib
from replication import storage, train

RUN_FILES = {"config.yaml", "env.json", "history.csv", "metrics.json", "initial.weights.h5",
             "final.weights.h5"}


def weights(path):
    import h5py

    out = []
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: out.append((name, obj[()])) if hasattr(obj, "shape") else None)
    return out


def assert_same_run(a, b):
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    for (name_a, wa), (name_b, wb) in zip(weights(a / "final.weights.h5"), weights(b / "final.weights.h5")):
        assert name_a == name_b
        np.testing.assert_array_equal(wa, wb)


def test_run_directory_is_self_describing(tiny_config):
    config = config_lib.load(tiny_config())
    sb = train.train(config, "sb", 0)
    lb = train.train(config, "lb", 0)
    for run in (sb, lb):
        assert RUN_FILES <= {p.name for p in run.iterdir()}
        assert not list(run.glob("checkpoint-*")) and not list(run.glob(".*tmp*"))
        history = storage.read_csv(run / "history.csv")
        assert [int(r["epoch"]) for r in history] == [1, 2]
        env = storage.read_json(run / "env.json")
        for key in ("git_commit", "git_dirty", "python", "backend", "backend_version", "keras", "numpy", "device",
                    "seed", "start_time", "end_time"):
            assert key in env
    m_sb, m_lb = (storage.read_json(r / "metrics.json") for r in (sb, lb))
    assert (m_sb["batch_size"], m_lb["batch_size"]) == (32, 40)  # LB = 10% of 400
    assert m_sb["x0_sha256"] == m_lb["x0_sha256"]  # same x0 for the pair
    assert m_sb["epochs_run"] == 2 and m_sb["stopped"] == "fixed" and not m_sb["diverged"]
    assert "2 epochs instead of the figures' 100" in m_sb["deviations"]
    assert float(history[-1]["test_accuracy"]) == m_lb["test_accuracy"]
    loaded = train.load_run(sb)
    assert loaded.config.network == "F1" and loaded.metrics["regime"] == "sb"


def test_same_seed_is_bit_identical_and_other_seed_differs(tiny_config, tmp_path):
    a = train.train(config_lib.load(tiny_config(results_dir=str(tmp_path / "a"))), "sb", 0)
    b = train.train(config_lib.load(tiny_config(results_dir=str(tmp_path / "b"))), "sb", 0)
    assert_same_run(a, b)
    c = train.train(config_lib.load(tiny_config(results_dir=str(tmp_path / "c"), seeds=[1])), "sb", 1)
    assert storage.read_json(c / "metrics.json")["train_loss"] != storage.read_json(a / "metrics.json")["train_loss"]


def test_finished_run_is_not_redone_and_other_config_is_refused(tiny_config, capsys):
    path = tiny_config()
    config = config_lib.load(path)
    run = train.train(config, "sb", 0)
    before = (run / "metrics.json").stat().st_mtime_ns
    assert train.train(config, "sb", 0) == run
    assert (run / "metrics.json").stat().st_mtime_ns == before
    assert "already finished" in capsys.readouterr().err
    other = config_lib.load(path, ["sb_batch_size=16"])
    with pytest.raises(train.RunError, match=r"made by another config \('run' was .*use another results_dir"):
        train.train(other, "sb", 0)


def test_plateau_stopping_is_explicit(tiny_config):
    config = config_lib.load(tiny_config(stopping="plateau", patience=1, min_delta=10.0, epochs=5))
    metrics = storage.read_json(train.train(config, "sb", 0) / "metrics.json")
    # With min_delta 10 no epoch counts as an improvement: stop after 1 + patience epochs.
    assert metrics["stopped"] == "plateau" and metrics["epochs_run"] == 2


def test_divergence_is_recorded(tiny_config):
    config = config_lib.load(tiny_config(learning_rate=1e30, epochs=3))
    metrics = storage.read_json(train.train(config, "sb", 0) / "metrics.json")
    assert metrics["diverged"] and metrics["stopped"] == "diverged"
    assert metrics["diverged_epoch"] == metrics["epochs_run"] <= 3


KILL_POINTS = ["epoch:1:mid", "epoch:1:end", "epoch:2:mid", "write:history.csv",
               "write:checkpoint-2.weights.h5", "write:final.weights.h5", "write:metrics.json"]


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """Uninterrupted runs of the interruption-test configs (F1, and C1 for its dropout)."""
    out = {}
    for network, dataset in (("F1", "synthetic_mnist"), ("C1", "synthetic_cifar10")):
        root = tmp_path_factory.mktemp(network)
        config = config_lib.from_dict({**_tiny(network, dataset), "results_dir": str(root)})
        out[network] = train.train(config, "sb", 0)
    return out


def _tiny(network, dataset):
    from conftest import TINY

    extra = {"train_subset": 128, "test_subset": 64, "eval_batch_size": 64} if network == "C1" else {}
    return {**TINY, "network": network, "dataset": dataset, **extra}


@pytest.mark.parametrize("network,point", [("F1", p) for p in KILL_POINTS] + [("C1", "epoch:2:mid")])
def test_killed_run_resumes_to_identical_results(network, point, tmp_path, reference_runs):
    import yaml

    dataset = "synthetic_mnist" if network == "F1" else "synthetic_cifar10"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**_tiny(network, dataset), "results_dir": str(tmp_path / "r")}))
    args = ("train", path, "--seed", "0", "--regime", "sb")
    killed = cli(*args, env={storage.FAILPOINT_VARIABLE: point})
    assert killed.returncode == -9, killed.stderr
    run = tmp_path / "r" / f"{network}_{dataset}" / "sb" / "seed0"
    assert not (run / "metrics.json").exists()
    # What a killed run leaves is never a partial file under a final name.
    for p in run.iterdir():
        if p.name.endswith(".csv"):
            storage.read_csv(p)
        if p.name.endswith(".json"):
            json.loads(p.read_text())
    resumed = cli(*args, check=True)
    assert resumed.stdout.strip().endswith("seed0")
    assert_same_run(run, reference_runs[network])


def test_concurrent_requests_for_one_run_do_not_collide(tiny_config, tmp_path):
    path = tiny_config()
    command = [sys.executable, "-m", "replication", "train", str(path), "--seed", "0", "--regime", "sb"]
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum("already finished" in err for _, err in outputs) == 1
    run = tmp_path / "results" / "F1_synthetic_mnist" / "sb" / "seed0"
    assert len(storage.read_csv(run / "history.csv")) == 2
