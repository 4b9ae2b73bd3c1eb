"""The Redis source, ledger and publisher against a real Redis.

Each test finds its Redis through :mod:`redis_server` (or is skipped, saying
why); channels and key prefixes are unique per test, so runs sharing one
Redis do not meet.  Tests that stop Redis use a private redis-server.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import support
from redis_server import (
    RedisClient,
    free_port,
    private_redis,
    shared_redis,
    unique,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nanostream.auth.redis_ledger import LedgerUnavailable, RedisLedger, ledger_key
from nanostream.redis.url import RedisTarget, parse_redis_url
from nanostream.sources.redis_channel import RedisSource

#: Bound on every wait for an event.
TIMEOUT = 15.0
PUBLISH_TIMEOUT = 120.0


def target_of(url: str, **changes: Any) -> RedisTarget:
    return dataclasses.replace(parse_redis_url(url, channel=False), **changes)


class CountingSink:
    """Collects lines and fires a Deferred once ``expected`` have arrived."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.batches = 0
        self.gaps = 0
        self._waiting: list[tuple[int, Deferred[list[bytes]]]] = []

    def broadcast(self, lines: Sequence[bytes]) -> None:
        self.lines.extend(lines)
        self.batches += 1
        still = []
        for count, d in self._waiting:
            if len(self.lines) >= count:
                d.callback(self.lines[:count])
            else:
                still.append((count, d))
        self._waiting = still

    def source_gap(self) -> None:
        self.gaps += 1

    def wait_for(self, count: int) -> Deferred[list[bytes]]:
        d: Deferred[list[bytes]] = Deferred()
        if len(self.lines) >= count:
            d.callback(self.lines[:count])
        else:
            self._waiting.append((count, d))
        return d.addTimeout(TIMEOUT, reactor)


def log_event(
    case: TestCase, predicate: Callable[[dict[str, Any]], bool]
) -> Deferred[dict[str, Any]]:
    """Fires with the next log event ``predicate`` accepts."""
    d: Deferred[dict[str, Any]] = Deferred()

    def observe(event: dict[str, Any]) -> None:
        if not d.called and predicate(event):
            d.callback(event)

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return d.addTimeout(TIMEOUT, reactor)


