"""Line ids: ``<ms>-<seq>``, two decimal integers, the form of a Redis stream id.

Internally an id is one integer, ``ms << 64 | seq``, so that ids compare as
the pair of integers with one comparison and cost no tuple per line.
"""

from __future__ import annotations

import re

#: The largest value of either part.
MAX_PART = 2**64 - 1

_POSITION = re.compile(rb"([0-9]+)-([0-9]+)")


def key(ms: int, seq: int) -> int:
    """The sortable integer of the id ``<ms>-<seq>``."""
    return ms << 64 | seq


def format_key(k: int) -> bytes:
    """The id ``<ms>-<seq>`` as ASCII bytes."""
    return b"%d-%d" % (k >> 64, k & MAX_PART)


def parse_id(text: bytes | str) -> int:
    """The key of an id, or ValueError when it is not ``<digits>-<digits>``.

    Only ASCII digits count (``str.isdigit`` would take other scripts'
    digits), and each part is at most 2**64 - 1.
    """
    raw = text.encode("ascii") if isinstance(text, str) else text
    match = _POSITION.fullmatch(raw)
    if match is None:
        raise ValueError("not <digits>-<digits>")
    ms, seq = int(match.group(1)), int(match.group(2))
    if ms > MAX_PART or seq > MAX_PART:
        raise ValueError("a part exceeds 2**64 - 1")
    return key(ms, seq)
