"""Where lines come from: stdin, producers on an endpoint, or Redis.

Every source ends in the same place: lists of whole lines handed to a
:class:`LineSink` (the broadcaster), one list per read, so a new source is a
new module here and nothing else changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class LineSink(Protocol):
    """Takes each batch of lines a source read, in order."""

    def broadcast(self, lines: Sequence[bytes]) -> None: ...
