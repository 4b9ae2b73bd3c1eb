"""Feeds a resuming client what it missed, then hands it to the live feed.

A replay writes from the node's history (or, for older lines, from the
source's :class:`Archive`, a Redis stream) one chunk at a time, and writes
the next chunk only once the client has drained the last: it never runs more
than a chunk ahead of the client, and one client's replay never holds up
another's or the live feed (each gets one chunk per reactor turn).  Lines
read meanwhile are held in the history behind the replay's position.

When the position reaches the newest line, the replay writes ``!live`` and
moves the client into the live set in the same reactor turn, so nothing is
lost or repeated at the seam.  A client that falls so far behind that the
history evicts lines it has not been sent is dropped as a slow consumer:
it may resume again and will be told of the gap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanostream.broadcast import frame_with_ids, notice
from nanostream.resume.ids import format_key, parse_id

if TYPE_CHECKING:
    from nanostream.broadcast import Broadcaster
    from nanostream.sinks import ClientSink

_log = Logger()

#: About how many bytes of lines one step writes.
CHUNK_BYTES = 64 * 1024

#: Entries asked of the archive at once.
ARCHIVE_COUNT = 256


class ArchiveSlice(Protocol):
    """What an archive answers: see :meth:`Archive.read_after`."""

    held: bool
    oldest: bytes | None
    entries: list[tuple[bytes, bytes]]


class Archive(Protocol):
    """Lines a source still holds beyond the node's history (a Redis stream)."""

    #: The id of the newest entry the source has handed on (or started
    #: after); an archive entry past it is still to come live.
    last_read: bytes | None

    def read_after(self, since: bytes, count: int) -> Deferred[Any]:
        """Fire with an :class:`ArchiveSlice`: whether ``since`` is held, the
        oldest held id, and up to ``count`` entries after ``since``."""


class Turns:
    """Runs each ready replay's next step once per reactor turn."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._ready: list[Callable[[], None]] = []

    def soon(self, step: Callable[[], None]) -> None:
        if not self._ready:
            self._clock.callLater(0, self._run)
        self._ready.append(step)

    def _run(self) -> None:
        ready, self._ready = self._ready, []
        for step in ready:
            step()


class Replay:
    """One resuming ``nanostream.v1`` client, from ``!gap`` to ``!live``."""

    def __init__(
        self, broadcaster: Broadcaster, sink: ClientSink, since: bytes, turns: Turns
    ) -> None:
        self._broadcaster = broadcaster
        self._history = broadcaster.history
        self._sink = sink
        self._since = since
        self._turns = turns
        self._cancelled = False
        #: The next history position to send, None while on the archive.
        self._position: int | None = None
        #: Archive entries fetched and not yet sent.
        self._pending: deque[tuple[int, bytes]] = deque()
        self._last_sent = parse_id(since)
        self._archive_done = False
        self._fetching = False
        self._gap_told: int | None = None

    def start(self) -> None:
        history = self._history
        since = self._last_sent
        position = history.find(since)
        archive = self._broadcaster.archive
        if position is not None:
            self._broadcaster.resumes_exact += 1
            self._position = position + 1
            self._step()
        elif archive is None:
            self._gap(history.oldest())
            self._position = history.after(since)
            self._step()
        else:
            self._fetch(first=True)

    def cancel(self) -> None:
        self._cancelled = True
        self._sink.on_drain = None

    def _gap(self, oldest: int | None) -> None:
        self._broadcaster.resumes_gap += 1
        oldest_text = b"-" if oldest is None else format_key(oldest)
        self._sink.send(notice(b"!gap", self._since, oldest_text))

    # -- the archive (older than the history) --------------------------------

    def _fetch(self, first: bool = False) -> None:
        archive = self._broadcaster.archive
        assert archive is not None
        self._fetching = True
        d = archive.read_after(format_key(self._last_sent), ARCHIVE_COUNT)
        d.addCallbacks(self._fetched, self._unavailable, callbackArgs=(first,))

    def _fetched(self, slice: ArchiveSlice, first: bool) -> None:
        self._fetching = False
        if self._cancelled:
            return
        history = self._history
        if first:
            if slice.held:
                self._broadcaster.resumes_exact += 1
            else:
                held = [
                    k
                    for k in (
                        None if slice.oldest is None else parse_id(slice.oldest),
                        history.oldest(),
                    )
                    if k is not None
                ]
                self._gap(min(held) if held else None)
        # Archive entries stop where the history takes over, or where the
        # source has read up to: anything later comes live.
        cap = history.oldest()
        if cap is None:
            archive = self._broadcaster.archive
            read = None if archive is None else archive.last_read
            cap = parse_id(read) + 1 if read is not None else 0
        taken = 0
        for entry_id, line in slice.entries:
            k = parse_id(entry_id)
            if k >= cap:
                self._archive_done = True
                break
            self._pending.append((k, line))
            taken += 1
        if len(slice.entries) < ARCHIVE_COUNT or not taken:
            self._archive_done = True
        self._step()

    def _unavailable(self, failure: Failure) -> None:
        self._fetching = False
        if self._cancelled:
            return
        _log.warn(
            "cannot read the source's archive for a resume: {why}; "
            "dropping the client, which may resume again",
            why=failure.getErrorMessage(),
        )
        self._broadcaster.drop(self._sink)

    # -- writing ---------------------------------------------------------------

    def _step(self) -> None:
        if self._cancelled:
            return
        sink = self._sink
        if self._pending:
            self._send_pending()
        elif self._position is None and not self._archive_done:
            if not self._fetching:
                self._fetch()
            return
        else:
            if self._position is None:
                self._position = self._history.after(self._last_sent)
            if not self._send_history():
                return
        if self._cancelled:
            return
        if sink.unsent > self._broadcaster.max_buffer_bytes:
            self._broadcaster.drop(sink)
        elif sink.ready:
            self._turns.soon(self._step)
        else:
            sink.on_drain = self._drained

    def _drained(self) -> None:
        self._turns.soon(self._step)

    def _send_pending(self) -> None:
        pending = self._pending
        keys: list[int] = []
        lines: list[bytes] = []
        size = 0
        while pending and size < CHUNK_BYTES:
            k, line = pending.popleft()
            keys.append(k)
            lines.append(line)
            size += len(line)
        self._write(keys, lines)

    def _send_history(self) -> bool:
        """Write the next chunk; False once the replay is over (live or dropped)."""
        history = self._history
        position = self._position
        assert position is not None
        if position < history.first:
            _log.warn(
                "dropping a resuming client: it fell behind the history "
                "({lines} lines, {size} bytes)",
                lines=history.max_lines,
                size=history.max_bytes,
            )
            self._broadcaster.drop(self._sink)
            return False
        gaps = history.gaps
        if position >= history.end:
            self._sink.send(notice(b"!live"))
            # A gap marked where no line has come yet is still to be told.
            self._broadcaster.went_live(self._sink, position in gaps)
            return False
        if position in gaps and self._gap_told != position:
            self._gap_told = position
            last = gaps[position]
            self._sink.send(
                notice(
                    b"!gap",
                    b"-" if last is None else format_key(last),
                    format_key(history.key_at(position)),
                )
            )
        limit = min((p for p in gaps if p > position), default=history.end)
        keys, lines = history.entries(position, CHUNK_BYTES, limit)
        self._position = position + len(keys)
        self._write(keys, lines)
        return True

    def _write(self, keys: list[int], lines: list[bytes]) -> None:
        self._last_sent = keys[-1]
        self._broadcaster.lines_replayed += len(keys)
        self._sink.send(frame_with_ids(keys, lines))
