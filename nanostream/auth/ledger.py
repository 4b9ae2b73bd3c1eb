"""The used-token ledger: each token is accepted at most once.

However a token is re-encoded on the wire it is one identity
(:func:`nanostream.auth.tokens.token_identity`), so it cannot be replayed in
another spelling.

A ledger remembers a token's identity until the token could no longer be
accepted anyway, then forgets it, so its size is bounded by the tokens
still unexpired, whatever the connection churn.  The in-memory ledger serves
one node; a shared ledger (Redis) implements the same interface for a fleet.
"""

from __future__ import annotations

import heapq

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Attribute, Interface, implementer


class ILedger(Interface):
    """Records which tokens have been used."""

    def consume(token_id: bytes, expires_at: float) -> Deferred[bool]:
        """
        Mark ``token_id`` used until ``expires_at`` (seconds since the epoch).

        Fires with True when this call was the first use, False when the
        token had been used before.  Fails when the ledger cannot tell; the
        caller must then refuse the token (fail closed).
        """

    size = Attribute("How many identities are remembered right now.")


class IImmediateLedger(ILedger):
    """A ledger that can answer at once, as a plain value.

    A handshake then needs no Deferred of its own: a measurable share of
    each handshake's CPU with the in-memory ledger.
    """

    def consume_now(token_id: bytes, expires_at: float) -> bool:
        """:meth:`ILedger.consume`, answered synchronously."""


@implementer(IImmediateLedger)
class MemoryLedger:
    """A ledger in this process's memory, pruned as tokens expire."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []

    @property
    def size(self) -> int:
        return len(self._expiry)

    def consume(self, token_id: bytes, expires_at: float) -> Deferred[bool]:
        return succeed(self.consume_now(token_id, expires_at))

    def consume_now(self, token_id: bytes, expires_at: float) -> bool:
        """The synchronous form of :meth:`consume`."""
        self.prune()
        if token_id in self._expiry:
            return False
        self._expiry[token_id] = expires_at
        heapq.heappush(self._heap, (expires_at, token_id))
        return True

    def prune(self) -> None:
        """Forget every token whose expiry has passed."""
        now = self._clock.seconds()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, token_id = heapq.heappop(heap)
            del self._expiry[token_id]
