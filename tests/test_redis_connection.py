"""RedisConnection: what it tells its handler as connections come and go."""

from __future__ import annotations

from typing import Any

from fake_redis import TARGET, FakeEndpoint, FixedRandom, lose
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nanostream.redis.backoff import Backoff
from nanostream.redis.client import ClientProtocol, RedisClientFactory, RedisConnection


class Recorder:
    """A handler that writes down each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def prepare(self, protocol: Any) -> None:
        return None

    def up(self, protocol: Any) -> None:
        self.calls.append(("up",))

    def down(self, reason: str, delay: float) -> None:
        self.calls.append(("down", delay))

    def retrying(self, reason: str, delay: float, attempts: int) -> None:
        self.calls.append(("retrying", delay, attempts))


class AttemptCountTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        factory = RedisClientFactory(
            ClientProtocol, TARGET, self.clock, endpoint=self.endpoint
        )
        self.handler = Recorder()
        self.connection = RedisConnection(
            factory,
            self.clock,
            self.handler,
            backoff=Backoff(initial=1.0, random=FixedRandom(1.0)),
        )

    def test_counts_failures_since_the_last_success(self) -> None:
        """After a loss the first failed reconnection is attempt 1, then 2."""
        self.connection.startService()
        self.addCleanup(self.connection.stopService)
        self.endpoint.refusing = True
        lose(self.endpoint.last)
        self.clock.advance(1.0)
        self.clock.advance(2.0)
        self.endpoint.refusing = False
        self.clock.advance(4.0)
        self.assertEqual(
            self.handler.calls,
            [
                ("up",),
                ("down", 1.0),
                ("retrying", 2.0, 1),
                ("retrying", 4.0, 2),
                ("up",),
            ],
        )

    def test_first_connection_failing(self) -> None:
        """A first attempt that fails is attempt 1."""
        self.endpoint.refusing = True
        self.connection.startService()
        self.addCleanup(self.connection.stopService)
        self.assertEqual(self.handler.calls, [("retrying", 1.0, 1)])
