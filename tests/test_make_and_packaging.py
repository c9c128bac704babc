"""Make and packaging (issue 26): a profile goal reads the generated rules of exactly its profiles,
the console command `replication` is `python -m replication`'s main, and results_dir defaults to
results/<profile>."""

import os
import shutil
import subprocess
import tomllib

import pytest
import yaml

from conftest import ROOT
from replication import __main__ as cli_main
from replication import config as config_lib


def test_results_dir_defaults_to_results_of_the_profile(tmp_path):
    base = {"network": "F1", "dataset": "synthetic_mnist", "profile": "mine"}
    config = config_lib.from_dict(base)
    assert config.results_dir == "results/mine"
    assert config.to_dict()["results_dir"] == "results/mine"  # a run's config.yaml holds the path
    assert config_lib.from_dict(yaml.safe_load(config_lib.dump(config))) == config
    assert config_lib.from_dict({**base, "results_dir": None}).results_dir == "results/mine"
    assert config_lib.from_dict({**base, "results_dir": "elsewhere"}).results_dir == "elsewhere"
    assert config_lib.from_dict({"network": "F1", "dataset": "mnist"}).results_dir == "results/paper"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base))
    assert config_lib.load(path).results_dir == "results/mine"
    assert config_lib.load(path, ["profile=other"]).results_dir == "results/other"


def test_console_command_is_the_cli_and_exits_with_its_status(tmp_path):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["replication"].split(":")
    assert (module, function) == ("replication.__main__", "main")
    # The generated script runs sys.exit(main()): main returns the status instead of exiting.
    assert getattr(cli_main, function)(["check", str(tmp_path / "missing.yaml")]) == 2


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_profile_goal_reads_the_rules_of_its_profiles_only(tmp_path):
    """The Makefile in a folder of its own, with a stand-in interpreter whose make-rules prints one
    rule per profile: `make -n GOAL` plans what the profiles' generated rules say, nothing else."""
    shutil.copy(ROOT / "Makefile", tmp_path)
    for name in ("pipeline.py", "config.py", "regimes.py", "measure/registry.py"):  # the rules' sources
        (tmp_path / "replication" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "replication" / name).write_text("")
    for profile in ("quick", "paper", "warmstart", "paper-cpu"):
        (tmp_path / "configs" / profile).mkdir(parents=True)
        (tmp_path / "configs" / profile / "a.yaml").write_text("")
    python = tmp_path / "python"  # called as: python -m replication make-rules --name P [--results-root R] CONFIGS
    python.write_text('#!/bin/sh\nprintf "%s-all:\\n\\techo rules of %s %s\\n" "$5" "$5" "$7"\n')
    python.chmod(0o755)
    output = {}

    def planned(*goals):
        dry = subprocess.run(["make", "-n", "--no-print-directory", *goals, f"PY={python}"], cwd=tmp_path,
                             capture_output=True, text=True, env={**os.environ, "MAKEFLAGS": ""})
        assert dry.returncode == 0, dry.stderr
        output[goals] = dry.stdout
        return [line.strip() for line in dry.stdout.splitlines() if line.startswith("echo rules of")]

    # make quick: the quick profile's rules for the git-ignored local/ (make-rules --results-root
    # local), then the summary of a comparison with the committed reference; quick-reference
    # builds results/quick itself.
    assert planned("quick") == ["echo rules of quick-local local"]
    assert f"{python} -m replication diff results/quick local/quick --summary --started " in output[("quick",)]
    assert planned("quick-reference") == ["echo rules of quick"]
    assert "diff" not in output[("quick-reference",)]
    assert sorted(p.name for p in (tmp_path / ".cache" / "local").iterdir()) == ["quick.mk"]
    assert planned("paper-cpu") == ["echo rules of paper-cpu"]
    assert planned("reproduce") == ["echo rules of paper", "echo rules of warmstart"]
    assert planned("warmstart", "reproduce") == ["echo rules of warmstart", "echo rules of paper"]
    assert sorted(p.name for p in (tmp_path / ".cache").iterdir()) == [
        "local", "paper-cpu.mk", "paper.mk", "quick.mk", "warmstart.mk"]
    shutil.rmtree(tmp_path / ".cache")
    assert planned("bench") == [] and not (tmp_path / ".cache").exists()  # no profile, no rules made
