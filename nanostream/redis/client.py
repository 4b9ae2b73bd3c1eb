"""One connection to Redis, kept up: connect, and after a loss, connect again.

txredisapi provides the protocols (RESP parsing, AUTH, SELECT, PUBLISH,
SUBSCRIBE).  Its own factories are not used: their reconnection runs on the
global reactor with a fixed timing and hides the moments a connection is
lost and made, while nanostream needs the backoff on the injected clock and
those moments to log a gap, update the source status and resubscribe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import txredisapi
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanostream.redis.backoff import Backoff
from nanostream.redis.url import RedisTarget

_log = Logger()

#: Seconds to connect, authenticate and get ready before giving up.
CONNECT_TIMEOUT = 5.0


class RedisUnavailable(Exception):
    """Redis could not be reached or did not answer in time."""


def describe(failure: Failure) -> str:
    """A short, password-free account of why a connection failed or ended."""
    error = failure.value
    if isinstance(error, ConnectionDone):
        return "Redis closed the connection"
    if isinstance(error, ConnectError):
        return str(error).rstrip(".")
    text = str(error) or type(error).__name__
    return text.removeprefix("Redis error: ")


class ReportsLoss:
    """Mixed into a txredisapi protocol: tell the factory why it was lost."""

    factory: RedisClientFactory

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)  # type: ignore[misc]
        self.factory.lost(self, why)


class ClientProtocol(ReportsLoss, txredisapi.RedisProtocol):
    """A plain command connection (ledger, publisher)."""


class RedisClientFactory(Factory):
    """Builds txredisapi protocols for one target, with the injected clock.

    txredisapi expects its own factory behind each protocol; this supplies
    the three things a protocol asks of it (``isLazy``, ``stopTrying`` and
    ``connectionError``), without a pool.
    """

    noisy = False
    isLazy = False

    def __init__(
        self,
        protocol_class: type[Any],
        target: RedisTarget,
        clock: IReactorTime,
        *,
        select_db: bool = True,
        charset: str | None = None,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        """
        :param endpoint: where to connect; by default the target's own
            (tests hand in one that needs no network).
        """
        self.protocol_class = protocol_class
        self.endpoint = endpoint
        self.target = target
        self.clock = clock
        self.select_db = select_db
        self.charset = charset
        self.error: str | None = None
        self.on_lost: Callable[[Any, Failure], None] | None = None

    def buildProtocol(self, addr: object) -> Any:
        target = self.target
        protocol = self.protocol_class(
            self.charset,
            password=target.password,
            username=target.username if target.password is not None else None,
            dbid=target.db if self.select_db and target.db else None,
            convertNumbers=False,
        )
        protocol.factory = self
        # Continuations of txredisapi's own parser run on our clock too.
        protocol.callLater = self.clock.callLater
        return protocol

    def stopTrying(self) -> None:
        """Asked by a protocol whose AUTH or SELECT failed: we retry anyway."""

    def connectionError(self, why: str) -> None:
        self.error = why

    def lost(self, protocol: Any, why: Failure) -> None:
        if self.on_lost is not None:
            self.on_lost(protocol, why)


def connect(
    factory: RedisClientFactory, reactor: Any, timeout: float = CONNECT_TIMEOUT
) -> Deferred[Any]:
    """Connect, authenticate and select; fire with the ready protocol.

    Fails with :class:`RedisUnavailable` (naming the cause) when any step
    fails or all of them take longer than ``timeout``.
    """
    factory.error = None
    state: dict[str, Any] = {}

    def abandon(why: str) -> None:
        attempt.cancel()
        protocol = state.get("protocol")
        if protocol is not None and protocol.connected:
            protocol.transport.abortConnection()

    result: Deferred[Any] = Deferred(lambda _: abandon("cancelled"))

    def fail(why: str) -> None:
        if not result.called:
            result.errback(RedisUnavailable(why))

    def connected(protocol: Any) -> None:
        state["protocol"] = protocol
        no_delay = getattr(protocol.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            # Pipelined commands and replies must not wait for Nagle.
            no_delay(True)
        protocol.whenConnected().addCallback(
            lambda p: None if result.called else result.callback(p)
        )
        protocol.whenDisconnected().addCallback(
            lambda _: fail(factory.error or "Redis closed the connection")
        )

    def refused(failure: Failure) -> None:
        fail(describe(failure))

    endpoint = factory.endpoint or factory.target.endpoint(reactor, timeout)
    attempt = endpoint.connect(factory)
    attempt.addCallbacks(connected, refused)

    def expire() -> None:
        if not result.called:
            fail(f"no answer within {timeout:g} s")
            abandon("timeout")

    timer = factory.clock.callLater(timeout, expire)

    def done(value: Any) -> Any:
        if timer.active():
            timer.cancel()
        return value

    return result.addBoth(done)


class Handler(Protocol):
    """What a :class:`RedisConnection` tells its owner."""

    def prepare(self, protocol: Any) -> Deferred[Any] | None:
        """A fresh connection is authenticated: make it ready (subscribe)."""

    def up(self, protocol: Any) -> None:
        """The connection is ready for use."""

    def down(self, reason: str, delay: float) -> None:
        """The ready connection was lost; reconnecting in ``delay`` seconds."""

    def retrying(self, reason: str, delay: float, attempts: int) -> None:
        """``attempts`` attempts in a row failed; the next starts in ``delay`` s.

        The count starts again after each ready connection, so after a loss
        the first failed reconnection is attempt 1.
        """


class RedisConnection(Service):
    """Keeps one ready connection to Redis while running, reconnecting with backoff."""

    def __init__(
        self,
        factory: RedisClientFactory,
        reactor: Any,
        handler: Handler,
        *,
        backoff: Backoff | None = None,
        timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.factory = factory
        self.protocol: Any = None
        self._reactor = reactor
        self._handler = handler
        self._backoff = Backoff() if backoff is None else backoff
        self._timeout = timeout
        self._failures = 0
        self._attempt: Deferred[Any] | None = None
        self._retry: Any = None
        self._closed: Deferred[None] | None = None
        factory.on_lost = self._lost

    def startService(self) -> None:
        super().startService()
        self._connect()

    def _connect(self) -> None:
        self._retry = None
        attempt = connect(self.factory, self._reactor, self._timeout)
        self._attempt = attempt
        attempt.addCallback(self._prepare)
        attempt.addCallbacks(self._ready, self._failed)

    def _prepare(self, protocol: Any) -> Deferred[Any]:
        self.protocol = protocol
        d = maybeDeferred(self._handler.prepare, protocol)
        d.addTimeout(self._timeout, self.factory.clock)

        def unprepared(failure: Failure) -> Failure:
            self.protocol = None
            if protocol.connected:
                protocol.transport.abortConnection()
            return failure

        d.addCallbacks(lambda _: protocol, unprepared)
        return d

    def _ready(self, protocol: Any) -> None:
        self._attempt = None
        if not self.running or protocol.transport is None or not protocol.connected:
            return
        self._backoff.reset()
        self._failures = 0
        self._handler.up(protocol)

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        if not self.running:
            return
        self._failures += 1
        delay = self._schedule()
        self._handler.retrying(describe(failure), delay, self._failures)

    def _lost(self, protocol: Any, why: Failure) -> None:
        if protocol is not self.protocol:
            return
        self.protocol = None
        if self._closed is not None:
            closed, self._closed = self._closed, None
            closed.callback(None)
        if not self.running or self._attempt is not None:
            # Lost while still getting ready: the attempt reports it.
            return
        delay = self._schedule()
        self._handler.down(describe(why), delay)

    def _schedule(self) -> float:
        delay = self._backoff.next_delay()
        self._retry = self.factory.clock.callLater(delay, self._connect)
        return delay

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        protocol = self.protocol
        if protocol is None or protocol.transport is None:
            return succeed(None)
        self._closed = Deferred()
        protocol.transport.loseConnection()
        return self._closed
