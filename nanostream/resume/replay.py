"""Feeds a resuming client what it missed, then hands it to the live feed.

A replay writes from the node's history (or, for older lines, from the
source's :class:`Archive`, a Redis stream) one chunk at a time, and writes
the next chunk only once the client has drained the last: it never runs more
than a chunk ahead of the client.  Replays take turns (:class:`Turns`): each
gets at most one chunk per reactor turn and all of them together at most
:data:`TURN_BYTES`, so a storm of resumes never holds up the live feed for
long.  Lines read meanwhile are held in the history behind the replay's
position.

History chunks start at multiples of :data:`ALIGN` positions, so clients
resuming from nearby ids ask for the same chunks, and each is framed once
(:class:`FramedChunks`) however many clients it is written to.

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

#: History chunks after a replay's first start at multiples of this.
ALIGN = 64

#: Bytes all replays together may write in one reactor turn.
TURN_BYTES = 1024 * 1024

#: Framed chunks kept for replays that follow, in bytes.
FRAMED_CHUNK_BYTES = 4 * 1024 * 1024


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


class Turns:
    """Runs ready replays' next steps, in order, within a budget per turn.

    A step returns the bytes it wrote; once a turn's steps have written
    :data:`TURN_BYTES`, the rest wait for the next turn.
    """

    def __init__(self, clock: IReactorTime, budget: int = TURN_BYTES) -> None:
        self._clock = clock
        self._budget = budget
        self._ready: deque[Callable[[], int]] = deque()
        self._scheduled = False

    def soon(self, step: Callable[[], int]) -> None:
        self._ready.append(step)
        if not self._scheduled:
            self._scheduled = True
            self._clock.callLater(0, self._run)

    def _run(self) -> None:
        self._scheduled = False
        ready = self._ready
        spent = 0
        # Only the steps ready when the turn began: those they schedule wait.
        for _ in range(len(ready)):
            if spent >= self._budget:
                break
            spent += ready.popleft()()
        if ready and not self._scheduled:
            self._scheduled = True
            self._clock.callLater(0, self._run)


class FramedChunks:
    """The framed bytes of aligned history chunks, shared by every replay.

    Bounded by :data:`FRAMED_CHUNK_BYTES`, oldest chunk out first; a chunk
    whose lines the history evicted is never asked for again and ages out.
    """

    def __init__(self, max_bytes: int = FRAMED_CHUNK_BYTES) -> None:
        self._max_bytes = max_bytes
        self._chunks: dict[int, tuple[int, bytes]] = {}
        self._bytes = 0

    def get(self, start: int, stop: int) -> bytes | None:
        held = self._chunks.get(start)
        if held is not None and held[0] == stop:
            return held[1]
        return None

    def put(self, start: int, stop: int, data: bytes) -> None:
        old = self._chunks.pop(start, None)
        if old is not None:
            self._bytes -= len(old[1])
        self._chunks[start] = (stop, data)
        self._bytes += len(data)
        while self._bytes > self._max_bytes:
            oldest = next(iter(self._chunks))
            self._bytes -= len(self._chunks.pop(oldest)[1])


class Replay:
    """One resuming ``nanostream.v1`` client, from ``!gap`` to ``!live``."""

    def __init__(
        self,
        broadcaster: Broadcaster,
        sink: ClientSink,
        since: bytes,
        turns: Turns,
        framed: FramedChunks,
    ) -> None:
        self._broadcaster = broadcaster
        self._history = broadcaster.history
        self._sink = sink
        self._since = since
        self._turns = turns
        self._framed = framed
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
            self._turns.soon(self._step)
        elif archive is None:
            self._gap(history.oldest())
            self._position = history.after(since)
            self._turns.soon(self._step)
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

    def _step(self) -> int:
        """Write the next chunk; the bytes written."""
        if self._cancelled:
            return 0
        sink = self._sink
        if not sink.ready:
            # Not before the client has taken what it was sent (at first, the
            # handshake response): a chunk written behind it would count as
            # backlog and could drop a client that is not slow at all.
            sink.on_drain = self._drained
            return 0
        if self._pending:
            written = self._send_pending()
        elif self._position is None and not self._archive_done:
            if not self._fetching:
                self._fetch()
            return 0
        else:
            if self._position is None:
                self._position = self._history.after(self._last_sent)
            written = self._send_history()
            if written < 0:
                return 0
        if self._cancelled:
            return written
        if sink.unsent > self._broadcaster.max_buffer_bytes:
            self._broadcaster.drop(sink)
        elif sink.ready:
            self._turns.soon(self._step)
        else:
            sink.on_drain = self._drained
        return written

    def _drained(self) -> None:
        self._turns.soon(self._step)

    def _send_pending(self) -> int:
        pending = self._pending
        keys: list[int] = []
        lines: list[bytes] = []
        size = 0
        while pending and size < CHUNK_BYTES:
            k, line = pending.popleft()
            keys.append(k)
            lines.append(line)
            size += len(line)
        return self._write(keys, frame_with_ids(keys, lines), len(keys))

    def _send_history(self) -> int:
        """Write the next chunk; its bytes, or -1 once the replay is over
        (live or dropped)."""
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
            return -1
        gaps = history.gaps
        if position >= history.end:
            self._sink.send(notice(b"!live"))
            # A gap marked where no line has come yet is still to be told.
            self._broadcaster.went_live(self._sink, position in gaps)
            return -1
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
        stop = min(limit, (position // ALIGN + 1) * ALIGN)
        data = self._framed.get(position, stop)
        if data is not None:
            self._position = stop
            return self._write([history.key_at(stop - 1)], data, stop - position)
        keys, lines = history.entries(position, CHUNK_BYTES, stop)
        data = frame_with_ids(keys, lines)
        self._position = position + len(keys)
        if position % ALIGN == 0 and self._position == stop:
            self._framed.put(position, stop, data)
        return self._write(keys, data, len(keys))

    def _write(self, keys: list[int], data: bytes, count: int) -> int:
        self._last_sent = keys[-1]
        self._broadcaster.lines_replayed += count
        self._sink.send(data)
        return len(data)
