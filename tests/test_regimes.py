"""Run names (replication/regimes.py): every grammar round-trips, no name of one grammar is read
as another, and a name that is none gives one error that lists them all (one line from the CLI)."""

from pathlib import Path

import pytest

from conftest import cli, one_error_line
from replication import regimes

# (spec from a builder, its name, the fields parse must give back)
BUILT = [
    (regimes.pair("sb"), "sb", {"kind": "pair", "base": "sb"}),
    (regimes.pair("lb"), "lb", {"kind": "pair", "base": "lb"}),
    (regimes.sweep(1), "b1", {"kind": "sweep", "batch": 1, "scaling": "none"}),
    (regimes.sweep(1024, "sqrt"), "b1024-sqrt", {"kind": "sweep", "batch": 1024, "scaling": "sqrt"}),
    (regimes.sweep(50000, "linear"), "b50000-linear", {"kind": "sweep", "batch": 50000, "scaling": "linear"}),
    (regimes.study(256, 1), "b256-x1", {"kind": "study", "batch": 256, "multiplier": 1.0}),
    (regimes.study(32, 0.125), "b32-x0.125", {"kind": "study", "batch": 32, "multiplier": 0.125}),
    (regimes.study(32, 1 / 3), "b32-x0.333333", {"kind": "study", "batch": 32, "multiplier": 0.333333}),
    (regimes.study(32, 1e-5), "b32-x1e-05", {"kind": "study", "batch": 32, "multiplier": 1e-5}),
    (regimes.study(32, 2 ** 20), "b32-x1.04858e+06", {"kind": "study", "batch": 32, "multiplier": 1.04858e6}),
    (regimes.compare(64, None, 3), "b64-fixed-e3", {"kind": "compare", "batch": 64, "multiplier": None,
                                                    "epochs": 3, "ghost": None}),
    (regimes.compare(64, 0.5, 12, 8), "b64-x0.5-e12-g8", {"kind": "compare", "batch": 64, "multiplier": 0.5,
                                                          "epochs": 12, "ghost": 8}),
    (regimes.compare(256, 1, 3), "b256-x1-e3", {"kind": "compare", "batch": 256, "multiplier": 1.0, "epochs": 3}),
    (regimes.compare(64, 1e-3, 3), "b64-x0.001-e3", {"kind": "compare", "multiplier": 1e-3, "epochs": 3}),
    (regimes.remedy("sb", "augmentation"), "sb-augmented", {"kind": "remedy", "base": "sb", "remedy": "augmentation"}),
    (regimes.remedy("lb", "conservative"), "lb-conservative", {"kind": "remedy", "base": "lb",
                                                               "remedy": "conservative"}),
    (regimes.warm_start(0), "lb-from-sb0", {"kind": "warm_start", "base": "lb", "sb_epoch": 0}),
    (regimes.warm_start(12), "lb-from-sb12", {"kind": "warm_start", "base": "lb", "sb_epoch": 12}),
]


@pytest.mark.parametrize("built, name, fields", BUILT, ids=[name for _, name, _ in BUILT])
def test_every_grammar_round_trips(built, name, fields):
    assert built.name == name
    parsed = regimes.parse(name)
    assert parsed == built  # every field, the multiplier to the bit: the same learning rate follows
    assert {key: getattr(parsed, key) for key in fields} == fields


def test_every_kind_has_a_builder_in_the_table():
    assert {built.kind for built, _, _ in BUILT} == set(regimes.KINDS)


@pytest.mark.parametrize("name, kind", [
    ("b256", "sweep"), ("b256-sqrt", "sweep"),
    ("b256-x1", "study"), ("b256-x1e-05", "study"),                  # 1e-05 is the multiplier, not epochs
    ("b256-x1-e3", "compare"), ("b256-x1e-05-e3", "compare"), ("b256-fixed-e3", "compare"),
    ("b256-x1-e3-g8", "compare"), ("lb-augmented", "remedy"), ("lb-from-sb3", "warm_start"), ("lb", "pair"),
])
def test_a_name_of_one_grammar_is_never_read_as_another(name, kind):
    assert regimes.parse(name).kind == kind
    # No other kind's pattern reads it either (parse takes the first that matches).
    assert [k for k, pattern in regimes._PATTERNS.items() if pattern.fullmatch(name)] == [kind]


@pytest.mark.parametrize("name", [
    "", "bogus", "SB", "b", "b0", "b064", "B64", "bx", "b64-", "b64-none", "b64-cubic", "b\u00b2",
    "b64-x", "b64-x-1", "b64-fixed", "b64-x1-g8", "b64-sqrt-e3", "b64-x1-e3-sqrt", "b64-x1-e0", "b64-x1-e3-g0",
    "sb-from-sb1", "lb-from-sb", "lb-from-sb01", "lb-augmented-conservative", "sb-augmentation", "sb lb",
])
def test_a_name_that_is_none_gives_the_one_error_listing_the_grammar(name):
    with pytest.raises(regimes.RegimeError) as caught:
        regimes.parse(name)
    assert str(caught.value) == f"unknown regime {name!r}: a run's name is {regimes.GRAMMAR}"
    assert regimes.parse_or_none(name) is None


def test_a_run_has_one_spelling():
    """b64-x0.50 would train the run b64-x0.5 a second time, in another directory."""
    for name, spelled in (("b64-x0.50", "b64-x0.5"), ("b64-x1.0", "b64-x1"), ("b64-x01", "b64-x1"),
                          ("b64-x1e5", "b64-x100000"), ("b64-x0.5-e3-g8", None)):
        if spelled is None:
            assert regimes.parse(name).name == name
            continue
        with pytest.raises(regimes.RegimeError, match=f"regime '{name}' is spelled '{spelled}': use that name"):
            regimes.parse(name)


def test_the_train_command_refuses_a_bad_name_in_one_line_listing_the_grammar(tiny_config):
    path = tiny_config()
    result = cli("train", path, "--regime", "bogus")
    line = one_error_line(result.returncode, result.stderr)
    assert line == f"error: unknown regime 'bogus': a run's name is {regimes.GRAMMAR}"
    assert not (Path(path).parent / "results").exists()  # nothing written
    # A run's name that this config does not train is the config's error, naming what it has.
    result = cli("train", path, "--regime", "b64")
    line = one_error_line(result.returncode, result.stderr)
    assert line == "error: unknown regime 'b64': use sb or lb (this config has no sweep.batch_sizes)"
