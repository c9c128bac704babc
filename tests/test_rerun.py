"""`python -m replication diff`: a rerun's results folder against the committed one (CI runs it
after regenerating the quick profile). Every number counts; times and environments do not."""

import json
import time

import pytest

from replication.analysis import rerun


def _folder(root, phi=35.25, seconds=1.0, device="CPU (AMD EPYC, 2 cores)"):
    run = root / "F1_fashion_mnist" / "sb" / "seed0"
    (run / "sharpness").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test_accuracy": 89.47, "diverged": False,
                                                  "wall_seconds": seconds, "run": str(run)}) + "\n")
    (run / "env.json").write_text(json.dumps({"device": device, "start_time": str(seconds)}) + "\n")
    (run / "history.csv").write_text(f"epoch,train_loss,seconds\n1,0.25,{seconds}\n")
    (run / "sharpness" / "full_eps0.001.json").write_text(
        json.dumps({"phi": phi, "solves": [{"phi": phi}], "wall_seconds": 2 * seconds}) + "\n")
    return root


def test_identical_numbers_reproduce_and_times_do_not_count(tmp_path, capsys):
    first = _folder(tmp_path / "a")
    second = _folder(tmp_path / "b", seconds=7.5)
    (second / "F1_fashion_mnist" / "sb" / "seed0" / "evaluations").mkdir()
    (second / "F1_fashion_mnist" / "sb" / "seed0" / "evaluations" / "jax.json").write_text("{}")
    assert rerun.main(first, second) == 0
    assert "reproduced: every number of the 4 result files" in capsys.readouterr().out


def test_a_last_bit_or_a_missing_file_is_not_reproduced(tmp_path, capsys):
    first = _folder(tmp_path / "a")
    second = _folder(tmp_path / "b", phi=35.25 * (1 + 2**-50))
    (second / "F1_fashion_mnist" / "sb" / "seed0" / "history.csv").unlink()
    assert rerun.main(first, second) == 1
    out = capsys.readouterr().out
    assert "full_eps0.001.json.phi: 35.25 vs" in out and "solves[0].phi" in out
    assert "history.csv: only in" in out and "NOT reproduced: 3 difference(s)" in out
    assert rerun.main(first, second, rtol=1e-12) == 1  # within the tolerance; the missing file still counts
    assert "NOT reproduced: 1 difference(s)" in capsys.readouterr().out


def test_other_device_lists_differences_without_judging(tmp_path, capsys):
    first = _folder(tmp_path / "a")
    second = _folder(tmp_path / "b", phi=40.0, device="CPU (Intel Xeon, 2 cores)")
    assert rerun.main(first, second) == 0
    out = capsys.readouterr().out
    assert "phi: 35.25 vs 40.0" in out and "not judged" in out and "Intel Xeon" in out


def test_the_summary_says_what_is_reproduced_what_differs_and_why(tmp_path, capsys, monkeypatch):
    # make quick ends with `diff REFERENCE LOCAL --summary --started T`. Numbers per folder: metrics'
    # test_accuracy, history's epoch and train_loss, the sharpness phi twice (times are not results).
    from replication import __main__ as entry

    reference = _folder(tmp_path / "reference")
    (reference / "REPORT.md").write_text("# reference\n")
    same = _folder(tmp_path / "same", seconds=75.0)
    (same / "REPORT.md").write_text("# here\n")
    now = time.time()
    monkeypatch.setattr(rerun.time, "time", lambda: now)  # the wall time, not the test's own speed
    started = now - 125
    assert entry.main(["diff", str(reference), str(same), "--summary", "--started", str(started)]) == 0
    out = capsys.readouterr().out
    assert "reproduced exactly: 4 of 4 result files, 5 of 5 numbers" in out
    assert "why: nothing differs (same device and library versions)" in out
    assert f"report: {same / 'REPORT.md'}" in out
    assert "time: 2 min 5 s wall" in out and "record training 1 min 15 s, measurements 2 min 30 s" in out

    # On the reference's own device a last bit is a failure (diff's rule, exit 1), said in the summary.
    changed = _folder(tmp_path / "changed", phi=35.25 * (1 + 2**-50))
    (changed / "F1_fashion_mnist" / "sb" / "seed0" / "history.csv").unlink()
    assert rerun.main(reference, changed, brief=True) == 1
    out = capsys.readouterr().out
    assert "reproduced exactly: 2 of 4 result files, 1 of 3 numbers" in out
    assert "differ: 1 file(s), 2 value(s): F1_fashion_mnist/sb/seed0/sharpness/full_eps0.001.json (2)" in out
    assert "relative differences of the 2 differing numbers: median 8.1e-16, largest 8.1e-16 (F1_fashion_mnist/sb/seed0/sharpness" in out
    assert "in one folder only: 1 file(s), e.g. F1_fashion_mnist/sb/seed0/history.csv: only in" in out
    assert "NOT reproduced (exit status 1)" in out and "(the runs' env.json agree)" in out
    assert f"report: none yet ({changed / 'REPORT.md'} is missing)" in out

    # On another device the same differences are listed, not judged, and the summary names the device.
    other = _folder(tmp_path / "other", phi=40.0, device="CPU (Intel Xeon, 2 cores)")
    assert rerun.main(reference, other, brief=True) == 0
    out = capsys.readouterr().out
    assert "phi: 35.25 vs 40.0" in out and "env.json.device" in out
    assert "device CPU (AMD EPYC, 2 cores) vs CPU (Intel Xeon, 2 cores)" in out
    assert "listed, not judged (exit status 0)" in out and "reproduced exactly: 2 of 4 result files" in out


