"""The Cluster ledger's answers and its fail-closed cases, on a fake client."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ConnectionError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from nanostream.auth.cluster_ledger import ClusterLedger, cluster_key
from nanostream.auth.ledger import ILedger
from nanostream.auth.redis_ledger import LedgerUnavailable
from nanostream.redis.url import RedisTarget

TARGET = RedisTarget("127.0.0.1", 7000)


class FakeCluster:
    def __init__(self) -> None:
        self.keys: dict[bytes, int] = {}
        self.down = False
        self.pipelines = 0

    def set(self, key: bytes, value: bytes, nx: bool, pxat: int) -> bool | None:
        if self.down:
            raise ConnectionError("master gone")
        if key in self.keys:
            return None
        self.keys[key] = pxat
        return True

    def pipeline(self, transaction: bool = False) -> FakePipeline:
        return FakePipeline(self)

    def close(self) -> None:
        pass


class FakePipeline:
    def __init__(self, client: FakeCluster) -> None:
        self.client = client
        self.calls: list[tuple[bytes, int]] = []

    def set(self, key: bytes, value: bytes, nx: bool, pxat: int) -> None:
        self.calls.append((key, pxat))

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        self.client.pipelines += 1
        replies: list[Any] = []
        for key, pxat in self.calls:
            try:
                replies.append(self.client.set(key, b"1", nx=True, pxat=pxat))
            except ConnectionError as e:
                replies.append(e)
        return replies


class ClusterLedgerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeCluster()
        self.stuck = False
        self.ledger = ClusterLedger(
            TARGET,
            self.clock,
            prefix="used:",
            timeout=0.5,
            connect=lambda: self.client,
            run=self.run_call,
        )

    def run_call(self, f: Any, *args: Any) -> Deferred[Any]:
        if self.stuck:
            return Deferred()
        try:
            return succeed(f(*args))
        except Exception as e:
            return fail(e)

    def test_first_use_then_refused(self) -> None:
        """The first consume sets the key, with its expiry; the second finds it."""
        self.ledger.startService()
        self.assertTrue(verifyObject(ILedger, self.ledger))
        first = self.ledger.consume(b"\x01\x02", 60.0001)
        self.clock.advance(0)
        self.assertIs(self.successResultOf(first), True)
        again = self.ledger.consume(b"\x01\x02", 60)
        self.clock.advance(0)
        self.assertIs(self.successResultOf(again), False)
        self.assertEqual(self.client.keys, {b"used:{0102}": 60001})

    def test_one_pipeline_per_turn(self) -> None:
        """The tokens of one reactor turn share one pipeline; each gets its answer."""
        self.ledger.startService()
        answers = [self.ledger.consume(bytes([i % 3]), 60) for i in range(6)]
        self.clock.advance(0)
        self.assertEqual(
            [self.successResultOf(a) for a in answers],
            [True, True, True, False, False, False],
        )
        self.assertEqual(self.client.pipelines, 1)

    def test_key_is_hash_tagged(self) -> None:
        """The key's hash tag is the token's hex: one slot per token."""
        self.assertEqual(cluster_key(b"app:used:", b"\xab"), b"app:used:{ab}")

    def test_refuses_before_connected(self) -> None:
        """Until the slot map is learnt every handshake is refused."""
        self.failureResultOf(self.ledger.consume(b"\x01", 60), LedgerUnavailable)

    def test_refuses_when_the_master_is_gone(self) -> None:
        """An error from the Cluster fails the consume: fail closed."""
        self.ledger.startService()
        self.client.down = True
        answer = self.ledger.consume(b"\x01", 60)
        self.clock.advance(0)
        failure = self.failureResultOf(answer)
        self.assertTrue(failure.check(LedgerUnavailable))
        self.assertIn("master gone", failure.getErrorMessage())

    def test_refuses_after_the_timeout(self) -> None:
        """No answer within the timeout refuses the handshake."""
        self.ledger.startService()
        self.stuck = True
        answer = self.ledger.consume(b"\x01", 60)
        self.assertNoResult(answer)
        self.clock.advance(0.5)
        self.failureResultOf(answer, LedgerUnavailable)

    def test_connects_again_with_backoff(self) -> None:
        """A Cluster that cannot be reached at start is tried again later."""
        attempts: list[int] = []

        def connect() -> FakeCluster:
            attempts.append(1)
            if len(attempts) == 1:
                raise ConnectionError("refused")
            return self.client

        ledger = ClusterLedger(TARGET, self.clock, connect=connect, run=self.run_call)
        ledger.startService()
        self.assertFalse(ledger.connected)
        self.clock.advance(60)
        self.assertTrue(ledger.connected)
        ledger.stopService()
