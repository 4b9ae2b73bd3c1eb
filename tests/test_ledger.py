"""The in-memory used-token ledger, driven by a fake clock."""

from __future__ import annotations

from collections import deque

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from nanostream.auth.ledger import ILedger, MemoryLedger


class MemoryLedgerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.ledger = MemoryLedger(self.clock)

    def consume(self, token_id: bytes, expires_at: float) -> bool:
        return self.successResultOf(self.ledger.consume(token_id, expires_at))

    def test_provides_interface(self) -> None:
        """MemoryLedger fully provides ILedger, so a Redis ledger can replace it."""
        self.assertTrue(verifyObject(ILedger, self.ledger))

    def test_first_use(self) -> None:
        """The first consume of a token fires True at once."""
        self.assertIs(self.consume(b"a", 1060), True)

    def test_second_use(self) -> None:
        """Consuming the same token again fires False."""
        self.consume(b"a", 1060)
        self.assertIs(self.consume(b"a", 1060), False)

    def test_second_use_with_other_expiry(self) -> None:
        """A repeat is refused even if it claims a different expiry."""
        self.consume(b"a", 1060)
        self.assertIs(self.consume(b"a", 5000), False)

    def test_tokens_independent(self) -> None:
        """Using one token does not use another."""
        self.consume(b"a", 1060)
        self.assertIs(self.consume(b"b", 1060), True)

    def test_still_remembered_before_expiry(self) -> None:
        """Just before its expiry a used token is still refused."""
        self.consume(b"a", 1060)
        self.clock.advance(59.5)
        self.assertIs(self.consume(b"a", 1060), False)

    def test_forgotten_at_expiry(self) -> None:
        """From its expiry on, a token is forgotten (it can no longer verify)."""
        self.consume(b"a", 1060)
        self.clock.advance(60)
        self.assertIs(self.consume(b"a", 1120), True)

    def test_size(self) -> None:
        """size counts the remembered identities and drops expired ones."""
        self.consume(b"a", 1010)
        self.consume(b"b", 1020)
        self.assertEqual(self.ledger.size, 2)
        self.clock.advance(15)
        self.consume(b"c", 1030)
        self.assertEqual(self.ledger.size, 2)

    def test_prune(self) -> None:
        """prune forgets expired tokens without waiting for the next consume."""
        self.consume(b"a", 1010)
        self.consume(b"b", 1020)
        self.clock.advance(10)
        self.ledger.prune()
        self.assertEqual(self.ledger.size, 1)

    def test_out_of_order_expiries(self) -> None:
        """Tokens are forgotten by expiry, whatever order they were used in."""
        self.consume(b"late", 1100)
        self.consume(b"early", 1010)
        self.clock.advance(50)
        self.assertIs(self.consume(b"early", 1200), True)
        self.assertIs(self.consume(b"late", 1200), False)

    def test_bounded_under_churn(self) -> None:
        """Under heavy churn the ledger holds only the still-unexpired tokens."""
        ttl = 10
        unexpired: deque[float] = deque()
        largest = 0
        for i in range(5000):
            if i % 50 == 0:
                self.clock.advance(1)
            now = self.clock.seconds()
            expiry = now + ttl
            self.assertIs(self.consume(b"%d" % i, expiry), True)
            unexpired.append(expiry)
            while unexpired[0] <= now:
                unexpired.popleft()
            self.assertEqual(self.ledger.size, len(unexpired))
            largest = max(largest, self.ledger.size)
        self.assertEqual(largest, 50 * ttl)
        self.clock.advance(ttl)
        self.ledger.prune()
        self.assertEqual(self.ledger.size, 0)
