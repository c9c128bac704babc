"""`python -m replication diff`: a rerun's results folder against the committed one (CI runs it
after regenerating the quick profile). Every number counts; times and environments do not."""

import json

from replication.analysis import rerun


def _folder(root, phi=35.25, seconds=1.0, device="CPU (AMD EPYC, 2 cores)"):
    run = root / "F1_fashion_mnist" / "sb" / "seed0"
    (run / "sharpness").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test_accuracy": 89.47, "diverged": False,
                                                  "wall_seconds": seconds, "run": str(run)}))
    (run / "env.json").write_text(json.dumps({"device": device, "start_time": str(seconds)}))
    (run / "history.csv").write_text(f"epoch,train_loss,seconds\n1,0.25,{seconds}\n")
    (run / "sharpness" / "full_eps0.001.json").write_text(json.dumps({"phi": phi, "solves": [{"phi": phi}]}))
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
