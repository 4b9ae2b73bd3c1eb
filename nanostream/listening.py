"""Listening services that say where they listen once they do.

``strports.service`` gives the right start-up semantics (a failed bind fails
start-up); wrapping its endpoint adds the one log line per listening address
that operators and tests wait for, with the real port when ``0`` was asked.
Once bound, a port accepts a bounded number of connections per reactor turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

_log = Logger()

#: Connections accepted each time a listening port is read.  Twisted's ports
#: accept up to 100 at once, and 20 more after each read that took all it
#: could: in a reconnect storm one read built and started a hundred and more
#: connections, some 5-12 ms during which no live line went out.  Sixteen
#: take well under a millisecond, and the next turn comes at once while more
#: wait; the kernel's backlog holds them meanwhile.
ACCEPTS_PER_TURN = 16

#: Time one read's accepts may take.  A read that took longer halves the
#: next read's share, down to one; one that took under half of it doubles
#: the share again, up to :data:`ACCEPTS_PER_TURN`: on a slower core the
#: sixteen took some 3 ms.
ACCEPT_SECONDS = 0.001


def bound_accepts(
    port: Any,
    per_turn: int = ACCEPTS_PER_TURN,
    seconds: float = ACCEPT_SECONDS,
    timer: Callable[[], float] = time.perf_counter,
) -> None:
    """Make ``port`` accept at most ``per_turn`` connections per read, fewer
    while its reads take longer than ``seconds``.

    Ports that do not accept in batches (anything without Twisted's
    ``numberAccepts``) are left as they are.
    """
    if not hasattr(port, "numberAccepts"):
        return
    read = port.doRead
    share = per_turn

    def doRead() -> object:
        nonlocal share
        # Twisted raises its own figure after a full read: cap it each time.
        asked = port.numberAccepts = min(port.numberAccepts, share)
        started = timer()
        try:
            return read()
        finally:
            took = timer() - started
            # Twisted adds 20 after a full read, else keeps what it took.
            done = port.numberAccepts
            accepted = asked if done == asked + 20 else done
            if took > seconds:
                share = max(1, accepted // 2)
            elif took < seconds / 2:
                share = min(per_turn, share * 2)

    port.doRead = doRead


def describe_address(kind: str, port: IListeningPort) -> str:
    """``tcp:127.0.0.1:8080``, ``ssl:[::1]:8443``, ``unix:/run/x.sock``."""
    address = port.getHost()
    if isinstance(address, (IPv4Address, IPv6Address)):
        host = f"[{address.host}]" if ":" in address.host else address.host
        return f"{kind}:{host}:{address.port}"
    name = getattr(address, "name", "")
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return f"{kind}:{name}"


@implementer(IStreamServerEndpoint)
class AnnouncedEndpoint:
    """An endpoint that logs ``{what} listening on {address}`` once bound."""

    def __init__(self, endpoint: IStreamServerEndpoint, kind: str, what: str) -> None:
        self._endpoint = endpoint
        self._kind = kind
        self._what = what
        #: Where it listens once bound (``tcp:127.0.0.1:8080``); None before.
        self.address: str | None = None

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        d = self._endpoint.listen(factory)
        d.addCallback(self._announce)
        return d

    def _announce(self, port: IListeningPort) -> IListeningPort:
        bound_accepts(port)
        self.address = describe_address(self._kind, port)
        _log.info(
            "{what} listening on {address}",
            what=self._what,
            address=self.address,
        )
        return port


def announced_service(
    description: str,
    factory: IProtocolFactory,
    what: str,
    reactor: IReactorCore | None = None,
) -> StreamServerEndpointService:
    """``strports.service`` whose listening address is logged when bound."""
    service = strports.service(description, factory, reactor=reactor)
    kind = description.split(":", 1)[0].lower()
    service.endpoint = AnnouncedEndpoint(service.endpoint, kind, what)
    return service
