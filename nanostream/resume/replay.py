"""Feeds a resuming client what it missed, then hands it to the live feed.

A replay writes from the node's history (or, for older lines, from the
source's :class:`~nanostream.resume.archive.Archive`, a Redis stream) one
chunk at a time, and writes the next chunk only once the client has taken
the last: it never runs more than a chunk ahead of the client.  What the
socket does not take at once the replay keeps and offers again in a later
turn, so its bytes are all written within the turns' budget.  Replays take
turns (:class:`~nanostream.resume.turns.Turns`), so a storm of resumes never
holds up the live feed for long.  Lines read meanwhile are held in the
history behind the replay's position.

History chunks start at multiples of :data:`ALIGN` positions, so clients
resuming from nearby ids ask for the same chunks, and each is framed once
(:class:`FramedChunks`) however many clients it is written to.

When the position reaches the newest line, the replay writes ``!live`` and
moves the client into the live set in the same reactor turn, so nothing is
lost or repeated at the seam.  Should the history evict lines the client has
not been sent, the replay reads on from the archive; without one, the
client is dropped as a slow consumer: it may resume and is told of the gap.

A node may lag behind the stream (another node is ahead): a client may
resume at an id the stream holds but this node has not read yet.  Such a
replay waits, without ``!live``, until the node has read past that id, and
skips the lines up to it as they are read, so the client gets none twice.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.python.failure import Failure

from nanostream.broadcast import frame_with_ids, notice
from nanostream.resume.ids import format_key, parse_id
from nanostream.resume.turns import FramedChunks, Turns

if TYPE_CHECKING:
    from nanostream.broadcast import Broadcaster
    from nanostream.resume.archive import ArchiveSlice
    from nanostream.sinks import ClientSink

_log = Logger()

#: About how many bytes of lines one step writes.
CHUNK_BYTES = 64 * 1024

#: Entries asked of the archive at once.
ARCHIVE_COUNT = 256

#: History chunks after a replay's first start at multiples of this.
ALIGN = 64


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
        #: What the source had read when the last fetch was asked.
        self._read_before: bytes | None = None
        self._gap_told: int | None = None
        #: The client is ahead of what this node has read (see above).
        self._ahead = False
        #: The part of the last chunk the socket has not taken yet.
        self._tail: memoryview | None = None

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
        self._read_before = archive.last_read
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
                self._ahead = not self._source_reached()
            else:
                oldest = None if slice.oldest is None else parse_id(slice.oldest)
                held = [k for k in (oldest, history.oldest()) if k is not None]
                self._gap(min(held) if held else None)
        elif not slice.held and self._last_sent != parse_id(self._since):
            # The stream let go of the last line sent: what followed it may
            # be gone too, and the client must not miss it silently.
            _log.warn("dropping a resuming client: it fell behind the stream")
            self._broadcaster.drop(self._sink)
            return
        # Archive entries stop where the history takes over, or where the
        # source has read up to: anything later comes live.
        cap = history.oldest()
        if cap is None:
            archive = self._broadcaster.archive
            read = None if archive is None else archive.last_read
            cap = parse_id(read) + 1 if read is not None else 0
        for entry_id, line in slice.entries:
            k = parse_id(entry_id)
            if k >= cap:
                self._archive_done = True
                break
            self._pending.append((k, line))
        if not self._archive_done and len(slice.entries) < ARCHIVE_COUNT:
            # The slice reached the stream's end when it was read; lines the
            # source read after the fetch was asked may lie past that end
            # and, with a short history, be held nowhere: ask again then.
            self._archive_done = self._history_covers()
        if self._archive_done:
            # The history takes over after the last entry to be sent, from
            # where it is now: should it evict lines before the pending
            # entries are written, the client falls behind, never skips.
            last = self._pending[-1][0] if self._pending else self._last_sent
            self._position = history.after(last)
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
        if self._tail is not None:
            written = self._offer(self._tail)
        elif self._pending:
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
        elif self._tail is not None:
            sink.when_writable(self._drained)
        elif sink.ready:
            at = self._position
            if at is not None and at >= self._history.end and not self._pending:
                # Caught up: !live now.  Were it left to the next step, a
                # line would arrive first on a busy node, every time.
                self._send_history()
            else:
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
            if self._broadcaster.archive is not None:
                return self._from_archive()
            _log.warn(
                "dropping a resuming client: it fell behind the history "
                "({lines} lines, {size} bytes)",
                lines=history.max_lines,
                size=history.max_bytes,
            )
            self._broadcaster.drop(self._sink)
            return -1
        if self._ahead:
            position = self._skip_read(position)
            if position < 0:
                return -1
        gaps = history.gaps
        if position >= history.end:
            if self._ahead:
                self._broadcaster.wake_on_lines(self._sink, self._drained)
                return -1
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

    def _from_archive(self) -> int:
        """Read on from the stream, which holds what the history let go."""
        self._position = None
        self._archive_done = False
        self._turns.soon(self._step)
        return -1

    def _history_covers(self) -> bool:
        """Whether every line the source read after the last fetch was
        asked is in the history (or it read none)."""
        archive = self._broadcaster.archive
        before = self._read_before
        if archive is None or archive.last_read == before:
            return True
        oldest = self._history.oldest()
        return before is not None and oldest is not None and oldest <= parse_id(before)

    def _source_reached(self) -> bool:
        """Whether this node has read up to the client's position."""
        archive = self._broadcaster.archive
        read = None if archive is None else archive.last_read
        return read is None or parse_id(read) >= self._last_sent

    def _skip_read(self, position: int) -> int:
        """Past the lines the client already has, up to its position; -1
        when the source read past it but the history holds none of that."""
        history = self._history
        end = history.end
        while position < end and history.key_at(position) <= self._last_sent:
            position += 1
        self._position = position
        if position < end:
            self._ahead = False
        elif self._source_reached():
            self._ahead = False
            archive = self._broadcaster.archive
            assert archive is not None and archive.last_read is not None
            if parse_id(archive.last_read) > self._last_sent:
                # Read in one batch with lines the client had and not held
                # (no history): the stream still has them.
                return self._from_archive()
        return position

    def _write(self, keys: list[int], data: bytes, count: int) -> int:
        self._last_sent = keys[-1]
        self._broadcaster.lines_replayed += count
        return self._offer(data)

    def _offer(self, data: bytes | memoryview) -> int:
        """Offer ``data`` to the client; keep what it did not take."""
        taken = self._sink.offer(data)
        self._tail = memoryview(data)[taken:] if taken < len(data) else None
        return taken
