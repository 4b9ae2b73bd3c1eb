"""``nanostream publish ...?stream=KEY`` against a real Redis.

Each test finds its Redis through :mod:`redis_server` (or is skipped, saying
why); stream keys are unique per test.  Tests that cut the connection or
restart Redis use a private redis-server.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable

from redis_server import RedisClient, private_redis, shared_redis, unique
from twisted.trial.unittest import SynchronousTestCase

from nanostream.redis.url import RedisTarget, parse_redis_url

#: Bound on every wait.
TIMEOUT = 60.0


def run_publish(
    url: str, data: bytes, *args: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "nanostream", "publish", url, *args],
        input=data,
        capture_output=True,
        timeout=TIMEOUT,
    )


def entries(redis: RedisClient, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The stream's entries, oldest first: (id, fields)."""
    found = []
    for entry_id, fields in redis.call("XRANGE", key, "-", "+"):
        found.append((entry_id, dict(zip(fields[::2], fields[1::2], strict=True))))
    return found


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


class StreamPublishTests(SynchronousTestCase):
    def setUp(self) -> None:
        url = shared_redis(self)
        self.target: RedisTarget = parse_redis_url(url, channel=False)
        self.key = unique("stream")
        self.url = f"{url}?stream={self.key}"
        self.redis = RedisClient(self.target)
        self.addCleanup(self.redis.close)
        self.addCleanup(self.redis.call, "DEL", self.key)

    def test_lines_in_order_with_field_line(self) -> None:
        """Each line is one entry, in order, its one field ``line`` the line's bytes."""
        lines = [b"line %d" % i for i in range(1000)] + ["é".encode(), b"\xff\xfe"]
        done = run_publish(self.url, b"".join(line + b"\n" for line in lines))
        self.assertEqual((done.returncode, done.stderr), (0, b""))
        found = entries(self.redis, self.key)
        self.assertEqual([fields for _, fields in found], [{b"line": x} for x in lines])
        ids = [tuple(map(int, entry_id.split(b"-"))) for entry_id, _ in found]
        self.assertEqual(ids, sorted(set(ids)), "ids increase")

    def test_maxlen_trims(self) -> None:
        """--maxlen keeps about that many entries: the newest, never fewer."""
        data = b"".join(b"line %d\n" % i for i in range(5000))
        done = run_publish(self.url, data, "--maxlen", "200")
        self.assertEqual(done.returncode, 0, done.stderr)
        length = self.redis.call("XLEN", self.key)
        # MAXLEN ~ trims whole nodes of the stream (100 entries by default).
        self.assertGreaterEqual(length, 200)
        self.assertLess(length, 400)
        newest = entries(self.redis, self.key)[-1][1]
        self.assertEqual(newest, {b"line": b"line 4999"})

    def test_refused_by_redis(self) -> None:
        """A key holding another type: Redis refuses, the run exits 1 saying so."""
        self.redis.call("SET", self.key, b"not a stream")
        done = run_publish(self.url, b"a\nb\n")
        self.assertEqual(done.returncode, 1)
        self.assertIn(b"WRONGTYPE", done.stderr)
        self.assertIn(b"2 lines were not published", done.stderr)


class StreamOutageTests(SynchronousTestCase):
    """Lines go on being written while the connection is cut."""

    count = 20_000

    def publishing(self, url: str) -> tuple[subprocess.Popen[bytes], threading.Thread]:
        """Start ``nanostream publish`` and a thread feeding it lines steadily."""
        process = subprocess.Popen(
            [sys.executable, "-m", "nanostream", "publish", url, "--window", "50"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        assert process.stdin is not None

        def feed() -> None:
            assert process.stdin is not None
            for start in range(0, self.count, 100):
                chunk = b"".join(b"line %d\n" % i for i in range(start, start + 100))
                process.stdin.write(chunk)
                process.stdin.flush()
                time.sleep(0.001)
            process.stdin.close()

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        return process, writer

    def finished(
        self, process: subprocess.Popen[bytes], writer: threading.Thread
    ) -> bytes:
        """Wait for the end of input and the exit; the publisher's stderr."""
        writer.join(TIMEOUT)
        process.wait(TIMEOUT)
        assert process.stderr is not None
        err = process.stderr.read()
        process.stderr.close()
        self.assertEqual(process.returncode, 0, err)
        return err

    def assert_every_line(self, redis: RedisClient, key: str) -> None:
        """Every line is in the stream, first seen in order; a resent one twice."""
        values = [fields[b"line"] for _, fields in entries(redis, key)]
        expected = [b"line %d" % i for i in range(self.count)]
        self.assertEqual(list(dict.fromkeys(values)), expected)
        self.assertLessEqual(len(values) - len(expected), 50, "only the window twice")

    def test_client_killed(self) -> None:
        """CLIENT KILL mid-publish: it reconnects and every line still arrives."""
        server = private_redis(self)
        key = unique("killed")
        with RedisClient(server.target) as redis:
            process, writer = self.publishing(f"{server.url}?stream={key}")
            wait_until(lambda: redis.call("XLEN", key) > 2000, "lines arrive")
            killed = redis.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            self.assertEqual(killed, 1)
            err = self.finished(process, writer)
            self.assert_every_line(redis, key)
        self.assertIn(b"lost Redis", err)
        self.assertIn(b"reconnected to Redis", err)

    def test_redis_restart(self) -> None:
        """Redis stops and restarts (with its AOF) mid-publish: no line is lost."""
        server = private_redis(self, options=["--appendonly", "yes"])
        key = unique("restart")
        with RedisClient(server.target) as redis:
            process, writer = self.publishing(f"{server.url}?stream={key}")
            wait_until(lambda: redis.call("XLEN", key) > 2000, "lines arrive")
        server.stop()
        time.sleep(0.3)  # lines pile up meanwhile; no event marks enough of them
        server.start()
        err = self.finished(process, writer)
        with RedisClient(server.target) as redis:
            self.assert_every_line(redis, key)
        self.assertIn(b"lost Redis", err)