def said(fragment: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: fragment in event.get("log_format", "")


class RedisLiveTestCase(TestCase):
    timeout = 60

    def start(self, service: Any) -> None:
        service.startService()
        self.addCleanup(service.stopService)

    @inlineCallbacks
    def started_source(self, url: str, sink: CountingSink) -> Any:
        target = target_of(url, channel=unique("feed"))
        source = RedisSource(sink, 1024, target, reactor)
        subscribed = log_event(self, said("subscribed to Redis channel"))
        self.start(source)
        yield subscribed
        return source, target.channel

    @inlineCallbacks
    def started_ledger(self, url: str, prefix: str) -> Any:
        ledger = RedisLedger(target_of(url), reactor, prefix=prefix)
        # Another ledger's "connected" event may still be on its way to
        # observers (this runs from inside its dispatch): wait for this one.
        connected = log_event(
            self, lambda event: said("ledger connected")(event) and ledger.connected
        )
        self.start(ledger)
        yield connected
        return ledger


class LedgerLiveTests(RedisLiveTestCase):
    def setUp(self) -> None:
        self.url = shared_redis(self)
        self.prefix = unique("used") + ":"
        self.redis = RedisClient(target_of(self.url))
        self.addCleanup(self.redis.close)

    @inlineCallbacks
    def test_single_use_across_nodes(self) -> Any:
        """A token consumed through one node's ledger is used for every other."""
        a = yield self.started_ledger(self.url, self.prefix)
        b = yield self.started_ledger(self.url, self.prefix)
        expires = time.time() + 60
        first = yield a.consume(b"token-1", expires)
        again = yield b.consume(b"token-1", expires)
        other = yield b.consume(b"token-2", expires)
        self.assertEqual((first, again, other), (True, False, True))

    @inlineCallbacks
    def test_key_expires_with_the_token(self) -> Any:
        """The key's absolute expiry is the token's, to the millisecond."""
        ledger = yield self.started_ledger(self.url, self.prefix)
        expires = time.time() + 60.25
        yield ledger.consume(b"token", expires)
        key = ledger_key(self.prefix.encode(), b"token")
        self.assertEqual(self.redis.call("GET", key), b"1")
        self.assertEqual(self.redis.call("PEXPIRETIME", key), math.ceil(expires * 1000))
        self.assertGreater(self.redis.call("PTTL", key), 59_000)

    @inlineCallbacks
    def test_forgotten_after_expiry(self) -> Any:
        """Once its expiry passes the key is gone and Redis holds nothing of it."""
        ledger = yield self.started_ledger(self.url, self.prefix)
        key = ledger_key(self.prefix.encode(), b"short")
        yield ledger.consume(b"short", time.time() + 0.3)
        self.assertEqual(self.redis.call("EXISTS", key), 1)
        deadline = time.monotonic() + TIMEOUT
        while self.redis.call("EXISTS", key):
            self.assertLess(time.monotonic(), deadline, "the key never expired")
            yield deferLater(reactor, 0.05)
        self.assertEqual(self.redis.call("EXISTS", key), 0)


class SourceLiveTests(RedisLiveTestCase):
    @inlineCallbacks
    def test_published_lines_arrive_in_order(self) -> Any:
        """Lines published to the channel arrive whole, in order, text or binary."""
        url = shared_redis(self)
        sink = CountingSink()
        source, channel = yield self.started_source(url, sink)
        lines = [b"line %d" % i for i in range(200)] + ["é".encode(), b"\xff\xfe"]
        with RedisClient(target_of(url)) as redis:
            for line in lines:
                redis.send("PUBLISH", channel, line)
            for _ in lines:
                self.assertEqual(redis.reply(), 1)
        received = yield sink.wait_for(len(lines))
        self.assertEqual(received, lines)
        self.assertLess(sink.batches, len(lines), "reads were batched")


class OutageTests(RedisLiveTestCase):
    @inlineCallbacks
    def test_redis_restart(self) -> Any:
        """Redis stops and returns: the ledger fails closed meanwhile; both recover."""
        server = private_redis(self)
        sink = CountingSink()
        source, channel = yield self.started_source(server.url, sink)
        ledger = yield self.started_ledger(server.url, "used:")
        expires = time.time() + 60
        self.assertTrue((yield ledger.consume(b"before", expires)))

        source_lost = log_event(self, said("Redis source lost"))
        ledger_lost = log_event(self, said("ledger lost Redis"))
        server.stop()
        lost = yield source_lost
        yield ledger_lost
        self.assertFalse(source.status.connected)
        with self.assertRaises(LedgerUnavailable):
            yield ledger.consume(b"during", expires)

        recovered = log_event(self, said("Redis source recovered"))
        reconnected = log_event(self, said("ledger connected"))
        server.start()
        gap = yield recovered
        yield reconnected
        self.assertTrue(source.status.connected)
        self.assertEqual(gap["gap_start"], lost["gap_start"])
        self.assertGreater(gap["gap_seconds"], 0)

        with RedisClient(server.target) as redis:
            self.assertEqual(redis.call("PUBLISH", channel, b"after"), 1)
        self.assertEqual((yield sink.wait_for(1)), [b"after"])
        self.assertEqual(sink.gaps, 1)
        # The restarted Redis lost its keys (no persistence in this test), so
        # "during", refused while Redis was away, is now a first use.
        self.assertTrue((yield ledger.consume(b"during", expires)))
        self.assertFalse((yield ledger.consume(b"during", expires)))


class TLSTests(RedisLiveTestCase):
    @inlineCallbacks
    def test_rediss_with_password(self) -> Any:
        """rediss:// with AUTH: publisher and source meet; no log has the password."""
        from certificates import self_signed_certificate

        password = "hunter2-over-tls"
        certificates = Path(tempfile.mkdtemp(prefix="nanostream-tls-"))
        self.addCleanup(shutil.rmtree, certificates, ignore_errors=True)
        key, cert = self_signed_certificate(certificates)
        port = free_port()
        private_redis(
            self,
            options=[
                "--port", "0",
                "--tls-port", str(port),
                "--tls-cert-file", str(cert),
                "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(cert),
                "--tls-auth-clients", "no",
            ],
            password=password,
        )  # fmt: skip
        channel = unique("tls")
        url = f"rediss://:{password}@127.0.0.1:{port}/0?channel={channel}&ca={cert}"
        events = support.capture_logs(self)
        sink = CountingSink()
        subscribed = log_event(self, said("subscribed to Redis channel"))
        self.start(RedisSource(sink, 1024, parse_redis_url(url, channel=True), reactor))
        yield subscribed
        done = run_publish(url, b"over tls\n", timeout=30)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual((yield sink.wait_for(1)), [b"over tls"])
        self.assertTrue(events)
        for event in events:
            self.assertNotIn(password, repr(event))


def run_publish(
    url: str, data: bytes, *args: str, timeout: float = PUBLISH_TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "nanostream.cli.publish", url, *args],
        input=data,
        capture_output=True,
        timeout=timeout,
    )


class PublishCommandTests(SynchronousTestCase):
    def test_pipelined_in_order(self) -> None:
        """10,000 lines arrive in order in far fewer reads by Redis than lines."""
        server = private_redis(self)
        channel = unique("publish")
        count = 10_000
        with (
            RedisClient(server.target) as subscriber,
            RedisClient(server.target) as observer,
        ):
            subscriber.call("SUBSCRIBE", channel)
            reads_before = int(observer.info("stats")["total_reads_processed"])
            data = b"".join(b"line %d\n" % i for i in range(count))
            done = run_publish(
                f"{server.url}?channel={channel}", data, "--stats", "--window", "500"
            )
            self.assertEqual(done.returncode, 0, done.stderr)
            reads = int(observer.info("stats")["total_reads_processed"]) - reads_before
            received = [subscriber.reply()[2] for _ in range(count)]
        self.assertEqual(received, [b"line %d" % i for i in range(count)])
        self.assertIn(b"published 10000 lines, at most 500 in flight", done.stderr)
        # One read per line would be 10,000; pipelining packs hundreds per read.
        self.assertLess(reads, count / 20)

    def test_unreachable(self) -> None:
        """With no Redis at the URL: one line on stderr, exit status 69."""
        port = free_port()
        done = run_publish(
            f"redis://:hunter2@127.0.0.1:{port}/0?channel=c", b"line\n", timeout=30
        )
        self.assertEqual(done.returncode, 69)
        message = done.stderr.decode()
        self.assertEqual(message.count("\n"), 1, message)
        self.assertIn("cannot reach Redis at redis://:***@127.0.0.1", message)
        self.assertNotIn("hunter2", message)

    def test_empty_input(self) -> None:
        """No input at all: nothing to publish, exit 0."""
        url = shared_redis(self)
        done = run_publish(f"{url}?channel={unique('empty')}", b"", timeout=30)
        self.assertEqual((done.returncode, done.stderr), (0, b""))
