"""``Origin: null`` (a page opened from a file, a sandboxed frame) meets our policy.

Autobahn refuses that origin with a bare 400 before ``onConnect`` unless told
otherwise, which would bypass ``--origin`` and its log event.
"""

from __future__ import annotations

import support
import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth import reasons

SERVER = IPv4Address("TCP", "127.0.0.1", 8080)
PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class Client(WebSocketClientProtocol):
    log = txaio.make_logger(level="none")
    raw = b""
    opened = False

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        super().dataReceived(data)

    def onOpen(self) -> None:
        self.opened = True


class NullOriginTests(SynchronousTestCase):
    """The null origin is judged by --origin like any other."""

    def setUp(self) -> None:
        self.events = support.capture_logs(self)
        support.forbid_global_timers(self)

    def handshake(self, *patterns: str) -> Client:
        clock = Clock()
        factory = support.serve(clock, None, origins=patterns).factory
        client_factory = WebSocketClientFactory(
            "ws://127.0.0.1:8080/", origin="null", reactor=clock
        )
        client_factory.protocol = Client
        client_factory.setProtocolOptions(
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            serverConnectionDropTimeout=0,
            autoPingInterval=0,
        )
        server = factory.buildProtocol(PEER)
        client = client_factory.buildProtocol(SERVER)
        iosim.connect(
            server,
            iosim.FakeTransport(server, True, SERVER, PEER),
            client,
            iosim.FakeTransport(client, False, PEER, SERVER),
            clock=clock,
        ).flush()
        assert isinstance(client, Client)
        return client

    def test_any_origin_admits_null(self) -> None:
        """Without --origin, a client whose Origin is null opens."""
        self.assertTrue(self.handshake().opened)

    def test_allow_list_refuses_null_with_403(self) -> None:
        """With --origin set, a null Origin is refused 403 and logged as such."""
        client = self.handshake("https://*.example.com")
        self.assertFalse(client.opened)
        self.assertTrue(client.raw.startswith(b"HTTP/1.1 403 "), client.raw[:60])
        refusals = [e for e in self.events if e.get("reason") is not None]
        self.assertEqual([e["reason"] for e in refusals], [reasons.ORIGIN_NOT_ALLOWED])
        self.assertEqual(refusals[0]["origin"], "null")