def test_missing_folder_is_one_line(tmp_path):
    from tests.conftest import cli

    result = cli("diff", tmp_path / "nothing", tmp_path / "nothing2")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "holds no result files" in result.stderr


def test_a_config_key_added_later_compares_by_its_default(tmp_path, capsys):
    # Committed runs predate a config key; a rerun records it with its default value: same run.
    # The same key with another value is a difference.
    from replication import config as config_lib
    key, default = "keep_every", config_lib.defaults()["keep_every"]
    first, second, third = (_folder(tmp_path / name) for name in "abc")
    for root, extra in ((first, {}), (second, {key: default}), (third, {key: 3})):
        path = root / "F1_fashion_mnist" / "sb" / "seed0" / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["resolved_config"] = {"network": "F1", **extra}
        path.write_text(json.dumps(metrics))
    assert rerun.main(first, second) == 0
    assert rerun.main(first, third) == 1
    assert "resolved_config.keep_every: None vs 3" in capsys.readouterr().out


def test_a_config_key_added_to_a_section_later_compares_by_its_default(tmp_path, capsys):
    from replication import config as config_lib
    section = config_lib.defaults()["batch_size_study"]
    older = {k: v for k, v in section.items() if k != "compare_epochs"}
    first, second, third = (_folder(tmp_path / name) for name in "abc")
    for root, study in ((first, older), (second, section), (third, {**section, "compare_epochs": 3})):
        path = root / "F1_fashion_mnist" / "sb" / "seed0" / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["resolved_config"] = {"network": "F1", "batch_size_study": study}
        path.write_text(json.dumps(metrics))
    assert rerun.main(first, second) == 0
    assert rerun.main(first, third) == 1
    assert f"batch_size_study.compare_epochs: {section['compare_epochs']} vs 3" in capsys.readouterr().out


# A batch-size study folder: timing totals, per-step times and times to target are timing fields ---------
def _study_folder(root, seconds=1.0, steps=120, where="results/batch-size"):
    run = root / "F1_fashion_mnist" / "b200-x0.5" / "seed0"
    (run / "noise").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "regime": "b200-x0.5", "test_accuracy": 88.1, "target": {"steps": steps, "train_seconds": 30 * seconds},
        "resolved_config": {"network": "F1", "run": {"regime": "b200-x0.5", "seed": 0, "backend": "tensorflow"}}}))
    (run / "env.json").write_text(json.dumps({"device": "CPU", "start_time": f"2026-01-0{int(seconds)}",
                                              "end_time": "later", "train_seconds_this_process": 99 * seconds}))
    (run / "history.csv").write_text(f"epoch,train_loss,seconds\n1,0.5,{12.5 * seconds}\n")
    (run / "target.csv").write_text(f"step,train_loss,train_seconds\n{steps},0.2,{3 * seconds}\n")
    (run / "noise" / "final.json").write_text(json.dumps({"b_simple": 1701.9, "wall_seconds": 64 * seconds,
                                                          "run": f"{where}/F1_fashion_mnist/b200-x0.5/seed0"}))
    (root / "batch_size.json").write_text(json.dumps({
        "runs": 1, "train_seconds_total": 812.4 * seconds, "noise_seconds_total": 64 * seconds,
        "measure_seconds_total": 80 * seconds,
        "points": [{"batch_size": 200, "steps": steps, "seconds_per_step": 0.01 * seconds,
                    "seconds_to_target": 1.2 * seconds}]}))
    (root / "tables").mkdir()
    (root / "tables" / "batch_size.csv").write_text(
        f"batch_size,steps,seconds_per_step,train_seconds\n200,{steps},{0.01 * seconds},{30 * seconds}\n")
    return root


