"""Where lines come from: stdin, producers on an endpoint, or Redis.

Every source ends in the same place: lists of whole lines handed to a
:class:`LineSink` (the broadcaster), one list per read, so a new source is a
new module here plus the option that picks it (docs/architecture.rst).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class LineSink(Protocol):
    """Takes each batch of lines a source read, in order."""

    def broadcast(self, lines: Sequence[bytes]) -> None: ...


class GapSink(LineSink, Protocol):
    """The broadcaster as Redis sources see it: ids of their own, and gaps."""

    def broadcast(
        self, lines: Sequence[bytes], ids: Sequence[bytes] | None = None
    ) -> None:
        """``ids``: the lines' own ids (a stream's entry ids), if they have any."""

    def source_gap(self) -> None:
        """The source lost lines before the next batch it hands on."""


class SourceStatus:
    """Whether the source can deliver lines right now, and why not.

    Every source keeps one up to date; readiness checks and metrics read it.
    Stdin is connected until EOF; an endpoint source while at least one
    producer is connected; a Redis source while subscribed.
    """

    def __init__(self) -> None:
        self.connected = False
        self.detail = "source not started"
        #: Lines dropped for being longer than ``--max-line-bytes``.
        self.lines_discarded = 0

    def up(self, detail: str) -> None:
        self.connected = True
        self.detail = detail

    def down(self, detail: str) -> None:
        self.connected = False
        self.detail = detail
