"""argparse types for the commands' numeric options: a count, time, rate or port that cannot
work (0 searches, a NaN timeout, a port past 65535) is refused by name before anything runs,
rather than waiting forever, dividing by zero or failing later in a component's log."""
from __future__ import annotations

import argparse
import math


def number(kind, low: float, high: float = math.inf, *, above: bool = False):
    """A type for argparse: `kind` (int or float) in [low, high] ((low, high] with `above`),
    finite. Its errors say what was expected and what was given."""
    def show(v):
        return str(int(v)) if kind is int else f"{v:g}"

    lower = f"above {show(low)}" if above else f"of at least {show(low)}"
    words = ("a whole number" if kind is int else "a number") + " " + lower
    if high != math.inf:
        words += f" and at most {show(high)}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (above and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text}")
        return value

    parse.__name__ = kind.__name__  # (argparse names the type in its own messages)
    return parse


positive_int = number(int, 1)
positive_float = number(float, 0, above=True)
non_negative_float = number(float, 0)
