"""Numeric command-line options, checked the same way by every command."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.python import usage


def number_option(
    kind: Callable[[str], Any],
    option: str,
    minimum: float,
    *,
    above: bool = False,
    maximum: float | None = None,
) -> Callable[[str], Any]:
    """A converter that names the option in its error.

    NaN and infinity are refused: NaN compares false with every bound, so it
    would switch a check off rather than set it.
    """

    def convert(text: str) -> Any:
        try:
            value = kind(text)
            if not math.isfinite(value):
                raise ValueError(text)
        except ValueError:
            raise usage.UsageError(f"{option} takes a number, not {text!r}") from None
        if value < minimum or (above and value == minimum):
            relation = "above" if above else "at least"
            raise usage.UsageError(f"{option} must be {relation} {minimum}")
        if maximum is not None and value > maximum:
            raise usage.UsageError(f"{option} must be at most {maximum}")
        return value

    return convert
