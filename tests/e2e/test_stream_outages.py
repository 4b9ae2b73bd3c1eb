"""A node's Redis connections are cut, or Redis restarts, while lines keep coming.

The stream holds every line meanwhile, so the node reads on from where it
stopped: a connected client gets every stream entry once, in order, and no
``!gap``.  The publisher (the real ``nanostream publish``) loses its
connection too and sends its unacknowledged lines again, so a line may be in
the stream twice, as two entries; the node delivers entries, each once.
"""

from __future__ import annotations

from redis_server import RedisClient, RedisServer

from .harness import Nanostream
from .streams import (
    FEED_TIMEOUT,
    Publisher,
    Reader,
    StreamTestCase,
    assert_exact,
    stream_entries,
    wait_until,
)

COUNT = 5000


class OutageTests(StreamTestCase):
    def started(
        self, server: RedisServer
    ) -> tuple[Nanostream, Reader, Reader, Publisher]:
        """A node with a v1 and a raw client, and the publisher under way."""
        node = self.node(self.source(server))
        v1 = self.reader(node)
        raw = Reader(node.connect(node.mint(), max_queue=None))
        return node, v1, raw, self.publish(server, COUNT)

    def delivered(
        self, server: RedisServer, publisher: Publisher, v1: Reader, raw: Reader
    ) -> None:
        """Both clients got exactly the stream's entries, and no notice."""
        publisher.finish()
        with RedisClient(server.target) as redis:
            entries = stream_entries(redis, self.key)
        while len(v1.lines) < len(entries):
            v1.take()
        assert_exact(self, v1.lines, entries)
        self.assertEqual(v1.notices, [])
        numbers = [n for _, n in entries]
        got = [int(raw.client.recv(timeout=FEED_TIMEOUT)) for _ in numbers]
        self.assertEqual(got, numbers)

    def test_connections_killed(self) -> None:
        """``CLIENT KILL TYPE normal`` three times mid-stream: every entry once."""
        server = self.redis()
        node, v1, raw, publisher = self.started(server)
        with RedisClient(server.target) as redis:
            for at in (1000, 2500, 4000):
                wait_until(
                    lambda at=at: redis.call("XLEN", self.key) >= at, f"{at} lines"
                )
                killed = redis.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
                # A connection killed while idle in redis-py's pool is
                # replaced at its next use, so the node logs no loss for it.
                self.assertGreaterEqual(
                    killed, 2, "the node's reader and the publisher"
                )
        self.delivered(server, publisher, v1, raw)

    def test_redis_restarted_with_persistence(self) -> None:
        """Redis stops and starts again with its append-only file: every entry
        once, no gap."""
        server = self.redis(persistent=True)
        node, v1, raw, publisher = self.started(server)
        with RedisClient(server.target) as redis:
            wait_until(lambda: redis.call("XLEN", self.key) >= 1500, "lines")
        mark = node.log.mark()
        server.stop()
        node.log.wait_for("Redis source lost its connection", after=mark)
        server.start()
        node.log.wait_for("Redis source recovered", after=mark, timeout=FEED_TIMEOUT)
        self.delivered(server, publisher, v1, raw)
        self.assertNotIn("dropped entries", node.log.text())
