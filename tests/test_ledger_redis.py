"""The Redis ledger over a fake connection: the command, the answers, failing closed."""

from __future__ import annotations

from fake_redis import TARGET, FakeEndpoint, FixedRandom, feed, lose, written
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from nanostream.auth.ledger import ILedger
from nanostream.auth.redis_ledger import LedgerUnavailable, RedisLedger, ledger_key
from nanostream.redis.backoff import Backoff

TOKEN_ID = bytes(range(32))
EXPIRES_AT = 1_700_000_060.25


class RedisLedgerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.endpoint = FakeEndpoint()
        self.ledger = RedisLedger(
            TARGET,
            self.clock,
            prefix="fleet:used:",
            timeout=0.5,
            backoff=Backoff(initial=0.1, random=FixedRandom(1.0)),
            endpoint=self.endpoint,
        )
        self.ledger.startService()
        self.addCleanup(self.ledger.stopService)
        self.protocol = self.endpoint.last

    def test_provides_interface(self) -> None:
        """RedisLedger provides ILedger, so Admission takes it as it is."""
        self.assertTrue(verifyObject(ILedger, self.ledger))

    def test_key(self) -> None:
        """The key is the prefix and the identity's hex digits, never the token."""
        self.assertEqual(ledger_key(b"p:", b"\x00\xff\x10"), b"p:00ff10")

    def test_one_atomic_set(self) -> None:
        """Each consume is one SET NX with the absolute expiry in milliseconds."""
        self.ledger.consume(TOKEN_ID, EXPIRES_AT)
        key = b"fleet:used:" + TOKEN_ID.hex().encode()
        self.assertEqual(
            written(self.protocol),
            b"*6\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\n1\r\n$2\r\nNX\r\n"
            b"$4\r\nPXAT\r\n$13\r\n1700000060250\r\n" % (len(key), key),
        )

    def test_first_use(self) -> None:
        """OK from Redis means this was the first use."""
        d = self.ledger.consume(TOKEN_ID, EXPIRES_AT)
        feed(self.protocol, b"+OK\r\n", self.clock)
        self.assertIs(self.successResultOf(d), True)

    def test_used_before(self) -> None:
        """A nil reply (the key exists) means the token was used before."""
        d = self.ledger.consume(TOKEN_ID, EXPIRES_AT)
        feed(self.protocol, b"$-1\r\n", self.clock)
        self.assertIs(self.successResultOf(d), False)

    def test_answers_in_order(self) -> None:
        """Pipelined consumes get their own answers, in order."""
        first = self.ledger.consume(b"a", EXPIRES_AT)
        second = self.ledger.consume(b"b", EXPIRES_AT)
        feed(self.protocol, b"+OK\r\n$-1\r\n", self.clock)
        self.assertEqual(
            (self.successResultOf(first), self.successResultOf(second)), (True, False)
        )

    def test_error_reply_fails(self) -> None:
        """An error from Redis (an old server without PXAT, say) fails closed."""
        d = self.ledger.consume(TOKEN_ID, EXPIRES_AT)
        feed(self.protocol, b"-ERR syntax error\r\n", self.clock)
        self.failureResultOf(d, LedgerUnavailable)

    def test_timeout_fails_and_reconnects(self) -> None:
        """No answer within the timeout fails the consume and drops the connection."""
        d = self.ledger.consume(TOKEN_ID, EXPIRES_AT)
        self.clock.advance(0.49)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        failure = self.failureResultOf(d, LedgerUnavailable)
        self.assertIn("0.5 s", failure.getErrorMessage())
        self.assertTrue(self.protocol.transport.disconnecting)
        lose(self.protocol)
        self.assertFalse(self.ledger.connected)
        self.clock.advance(0.1)
        self.assertEqual(self.endpoint.attempts, 2)
        self.assertTrue(self.ledger.connected)

    def test_late_answer_is_not_taken_for_the_next(self) -> None:
        """After a timeout, a late reply never answers a later consume."""
        late = self.ledger.consume(b"a", EXPIRES_AT)
        self.clock.advance(0.5)
        self.failureResultOf(late, LedgerUnavailable)
        lose(self.protocol)
        self.clock.advance(0.1)
        fresh = self.endpoint.last
        d = self.ledger.consume(b"b", EXPIRES_AT)
        feed(fresh, b"$-1\r\n", self.clock)
        self.assertIs(self.successResultOf(d), False)

    def test_disconnected_fails_at_once(self) -> None:
        """While Redis is away every consume fails at once, without waiting."""
        lose(self.protocol)
        self.endpoint.refusing = True
        d = self.ledger.consume(TOKEN_ID, EXPIRES_AT)
        self.failureResultOf(d, LedgerUnavailable)

    def test_loss_fails_pending(self) -> None:
        """A consume waiting when the connection drops fails."""
        d = self.ledger.consume(TOKEN_ID, EXPIRES_AT)
        lose(self.protocol)
        self.failureResultOf(d, LedgerUnavailable)

    def test_selects_database(self) -> None:
        """A ledger URL with a database number selects it before any SET."""
        endpoint = FakeEndpoint()
        ledger = RedisLedger(
            TARGET.__class__("127.0.0.1", 6379, 4), self.clock, endpoint=endpoint
        )
        ledger.startService()
        self.addCleanup(ledger.stopService)
        self.assertEqual(written(endpoint.last), b"*2\r\n$6\r\nSELECT\r\n$1\r\n4\r\n")
        self.assertFalse(ledger.connected)
        feed(endpoint.last, b"+OK\r\n", self.clock)
        self.assertTrue(ledger.connected)
