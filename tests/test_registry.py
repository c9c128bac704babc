"""Measures registered in one place (issue 26 item 6): a measure registered from this test module alone
gets its make rule for the runs it applies to and its files read, checked and keyed by results.load,
with no edit to pipeline.py or results.py; the Hessian command's options are HessianConfig's fields."""

import dataclasses
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, TINY
from replication import config as config_lib
from replication import pipeline, rundir, storage
from replication import __main__ as cli_main
from replication.analysis import results
from replication.measure import registry

TRIAL = "F1_fashion_mnist"
COMMITTED = ROOT / "results" / "hessian-quick" / TRIAL


def _toy_targets(config, spec, run):
    return [registry.Target(run / "toy" / "last.json", f"toy {run} --size {config.sharpness.dim}")]


TOY = registry.Measure("toy", "sharpness", applies=lambda config, spec: spec.name == "lb", targets=_toy_targets,
                       files="toy/*.json", key=lambda path, record: ("toy", record["size"]),
                       required={"": ("size", "value")})


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry.MEASURES, TOY.name, TOY)
    return TOY


def test_a_registered_measure_gets_its_make_rule_for_the_runs_it_applies_to(toy, tmp_path):
    config = tmp_path / "tiny.yaml"
    results_dir = tmp_path / "results"
    config.write_text(yaml.safe_dump({**TINY, "results_dir": str(results_dir)}))
    rules = pipeline.rules("tiny", [str(config)])
    lb, sb = (results_dir / "F1_synthetic_mnist" / regime / "seed0" for regime in ("lb", "sb"))
    assert f"{lb}/toy/last.json: | {lb}/metrics.json\n\t$(RUN) $(PY) -m replication toy {lb} --size 100\n" in rules
    assert f"{sb}/toy" not in rules  # applies to LB only
    report_rule = next(line for line in rules.splitlines() if line.startswith(f"{results_dir}/REPORT.md:"))
    assert f"{lb}/toy/last.json" in report_rule.split()


def _toy_record(run_dir, **changes):
    metrics = storage.read_json(run_dir / "metrics.json")
    record = {"network": metrics["network"], "regime": metrics["regime"], "run_seed": metrics["seed"],
              "size": 7, "value": 0.5, "wall_seconds": 1.0, "settings": {"size": 7}, **changes}
    storage.atomic_write_json(run_dir / "toy" / "size7.json", record)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(COMMITTED, root / TRIAL, ignore=shutil.ignore_patterns("*.png", "*.pdf"))
    return root


def test_a_registered_measures_files_are_loaded_keyed_and_checked(toy, tree):
    for regime in ("sb", "lb"):
        _toy_record(tree / TRIAL / regime / "seed0")
    loaded = results.load(tree)
    for run in loaded.runs:
        (key, measurement), = run.measurements["toy"].items()
        assert key == ("toy", 7) and measurement.record["value"] == 0.5
        assert run.measurements["sharpness"] is run.sharpness and run.measurements["hessian"] is run.hessian

    run_dir = tree / TRIAL / "lb" / "seed0"
    for changes, message in (({"wall_seconds": -1.0}, "wall_seconds is -1.0"),     # the value rules
                             ({"regime": "sb"}, "is not a measurement of the run"),  # another run's
                             ({"settings": {"size": 8}}, "measured with different settings")):  # unlike SB's
        _toy_record(run_dir, **changes)
        with pytest.raises(results.ResultsError, match=message):
            results.load(tree)
    record = storage.read_json(run_dir / "toy" / "size7.json")
    del record["value"]
    storage.atomic_write_json(run_dir / "toy" / "size7.json", record)
    with pytest.raises(results.ResultsError, match="no 'value', which every such file has"):
        results.load(tree)


def test_every_measure_reads_a_config_section_that_does_not_change_training():
    sections = {field.name for field in dataclasses.fields(config_lib.Config)}
    for measure in registry.MEASURES.values():
        assert measure.section in sections and measure.section in rundir.NON_TRAINING_KEYS, measure.name


def test_the_registry_and_the_loader_start_no_backend():
    """results.load reads the registry: importing it must not import Keras (the analysis runs without it)."""
    code = "import sys, replication.analysis.results; sys.exit('keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_the_hessian_command_defaults_are_hessian_config_fields():
    args = cli_main.build_parser().parse_args(["hessian", "RUN_DIR"])
    for field in dataclasses.fields(config_lib.HessianConfig):
        if field.name != "enabled":
            assert getattr(args, field.name) == field.default, field.name
    given = cli_main.build_parser().parse_args(["hessian", "RUN_DIR", "--kinds", "relu", "--tol", "0.5",
                                                "--draws", "2"])
    assert (given.kinds, given.tol, given.draws) == (("relu",), 0.5, 2)


def test_section_options_take_types_defaults_and_help_from_the_fields():
    @dataclasses.dataclass(frozen=True)
    class Section:
        enabled: bool = False
        sizes: tuple[int, ...] = dataclasses.field(default=(2, 3), metadata={"help": "the sizes"})
        rate: float = dataclasses.field(default=0.25, metadata={"help": "the rate"})

    import argparse

    parser = argparse.ArgumentParser()
    cli_main._section_options(parser, Section)
    assert vars(parser.parse_args([])) == {"sizes": (2, 3), "rate": 0.25}
    assert vars(parser.parse_args(["--sizes", "4,5", "--rate", "1"])) == {"sizes": (4, 5), "rate": 1.0}
    assert "the sizes (default 2,3)" in parser.format_help() and "--enabled" not in parser.format_help()
    # ... and the make rule's command line says the section back in the same options.
    assert registry.options(Section(sizes=(4, 5))) == "--sizes 4,5 --rate 0.25"
