"""The publisher over a fake connection: the window, ordering, retries, the end."""

from __future__ import annotations

from typing import Any

from fake_redis import TARGET, FakeEndpoint, FixedRandom, feed, lose, written
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nanostream.cli.publish import Publisher, PublishFailed, main
from nanostream.redis.backoff import Backoff
from nanostream.redis.client import ClientProtocol, RedisClientFactory, connect


def publishes(data: bytes) -> list[bytes]:
    """The payloads of the PUBLISH commands in ``data``, in order."""
    parts = data.split(b"\r\n")
    found = []
    for index, part in enumerate(parts):
        if part == b"PUBLISH":
            found.append(parts[index + 4])
    return found


class PublisherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.factory = RedisClientFactory(
            ClientProtocol, TARGET, self.clock, endpoint=self.endpoint
        )
        self.paused: list[bool] = []

    def publisher(self, **kwargs: Any) -> Publisher:
        kwargs.setdefault("backoff", Backoff(initial=0.5, random=FixedRandom(1.0)))
        publisher = Publisher(
            self.factory,
            self.clock,
            pause=lambda: self.paused.append(True),
            resume=lambda: self.paused.append(False),
            **kwargs,
        )
        publisher.start(self.successResultOf(connect(self.factory, self.clock)))
        return publisher

    def ack(self, count: int) -> None:
        feed(self.endpoint.last, b":2\r\n" * count, self.clock)

    def test_window_bounds_in_flight(self) -> None:
        """No more than --window lines are unacknowledged; the rest wait."""
        publisher = self.publisher(window=3)
        publisher.add([b"1", b"2", b"3", b"4", b"5"])
        self.assertEqual(publishes(written(self.endpoint.last)), [b"1", b"2", b"3"])
        self.assertEqual(self.paused, [True], "the line supply is paused")
        self.ack(1)
        self.assertEqual(publishes(written(self.endpoint.last)), [b"4"])
        self.ack(1)
        self.assertEqual(publishes(written(self.endpoint.last)), [b"5"])
        self.assertEqual(self.paused, [True, False], "and resumed once all are sent")
        self.assertEqual(publisher.peak_in_flight, 3)

    def test_pipelined(self) -> None:
        """Lines go out without waiting for each other's answers."""
        publisher = self.publisher(window=100)
        publisher.add([b"line %d" % i for i in range(50)])
        self.assertEqual(len(publishes(written(self.endpoint.last))), 50)

    def test_done_after_every_ack(self) -> None:
        """The end of input finishes only once Redis has acknowledged each line."""
        publisher = self.publisher()
        publisher.add([b"a", b"b"])
        publisher.end()
        done = publisher.done()
        self.ack(1)
        self.assertNoResult(done)
        self.ack(1)
        self.successResultOf(done)
        self.assertEqual(publisher.published, 2)
        self.assertTrue(self.endpoint.last.transport.disconnecting)

    def test_resent_in_order_after_reconnecting(self) -> None:
        """Unacknowledged lines are sent again, first, in order, after a loss."""
        publisher = self.publisher(window=10)
        publisher.add([b"a", b"b", b"c"])
        first = self.endpoint.last
        written(first)
        self.ack(1)
        lose(first)
        publisher.add([b"d"])
        self.clock.advance(0.5)
        second = self.endpoint.last
        self.assertIsNot(first, second)
        self.assertEqual(publishes(written(second)), [b"b", b"c", b"d"])
        publisher.end()
        self.ack(3)
        self.successResultOf(publisher.done())
        self.assertEqual((publisher.published, publisher.reconnects), (4, 1))

    def test_gives_up_after_retries(self) -> None:
        """Redis gone for good: after --retries attempts it fails, counting lines."""
        publisher = self.publisher(retries=3)
        publisher.add([b"a", b"b"])
        self.endpoint.refusing = True
        lose(self.endpoint.last)
        self.clock.advance(0.5)
        self.clock.advance(1.0)
        self.assertNoResult(publisher.done())
        self.clock.advance(2.0)
        failure = self.failureResultOf(publisher.done(), PublishFailed)
        self.assertIn("2 lines were not published", failure.getErrorMessage())
        self.assertEqual(self.endpoint.attempts, 4)

    def test_line_sent_too_often(self) -> None:
        """A line lost with its connection --retries times fails the run."""
        publisher = self.publisher(retries=2)
        publisher.add([b"a"])
        lose(self.endpoint.last)
        self.clock.advance(0.5)
        lose(self.endpoint.last)
        failure = self.failureResultOf(publisher.done(), PublishFailed)
        self.assertIn("sent 2 times", failure.getErrorMessage())

    def test_refused_by_redis(self) -> None:
        """An error reply (no permission, say) is not retried: it fails the run."""
        publisher = self.publisher()
        publisher.add([b"a", b"b"])
        feed(self.endpoint.last, b"-NOPERM no permissions\r\n", self.clock)
        failure = self.failureResultOf(publisher.done(), PublishFailed)
        self.assertIn("NOPERM", failure.getErrorMessage())

    def test_silent_redis_counts_as_lost(self) -> None:
        """No answer within --timeout drops the connection and sends again."""
        publisher = self.publisher(timeout=2.0)
        publisher.add([b"a"])
        first = self.endpoint.last
        self.clock.advance(1.9)
        self.assertFalse(first.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(first.transport.disconnecting)
        lose(first)
        self.clock.advance(0.5)
        self.assertEqual(publishes(written(self.endpoint.last)), [b"a"])


class MainTests(SynchronousTestCase):
    def test_usage_error(self) -> None:
        """A URL without a channel is a usage error: status 64, no reactor run."""
        self.assertEqual(main(["redis://127.0.0.1:6379/0"]), 64)

    def test_bad_option(self) -> None:
        """A window of zero would never publish: a usage error."""
        self.assertEqual(main(["redis://h/0?channel=c", "--window", "0"]), 64)