def test_a_study_folder_differing_only_in_times_and_hosts_is_reproduced(tmp_path, capsys):
    # Fails on the old rule, which compared train_seconds_total, seconds_per_step and seconds_to_target.
    first = _study_folder(tmp_path / "a")
    second = _study_folder(tmp_path / "b", seconds=3.0, where="/tmp/elsewhere")
    assert rerun.main(first, second) == 0
    out = capsys.readouterr().out
    assert "reproduced: every number of the 7 result files" in out and "see --help" in out
    # Every other value still counts: the steps to the target, and the run entry of a resolved config
    # (a mapping under "run", not a location).
    third = _study_folder(tmp_path / "c", steps=121)
    assert rerun.main(first, third) == 1
    out = capsys.readouterr().out
    assert "target.steps: 120 vs 121" in out and "points[0].steps: 120 vs 121" in out
    assert "NOT reproduced: 4 difference(s)" in out
    path = second / "F1_fashion_mnist" / "b200-x0.5" / "seed0" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["resolved_config"]["run"]["backend"] = "jax"
    path.write_text(json.dumps(metrics))
    assert rerun.main(first, second) == 1
    assert "resolved_config.run.backend: 'tensorflow' vs 'jax'" in capsys.readouterr().out


def test_the_ignored_fields_are_exactly_the_stated_rule():
    for key in ("seconds", "wall_seconds", "train_seconds_total", "seconds_per_step", "seconds_to_target",
                "train_seconds_this_process", "start_time", "end_time", "git_commit", "platform", "environment"):
        assert rerun._ignored(key, 1.0), key
    assert rerun._ignored("run", "results/x/sb/seed0") and not rerun._ignored("run", {"seed": 0})
    for key in ("steps", "b_simple", "phi", "device", "secondsish", "runtime", "test_accuracy"):
        assert not rerun._ignored(key, 1.0), key
    for key in ("'seconds'", "'_time'", "environment", "git_commit", "platform", "run"):
        assert key in rerun.IGNORED_RULE


@pytest.mark.parametrize("rtol, problem", [("1", "accepts everything"), ("2.5", "accepts everything"),
                                           ("inf", "accepts everything"), ("-0.1", "is not a tolerance"),
                                           ("nan", "is not a tolerance")])
def test_a_tolerance_that_accepts_everything_or_nothing_sensible_is_refused(tmp_path, capsys, rtol, problem):
    from replication import __main__ as entry
    from conftest import one_error_line

    first, second = _folder(tmp_path / "a"), _folder(tmp_path / "b", phi=1e9)
    code = entry.main(["diff", str(first), str(second), "--rtol", rtol])
    line = one_error_line(code, capsys.readouterr().err)
    assert f"--rtol {float(rtol)} {problem}" in line and "give a relative tolerance in [0, 1)" in line
    assert entry.main(["diff", str(first), str(second), "--rtol", "0.999"]) == 1  # phi 35.25 vs 1e9


def test_make_quick_without_its_reference_says_how_to_restore_it(tmp_path):
    """`make quick` compares with the committed results/quick: when that folder is gone (hessian-quick's
    advice deletes it), the one error line says how to get it back, not a generic usage hint."""
    from conftest import cli, one_error_line

    _folder(tmp_path / "local")
    line = one_error_line(*(lambda r: (r.returncode, r.stderr))(
        cli("diff", tmp_path / "missing", tmp_path / "local", "--summary")))
    assert "git checkout" in line and "make quick-reference" in line
