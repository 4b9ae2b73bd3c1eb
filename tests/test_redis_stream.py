"""The stream source's gap rule and its service, with no Redis.

:class:`Accounting` is fed the counters Redis would report; the service runs
against a scripted reader whose calls complete when the test says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from nanostream.redis.backoff import Backoff
from nanostream.redis.streams import Accounting, Entry, Read, Snapshot
from nanostream.redis.url import RedisTarget
from nanostream.sources.redis_stream import RedisStreamSource

COUNT = 3


def entries(*numbers: int) -> list[Entry]:
    return [(b"%d-0" % n, {b"line": b"l%d" % n}) for n in numbers]


def snapshot(added: int, length: int, first: int | None, last: int) -> Snapshot:
    return Snapshot(
        exists=True,
        length=length,
        entries_added=added,
        last_generated=b"%d-0" % last,
        first=None if first is None else b"%d-0" % first,
    )


class AccountingTests(SynchronousTestCase):
    def started(self, added: int, last: int) -> Accounting:
        accounting = Accounting()
        accounting.start(snapshot(added, added, 1, last))
        self.assertEqual(accounting.position, b"%d-0" % last)
        return accounting

    def test_nothing_lost(self) -> None:
        """Entries read as they come: no gap."""
        accounting = self.started(5, 5)
        read = Read(snapshot(7, 7, 1, 7), entries(6, 7))
        self.assertFalse(accounting.observe(read, COUNT))
        self.assertEqual(accounting.position, b"7-0")

    def test_trimmed_unread(self) -> None:
        """Unread entries trimmed away: a gap."""
        accounting = self.started(5, 5)
        read = Read(snapshot(10, 2, 9, 10), entries(9, 10))
        self.assertTrue(accounting.observe(read, COUNT))

    def test_trimmed_read_only(self) -> None:
        """Trimming entries already read is no gap, even down to nothing."""
        accounting = self.started(5, 5)
        self.assertFalse(accounting.observe(Read(snapshot(5, 0, None, 5), []), COUNT))
        read = Read(snapshot(6, 1, 6, 6), entries(6))
        self.assertFalse(accounting.observe(read, COUNT))

    def test_gap_counted_once(self) -> None:
        """A loss is reported by the read that sees it, not again later."""
        accounting = self.started(5, 5)
        self.assertTrue(accounting.observe(Read(snapshot(8, 1, 8, 8), entries(8)), 3))
        read = Read(snapshot(9, 2, 8, 9), entries(9))
        self.assertFalse(accounting.observe(read, COUNT))

    def test_behind_full_batch(self) -> None:
        """A full batch with read entries still held: undecided, then settled."""
        accounting = self.started(5, 5)
        full = Read(snapshot(10, 10, 1, 10), entries(6, 7, 8))
        self.assertFalse(accounting.observe(full, COUNT))
        self.assertEqual(accounting.accounted, 8, "provisionally")
        rest = Read(snapshot(10, 10, 1, 10), entries(9, 10))
        self.assertFalse(accounting.observe(rest, COUNT))
        self.assertEqual(accounting.accounted, 10)

    def test_full_batch_after_trim(self) -> None:
        """A full batch from a stream trimmed past the position: gap counted."""
        accounting = self.started(5, 5)
        read = Read(snapshot(20, 5, 16, 20), entries(16, 17, 18))
        self.assertTrue(accounting.observe(read, COUNT))
        rest = Read(snapshot(20, 5, 16, 20), entries(19, 20))
        self.assertFalse(accounting.observe(rest, COUNT))

    def test_vanished_stream(self) -> None:
        """A stream gone after lines were read is a gap; never read, none."""
        self.assertTrue(self.started(5, 5).observe(Read(Snapshot(False), []), 3))
        fresh = Accounting()
        fresh.start(Snapshot(False))
        self.assertFalse(fresh.observe(Read(Snapshot(False), []), COUNT))
        read = Read(snapshot(2, 2, 1, 2), entries(1, 2))
        self.assertFalse(fresh.observe(read, COUNT))

    def test_recreated_stream(self) -> None:
        """A stream whose counters went backwards was recreated: a gap."""
        accounting = self.started(50, 50)
        read = Read(snapshot(2, 2, 60, 61), entries(60, 61))
        self.assertTrue(accounting.observe(read, COUNT))

    def test_redis_6(self) -> None:
        """Without counters, lines flow and no gap is claimed."""
        accounting = Accounting()
        accounting.start(Snapshot(True, 1, None, b"5-0", b"0-0", b"5-0"))
        read = Read(Snapshot(True, 1, None, b"9-0", b"0-0", b"9-0"), entries(9))
        self.assertFalse(accounting.observe(read, COUNT))
        self.assertEqual(accounting.position, b"9-0")


class ScriptedReader:
    """Answers the source's calls from a script of results or exceptions."""

    count = COUNT

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.closed = False

    def _answer(self, name: str, *args: Any) -> Any:
        self.calls.append((name, args))
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def snapshot(self) -> Snapshot:
        return self._answer("snapshot")

    def read(self, after: bytes) -> Read:
        return self._answer("read", after)

    def close(self) -> None:
        self.closed = True


