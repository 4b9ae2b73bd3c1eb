"""The Cluster publisher's batching, retries and failures, on a fake client."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ConnectionError, ResponseError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nanostream.redis.backoff import Backoff
from nanostream.redis.cluster_publisher import ClusterPublisher
from nanostream.redis.publisher import PublishFailed, command_for
from nanostream.redis.url import RedisTarget

TARGET = RedisTarget("127.0.0.1", 7000, channel="feed")


class FakePipeline:
    def __init__(self, client: FakeCluster) -> None:
        self.client = client
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.client.errors:
            raise self.client.errors.pop(0)
        self.client.written.extend(self.commands)
        return [1] * len(self.commands)


class FakeCluster:
    def __init__(self) -> None:
        self.written: list[tuple[Any, ...]] = []
        self.errors: list[Exception] = []
        self.closed = False

    def pipeline(self, transaction: bool = False) -> FakePipeline:
        return FakePipeline(self)

    def close(self) -> None:
        self.closed = True


def run_now(f: Any, *args: Any) -> Deferred[Any]:
    try:
        return succeed(f(*args))
    except Exception as e:
        return fail(e)


class ClusterPublisherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeCluster()
        self.publisher = ClusterPublisher(
            TARGET,
            self.clock,
            command_for(TARGET, sharded=True),
            window=2,
            retries=3,
            backoff=Backoff(initial=1, factor=1, random=lambda: 1.0),
            connect=lambda: self.client,
            run=run_now,
        )
        self.successResultOf(self.publisher.start())

    def test_lines_in_order_in_batches(self) -> None:
        """Lines go out in order with SPUBLISH, a window at a time; done after all."""
        self.publisher.broadcast([b"a", b"b", b"c"])
        self.publisher.end()
        self.successResultOf(self.publisher.done())
        self.assertEqual(
            self.client.written,
            [("SPUBLISH", "feed", line) for line in (b"a", b"b", b"c")],
        )
        self.assertEqual(self.publisher.peak_in_flight, 2)
        self.assertTrue(self.client.closed)

    def test_lost_batch_sent_again_after_backoff(self) -> None:
        """A batch that met a lost connection is sent again, whole, after a backoff."""
        self.client.errors.append(ConnectionError("gone"))
        self.publisher.broadcast([b"a", b"b"])
        self.assertEqual(self.client.written, [])
        self.clock.advance(1)
        self.publisher.end()
        self.successResultOf(self.publisher.done())
        self.assertEqual([c[2] for c in self.client.written], [b"a", b"b"])
        self.assertEqual(self.publisher.reconnects, 1)

    def test_gives_up_after_retries(self) -> None:
        """``retries`` failures in a row end the run, saying how many lines are lost."""
        self.client.errors.extend(ConnectionError("gone") for _ in range(3))
        self.publisher.broadcast([b"a"])
        self.clock.advance(1)
        self.clock.advance(1)
        failure = self.failureResultOf(self.publisher.done(), PublishFailed)
        self.assertIn("1 lines were not published", failure.getErrorMessage())

    def test_refused_command_fails(self) -> None:
        """A command the Cluster refuses ends the run at once."""
        self.client.errors.append(ResponseError("WRONGTYPE"))
        self.publisher.broadcast([b"a"])
        failure = self.failureResultOf(self.publisher.done(), PublishFailed)
        self.assertIn("Redis refused a line: WRONGTYPE", failure.getErrorMessage())
