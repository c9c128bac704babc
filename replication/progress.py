"""Progress of long steps (training epochs, sharpness solves): a bar on a terminal, nothing in a log.

Keras' Progbar redraws one line when stdout is a terminal; written to a file it would add a line at
every update, so where stdout is not a terminal (make -j, Slurm, CI logs) `bar` returns a bar that
draws nothing, and the one-line summaries each step already prints are the log.
"""

from __future__ import annotations

import sys


class _Silent:
    def update(self, current, values=None, finalize=None) -> None:
        pass


def on_terminal() -> bool:
    return sys.stdout.isatty()


def bar(total: int | None, unit: str = "step", shown: tuple[str, ...] = ()):
    """A keras.utils.Progbar of `total` units on a terminal, else one that draws nothing. The values
    named in `shown` are drawn as they are (Progbar averages any other over the updates)."""
    if not on_terminal():
        return _Silent()
    import keras

    return keras.utils.Progbar(total, unit_name=unit, stateful_metrics=list(shown))
