"""The publisher over a fake connection: the window, ordering, retries, the end."""

from __future__ import annotations

import dataclasses
from typing import Any

from fake_redis import TARGET, FakeEndpoint, FixedRandom, feed, lose, written
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nanostream.cli.publish import main
from nanostream.redis.backoff import Backoff
from nanostream.redis.client import ClientProtocol, RedisClientFactory, RedisUnavailable
from nanostream.redis.publisher import Publisher, PublishFailed, command_for
from nanostream.sources.stream import LineSourceProtocol


def commands(data: bytes) -> list[list[bytes]]:
    """The commands a client wrote, each as its list of arguments."""
    found = []
    position = 0
    while position < len(data):
        end = data.index(b"\r\n", position)
        count = int(data[position + 1 : end])
        position = end + 2
        arguments = []
        for _ in range(count):
            end = data.index(b"\r\n", position)
            length = int(data[position + 1 : end])
            position = end + 2
            arguments.append(data[position : position + length])
            position += length + 2
        found.append(arguments)
    return found


def publishes(data: bytes) -> list[bytes]:
    """The payloads of the PUBLISH commands in ``data``, in order."""
    return [command[2] for command in commands(data) if command[0] == b"PUBLISH"]


class Producer:
    """Stands for stdin's reader: records being paused and resumed."""

    def __init__(self) -> None:
        self.paused: list[bool] = []

    def pauseProducing(self) -> None:
        self.paused.append(True)

    def resumeProducing(self) -> None:
        self.paused.append(False)

    def stopProducing(self) -> None:
        raise AssertionError("the publisher never stops its supply")


class PublisherTestCase(SynchronousTestCase):
    target = TARGET

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.factory = RedisClientFactory(
            ClientProtocol, self.target, self.clock, endpoint=self.endpoint
        )
        self.producer = Producer()

    def publisher(self, maxlen: int = 100, **kwargs: Any) -> Publisher:
        """A publisher whose first connection is made."""
        kwargs.setdefault("backoff", Backoff(initial=0.5, random=FixedRandom(1.0)))
        publisher = Publisher(
            self.factory, self.clock, command_for(self.target, maxlen), **kwargs
        )
        self.successResultOf(publisher.start())
        publisher.producer = self.producer
        return publisher

    def ack(self, count: int, reply: bytes = b":2\r\n") -> None:
        feed(self.endpoint.last, reply * count, self.clock)


