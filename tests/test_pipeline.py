"""Make rules generated from configs: one file target per result, a valid makefile, right order."""

import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY
from replication import config as config_lib
from replication import pipeline
from tests.conftest import planned_commands


def test_rules_cover_every_result_and_parse_with_make(tmp_path):
    config = tmp_path / "tiny.yaml"
    results = tmp_path / "results"
    config.write_text(yaml.safe_dump({**TINY, "seeds": [0, 1], "results_dir": str(results)}))
    rules = pipeline.rules("tiny", [str(config)])
    trial = results / "F1_synthetic_mnist"
    for seed in (0, 1):
        for regime in ("sb", "lb"):
            run = trial / regime / f"seed{seed}"
            assert f"{run}/metrics.json: | tiny-check-0\n" in rules
            # One command per run measures every space and epsilon; its target is the last written.
            assert f"{run}/sharpness/random_eps0.0005.json: | {run}/metrics.json\n\t$(RUN) $(PY) -m replication " \
                   f"sharpness {run}\n" in rules
        for path in ("linear", "curvilinear"):
            assert f"{trial}/landscape/seed{seed}_{path}.pdf:" in rules
    assert f"tiny-all: {results}/REPORT.md" in rules
    lines = planned_commands(rules, "tiny-all", tmp_path)
    first_train = next(i for i, line in enumerate(lines) if " train " in line)
    first_sharpness = next(i for i, line in enumerate(lines) if " sharpness " in line)
    assert first_train < first_sharpness and lines[-1].endswith(f"report {results}")
    assert sum(" train " in line for line in lines) == 4  # 2 seeds x 2 regimes
    assert " check " in lines[0]  # the config check comes before every step


def test_file_times_never_make_a_finished_measurement_redo(tmp_path):
    # A fresh clone gives committed files arbitrary times (pipeline's docstring): with every result
    # present and each run's metrics.json newer than its measurements, nothing is trained or measured
    # again; only the check and the report (which reads files alone) run.
    import os
    import re

    config = tmp_path / "tiny.yaml"
    results = tmp_path / "results"
    config.write_text(yaml.safe_dump({**TINY, "results_dir": str(results)}))
    rules = pipeline.rules("tiny", [str(config)])
    targets = [line.split(":")[0] for line in rules.splitlines() if re.match(r"^/\S+:", line)]
    runs = [t for t in targets if t.endswith("metrics.json")]
    assert runs and len(targets) > len(runs) + 1
    for i, path in enumerate(t for t in targets if not t.endswith("REPORT.md")):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("{}")
        os.utime(path, (1000, 1000 + (10 ** 6 if path in runs else i)))  # every run newer
    lines = planned_commands(rules, "tiny-all", tmp_path)
    assert [line.split()[3] for line in lines] == ["check", "report"], lines


def test_make_refuses_an_edited_config_before_reporting_old_runs(tmp_path):
    import sys

    config = tmp_path / "tiny.yaml"
    results = tmp_path / "results"
    base = {**TINY, "epochs": 1, "train_subset": 200, "test_subset": 100, "results_dir": str(results)}
    config.write_text(yaml.safe_dump(base))
    makefile = tmp_path / "rules.mk"

    def make(*goals):
        makefile.write_text(f"PY := {sys.executable}\n" + pipeline.rules("tiny", [str(config)]))
        return subprocess.run(["make", "--no-print-directory", "-f", str(makefile), *goals],
                              capture_output=True, text=True, cwd=ROOT, timeout=600)

    trained = make(str(results / "F1_synthetic_mnist" / "sb" / "seed0" / "metrics.json"))
    assert trained.returncode == 0, trained.stderr
    assert make("-n", "tiny-all").stdout.count(" train ") == 1  # only LB is left to train
    config.write_text(yaml.safe_dump({**base, "epochs": 2}))  # the user edits the config
    edited = make("tiny-all")
    assert edited.returncode != 0
    assert "made by another config ('epochs' was 1, now 2)" in edited.stderr
    assert not (results / "F1_synthetic_mnist" / "lb").exists() and not (results / "REPORT.md").exists()


def test_rules_under_a_local_root_write_there_and_say_so_to_every_config_command(tmp_path):
    # make quick: results/<profile> becomes local/<profile> (make-rules --results-root local).
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))  # no results_dir: results/test
    rules = pipeline.rules("test-local", [str(config)], "local")
    lines = planned_commands(rules, "test-local-all", tmp_path)
    assert "results/" not in rules
    run = "local/test/F1_synthetic_mnist/sb/seed0"
    assert f"{run}/metrics.json: | test-local-check-0\n" in rules
    assert f"train {config} --set results_dir=local/test --seed 0 --regime sb" in rules
    for command in ("check", "train", "landscape"):  # every command that reads the config
        commands = [line for line in lines if f" {command} " in line]
        assert commands and all("--set results_dir=local/test" in line for line in commands)
    assert lines[-1].endswith("report local/test")
    assert pipeline.rules("test", [str(config)]).count("results/test/F1_synthetic_mnist/sb/seed0/metrics.json:") == 1
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(yaml.safe_dump({**TINY, "results_dir": str(tmp_path / "mine")}))
    with pytest.raises(config_lib.ConfigError, match="is not under results/, so --results-root local cannot move it"):
        pipeline.rules("test-local", [str(elsewhere)], "local")


def test_a_run_made_under_another_root_says_where_it_lives_and_diffs_equal(tmp_path):
    """The same run made by make under two roots: each config.yaml names its own folder, and `diff`
    finds no difference (the folder's location is not a result)."""
    import sys

    from replication.analysis import rerun

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "epochs": 1, "train_subset": 200, "test_subset": 100,
                                      "sharpness": {"epsilons": [0.001], "spaces": ["full"], "iterations": 2,
                                                    "subset": 100}}))
    for root in ("reference", "local"):
        makefile = tmp_path / f"{root}.mk"
        makefile.write_text(f"PY := {sys.executable}\n" + pipeline.rules(root, [str(config)], str(tmp_path / root)))
        run = tmp_path / root / "test" / "F1_synthetic_mnist" / "sb" / "seed0"
        made = subprocess.run(["make", "--no-print-directory", "-f", str(makefile), f"{run}/sharpness/full_eps0.001.json"],
                              capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert made.returncode == 0, made.stderr
        assert yaml.safe_load((run / "config.yaml").read_text())["results_dir"] == str(tmp_path / root / "test")
    assert not (ROOT / "results" / "test").exists()
    assert rerun.diff(tmp_path / "reference" / "test", tmp_path / "local" / "test") == ([], True)
