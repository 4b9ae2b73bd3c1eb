"""Resume across nodes of one Redis stream, and across a node's restart.

Nodes are real ``twistd`` processes reading one stream of a private Redis,
fed by the real ``nanostream publish``; every line is its sequence number,
so a client's lines show anything lost, repeated or reordered.
"""

from __future__ import annotations

import signal

from redis_server import RedisClient

from .harness import V1
from .streams import (
    RESTRICTED_USER,
    StreamTestCase,
    assert_sequence,
    wait_until,
)


class TwoNodeTests(StreamTestCase):
    """A client drops from one node and resumes on another."""

    def test_resume_on_the_other_node(self) -> None:
        """Dropped from node A, a client resumes on node B with a fresh token
        and ``since``: every line once, in order, ``!live`` between."""
        server = self.redis()
        ledger = ["--ledger", server.url]
        first = self.node(self.source(server), ledger, name="a")
        # B holds too few lines to serve the resume: it comes from the stream.
        other = self.node(
            self.source(server), [*ledger, "--history-lines", "100"], name="b"
        )
        count = 4000
        token = first.mint()
        reader_a = self.reader(first, token=token)
        publisher = self.publish(server, count)
        reader_a.until(1500)
        reader_a.client.close_socket()
        with RedisClient(server.target) as redis:
            last = reader_a.last_number
            wait_until(lambda: redis.call("XLEN", self.key) > last + 500, "more")
        # The nodes share the secret and the ledger: A's token is used up.
        refusal = other.refuse(token, subprotocols=[V1])
        self.assertEqual(refusal.status, 401)
        other.log.wait_for("token already used")
        reader_b = self.reader(other, since=reader_a.last_id)
        reader_b.until(count)
        # The replay may still be catching up when the last line is read.
        reader_b.until_notice("!live")
        publisher.finish()
        self.assertEqual(reader_b.notices, ["!live"])
        live_at = reader_b.live_at
        assert live_at is not None
        self.assertGreater(live_at, 0, "lines were replayed before !live")
        assert_sequence(self, reader_a.lines + reader_b.lines)

    def test_resume_on_a_node_that_lags(self) -> None:
        """Node B lost its Redis access for a while and lags behind A: a
        client from A resuming on B at an id B has not read yet waits for B
        to catch up and then gets every later line exactly once."""
        server = self.redis()
        with RedisClient(server.target) as redis:
            redis.call("ACL", "SETUSER", RESTRICTED_USER, *self.all_access)
            first = self.node(self.source(server), name="a")
            other = self.node(
                self.source(server, f"{RESTRICTED_USER}:{self.password}@"),
                name="b",
            )
            count = 6000
            reader_a = self.reader(first)
            publisher = self.publish(server, count, batch=5)
            reader_a.until(1000)
            redis.call("ACL", "SETUSER", RESTRICTED_USER, "-@all")
            # Wait until B's reconnection attempts are seconds apart.
            other.log.wait_for(
                r"Redis source cannot read .* attempt 7 failed", timeout=60
            )
            reader_a.until(reader_a.last_number + 200)
            reader_a.client.close_socket()
            redis.call("ACL", "SETUSER", RESTRICTED_USER, "+@all")
        mark = other.log.mark()
        reader_b = self.reader(other, since=reader_a.last_id)
        reader_b.until(count)
        # The replay may still be catching up when the last line is read.
        reader_b.until_notice("!live")
        publisher.finish()
        recovered, _ = other.log.find("Redis source recovered", after=0)
        self.assertGreaterEqual(
            recovered, mark, "B caught up before the client resumed: no lag to test"
        )
        self.assertEqual(reader_b.notices, ["!live"])
        assert_sequence(self, reader_a.lines + reader_b.lines)


class RestartTests(StreamTestCase):
    """A node stops and starts again; its clients resume from the stream."""

    def test_resume_after_the_node_restarted(self) -> None:
        """A client resumes on the restarted node with an id read before the
        restart: the lines meanwhile come from the stream, exact, no gap."""
        server = self.redis()
        node = self.node(self.source(server), name="before")
        count = 4000
        reader = self.reader(node)
        publisher = self.publish(server, count)
        reader.until(1500)
        # twistd exits 0, or re-raises SIGTERM after an orderly shutdown.
        self.assertIn(node.stop(), (0, -signal.SIGTERM))
        with RedisClient(server.target) as redis:
            last = reader.last_number
            wait_until(lambda: redis.call("XLEN", self.key) > last + 500, "more")
        again = self.node(self.source(server), name="after")
        resumed = self.reader(again, since=reader.last_id)
        resumed.until(count)
        # The replay may still be catching up when the last line is read.
        resumed.until_notice("!live")
        publisher.finish()
        self.assertEqual(resumed.notices, ["!live"])
        assert_sequence(self, reader.lines + resumed.lines)
