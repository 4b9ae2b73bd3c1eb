"""Lines from a Redis stream: a feed that survives a Redis outage.

Each entry's ``line`` field is one line, and the entry's id is the line's id,
the same on every node.  The source reads with ``XREAD`` from the last id it
read: at start from the stream's last id (new entries only), and after a lost
connection from where it stopped, so nothing the stream still holds is lost.
One read (up to 1000 entries) is one batch for the broadcaster.  An entry
without a ``line`` field, with an empty one, or longer than
``--max-line-bytes`` is skipped with a warning.

Source gaps.  Every read is taken atomically with the stream's counters
(Redis 7 ``XINFO STREAM``: entries added over its life, its length, its
first entry and last generated id).  The source keeps ``accounted``: how many
of the entries ever added are read or already known lost.  Whenever it knows
how many unread entries the stream holds (the read returned all of them, or
the stream's first entry is newer than the last one read), the entries added
but neither accounted nor held were dropped unread (trimmed or deleted), and
that is a gap, reported before the next batch.  Entries that were dropped
after being read are no gap.  A stream that vanished (a Redis restart without
persistence, ``DEL``) or was recreated (its counters went backwards) is
always a gap: what it held unread cannot be known.  Redis 6 has no counters;
there the source reads on but cannot see gaps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.exceptions import RedisError
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from nanostream.redis.backoff import Backoff
from nanostream.redis.streams import (
    Accounting,
    Entry,
    Read,
    Snapshot,
    StreamReader,
    make_client,
    read_range,
)
from nanostream.redis.url import RedisTarget
from nanostream.sources import GapSink, SourceStatus

_log = Logger()
T = TypeVar("T")
Run = Callable[..., "Deferred[Any]"]


@dataclass(frozen=True)
class ArchiveSlice:
    """What the stream holds after a resume position."""

    held: bool
    """An entry with the asked-for id is in the stream."""
    oldest: bytes | None
    """The stream's oldest entry id; None when it is empty or missing."""
    entries: list[tuple[bytes, bytes]] = field(default_factory=list)
    """``(id, line)`` after the position, in order, at most the count asked."""


