"""The sharded channel source: batches, renewed subscriptions and gaps, on fakes."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ConnectionError
from support import capture_logs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nanostream.redis.backoff import Backoff
from nanostream.redis.url import RedisTarget
from nanostream.sources.redis_sharded import ShardedChannelSource, Unsubscribed, read

TARGET = RedisTarget("127.0.0.1", 7000, channel="feed")


def smessage(data: bytes) -> dict[str, Any]:
    return {"type": "smessage", "channel": b"feed", "data": data}


class FakePubSub:
    def __init__(self, messages: list[Any]) -> None:
        self.messages = messages
        self.subscribed: list[str] = []
        self.closed = False

    def ssubscribe(self, channel: str) -> None:
        self.subscribed.append(channel)
        self.messages.insert(0, {"type": "ssubscribe", "data": 1})

    def get_sharded_message(self, timeout: float = 0.0) -> Any:
        if not self.messages:
            return None
        item = self.messages.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


class FakeNodes:
    def __init__(self) -> None:
        self.refreshed = 0

    def initialize(self) -> None:
        self.refreshed += 1


class FakeCluster:
    def __init__(self, feeds: list[list[Any]]) -> None:
        self.feeds = feeds
        self.nodes_manager = FakeNodes()

    def pubsub(self) -> FakePubSub:
        return FakePubSub(self.feeds.pop(0))

    def close(self) -> None:
        pass


class Sink:
    def __init__(self) -> None:
        self.got: list[Any] = []

    def broadcast(self, lines: list[bytes], ids: Any = None) -> None:
        self.got.append(list(lines))

    def source_gap(self) -> None:
        self.got.append("gap")


class ReadTests(SynchronousTestCase):
    def test_batch_of_what_arrived(self) -> None:
        """One read takes every message already there, up to the batch bound."""
        pubsub = FakePubSub([smessage(b"a"), smessage(b"b"), smessage(b"c")])
        self.assertEqual(read(pubsub, most=2), ([b"a", b"b"], None))
        self.assertEqual(read(pubsub), ([b"c"], None))
        self.assertEqual(read(pubsub), ([], None))

    def test_renewed_subscription_is_a_loss(self) -> None:
        """A subscribe or unsubscribe notice mid-stream means lines may be missed."""
        for kind in ("ssubscribe", "sunsubscribe"):
            pubsub = FakePubSub([smessage(b"a"), {"type": kind, "data": 0}])
            messages, error = read(pubsub)
            self.assertEqual(messages, [b"a"])
            self.assertIsInstance(error, Unsubscribed)


class ShardedSourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sink = Sink()
        self.events = capture_logs(self)
        self.pending: list[Deferred[Any]] = []

    def run_call(self, f: Any, *args: Any) -> Deferred[Any]:
        # A read of an empty feed blocks: it stays pending, as the thread would.
        if f is read and not args[0].messages:
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d
        try:
            return succeed(f(*args))
        except Exception as e:
            return fail(e)

    def source(self, feeds: list[list[Any]]) -> ShardedChannelSource:
        self.client = FakeCluster(feeds)
        return ShardedChannelSource(
            self.sink,
            10,
            TARGET,
            self.clock,
            backoff=Backoff(initial=1, factor=1, random=lambda: 1.0),
            connect=lambda: self.client,
            run=self.run_call,
        )

    def test_lines_then_gap_after_a_loss(self) -> None:
        """A lost subscription is taken up again, and the gap told before new lines."""
        source = self.source(
            [
                [smessage(b"one"), smessage(b"x" * 11), ConnectionError("gone")],
                [smessage(b"two")],
            ]
        )
        source.startService()
        self.assertEqual(self.sink.got, [[b"one"]])
        self.assertFalse(source.status.connected)
        self.clock.advance(1)
        self.assertEqual(self.sink.got, [[b"one"], "gap", [b"two"]])
        self.assertEqual(source.source_gaps, 1)
        self.assertEqual(source.status.lines_discarded, 1)
        self.assertEqual(self.client.nodes_manager.refreshed, 1)
        texts = [e["log_format"] for e in self.events]
        self.assertTrue(any("Redis source recovered" in t for t in texts))
