"""Stopping at a target (replication/target.py; Shallue et al. 2019): the target met at equality,
the check interval from every_examples, the step budget kept to the step, and a finished run's
target files checked before use (issue 24). The checks run inside a simulated model.fit, with the
metric scripted, so each promise is tested to the step in well under a second."""

import math
import types

import numpy as np
import pytest

from replication import config as config_lib
from replication import storage, target, train

TARGET = {"metric": "train_loss", "value": 0.5, "every_steps": 3, "eval_subset": 20, "max_steps": 10}


def _tracker(tmp_path, losses, batch_size=16, examples=100, **target_overrides):
    """A Tracker of a run of `examples` examples at `batch_size`, whose checks measure `losses` in turn."""
    import keras

    config = config_lib.from_dict({"network": "F1", "dataset": "synthetic_mnist", "stopping": "target",
                                   "results_dir": str(tmp_path), "eval_batch_size": 20,
                                   "target": {**TARGET, **target_overrides}})
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    x = np.zeros((examples, 3), np.float32)
    tracker = target.Tracker(config, model, x, np.zeros(examples, np.int64), batch_size, 0, [])
    scripted = iter(losses)
    tracker.objective = types.SimpleNamespace(evaluate=lambda: (next(scripted), 0.5))
    return config, tracker


def _fit(config, tracker, clock=None) -> list[dict]:
    """train's loop around model.fit, with the target callback: epochs until should_stop says stop;
    `clock` (a one-item list read by a patched time.perf_counter) advances a second per step."""
    history = []
    while train.should_stop(config, history, tracker) is None:
        model = types.SimpleNamespace(stop_training=False)
        callback = tracker.callback(len(history))
        callback.set_model(model)
        callback.on_train_begin()
        for batch in range(tracker.steps_per_epoch):
            if clock is not None:
                clock[0] += 1.0  # one second per step
            callback.on_train_batch_end(batch)
            if model.stop_training:
                break
        callback.on_train_end()
        history.append({"train_loss": 1.0, "test_loss": 1.0})
    return history


def test_the_target_is_met_at_equality(tmp_path):
    goal = config_lib.TargetConfig(metric="train_loss", value=0.5)
    assert target.meets(goal, {"train_loss": 0.5}) and target.meets(goal, {"train_loss": "0.5"})
    assert not target.meets(goal, {"train_loss": 0.5000001}) and not target.meets(goal, {"train_loss": math.nan})
    assert target.meets(config_lib.TargetConfig(metric="train_error", value=10), {"train_error": 10.0})
    # A run whose check lands exactly on the value stops there, reached.
    config, tracker = _tracker(tmp_path, [0.9, 0.5, 0.1])
    history = _fit(config, tracker)
    assert [r["step"] for r in tracker.rows] == [3, 6] and tracker.reached["step"] == 6
    assert train.should_stop(config, history, tracker) == "target"
    assert tracker.summary(len(history))["steps"] == 6 and tracker.steps_done(len(history)) == 6


@pytest.mark.parametrize("max_steps, checks", [(10, [3, 6, 9, 10]), (14, [3, 6, 9, 12, 14]), (9, [3, 6, 9])])
def test_the_step_budget_is_kept_to_the_step(tmp_path, max_steps, checks):
    """Checks every 3 steps and one at max_steps, never one past it, whether max_steps falls inside an
    epoch (7 steps), on an epoch's end (14) or on a check (9)."""
    config, tracker = _tracker(tmp_path, [2.0] * 20, max_steps=max_steps)
    history = _fit(config, tracker)
    assert [r["step"] for r in tracker.rows] == checks
    assert train.should_stop(config, history, tracker) == "not_reached"
    summary = tracker.summary(len(history))
    assert summary["steps_run"] == max_steps and not summary["reached"] and summary["steps"] is None


def test_every_step_is_timed_across_epoch_ends(tmp_path, monkeypatch):
    """train_seconds at a check is the time of every step so far: epochs of 7 steps, checks every 3,
    a second per step. Before 2026-12-07 the steps after an epoch's last check went untimed (step 9
    read 8 s, step 14 read 12 s)."""
    clock = [0.0]
    monkeypatch.setattr(target.time, "perf_counter", lambda: clock[0])
    config, tracker = _tracker(tmp_path, [2.0] * 20, batch_size=16, examples=112, max_steps=14)
    _fit(config, tracker, clock)
    assert [(r["step"], r["train_seconds"]) for r in tracker.rows] == [(s, float(s)) for s in (3, 6, 9, 12, 14)]


def test_every_examples_is_turned_into_steps(tmp_path):
    study = config_lib.TargetConfig(value=1, every_steps=7, every_examples=1000)
    assert [target.check_interval(study, b) for b in (32, 200, 1000, 3000)] == [31, 5, 1, 1]
    assert target.check_interval(config_lib.TargetConfig(value=1, every_steps=7), 200) == 7
    # Every 48 examples at batch 16 is every 3 steps (not every 48 steps, which would check only at
    # the budget).
    config, tracker = _tracker(tmp_path, [2.0] * 20, every_steps=50, every_examples=48, max_steps=10)
    _fit(config, tracker)
    assert tracker.every == 3 and [r["step"] for r in tracker.rows] == [3, 6, 9, 10]
    assert tracker.summary(2)["check_every_steps"] == 3


