"""Every key of every config section refuses what it cannot mean (issue 24, "a test that walks
them"): a wrong type, NaN and infinity everywhere, and a negative number wherever the quantity
cannot be negative. A new key is walked automatically; one that may be negative is named below."""

import dataclasses
import math
import typing

import pytest

from replication import config as config_lib

# Keys whose value may be negative, and why.
MAY_BE_NEGATIVE = {
    "landscape.alpha_min": "the paper's plots start at alpha = -1 (beyond x_SB)",
    "landscape.alpha_max": "checked against alpha_min instead (a range, not a size)",
}
BASE = {"network": "F1", "dataset": "synthetic_mnist"}


def keys(cls=config_lib.Config, prefix=""):
    """(dotted key, annotation) of every scalar or list field, sections walked recursively."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            yield from keys(hint, f"{prefix}{field.name}.")
        else:
            yield prefix + field.name, hint


def scalar(hint):
    """The scalar type of an annotation (Optional and tuple unwrapped), and whether it is a list."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    inner = args[0]
    if typing.get_origin(inner) is tuple:
        return typing.get_args(inner)[0], True
    return inner, False


def nested(dotted: str, value) -> dict:
    data = dict(BASE)
    *sections, last = dotted.split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
    node[last] = value
    return data


WALK = [(key, *scalar(hint)) for key, hint in keys() if key not in BASE]


def test_the_walk_covers_every_section():
    sections = {key.split(".")[0] for key, _, _ in WALK if "." in key}
    assert {"sharpness", "landscape", "sweep", "augmentation", "conservative", "target", "batch_size_study",
            "warm_start", "hessian"} <= sections


@pytest.mark.parametrize("key, kind, is_list", WALK, ids=[k for k, _, _ in WALK])
def test_every_key_refuses_what_it_cannot_mean(key, kind, is_list):
    wrap = (lambda v: [v]) if is_list else (lambda v: v)
    wrong_type = {str: 3.5, bool: "yes", int: "three", float: "three"}.get(kind, object())
    bad = [wrap(wrong_type), {"a": 1}]
    if kind in (int, float):
        bad += [wrap(math.nan) if kind is float else wrap(1.5), wrap(math.inf) if kind is float else wrap(True)]
        if key not in MAY_BE_NEGATIVE:
            bad.append(wrap(-1 if kind is int else -1.0))
    for value in bad:
        with pytest.raises(config_lib.ConfigError) as error:
            config_lib.from_dict(nested(key, value))
        message = str(error.value)
        assert "\n" not in message and f"'{key}'" in message, message  # the key itself, named in full