class Runner:
    """Runs each call when the test steps it, like a thread that is slow."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((f, args, d))
        return d

    def step(self) -> None:
        f, args, d = self.pending.pop(0)
        maybeDeferred(f, *args).chainDeferred(d)


class Sink:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def broadcast(
        self, lines: Sequence[bytes], ids: Sequence[bytes] | None = None
    ) -> None:
        self.events.append(list(zip(ids or [], lines, strict=True)))

    def source_gap(self) -> None:
        self.events.append("gap")


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.reader = ScriptedReader()
        self.runner = Runner()
        self.sink = Sink()
        self.source = RedisStreamSource(
            self.sink,
            16,
            RedisTarget("127.0.0.1", password="hunter2"),
            "feed",
            self.clock,
            backoff=Backoff(initial=0.1, factor=2, maximum=1, random=lambda: 1.0),
            reader=self.reader,
            commands=object(),
            run=self.runner,
        )

    def play(self, *answers: Any) -> None:
        for answer in answers:
            self.reader.script.append(answer)
            self.runner.step()

    def test_start_position_and_status(self) -> None:
        """Start-up reads from the stream's last id, and is up once it knows it."""
        with capturedLogs() as events:
            self.source.startService()
            self.assertFalse(self.source.status.connected)
            self.play(snapshot(5, 5, 1, 5))
        self.assertTrue(self.source.status.connected)
        self.assertEqual(self.runner.pending[0][1], (b"5-0",))
        for event in events:
            self.assertNotIn("hunter2", repr(event))

    def test_gap_before_next_lines_and_counted(self) -> None:
        """A gap seen by a read that brings no line waits for the next lines."""
        self.source.startService()
        self.play(snapshot(5, 5, 1, 5))
        with capturedLogs() as events:
            self.play(
                Read(snapshot(7, 1, 7, 7), [(b"7-0", {b"other": b"x"})]),
                Read(snapshot(8, 2, 7, 8), entries(8)),
            )
        self.assertEqual(self.sink.events, ["gap", [(b"8-0", b"l8")]])
        self.assertEqual(self.source.source_gaps, 1)
        [warning] = [e for e in events if "next" in e]
        self.assertEqual((warning["last"], warning["next"]), ("5-0", "8-0"))

    def test_loss_retries_and_reads_on(self) -> None:
        """A failed read: down, retry after the backoff, read on from the position."""
        self.source.startService()
        self.play(snapshot(5, 5, 1, 5), Read(snapshot(6, 6, 1, 6), entries(6)))
        with capturedLogs() as events:
            self.play(ConnectionError("Connection closed by server."))
        self.assertFalse(self.source.status.connected)
        [lost] = [e for e in events if "lost" in e["log_format"]]
        self.assertEqual(lost["delay"], 0.1)
        self.assertEqual(self.runner.pending, [])
        self.clock.advance(0.1)
        self.play(snapshot(6, 6, 1, 6))
        self.assertTrue(self.source.status.connected)
        self.assertEqual(self.runner.pending[0][1], (b"6-0",))
        self.assertEqual(self.sink.events, [[(b"6-0", b"l6")]])

    def test_stop_closes_reader(self) -> None:
        """Stopping closes the reader's connection and waits for its thread."""
        self.source.startService()
        self.play(snapshot(5, 5, 1, 5))
        d = self.source.stopService()
        self.assertTrue(self.reader.closed)
        self.assertNoResult(d)
        self.play(ConnectionError("closed"))
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