# A finished run's target files, checked before use ---------------------------------------------------
GOOD = {"reached": True, "steps": 60, "examples": 960, "steps_run": 60, "check_every_steps": 3,
        "train_seconds": 1.5}


@pytest.mark.parametrize("edit, field", [
    ({"steps": -5}, "target.steps"), ({"steps": 2.5}, "target.steps"), ({"steps": math.nan}, "target.steps"),
    ({"steps": "60"}, "target.steps"), ({"steps": True}, "target.steps"), ({"steps": None}, "target.steps"),
    ({"steps": 0}, "target.steps"), ({"examples": -1}, "target.examples"),
    ({"steps_run": 0}, "target.steps_run"), ({"steps_run": 59}, "target.steps_run"),
    ({"check_every_steps": 0}, "target.check_every_steps"), ({"train_seconds": -167.0}, "target.train_seconds"),
    ({"train_seconds": math.inf}, "target.train_seconds"), ({"reached": "yes"}, "reached"),
    ({"reached": False}, "target.steps"),
])
def test_a_hand_edited_target_summary_is_refused_in_one_line(tmp_path, edit, field):
    path = tmp_path / "b16-x1" / "seed0" / "metrics.json"
    with pytest.raises(storage.StorageError) as error:
        target.check_summary({**GOOD, **edit}, path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and field in message and "\n" not in message
    assert f"delete {path.parent} and rerun `python -m replication batch-size CONFIG`" in message


def test_a_good_target_summary_passes():
    assert target.check_summary(GOOD, "m.json") == GOOD
    unreached = {**GOOD, "reached": False, "steps": None, "examples": None, "train_seconds": None}
    assert target.check_summary(unreached, "m.json") == unreached
    assert target.check_summary({k: v for k, v in GOOD.items() if k != "check_every_steps"}, "m.json")


TRACE = "step,examples,epoch,train_loss,train_error,train_seconds,reached\n"


@pytest.mark.parametrize("rows, field", [
    (["3,48,1,0.9,20,-167,0"], "row 1 train_seconds"), (["0,0,1,0.9,20,1,0"], "row 1 step"),
    (["3,48,one,0.9,20,1,0"], "row 1 epoch"),
    (["2.5,40,1,0.9,20,1,0"], "row 1 step"), (["3,48,1,0.9,20,1,0", "3,48,1,0.8,20,2,0"], "row 2 step"),
    (["3,48,1,-0.9,20,1,0"], "row 1 train_loss"), (["3,48,1,0.9,150,1,0"], "row 1 train_error"),
    (["3,48,1,nan,20,1,0", "6,96,1,0.8,20,2,0"], "row 1 train_loss"), (["3,48,1,0.9,20,nan,0"], "row 1 train_seconds"),
])
def test_a_hand_edited_trace_is_refused_in_one_line(tmp_path, rows, field):
    (tmp_path / target.TRACE_FILE).write_text(TRACE + "\n".join(rows) + "\n")
    with pytest.raises(storage.StorageError, match=f"^{tmp_path / target.TRACE_FILE}: {field} .*: delete {tmp_path} and rerun"):
        target.read_trace(tmp_path)


def test_a_trace_may_end_in_the_check_that_saw_the_run_diverge(tmp_path):
    (tmp_path / target.TRACE_FILE).write_text(TRACE + "3,48,1,0.9,20,1,0\n6,96,1,nan,nan,2,0\n")
    assert [r["step"] for r in target.read_trace(tmp_path)] == ["3", "6"]
    assert target.read_trace(tmp_path / "absent") == []


def test_a_resume_refuses_checks_made_on_the_examples_drawn_before(tmp_path):
    """A trace begun before data.MEASUREMENT_SUBSET (its rows name no eval_examples) would mix two
    eval sets in one run: its resume is refused in one line naming the fix; today's rows pass."""
    from replication import data

    rows = [{"step": 3, "examples": 48, "epoch": 1, "train_loss": 1.0, "train_error": 30.0, "train_seconds": 0.1,
             "reached": 0}]
    storage.atomic_write_csv(target.trace_path(tmp_path), rows)
    with pytest.raises(storage.StorageError, match=r"target\.csv: its checks so far measured the examples drawn "
                                                   r"before data\.MEASUREMENT_SUBSET.*: delete .* and train it again"):
        target.read_resumed_trace(tmp_path)
    storage.atomic_write_csv(target.trace_path(tmp_path), [{**rows[0], "eval_examples": data.MEASUREMENT_SUBSET}],
                             target.TRACE_FIELDS)
    assert [int(r["step"]) for r in target.read_resumed_trace(tmp_path)] == [3]
    assert target.read_resumed_trace(tmp_path / "none") == []
