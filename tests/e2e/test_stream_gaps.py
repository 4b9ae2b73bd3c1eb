"""A Redis stream dropped entries the node had not read: a source gap.

The node is kept from reading by taking its Redis user's access away
(``ACL SETUSER ... -@all``) while entries are added and trimmed with
``XTRIM``, or Redis restarts without persistence and loses the stream.
Either way ``nanostream.v1`` clients get ``!gap <last> <next>`` before the
next line, raw clients are closed with 1011, a warning names the bounds and
``nanostream_source_gaps_total`` rises.
"""

from __future__ import annotations

from redis_server import RedisClient

from .harness import LISTEN_LOOPBACK, Nanostream, close_code
from .streams import (
    FEED_TIMEOUT,
    GAP,
    RESTRICTED_USER,
    Reader,
    StreamTestCase,
    metric,
    metrics_address,
)

GAPS = "nanostream_source_gaps_total"


def append(redis: RedisClient, key: str, first: int, last: int) -> list[str]:
    """Lines ``first`` .. ``last`` as entries; their ids."""
    return [
        redis.call("XADD", key, "*", "line", str(n)).decode()
        for n in range(first, last + 1)
    ]


class GapTests(StreamTestCase):
    def watched(self, source: str) -> tuple[Nanostream, Reader, Reader]:
        """A node with metrics, a v1 client and a raw client."""
        node = self.node(source, ["--metrics", LISTEN_LOOPBACK])
        v1 = self.reader(node)
        raw = Reader(node.connect(node.mint(), max_queue=None))
        return node, v1, raw

    def read_both(self, v1: Reader, raw: Reader, count: int) -> None:
        """Lines 1..count have reached both clients."""
        v1.until(count)
        for n in range(1, count + 1):
            self.assertEqual(raw.client.recv(timeout=FEED_TIMEOUT), str(n))

    def assert_gap(
        self, node: Nanostream, v1: Reader, raw: Reader, last: str, following: str
    ) -> None:
        """The v1 client was told, the raw one closed, the gap logged and counted."""
        notice = v1.until_notice("!gap")
        told = GAP.fullmatch(notice)
        assert told is not None, notice
        self.assertEqual(told.groups(), (last, following))
        v1.take()
        self.assertEqual(v1.lines[-1][0], following, "!gap comes just before <next>")
        # Closed at once: no line after the gap reaches a raw client.
        self.assertEqual(close_code(raw.client), 1011)
        node.log.wait_for(
            rf"dropped entries this node had not read: lines after {last} "
            rf"and before {following} are missing"
        )
        self.assertEqual(metric(metrics_address(node), GAPS), 1)

    def test_trimmed_while_the_node_could_not_read(self) -> None:
        """Entries added and trimmed away while the node had no access: a gap
        from the last line it read to the first one left."""
        server = self.redis()
        with RedisClient(server.target) as redis:
            redis.call("ACL", "SETUSER", RESTRICTED_USER, *self.all_access)
            userinfo = f"{RESTRICTED_USER}:{self.password}@"
            node, v1, raw = self.watched(self.source(server, userinfo))
            self.assertEqual(metric(metrics_address(node), GAPS), 0)
            ids = append(redis, self.key, 1, 2000)
            self.read_both(v1, raw, 2000)
            mark = node.log.mark()
            redis.call("ACL", "SETUSER", RESTRICTED_USER, "-@all")
            node.log.wait_for("Redis source lost its connection", after=mark)
            ids += append(redis, self.key, 2001, 3000)
            redis.call("XTRIM", self.key, "MAXLEN", 500)
            redis.call("ACL", "SETUSER", RESTRICTED_USER, "+@all")
            node.log.wait_for(
                "Redis source recovered", after=mark, timeout=FEED_TIMEOUT
            )
            ids += append(redis, self.key, 3001, 3100)
        self.assert_gap(node, v1, raw, ids[1999], ids[2500])
        v1.until(3100)
        numbers = [n for _, n in v1.lines]
        self.assertEqual(numbers, [*range(1, 2001), *range(2501, 3101)])

    def test_redis_restarted_without_persistence(self) -> None:
        """Redis restarted without persistence lost the stream: a gap from the
        last line read to the first one added after the restart."""
        server = self.redis()
        node, v1, raw = self.watched(self.source(server))
        self.assertEqual(metric(metrics_address(node), GAPS), 0)
        with RedisClient(server.target) as redis:
            ids = append(redis, self.key, 1, 2000)
        self.read_both(v1, raw, 2000)
        mark = node.log.mark()
        server.stop()
        node.log.wait_for("Redis source lost its connection", after=mark)
        server.start()
        node.log.wait_for("Redis source recovered", after=mark, timeout=FEED_TIMEOUT)
        with RedisClient(server.target) as redis:
            ids += append(redis, self.key, 2001, 2100)
        self.assert_gap(node, v1, raw, ids[1999], ids[2000])
        v1.until(2100)
        self.assertEqual([n for _, n in v1.lines], list(range(1, 2101)))
