"""What a source holds beyond the node's history, for older resumes.

A Redis stream keeps entries the node's bounded history let go of; a replay
(:mod:`nanostream.resume.replay`) reads them through this interface.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred


class ArchiveSlice(Protocol):
    """What an archive answers: see :meth:`Archive.read_after`."""

    held: bool
    oldest: bytes | None
    entries: list[tuple[bytes, bytes]]


class Archive(Protocol):
    """Lines a source still holds beyond the node's history (a Redis stream)."""

    @property
    def last_read(self) -> bytes | None:
        """The id of the newest entry the source has handed on (or started
        after); an archive entry past it is still to come live."""

    def read_after(self, since: bytes, count: int) -> Deferred[Any]:
        """Fire with an :class:`ArchiveSlice`: whether ``since`` is held, the
        oldest held id, and up to ``count`` entries after ``since``."""
