"""Asking a Redis whether it is a Cluster member, until it answers."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ConnectionError
from support import capture_logs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth.cluster_ledger import RedisURLLedger
from nanostream.auth.redis_ledger import LedgerUnavailable
from nanostream.redis.backoff import Backoff
from nanostream.redis.mode import ClusterProbe
from nanostream.redis.url import RedisTarget

TARGET = RedisTarget("127.0.0.1", 7000, password="hunter2")


def run_now(f: Any, *args: Any) -> Deferred[Any]:
    try:
        return succeed(f(*args))
    except Exception as e:
        return fail(e)


class ClusterProbeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events = capture_logs(self)
        self.decided: list[bool] = []
        self.answers: list[Any] = []

    def probe(self, target: RedisTarget) -> bool:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return bool(answer)

    def make(self) -> ClusterProbe:
        return ClusterProbe(
            TARGET,
            self.clock,
            "ledger",
            self.decided.append,
            backoff=Backoff(initial=1, factor=2, random=lambda: 1.0),
            probe=self.probe,
            run=run_now,
        )

    def test_asks_again_until_answered(self) -> None:
        """An unreachable Redis is asked again with backoff; one answer is given."""
        self.answers = [ConnectionError("refused"), ConnectionError("refused"), True]
        self.make().start()
        self.assertEqual(self.decided, [])
        self.clock.advance(1)
        self.assertEqual(self.decided, [])
        self.clock.advance(2)
        self.assertEqual(self.decided, [True])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        warnings = [e for e in self.events if "cannot reach Redis" in e["log_format"]]
        self.assertEqual([e["attempts"] for e in warnings], [1, 2])
        self.assertNotIn("hunter2", repr(warnings))

    def test_stopped_before_the_answer(self) -> None:
        """A probe stopped while waiting to ask again never asks nor decides."""
        self.answers = [ConnectionError("refused"), False]
        probe = self.make()
        probe.start()
        probe.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.decided, [])


class RedisURLLedgerTests(SynchronousTestCase):
    def test_refuses_until_decided(self) -> None:
        """Until the server has said what it is, every handshake is refused."""
        probe = ClusterProbe(
            TARGET, Clock(), "ledger", lambda _: None, run=lambda *a: Deferred()
        )
        ledger = RedisURLLedger(TARGET, Clock(), probe=probe)
        ledger.startService()
        self.assertFalse(ledger.connected)
        self.failureResultOf(ledger.consume(b"\x01", 60), LedgerUnavailable)
        ledger.stopService()