class PublisherTests(PublisherTestCase):
    def test_window_bounds_in_flight(self) -> None:
        """No more than --window lines are unacknowledged; the rest wait."""
        publisher = self.publisher(window=3)
        publisher.broadcast([b"1", b"2", b"3", b"4", b"5"])
        self.assertEqual(publishes(written(self.endpoint.last)), [b"1", b"2", b"3"])
        self.assertEqual(self.producer.paused, [True], "the line supply is paused")
        self.ack(1)
        self.assertEqual(publishes(written(self.endpoint.last)), [b"4"])
        self.ack(1)
        self.assertEqual(publishes(written(self.endpoint.last)), [b"5"])
        self.assertEqual(
            self.producer.paused, [True, False], "and resumed once all are sent"
        )
        self.assertEqual(publisher.peak_in_flight, 3)

    def test_pipelined(self) -> None:
        """Lines go out without waiting for each other's answers."""
        publisher = self.publisher(window=100)
        publisher.broadcast([b"line %d" % i for i in range(50)])
        self.assertEqual(len(publishes(written(self.endpoint.last))), 50)

    def test_done_after_every_ack(self) -> None:
        """The end of input finishes only once Redis has acknowledged each line."""
        publisher = self.publisher()
        publisher.broadcast([b"a", b"b"])
        publisher.end()
        done = publisher.done()
        self.ack(1)
        self.assertNoResult(done)
        self.ack(1)
        self.successResultOf(done)
        self.assertEqual(publisher.published, 2)
        self.assertTrue(self.endpoint.last.transport.disconnecting)

    def test_done_while_disconnected(self) -> None:
        """Input ending after a loss with every line acknowledged needs no Redis."""
        publisher = self.publisher()
        publisher.broadcast([b"a"])
        self.ack(1)
        self.endpoint.refusing = True
        lose(self.endpoint.last)
        publisher.end()
        self.successResultOf(publisher.done())
        self.clock.advance(60)
        self.assertEqual(self.endpoint.attempts, 1, "and stops reconnecting")

    def test_resent_in_order_after_reconnecting(self) -> None:
        """Unacknowledged lines are sent again, first, in order, after a loss."""
        publisher = self.publisher(window=10)
        publisher.broadcast([b"a", b"b", b"c"])
        first = self.endpoint.last
        written(first)
        self.ack(1)
        lose(first)
        publisher.broadcast([b"d"])
        self.assertEqual(self.producer.paused, [True], "paused while disconnected")
        self.clock.advance(0.5)
        second = self.endpoint.last
        self.assertIsNot(first, second)
        self.assertEqual(publishes(written(second)), [b"b", b"c", b"d"])
        self.assertEqual(self.producer.paused, [True, False])
        publisher.end()
        self.ack(3)
        self.successResultOf(publisher.done())
        self.assertEqual((publisher.published, publisher.reconnects), (4, 1))

    def test_gives_up_after_retries(self) -> None:
        """Redis gone for good: after --retries attempts it fails, counting lines."""
        publisher = self.publisher(retries=3)
        publisher.broadcast([b"a", b"b"])
        self.endpoint.refusing = True
        lose(self.endpoint.last)
        self.clock.advance(0.5)
        self.clock.advance(1.0)
        self.assertNoResult(publisher.done())
        self.clock.advance(2.0)
        failure = self.failureResultOf(publisher.done(), PublishFailed)
        self.assertIn("in 3 attempts", failure.getErrorMessage())
        self.assertIn("2 lines were not published", failure.getErrorMessage())
        self.assertEqual(self.endpoint.attempts, 4)
        self.clock.advance(60)
        self.assertEqual(self.endpoint.attempts, 4, "no attempt after giving up")

    def test_failed_attempts_counted_per_outage(self) -> None:
        """Failed reconnections count again from zero after each success."""
        publisher = self.publisher(retries=2)
        for _ in range(3):
            self.endpoint.refusing = True
            lose(self.endpoint.last)
            self.clock.advance(0.5)
            self.endpoint.refusing = False
            self.clock.advance(1.0)
        self.assertNoResult(publisher.done())
        self.assertEqual(publisher.reconnects, 3)

    def test_line_sent_too_often(self) -> None:
        """A line lost with its connection --retries times fails the run."""
        publisher = self.publisher(retries=2)
        publisher.broadcast([b"a"])
        lose(self.endpoint.last)
        self.clock.advance(0.5)
        lose(self.endpoint.last)
        failure = self.failureResultOf(publisher.done(), PublishFailed)
        self.assertIn("sent 2 times", failure.getErrorMessage())
        self.clock.advance(60)
        self.assertEqual(self.endpoint.attempts, 2, "no attempt after giving up")

    def test_refused_by_redis(self) -> None:
        """An error reply (no permission, say) is not retried: it fails the run."""
        publisher = self.publisher()
        publisher.broadcast([b"a", b"b"])
        feed(self.endpoint.last, b"-NOPERM no permissions\r\n", self.clock)
        failure = self.failureResultOf(publisher.done(), PublishFailed)
        self.assertIn("NOPERM", failure.getErrorMessage())
        self.assertTrue(self.endpoint.last.transport.disconnecting)

    def test_loading_redis_is_waited_for(self) -> None:
        """A Redis still loading its data answers LOADING: the line is sent again."""
        publisher = self.publisher(window=10)
        publisher.broadcast([b"a", b"b"])
        first = self.endpoint.last
        feed(first, b"-LOADING Redis is loading the dataset in memory\r\n", self.clock)
        self.assertTrue(first.transport.disconnecting)
        lose(first)
        self.clock.advance(0.5)
        second = self.endpoint.last
        self.assertIsNot(first, second)
        self.assertEqual(publishes(written(second)), [b"a", b"b"])
        publisher.end()
        self.ack(2)
        self.successResultOf(publisher.done())
        self.assertEqual(publisher.published, 2)

    def test_silent_redis_counts_as_lost(self) -> None:
        """No answer within --timeout drops the connection and sends again."""
        publisher = self.publisher(timeout=2.0)
        publisher.broadcast([b"a"])
        first = self.endpoint.last
        self.clock.advance(1.9)
        self.assertFalse(first.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(first.transport.disconnecting)
        lose(first)
        self.clock.advance(0.5)
        self.assertEqual(publishes(written(self.endpoint.last)), [b"a"])

    def test_unreachable_at_start(self) -> None:
        """No Redis at start: start() fails at once, naming the masked URL."""
        self.endpoint.refusing = True
        publisher = Publisher(self.factory, self.clock, command_for(TARGET))
        failure = self.failureResultOf(publisher.start(), RedisUnavailable)
        self.assertIn(
            "cannot reach Redis at redis://127.0.0.1:6379/0?channel=feed",
            failure.getErrorMessage(),
        )
        self.clock.advance(60)
        self.assertEqual(self.endpoint.attempts, 1, "no retry at start")


class StreamTests(PublisherTestCase):
    target = dataclasses.replace(TARGET, channel=None, stream="feed:lines")

    def test_xadd_with_maxlen(self) -> None:
        """Each line is one XADD with field 'line', trimmed to about --maxlen."""
        publisher = self.publisher(maxlen=500, window=10)
        publisher.broadcast([b"first", b"\xff binary"])
        self.assertEqual(
            commands(written(self.endpoint.last)),
            [
                [b"XADD", b"feed:lines", b"MAXLEN", b"~", b"500", b"*", b"line", line]
                for line in (b"first", b"\xff binary")
            ],
        )
        publisher.end()
        self.ack(2, b"$15\r\n1700000000000-0\r\n")
        self.successResultOf(publisher.done())
        self.assertEqual(publisher.published, 2)

    def test_refused_by_redis(self) -> None:
        """A key of another type (WRONGTYPE) fails the run, as for PUBLISH."""
        publisher = self.publisher()
        publisher.broadcast([b"a"])
        feed(self.endpoint.last, b"-WRONGTYPE wrong kind of value\r\n", self.clock)
        failure = self.failureResultOf(publisher.done(), PublishFailed)
        self.assertIn("WRONGTYPE", failure.getErrorMessage())

    def test_neither_channel_nor_stream(self) -> None:
        """A target naming nothing to write to has no command."""
        self.assertRaises(
            ValueError, command_for, dataclasses.replace(TARGET, channel=None)
        )


class InputTests(PublisherTestCase):
    """stdin reaches the publisher through the service's own line reader."""

    def read(self, data: bytes, reason: Failure) -> Publisher:
        publisher = self.publisher()
        lines = LineSourceProtocol(publisher, 1024, "stdin", lambda _: publisher.end())
        lines.dataReceived(data)
        lines.connectionLost(reason)
        return publisher

    def test_last_line_without_newline(self) -> None:
        """At a clean end of input a last line without a newline is published."""
        publisher = self.read(b"a\r\n\nb", Failure(ConnectionDone()))
        self.assertEqual(publishes(written(self.endpoint.last)), [b"a", b"b"])
        self.ack(2)
        self.successResultOf(publisher.done())

    def test_fragment_of_an_unclean_loss_not_published(self) -> None:
        """A read error cuts the input: its unfinished line is not a line."""
        publisher = self.read(b"a\nhalf a li", Failure(ConnectionLost()))
        self.assertEqual(publishes(written(self.endpoint.last)), [b"a"])
        self.ack(1)
        self.successResultOf(publisher.done())
        self.assertEqual(publisher.published, 1)


class MainTests(SynchronousTestCase):
    def test_usage_error(self) -> None:
        """A URL without a channel is a usage error: status 64, no reactor run."""
        self.assertEqual(main(["redis://127.0.0.1:6379/0"]), 64)

    def test_bad_option(self) -> None:
        """A window of zero would never publish: a usage error."""
        self.assertEqual(main(["redis://h/0?channel=c", "--window", "0"]), 64)

    def test_maxlen_only_for_a_stream(self) -> None:
        """--maxlen with a channel would do nothing: a usage error."""
        self.assertEqual(main(["redis://h/0?channel=c", "--maxlen", "10"]), 64)
        self.assertEqual(main(["redis://h/0?stream=s", "--maxlen", "0"]), 64)