class RedisStreamSource(Service):
    """Reads one stream while running, reconnecting with backoff."""

    def __init__(
        self,
        sink: GapSink,
        max_line_bytes: int,
        target: RedisTarget,
        stream_key: str | bytes,
        reactor: Any,
        status: SourceStatus | None = None,
        backoff: Backoff | None = None,
        reader: Any = None,
        commands: Any = None,
        run: Run | None = None,
    ) -> None:
        """
        :param reader: a :class:`StreamReader` (tests hand in a fake).
        :param commands: the redis-py client for archive reads.
        :param run: runs a blocking call and fires with its result in the
            reactor thread; by default in a thread of this source's own.
        """
        key = stream_key.encode() if isinstance(stream_key, str) else stream_key
        self.status = SourceStatus() if status is None else status
        #: Times entries were dropped before this node read them.
        self.source_gaps = 0
        self._sink = sink
        self._max_line_bytes = max_line_bytes
        self._target = target
        self._key = key
        self._reactor = reactor
        self._backoff = Backoff() if backoff is None else backoff
        self._reader = reader or StreamReader(make_client(target), key)
        self._commands = commands or make_client(target)
        self._pools: list[ThreadPool] = []
        if run is None:
            self._run = self._pooled("redis-stream-reader", 1)
            self._run_command = self._pooled("redis-stream-commands", 2)
        else:
            self._run = self._run_command = run
        self._accounting = Accounting()
        self._started = False
        self._up = False
        self._gap_after: bytes | None = None
        self._busy: Deferred[Any] | None = None
        self._retry: Any = None

    def _pooled(self, name: str, threads: int) -> Run:
        pool = ThreadPool(minthreads=0, maxthreads=threads, name=name)
        self._pools.append(pool)
        return lambda f, *args: deferToThreadPool(self._reactor, pool, f, *args)

    @property
    def position(self) -> bytes:
        """The id of the last entry read (or where reading starts)."""
        return self._accounting.position

    @property
    def last_read(self) -> bytes | None:
        """For resumes: entries after this one are still to come live."""
        return self.position if self._started else None

    # -- the service ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        _log.info(
            "source: Redis stream {stream} at {redis}",
            stream=self._key.decode(errors="replace"),
            redis=self._target.masked(),
        )
        self.status.down(f"connecting to Redis at {self._target.masked()}")
        for pool in self._pools:
            pool.start()
        self._connect()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._reader.close()
        busy = self._busy if self._busy is not None else succeed(None)
        done: Deferred[None] = Deferred()
        busy.addBoth(lambda _: self._stop_pools(done))
        return done

    def _stop_pools(self, done: Deferred[None]) -> None:
        for pool in self._pools:
            pool.stop()
        done.callback(None)

    # -- reading ----------------------------------------------------------------

    def _call(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        d = self._run(f, *args)
        self._busy = d
        return d

    def _connect(self) -> None:
        self._retry = None
        d = self._call(self._reader.snapshot)
        d.addCallback(self._connected)
        d.addErrback(self._failed)

    def _connected(self, snapshot: Snapshot) -> None:
        if not self.running:
            return
        if not self._started:
            self._started = True
            self._accounting.start(snapshot)
            _log.info(
                "reading Redis stream {stream} at {redis} after {position}",
                stream=self._key.decode(errors="replace"),
                redis=self._target.masked(),
                position=self.position.decode(),
            )
        else:
            _log.warn(
                "Redis source recovered: reading stream {stream} again after "
                "{position}",
                stream=self._key.decode(errors="replace"),
                redis=self._target.masked(),
                position=self.position.decode(),
            )
        self._up = True
        self._backoff.reset()
        self.status.up(f"reading Redis stream {self._key.decode(errors='replace')}")
        self._read()

    def _read(self) -> None:
        d = self._call(self._reader.read, self.position)
        d.addCallback(self._got)
        d.addErrback(self._failed)

    def _got(self, read: Read) -> None:
        if not self.running:
            return
        before = self.position
        gap = self._accounting.observe(read, self._reader.count)
        if gap and self._gap_after is None:
            self._gap_after = before
        lines, ids = self._lines(read.entries)
        if lines:
            if self._gap_after is not None:
                self._report_gap(self._gap_after, ids[0])
                self._gap_after = None
            self._sink.broadcast(lines, ids)
        self._read()

    def _report_gap(self, last: bytes, following: bytes) -> None:
        self.source_gaps += 1
        _log.warn(
            "Redis stream {stream} dropped entries this node had not read: "
            "lines after {last} and before {next} are missing",
            stream=self._key.decode(errors="replace"),
            redis=self._target.masked(),
            last=last.decode(),
            next=following.decode(),
        )
        self._sink.source_gap()

    def _failed(self, failure: Failure) -> None:
        if not self.running:
            return
        if not failure.check(RedisError, OSError):
            _log.failure("Redis stream source failed", failure)
        reason = str(failure.value) or type(failure.value).__name__
        delay = self._backoff.next_delay()
        self._retry = self._reactor.callLater(delay, self._connect)
        if self._up:
            self._up = False
            self.status.down(f"lost Redis: {reason}")
            _log.warn(
                "Redis source lost its connection to {redis}: {reason}; "
                "reading on after {position} once back; reconnecting in {delay} s",
                redis=self._target.masked(),
                stream=self._key.decode(errors="replace"),
                reason=reason,
                position=self.position.decode(),
                delay=round(delay, 2),
            )
        else:
            self.status.down(f"cannot reach Redis: {reason}")
            _log.warn(
                "Redis source cannot read stream at {redis}: {reason}; "
                "attempt {attempts} failed, next in {delay} s",
                redis=self._target.masked(),
                stream=self._key.decode(errors="replace"),
                reason=reason,
                attempts=self._backoff.attempts,
                delay=round(delay, 2),
            )

    # -- entries ----------------------------------------------------------------

    def _lines(self, entries: Sequence[Entry]) -> tuple[list[bytes], list[bytes]]:
        lines, ids = [], []
        for entry_id, fields in entries:
            line = self._line(entry_id, fields)
            if line is not None:
                lines.append(line)
                ids.append(entry_id)
        return lines, ids

    def _line(self, entry_id: bytes, fields: dict[bytes, bytes]) -> bytes | None:
        line = fields.get(b"line")
        if not line:
            _log.warn(
                "skipped entry {id} of Redis stream {stream}: no line in it",
                id=entry_id.decode(),
                stream=self._key.decode(errors="replace"),
            )
            return None
        if len(line) > self._max_line_bytes:
            self.status.lines_discarded += 1
            _log.warn(
                "discarded a line of {length} bytes from Redis stream "
                "{stream}: longer than {limit}",
                length=len(line),
                limit=self._max_line_bytes,
                stream=self._key.decode(errors="replace"),
                id=entry_id.decode(),
            )
            return None
        return line

    # -- the archive --------------------------------------------------------------

    def read_after(self, since: bytes, count: int) -> Deferred[ArchiveSlice]:
        """What the stream holds after ``since``: at most ``count`` lines."""
        d = self._run_command(read_range, self._commands, self._key, since, count)

        def sliced(result: tuple[bool, bytes | None, list[Entry]]) -> ArchiveSlice:
            held, oldest, entries = result
            lines, ids = self._lines(entries)
            return ArchiveSlice(held, oldest, list(zip(ids, lines, strict=True)))

        return d.addCallback(sliced)
