"""Listening services that say where they listen once they do.

``strports.service`` gives the right start-up semantics (a failed bind fails
start-up); wrapping its endpoint adds the one log line per listening address
that operators and tests wait for, with the real port when ``0`` was asked.
"""

from __future__ import annotations

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
