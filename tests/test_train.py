"""The SB/LB protocol end to end on generated data: run directories, determinism, resumption,
divergence and concurrency. Subprocess tests SIGKILL real runs through storage.failpoint."""

import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, cli, stamp
from replication import rundir, storage, train
from replication import config as config_lib

pytestmark = pytest.mark.backend

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
    for (name_a, wa), (name_b, wb) in zip(weights(a / "final.weights.h5"), weights(b / "final.weights.h5"),
                                          strict=True):
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
    loaded = rundir.load_run(sb)
    assert loaded.config.network == "F1" and loaded.metrics["regime"] == "sb"


def test_git_dirty_names_uncommitted_code_not_result_files(tmp_path):
    # A report rewritten under results/ (or a results folder linked in from another checkout) is
    # what runs produce, not the code that made them: it must not mark a run as made by
    # uncommitted code. An edit to a tracked code file must.
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)
    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "REPORT.md").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-qm", "start")
    assert rundir.git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "results" / "REPORT.md").write_text("rewritten\n")
    assert rundir.git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    state = rundir.git_state(tmp_path)
    assert state["git_dirty"] is True and len(state["git_commit"]) == 40


def test_same_seed_is_bit_identical_and_other_seed_differs(tiny_config, tmp_path):
    a = train.train(config_lib.load(tiny_config(results_dir=str(tmp_path / "a"))), "sb", 0)
    b = train.train(config_lib.load(tiny_config(results_dir=str(tmp_path / "b"))), "sb", 0)
    assert_same_run(a, b)
    c = train.train(config_lib.load(tiny_config(results_dir=str(tmp_path / "c"), seeds=[1])), "sb", 1)
    m_a, m_c = (storage.read_json(r / "metrics.json") for r in (a, c))
    assert m_c["train_loss"] != m_a["train_loss"]
    assert m_c["x0_sha256"] != m_a["x0_sha256"]  # the digest the pair check compares tells x0s apart


def test_finished_run_is_not_redone_and_other_config_is_refused(tiny_config, capsys):
    path = tiny_config()
    config = config_lib.load(path)
    run = train.train(config, "sb", 0)
    before = stamp(run / "metrics.json")
    assert train.train(config, "sb", 0) == run
    assert stamp(run / "metrics.json") == before
    assert "already finished" in capsys.readouterr().err
    other = config_lib.load(path, ["sb_batch_size=16"])
    with pytest.raises(rundir.RunError, match=r"made by another config \('run' was .*use another results_dir"):
        train.train(other, "sb", 0)
    # Every key that changes what training computes is refused by name, the optimizer's included.
    for edit, key, was in (("learning_rate=0.002", "learning_rate", "0.001"), ("beta_1=0.8", "beta_1", "0.9"),
                           ("adam_epsilon=1e-7", "adam_epsilon", "1e-08"), ("epochs=3", "epochs", "2"),
                           ("batchnorm=moving_average", "batchnorm", "'batch_statistics'")):
        with pytest.raises(rundir.RunError, match=rf"\('{key}' was {re.escape(was)}, now "):
            train.train(config_lib.load(path, [edit]), "sb", 0)
    # Keys that do not (rundir.NON_TRAINING_KEYS: a description, the measurement and extra-run sections)
    # leave the run finished, each of them (results_dir names another folder: no run there to compare;
    # iterate_measure's other value needs keep_every 1, a key that is compared).
    untouched = {"description": "description=edited", "profile": "profile=edited", "seeds": "seeds=[0, 1]",
                 "sharpness": "sharpness.iterations=3", "landscape": "landscape.points=5",
                 "sweep": "sweep.noise_batches=7", "augmentation": "augmentation.enabled=true",
                 "conservative": "conservative.enabled=true", "hessian": "hessian.enabled=true",
                 "batch_size_study": "batch_size_study.batch_sizes=[8, 16]", "warm_start": "warm_start.epochs=3"}
    assert set(untouched) == set(rundir.NON_TRAINING_KEYS) - {"results_dir", "iterate_measure"}
    for key, edit in untouched.items():
        assert train.train(config_lib.load(path, [edit]), "sb", 0) == run, key
    assert stamp(run / "metrics.json") == before


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


