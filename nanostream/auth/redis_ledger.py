"""The used-token ledger in Redis, shared by every node of a fleet.

With ``--ledger redis://...`` a token is single use across the whole fleet,
not just on the node that saw it (docs/scaling.rst).

One atomic ``SET prefix+hex(identity) 1 NX PXAT expiry`` per handshake: the
node whose SET creates the key is the token's first use; every other node,
now or later, finds the key and refuses.  Redis expires the key when the
token could no longer verify anyway, so the ledger stays bounded.

Fail closed: when Redis is not connected, answers an error, or does not
answer within the timeout, :meth:`RedisLedger.consume` fails and the
handshake is refused.  A timed-out connection is dropped and made again,
since a reply that did not come in time may never come.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nanostream.auth.ledger import ILedger
from nanostream.redis.backoff import Backoff
from nanostream.redis.client import ClientProtocol, RedisClientFactory, RedisConnection
from nanostream.redis.url import RedisTarget

_log = Logger()

DEFAULT_PREFIX = "nanostream:used:"
#: Seconds a handshake waits for Redis before it is refused.
DEFAULT_TIMEOUT = 0.5


class LedgerUnavailable(Exception):
    """The ledger cannot say whether a token was used; refuse it."""


def ledger_key(prefix: bytes, token_id: bytes) -> bytes:
    """The key that marks ``token_id`` used: the prefix and its hex digits."""
    return prefix + token_id.hex().encode("ascii")


@implementer(ILedger)
class RedisLedger(Service):
    """Consumes tokens in Redis; a service because it keeps a connection up."""

    #: The identities live in Redis; this process remembers none.
    size = 0

    def __init__(
        self,
        target: RedisTarget,
        reactor: Any,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        backoff: Backoff | None = None,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        self._target = target
        self._clock = reactor
        self._prefix = prefix.encode("utf-8")
        self._timeout = timeout
        factory = RedisClientFactory(ClientProtocol, target, reactor, endpoint=endpoint)
        self._connection = RedisConnection(factory, reactor, self, backoff=backoff)
        self._protocol: Any = None

    @property
    def connected(self) -> bool:
        """Whether handshakes can be checked right now."""
        return self._protocol is not None

    def consume(self, token_id: bytes, expires_at: float) -> Deferred[bool]:
        protocol = self._protocol
        if protocol is None:
            return fail(LedgerUnavailable("not connected to Redis"))
        key = ledger_key(self._prefix, token_id)
        expiry_ms = math.ceil(expires_at * 1000)
        try:
            d = protocol.execute_command("SET", key, b"1", "NX", "PXAT", expiry_ms)
        except Exception as e:
            return fail(LedgerUnavailable(str(e) or type(e).__name__))
        d.addTimeout(self._timeout, self._clock)
        d.addCallbacks(self._answered, self._unanswered, errbackArgs=(protocol,))
        return d

    def _answered(self, reply: Any) -> bool:
        if reply in (b"OK", "OK"):
            return True
        if reply is None:
            return False
        raise LedgerUnavailable(f"unexpected reply from Redis: {reply!r:.40}")

    def _unanswered(self, failure: Failure, protocol: Any) -> Failure:
        if failure.check(TimeoutError, CancelledError):
            # The reply did not come in time and may never come.
            if protocol is self._protocol and protocol.connected:
                protocol.transport.abortConnection()
            return Failure(
                LedgerUnavailable(f"no answer from Redis within {self._timeout:g} s")
            )
        if failure.check(LedgerUnavailable):
            return failure
        return Failure(LedgerUnavailable(failure.getErrorMessage()))

    # -- the service ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        _log.info(
            "used-token ledger: Redis at {redis}, keys {prefix}*",
            redis=self._target.masked(),
            prefix=self._prefix.decode("utf-8"),
        )
        self._connection.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._connection.stopService()

    # -- the connection (nanostream.redis.client.Handler) -----------------------

    def prepare(self, protocol: Any) -> None:
        return None

    def up(self, protocol: Any) -> None:
        self._protocol = protocol
        _log.info("ledger connected to Redis at {redis}", redis=self._target.masked())

    def down(self, reason: str, delay: float) -> None:
        self._protocol = None
        _log.warn(
            "ledger lost Redis at {redis}: {reason}; handshakes are refused "
            "until it is back; reconnecting in {delay} s",
            redis=self._target.masked(),
            reason=reason,
            delay=round(delay, 2),
        )

    def retrying(self, reason: str, delay: float, attempts: int) -> None:
        _log.warn(
            "ledger cannot reach Redis at {redis}: {reason}; attempt "
            "{attempts} failed, next in {delay} s",
            redis=self._target.masked(),
            reason=reason,
            attempts=attempts,
            delay=round(delay, 2),
        )
