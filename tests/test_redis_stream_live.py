"""The Redis stream source against a real Redis: order, ids, outages and gaps.

Keys are unique per test; tests that kill connections, restart Redis or
lock clients out use a private redis-server (see :mod:`redis_server`).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis_server import RedisClient, private_redis, shared_redis, unique
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from nanostream.redis.backoff import Backoff
from nanostream.redis.streams import StreamReader, make_client
from nanostream.redis.url import RedisTarget, parse_redis_url
from nanostream.sources.redis_stream import RedisStreamSource

TIMEOUT = 20.0


class StreamSink:
    """Records batches (with ids) and gaps in order; waits for a line count."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.lines: list[bytes] = []
        self.ids: list[bytes] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def broadcast(
        self, lines: Sequence[bytes], ids: Sequence[bytes] | None = None
    ) -> None:
        assert ids is not None and len(ids) == len(lines)
        self.events.append(list(zip(ids, lines, strict=True)))
        self.lines.extend(lines)
        self.ids.extend(ids)
        ready = [d for count, d in self._waiting if len(self.lines) >= count]
        self._waiting = [(c, d) for c, d in self._waiting if d not in ready]
        for d in ready:
            d.callback(None)

    def source_gap(self) -> None:
        self.events.append("gap")

    @property
    def gaps(self) -> int:
        return self.events.count("gap")

    def wait_for(self, count: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if len(self.lines) >= count:
            d.callback(None)
        else:
            self._waiting.append((count, d))
        return d.addTimeout(TIMEOUT, reactor)


def log_event(
    case: TestCase, predicate: Callable[[dict[str, Any]], bool]
) -> Deferred[dict[str, Any]]:
    d: Deferred[dict[str, Any]] = Deferred()

    def observe(event: dict[str, Any]) -> None:
        if not d.called and predicate(event):
            d.callback(event)

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return d.addTimeout(TIMEOUT, reactor)


def said(fragment: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: fragment in event.get("log_format", "")


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class StreamLiveTestCase(TestCase):
    timeout = 60

    @inlineCallbacks
    def started(self, url: str, key: str, max_line_bytes: int = 1024) -> Any:
        """A source on ``key``, once it has taken its start position."""
        target = parse_redis_url(url, channel=False)
        self.sink = StreamSink()
        source = RedisStreamSource(
            self.sink,
            max_line_bytes,
            target,
            key,
            reactor,
            backoff=Backoff(initial=0.05, maximum=0.2),
        )
        ready = log_event(self, said("reading Redis stream"))
        source.startService()
        self.addCleanup(source.stopService)
        yield ready
        return source

    def redis(self, target: RedisTarget) -> RedisClient:
        client = RedisClient(target)
        self.addCleanup(client.close)
        return client


def shared_target(url: str) -> RedisTarget:
    return dataclasses.replace(parse_redis_url(url, channel=False))


class ReadingTests(StreamLiveTestCase):
    @inlineCallbacks
    def test_lines_in_order_with_entry_ids(self) -> Any:
        """Each entry's line arrives in order, with the entry's own id."""
        url, key = shared_redis(self), unique("stream")
        redis = self.redis(shared_target(url))
        self.addCleanup(redis.call, "DEL", key)
        yield self.started(url, key)
        added = [redis.call("XADD", key, "*", "line", f"l{n}") for n in range(5)]
        yield self.sink.wait_for(5)
        self.assertEqual(self.sink.lines, [b"l0", b"l1", b"l2", b"l3", b"l4"])
        self.assertEqual(self.sink.ids, added)
        self.assertEqual(self.sink.gaps, 0)

    @inlineCallbacks
    def test_start_reads_only_new_entries(self) -> Any:
        """Entries already in the stream at start are not sent; later ones are."""
        url, key = shared_redis(self), unique("stream")
        redis = self.redis(shared_target(url))
        self.addCleanup(redis.call, "DEL", key)
        redis.call("XADD", key, "*", "line", "old")
        source = yield self.started(url, key)
        new = redis.call("XADD", key, "*", "line", "new")
        yield self.sink.wait_for(1)
        self.assertEqual(self.sink.events, [[(new, b"new")]])
        self.assertEqual(source.position, new)

    @inlineCallbacks
    def test_skips_malformed_and_overlong(self) -> Any:
        """Entries without a line, empty or too long are skipped; the rest flow."""
        url, key = shared_redis(self), unique("stream")
        redis = self.redis(shared_target(url))
        self.addCleanup(redis.call, "DEL", key)
        source = yield self.started(url, key, max_line_bytes=8)
        skipped = log_event(self, said("no line in it"))
        redis.call("XADD", key, "*", "other", "x")
        redis.call("XADD", key, "*", "line", "")
        redis.call("XADD", key, "*", "line", "x" * 9)
        kept = redis.call("XADD", key, "*", "line", "y" * 8)
        yield self.sink.wait_for(1)
        yield skipped
        self.assertEqual(self.sink.events, [[(kept, b"y" * 8)]])
        self.assertEqual(source.status.lines_discarded, 1)
        self.assertEqual(source.position, kept)


class ArchiveTests(StreamLiveTestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        url, self.key = shared_redis(self), unique("archive")
        self.client = self.redis(shared_target(url))
        self.addCleanup(self.client.call, "DEL", self.key)
        self.source = yield self.started(url, self.key, max_line_bytes=8)

    def add(self, line: str) -> bytes:
        return self.client.call("XADD", self.key, "*", "line", line)

    @inlineCallbacks
    def test_held(self) -> Any:
        """A position in the stream is held; the entries after it follow, bounded."""
        ids = [self.add(f"l{n}") for n in range(5)]
        archived = yield self.source.read_after(ids[1], 2)
        self.assertTrue(archived.held)
        self.assertEqual(archived.oldest, ids[0])
        self.assertEqual(archived.entries, [(ids[2], b"l2"), (ids[3], b"l3")])

    @inlineCallbacks
    def test_not_held(self) -> Any:
        """A position older than the stream is not held: entries from the oldest."""
        ids = [self.add(f"l{n}") for n in range(3)]
        self.client.call("XTRIM", self.key, "MAXLEN", 2)
        archived = yield self.source.read_after(ids[0], 10)
        self.assertFalse(archived.held)
        self.assertEqual(archived.oldest, ids[1])
        self.assertEqual(archived.entries, [(ids[1], b"l1"), (ids[2], b"l2")])

    @inlineCallbacks
    def test_missing_stream(self) -> Any:
        """A missing stream holds nothing and has no oldest entry."""
        archived = yield self.source.read_after(b"1-0", 10)
        self.assertEqual((archived.held, archived.oldest, archived.entries), (
            False, None, []))  # fmt: skip

    @inlineCallbacks
    def test_skips_bad_entries(self) -> Any:
        """Malformed and overlong entries are left out of a slice too."""
        first = self.add("a")
        self.client.call("XADD", self.key, "*", "other", "x")
        self.add("x" * 9)
        last = self.add("b")
        archived = yield self.source.read_after(first, 10)
        self.assertEqual(archived.entries, [(last, b"b")])
        self.assertGreaterEqual(self.source.status.lines_discarded, 1)


class OutageTests(StreamLiveTestCase):
    @inlineCallbacks
    def test_killed_connection_loses_nothing(self) -> Any:
        """Connections killed while a producer writes: every line once, no gap."""
        server = private_redis(self)
        key = unique("kill")
        redis = self.redis(server.target)
        source = yield self.started(server.url, key)
        written: list[bytes] = []

        def produce() -> None:
            written.append(redis.call("XADD", key, "*", "line", str(len(written))))

        producer = LoopingCall(produce)
        producer.start(0.002)
        self.addCleanup(lambda: producer.running and producer.stop())
        killed = 0
        for _ in range(5):
            yield sleep(0.1)
            # The reader's connection, whether blocked in XREAD or between reads
            # (redis-py then quietly connects again before its next command).
            killed += redis.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        # A kill may find the reader between connections; most find it.
        self.assertGreaterEqual(killed, 3)
        yield sleep(0.1)
        producer.stop()
        yield self.sink.wait_for(len(written))
        self.assertEqual(self.sink.ids, written)
        self.assertEqual(
            self.sink.lines, [str(n).encode() for n in range(len(written))]
        )
        self.assertEqual((self.sink.gaps, source.source_gaps), (0, 0))

    @inlineCallbacks
    def test_restart_without_persistence_is_a_gap(self) -> Any:
        """Redis restarted and lost the stream: a gap, then new lines flow."""
        server = private_redis(self)
        key = unique("restart")
        source = yield self.started(server.url, key)
        with RedisClient(server.target) as redis:
            before = redis.call("XADD", key, "*", "line", "before")
        yield self.sink.wait_for(1)
        lost = log_event(self, said("lost its connection"))
        server.stop()
        yield lost
        recovered = log_event(self, said("recovered"))
        server.start()
        yield recovered
        with RedisClient(server.target) as redis:
            after = redis.call("XADD", key, "*", "line", "after")
        reported = log_event(self, said("dropped entries"))
        yield self.sink.wait_for(2)
        gap = yield reported
        self.assertEqual(
            self.sink.events, [[(before, b"before")], "gap", [(after, b"after")]]
        )
        self.assertEqual(source.source_gaps, 1)
        self.assertEqual((gap["last"], gap["next"]), (before.decode(), after.decode()))

    @inlineCallbacks
    def locked_out(self, server: Any) -> Any:
        """Kill the source's connections and refuse it until the Deferred fires."""
        admin = self.redis(server.target)
        admin.call("CONFIG", "SET", "requirepass", "locked")
        lost = log_event(self, said("lost its connection"))
        admin.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        yield lost
        yield log_event(self, said("cannot read stream"))
        return admin

    @inlineCallbacks
    def test_trimmed_while_away_is_a_gap(self) -> Any:
        """Unread entries trimmed while the source was away: a gap with bounds."""
        server = private_redis(self)
        key = unique("trim")
        source = yield self.started(server.url, key)
        redis = self.redis(server.target)
        read = redis.call("XADD", key, "*", "line", "read")
        yield self.sink.wait_for(1)
        admin = yield self.locked_out(server)
        ids = [admin.call("XADD", key, "*", "line", f"u{n}") for n in range(5)]
        admin.call("XTRIM", key, "MAXLEN", 2)
        reported = log_event(self, said("dropped entries"))
        admin.call("CONFIG", "SET", "requirepass", "")
        yield self.sink.wait_for(3)
        gap = yield reported
        self.assertEqual(
            self.sink.events,
            [[(read, b"read")], "gap", [(ids[3], b"u3"), (ids[4], b"u4")]],
        )
        self.assertEqual((gap["last"], gap["next"]), (read.decode(), ids[3].decode()))
        self.assertEqual(source.source_gaps, 1)

    @inlineCallbacks
    def test_trimming_read_entries_is_no_gap(self) -> Any:
        """Entries trimmed after they were read, and new ones added: no gap."""
        server = private_redis(self)
        key = unique("trim-read")
        source = yield self.started(server.url, key)
        redis = self.redis(server.target)
        for n in range(3):
            redis.call("XADD", key, "*", "line", f"r{n}")
        yield self.sink.wait_for(3)
        admin = yield self.locked_out(server)
        admin.call("XTRIM", key, "MAXLEN", 0)
        later = admin.call("XADD", key, "*", "line", "later")
        recovered = log_event(self, said("recovered"))
        admin.call("CONFIG", "SET", "requirepass", "")
        yield recovered
        yield self.sink.wait_for(4)
        self.assertEqual(self.sink.events[-1], [(later, b"later")])
        self.assertEqual((self.sink.gaps, source.source_gaps), (0, 0))

    @inlineCallbacks
    def test_deleted_unread_entry_is_a_gap(self) -> Any:
        """An unread entry deleted (XDEL) while the source was away is a gap."""
        server = private_redis(self)
        key = unique("xdel")
        source = yield self.started(server.url, key)
        admin = yield self.locked_out(server)
        gone = admin.call("XADD", key, "*", "line", "gone")
        kept = admin.call("XADD", key, "*", "line", "kept")
        admin.call("XDEL", key, gone)
        admin.call("CONFIG", "SET", "requirepass", "")
        yield self.sink.wait_for(1)
        self.assertEqual(self.sink.events, ["gap", [(kept, b"kept")]])
        self.assertEqual(source.source_gaps, 1)


class StreamReaderLiveTests(TestCase):
    """One read: the blocking wait, then the script's entries and counters."""

    def setUp(self) -> None:
        target = parse_redis_url(shared_redis(self), channel=False)
        self.key = unique("reader").encode()
        self.redis = RedisClient(target)
        self.addCleanup(self.redis.close)
        self.addCleanup(self.redis.call, "DEL", self.key)
        self.reader = StreamReader(make_client(target), self.key, block_ms=5000)
        self.addCleanup(self.reader.close)

    def test_waiting_entries_return_at_once_with_their_counters(self) -> None:
        first = self.redis.call("XADD", self.key, "*", "line", "a")
        self.redis.call("XADD", self.key, "*", "line", "b")
        started = time.monotonic()
        read = self.reader.read(b"0-0")
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(
            [fields for _, fields in read.entries], [{b"line": b"a"}, {b"line": b"b"}]
        )
        self.assertEqual(read.entries[0][0], first)
        self.assertEqual((read.snapshot.length, read.snapshot.entries_added), (2, 2))

    def test_a_read_wakes_for_the_next_entry(self) -> None:
        """The entry added while the read waits comes back with the counters
        of the instant it was taken."""
        last = self.redis.call("XADD", self.key, "*", "line", "old")

        def add() -> None:
            with RedisClient(self.redis.target) as client:
                client.call("XADD", self.key, "*", "line", "new")

        added = threading.Timer(0.2, add)
        added.start()
        self.addCleanup(added.join)
        read = self.reader.read(last)
        self.assertEqual([fields for _, fields in read.entries], [{b"line": b"new"}])
        self.assertEqual(read.snapshot.entries_added, 2)
        self.assertEqual(read.snapshot.last_generated, read.entries[0][0])

    def test_missing_stream_reads_empty_after_the_wait(self) -> None:
        self.reader.block_ms = 50
        read = self.reader.read(b"0-0")
        self.assertEqual((read.entries, read.snapshot.exists), ([], False))
