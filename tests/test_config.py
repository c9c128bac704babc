"""Configs: defaults are the paper's protocol, YAML round trip, overrides, deviations named."""

import dataclasses

import pytest

from replication import regimes
from replication import config as config_lib

ROOT = config_lib.Path(__file__).resolve().parent.parent


def test_defaults_are_the_paper_protocol():
    config = config_lib.from_dict({"network": "F1", "dataset": "mnist"})
    assert (config.learning_rate, config.beta_1, config.beta_2, config.adam_epsilon) == (1e-3, 0.9, 0.999, 1e-8)
    lb = regimes.pair("lb")
    assert config.sb_batch_size == 256 and config.batch_size(lb, 60000) == 6000
    assert config.batch_size(lb, 50000) == 5000 and config.batch_size(lb, 721329) == 72133
    assert config.epochs == 100 and config.seeds == (0, 1, 2, 3, 4) and config.eval_batch_size == 5000
    assert config.batchnorm == "batch_statistics"
    assert config.sharpness.epsilons == (1e-3, 5e-4) and config.sharpness.iterations == 10
    assert config.sharpness.dim == 100
    assert config.deviations() == []


def test_round_trip(tmp_path):
    config = config_lib.from_dict({"network": "C1", "dataset": "cifar10_jpeg", "epochs": 20,
                                   "seeds": [3], "sharpness": {"subset": 1000}})
    path = tmp_path / "c.yaml"
    path.write_text(config_lib.dump(config))
    assert config_lib.load(path) == config
    assert dataclasses.is_dataclass(config) and config.sharpness.subset == 1000
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3


def test_overrides_with_dotted_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("network: F1\ndataset: mnist\n")
    config = config_lib.load(path, ["epochs=7", "sharpness.iterations=3", "seeds=[1, 2]",
                                    "sharpness.epsilons=[1e-3]"])
    assert config.epochs == 7 and config.sharpness.iterations == 3 and config.seeds == (1, 2)
    assert config.sharpness.epsilons == (1e-3,)


def test_deviations_name_every_reduction():
    config = config_lib.from_dict({"network": "F1", "dataset": "fashion_mnist", "epochs": 10,
                                   "seeds": [0, 1], "batchnorm": "moving_average",
                                   "train_subset": 100, "sharpness": {"subset": 50}})
    text = " | ".join(config.deviations())
    for phrase in ("fashion_mnist instead of the paper's mnist", "10 epochs", "2 seed(s)",
                   "moving averages", "training set reduced to 100", "sharpness on 50"):
        assert phrase in text


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    config = config_lib.load(path)
    assert config.profile in str(config.results_dir)
    header = path.read_text().splitlines()[0]
    assert header.startswith("#"), "every config starts with a header comment saying what it reproduces"


def test_paper_profile_covers_all_six_networks():
    configs = [config_lib.load(p) for p in (ROOT / "configs" / "paper").glob("*.yaml")]
    assert sorted(c.network for c in configs) == ["C1", "C2", "C3", "C4", "F1", "F2"]
    for c in configs:
        assert c.deviations() == [], c.network


def test_dataset_facts_have_one_home_in_the_data_registry(capsys, monkeypatch):
    from replication import __main__ as entry
    from replication import data

    assert config_lib.DATASETS == tuple(data.DATASETS)
    for network, paper in config_lib.PAPER_DATASET.items():  # a network takes its paper dataset's shape
        fits = {name for name, spec in data.DATASETS.items()
                if (spec.input_shape, spec.num_classes) == (data.DATASETS[paper].input_shape,
                                                             data.DATASETS[paper].num_classes)}
        assert set(config_lib.COMPATIBLE[network]) == fits and paper in fits
    # `python -m replication models` builds each network for what the registry says, not a copy.
    monkeypatch.setitem(data.DATASETS, "timit", dataclasses.replace(data.DATASETS["timit"], input_shape=(39,),
                                                                    num_classes=48))
    assert entry.main(["models"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows.keys() == set(config_lib.NETWORKS)
    assert rows["F2"].split()[1:3] == ["(39,)", "48"]
    assert rows["C3"].split()[1:5] == ["(32,", "32,", "3)", "100"]


def test_a_run_made_before_a_section_key_existed_counts_as_having_its_default(tmp_path):
    """target.milestones (issue 25) was added to an existing section: a run whose config.yaml has a
    `target` section without it had none, so it is the same run as one made now (the run-directory
    check and the results loader's protocol agree), while a run made with milestones is not."""
    import yaml

    from replication import rundir, storage
    from replication.analysis import results

    now = config_lib.from_dict({"network": "F1", "dataset": "synthetic_mnist"}).to_dict()
    before = {**now, "target": {k: v for k, v in now["target"].items() if k != "milestones"}}
    assert config_lib.with_defaults(before)["target"] == now["target"]
    storage.atomic_write_text(tmp_path / "config.yaml", yaml.safe_dump(before))
    rundir.check_same_config(tmp_path, now)  # no error
    assert results.protocol("sb", before, "tensorflow") == results.protocol("sb", now, "tensorflow")
    later = {**now, "target": {**now["target"], "milestones": [0.3]}}
    with pytest.raises(rundir.RunError, match="'target' was"):
        rundir.check_same_config(tmp_path, later)
