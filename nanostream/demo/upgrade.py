"""Hands a twisted.web connection over to the WebSocket protocol.

With ``--demo`` one port serves both the page (twisted.web) and the feed, so
a WebSocket handshake first arrives at a ``Site`` and has to leave it.
Autobahn's ``WebSocketResource`` does that, but leaves ``HTTPChannel``
registered as the connection's producer; our protocol registers its own
producer in ``onOpen`` (that is how slow consumers are found), which would
then fail.  This resource does the same takeover and unregisters the
channel first, so after the handshake the protocol owns the raw connection
exactly as it does without ``--demo``.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.http import SERVICE_UNAVAILABLE
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

UPGRADE_REQUIRED = 426


def wants_websocket(request: IRequest) -> bool:
    """Whether the request asks to become a WebSocket (``Upgrade: websocket``)."""
    upgrade = request.getHeader(b"upgrade")
    if upgrade is None:
        return False
    return any(p.strip().lower() == b"websocket" for p in upgrade.split(b","))


def _raw_request(request: IRequest) -> bytes:
    """The handshake as it came in, for Autobahn to parse itself."""
    lines = [request.method + b" " + request.uri + b" HTTP/1.1"]
    for name, values in request.requestHeaders.getAllRawHeaders():
        lines.extend(name + b": " + value for value in values)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    return head + request.content.read()


@implementer(IResource)
class WebSocketUpgrade:
    """A leaf resource that turns its request's connection into a client."""

    isLeaf = True

    def __init__(self, factory: WebSocketServerFactory) -> None:
        self._factory = factory

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        return self  # never called: this is a leaf

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError("a WebSocket endpoint has no children")

    def render(self, request: IRequest) -> bytes | int:
        # ``IRequest`` promises no channel; twisted.web's requests have one.
        channel: Any = getattr(request, "channel", None)
        transport = getattr(channel, "transport", None)
        if transport is None:  # HTTP/2 has no connection to give away
            request.setResponseCode(UPGRADE_REQUIRED)
            request.setHeader(b"upgrade", b"websocket")
            return b""
        protocol = self._factory.buildProtocol(transport.getPeer())
        if protocol is None:  # the factory turned the connection away
            request.setResponseCode(SERVICE_UNAVAILABLE)
            return b""

        # The channel registered itself as the connection's producer when it
        # was made (see HTTPChannel.connectionMade); it will never read again.
        channel.transport = None
        if IConsumer.providedBy(transport):
            transport.unregisterProducer()
        wrapper = getattr(transport, "protocol", None)
        if isinstance(transport, ProtocolWrapper):  # TLS over a wrapping factory
            transport.wrappedProtocol = protocol
        elif isinstance(wrapper, ProtocolWrapper):  # TLS started on the socket
            wrapper.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        protocol.makeConnection(transport)
        if IPushProducer.providedBy(transport):
            # Undo any pause the channel applied while the request was handled.
            transport.resumeProducing()
        protocol.dataReceived(_raw_request(request))
        return NOT_DONE_YET