def test_divergence_stops_the_run_at_the_epoch_the_loss_becomes_non_finite(tiny_config, monkeypatch):
    from replication import objective

    evaluate, calls = objective.Objective.evaluate, []

    def non_finite_from_epoch_2(self):  # each epoch evaluates train, then test: call 3 is epoch 2's
        calls.append(self)
        loss, accuracy = evaluate(self)
        return (float("nan") if len(calls) >= 3 else loss), accuracy

    monkeypatch.setattr(objective.Objective, "evaluate", non_finite_from_epoch_2)
    run = train.train(config_lib.load(tiny_config(epochs=5)), "sb", 0)
    metrics = storage.read_json(run / "metrics.json")
    assert (metrics["stopped"], metrics["epochs_run"], metrics["diverged_epoch"]) == ("diverged", 2, 2)
    assert len(storage.read_csv(run / "history.csv")) == 2 and len(calls) == 4


def test_x0_another_config_left_behind_is_made_anew_unless_a_run_started_from_it(tiny_config):
    path = tiny_config()
    sb = train.train(config_lib.load(path), "sb", 0)
    edited = config_lib.load(path, ["batchnorm=moving_average"])  # other weights: moving statistics
    with pytest.raises(rundir.RunError, match="'batchnorm' was 'batch_statistics'.*delete that directory"):
        train.train(edited, "sb", 0)
    shutil.rmtree(sb)  # as the refusal advises; the trial's x0 stays behind
    log = io.StringIO()
    train.train(edited, "sb", 0, log=log)
    assert "was made for batchnorm 'batch_statistics', not 'moving_average' and no run started from it: " \
           "making it anew" in log.getvalue()
    assert storage.read_json(rundir.x0_record_path(edited, 0))["made_by"]["batchnorm"] == "moving_average"
    # The new SB run started from that x0: the old config's LB is refused, not given another x0.
    x0 = rundir.x0_path(edited, 0)
    with pytest.raises(rundir.RunError) as refused:
        train.train(config_lib.load(path), "lb", 0)
    assert str(refused.value) == (
        f"x0 file {x0} was made for batchnorm 'moving_average', not 'batch_statistics', and run {sb} "
        f"started from it: delete {x0} and the run directories that started from it, or use another results_dir")
    assert not rundir.run_directory(edited, "lb", 0).exists()


def test_an_x0_made_before_x0_had_a_record_is_kept(tiny_config):
    config = config_lib.load(tiny_config())
    sb = train.train(config, "sb", 0)
    rundir.x0_record_path(config, 0).unlink()
    lb = train.train(config, "lb", 0)
    assert (sb / "initial.weights.h5").read_bytes() == (lb / "initial.weights.h5").read_bytes()
    record = storage.read_json(rundir.x0_record_path(config, 0))
    assert record["weights_sha256"] == storage.read_json(sb / "metrics.json")["x0_sha256"]


def test_a_changed_x0_is_detected_and_made_anew(tiny_config):
    import h5py

    config = config_lib.load(tiny_config())
    sb = train.train(config, "sb", 0)
    with h5py.File(rundir.x0_path(config, 0), "r+") as handle:  # one weight changed: the file still loads
        name = next(name for name, w in weights(rundir.x0_path(config, 0)) if w.ndim == 2)
        handle[name][0, 0] += 1.0
    log = io.StringIO()
    lb = train.train(config, "lb", 0, log=log)
    # LB starts from the x0 SB started from, not from the changed file.
    for (name_sb, w_sb), (name_lb, w_lb) in zip(weights(sb / "initial.weights.h5"), weights(lb / "initial.weights.h5")):
        assert name_sb == name_lb
        np.testing.assert_array_equal(w_sb, w_lb)
    assert "holds other weights than it was made with" in log.getvalue()
    m_sb, m_lb = (storage.read_json(r / "metrics.json") for r in (sb, lb))
    assert m_sb["x0_sha256"] == m_lb["x0_sha256"]


# The start-up writes (the trial's x0, named per backend, then the run's initial copy and env.json), mid-epoch and
# end-of-epoch, each file written during training and at the finish.
KILL_POINTS = ["write:<x0>", "write:initial.weights.h5", "write:env.json", "epoch:1:mid",
               "epoch:1:end", "epoch:2:mid", "write:history.csv", "write:checkpoint-2.weights.h5",
               "write:final.weights.h5", "write:metrics.json"]


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
    point = point.replace("<x0>", rundir.x0_path(config_lib.load(path), 0).name)
    args = ("train", path, "--seed", "0", "--regime", "sb")
    killed = cli(*args, env={storage.FAILPOINT_VARIABLE: point})
    assert killed.returncode == -9, killed.stderr
    run = tmp_path / "r" / f"{network}_{dataset}" / "sb" / "seed0"
    assert not (run / "metrics.json").exists()
    # What a killed run leaves (in its directory, or the trial's x0) is never a partial file under a final name.
    for p in (tmp_path / "r").rglob("*"):
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


def test_a_ghost_config_draws_the_x0_a_plain_config_draws(tiny_config, tmp_path):
    """Ghost batch norm changes training, not x0. Before, the ghost network was a clone with other
    weights: an x0 made by a ghost run first was reused by the plain runs of the trial, which then
    trained to other numbers than the same plain config and seed in a fresh folder."""
    ghost = config_lib.load(tiny_config(epochs=1, ghost_batch_size=8))
    plain = config_lib.load(tiny_config(epochs=1))  # the same results_dir as the ghost config
    fresh = config_lib.load(tiny_config(epochs=1, results_dir=str(tmp_path / "fresh")))
    ghost_sb = train.train(ghost, "sb", 0)  # makes the trial's x0
    plain_lb, fresh_lb = train.train(plain, "lb", 0), train.train(fresh, "lb", 0)
    digests = [storage.read_json(run / "metrics.json")["x0_sha256"] for run in (ghost_sb, plain_lb, fresh_lb)]
    assert digests[0] == digests[1] == digests[2]
    assert (plain_lb / "metrics.json").read_bytes() == (fresh_lb / "metrics.json").read_bytes()
    assert storage.read_json(ghost_sb / "metrics.json")["resolved_config"]["ghost_batch_size"] == 8


def test_a_run_resumed_under_another_non_training_key_records_that_config(tmp_path):
    """A study resumed after its config gained a batch size (batch_size_study is not a training key)
    finished a run whose config.yaml still held the first process's study section while metrics.json
    held the new one, and the loader refused the run as mixed. The resumed run now rewrites its
    config.yaml to the config it finishes under."""
    import yaml

    from replication.analysis import results

    path = tmp_path / "config.yaml"
    base = {**_tiny("F1", "synthetic_mnist"), "results_dir": str(tmp_path / "r")}
    path.write_text(yaml.safe_dump(base))
    killed = cli("train", path, "--seed", "0", "--regime", "sb", env={storage.FAILPOINT_VARIABLE: "epoch:1:end"})
    assert killed.returncode == -9, killed.stderr
    path.write_text(yaml.safe_dump({**base, "sharpness": {"subset": 96}}))  # not a training key
    assert cli("train", path, "--seed", "0", "--regime", "sb").returncode == 0
    run = tmp_path / "r" / "F1_synthetic_mnist" / "sb" / "seed0"
    assert storage.read_yaml(run / "config.yaml")["sharpness"]["subset"] == 96
    assert [r.path for r in results.load(tmp_path / "r").runs] == [run]


def test_a_resumed_run_records_which_process_made_which_epochs(tmp_path):
    """env.json recorded only the process that finished a run, so a run resumed across commits (the
    CPU runs span sessions) named the last commit for epochs an earlier one made. It now keeps each
    earlier process's code and machine with its epochs, and the report's provenance shows them."""
    import yaml

    from replication.analysis import report, results

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**_tiny("F1", "synthetic_mnist"), "results_dir": str(tmp_path / "r")}))
    args = ("train", path, "--seed", "0", "--regime", "sb")
    assert cli(*args, env={storage.FAILPOINT_VARIABLE: "epoch:2:mid"}).returncode == -9
    run = tmp_path / "r" / "F1_synthetic_mnist" / "sb" / "seed0"
    first = storage.read_json(run / "env.json")
    storage.atomic_write_json(run / "env.json", {**first, "git_commit": "a" * 40})  # made by other code
    cli(*args, check=True)
    env = storage.read_json(run / "env.json")
    assert env["resumed_after_epoch"] == 1 and env["git_commit"] == first["git_commit"]
    assert [(p["first_epoch"], p["last_epoch"], p["git_commit"]) for p in env["earlier_processes"]] == [(1, 1, "a" * 40)]
    assert results.load(tmp_path / "r").runs[0].env == env
    assert f"(epochs 2 on; epochs 1-1: {'a' * 12}" in report.build(tmp_path / "r").read_text()
