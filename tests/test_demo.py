"""``--demo``: options, the page and its tokens, and the feed through twisted.web.

The site is driven over in-memory connections: plain HTTP requests as bytes
on a ``StringTransport``, and WebSocket handshakes from Autobahn's own client
joined by ``twisted.test.iosim``.  The server side of those joins refuses a
second producer the way a real TCP transport does, which is what the
hand-over from twisted.web to the WebSocket protocol must get right.
"""

from __future__ import annotations

import json
import re
from typing import Any

import support
import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from zope.interface import implementer

from nanostream.auth import reasons
from nanostream.auth.tokens import TokenRejected, TokenVerifier
from nanostream.demo.loopback import is_loopback_endpoint, parse_description
from nanostream.demo.page import LINES_KEPT, PageTokens, demo_site, script_json
from nanostream.resume.history import History
from nanostream.resume.ids import key
from nanostream.sinks import ClientSink
from nanostream.sources.stream import LineSourceFactory
from nanostream.tap import ServiceOptions, makeService
from nanostream.websocket import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    NanostreamServerFactory,
    NanostreamServerProtocol,
)

SECRET = b"demo-unit-test-secret-that-is-long-enough-0123456789"
NOW = 1_700_000_000.0
SERVER = IPv4Address("TCP", "127.0.0.1", 8080)
LOOPBACK_LISTEN = "tcp:0:interface=127.0.0.1"

_CONFIG = re.compile(
    rb'<script id="nanostream-config" type="application/json">(.*?)</script>', re.S
)


class LoopbackTests(SynchronousTestCase):
    """Which endpoint strings count as reachable from this host only."""

    def test_loopback_listeners(self) -> None:
        """Loopback interfaces, localhost and unix sockets are local."""
        for description in [
            "tcp:8080:interface=127.0.0.1",
            "tcp:port=0:interface=127.0.0.2",
            "tcp:8080:127.0.0.1",
            "tcp:8080:interface=localhost",
            r"tcp6:8080:interface=\:\:1",
            r"tcp:8080:interface=\:\:ffff\:127.0.0.1",
            "ssl:8443:privateKey=k.pem:certKey=c.pem:interface=127.0.0.1",
            "unix:/run/nanostream.sock",
            "unix:address=demo.sock:mode=600",
        ]:
            self.assertTrue(is_loopback_endpoint(description), description)

    def test_reachable_listeners(self) -> None:
        """No interface, a public one, systemd sockets and plugins are not local."""
        for description in [
            "tcp:8080",
            "tcp:8080:interface=0.0.0.0",
            "tcp:8080:interface=192.0.2.7",
            r"tcp6:8080:interface=\:\:",
            "tcp6:8080",
            "ssl:8443:privateKey=k.pem:certKey=c.pem",
            "systemd:domain=INET:index=0",
            "tor:80",
            "tcp:8080:interface=localhost.example.com",
        ]:
            self.assertFalse(is_loopback_endpoint(description), description)

    def test_parse_like_twisted(self) -> None:
        """Colons split, the first = makes a keyword, a backslash escapes."""
        self.assertEqual(
            parse_description(r"SSL:8443:privateKey=a\:b=c.pem:x"),
            ("ssl", ["8443", "x"], {"privateKey": "a:b=c.pem"}),
        )


class DemoOptionTests(SynchronousTestCase):
    """--demo and --demo-anywhere on the command line."""

    def parse(self, *argv: str) -> ServiceOptions:
        options = ServiceOptions(environ={"NANOSTREAM_SECRET": SECRET.decode()})
        options.parseOptions(list(argv))
        return options

    def refused(self, *argv: str) -> str:
        options = ServiceOptions(environ={"NANOSTREAM_SECRET": SECRET.decode()})
        return str(self.assertRaises(usage.UsageError, options.parseOptions, argv))

    def test_off_by_default(self) -> None:
        """Without --demo there is no page."""
        self.assertFalse(self.parse("--listen", LOOPBACK_LISTEN)["demo"])

    def test_loopback_accepted(self) -> None:
        """--demo on loopback listeners only is accepted."""
        options = self.parse(
            "--demo", "--listen", LOOPBACK_LISTEN, "--listen", "unix:demo.sock"
        )
        self.assertTrue(options["demo"])

    def test_default_listen_refused(self) -> None:
        """The default listener (every interface) makes --demo a usage error."""
        message = self.refused("--demo")
        self.assertIn("--listen 'tcp:8080' is not on a loopback interface", message)
        self.assertIn("--demo-anywhere", message)

    def test_one_public_listener_refused(self) -> None:
        """A single reachable listener among loopback ones is enough to refuse."""
        message = self.refused(
            "--demo", "--listen", LOOPBACK_LISTEN, "--listen", "tcp:0"
        )
        self.assertIn("'tcp:0'", message)

    def test_anywhere_allows_public(self) -> None:
        """--demo-anywhere lifts the loopback rule."""
        self.assertTrue(self.parse("--demo", "--demo-anywhere", "--listen", "tcp:0"))

    def test_anywhere_alone_refused(self) -> None:
        """--demo-anywhere without --demo is a mistake worth saying."""
        self.assertIn("only makes sense with --demo", self.refused("--demo-anywhere"))


class DemoServiceTests(SynchronousTestCase):
    """What makeService builds with and without --demo, on a MemoryReactor."""

    def start(self, *argv: str) -> tuple[list[Any], list[str]]:
        """The listening factories (the source's left out) and the warnings."""
        events = support.capture_logs(self)
        options = ServiceOptions(environ={"NANOSTREAM_SECRET": SECRET.decode()})
        options.parseOptions(
            [*argv, "--listen", LOOPBACK_LISTEN, "--source", LOOPBACK_LISTEN]
        )
        reactor = MemoryReactorClock()
        top = makeService(options, reactor)
        top.startService()
        self.addCleanup(top.stopService)
        factories = [
            factory
            for _, factory, _, _ in reactor.tcpServers
            if not isinstance(factory, LineSourceFactory)
        ]
        return factories, [e["warning"] for e in events if "warning" in e]

    def test_plain_listener_without_demo(self) -> None:
        """Without --demo the port speaks WebSocket only: no twisted.web in the way."""
        [factory], _ = self.start()
        self.assertIsInstance(factory, NanostreamServerFactory)

    def test_site_with_demo(self) -> None:
        """With --demo the port is a Site that still hands upgrades to the feed."""
        [factory], _ = self.start("--demo")
        self.assertIsInstance(factory, Site)

    def test_site_times_out_like_a_handshake(self) -> None:
        """The demo Site drops an unfinished request at --handshake-timeout."""
        [factory], _ = self.start("--demo")
        self.assertEqual(factory.timeOut, DEFAULT_HANDSHAKE_TIMEOUT)
        [factory], _ = self.start("--demo", "--handshake-timeout", "2.5")
        self.assertEqual(factory.timeOut, 2.5)

    def test_demo_warns(self) -> None:
        """Starting with --demo logs a warning that the page gives out tokens."""
        _, [warning] = self.start("--demo")
        self.assertIn("gives a working token to anyone", warning)

    def test_no_warning_without_demo(self) -> None:
        """Without --demo nothing is said about a page."""
        self.assertEqual(self.start()[1], [])


class RecordingClient(WebSocketClientProtocol):
    """Autobahn's client, keeping what it receives."""

    log = txaio.make_logger(level="none")

    def __init__(self) -> None:
        super().__init__()
        self.raw = b""
        self.opened = False
        self.messages: list[bytes] = []
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        super().dataReceived(data)

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = True


@implementer(IPushProducer)
class StrictTransport(iosim.FakeTransport):
    """An in-memory transport that, like TCP, is a push producer itself (so
    twisted.web registers its channel on it) and refuses a second producer."""

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(f"{self.producer!r} is still registered")
        super().registerProducer(producer, streaming)


class DemoSiteTestCase(SynchronousTestCase):
    """A demo site on a Clock, over a real gate and broadcaster."""

    auth = True

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.events = support.capture_logs(self)
        support.forbid_global_timers(self)
        self.verifier = TokenVerifier(SECRET, max_ttl=60) if self.auth else None
        server = support.serve(
            self.clock, None, verifier=self.verifier, max_buffer_bytes=64 * 1024
        )
        self.broadcaster = server.broadcaster
        self.factory = server.factory
        self.tokens = PageTokens(SECRET if self.auth else None, self.clock, 30)
        self.site = demo_site(self.factory, self.tokens, self.clock)
        self.ports = iter(range(50001, 51000))
        self.pumps: list[iosim.IOPump] = []

    def get(self, path: bytes, host: bytes | None = b"127.0.0.1:8080") -> bytes:
        """The raw HTTP response to ``GET path``."""
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport(hostAddress=SERVER)
        channel.makeConnection(transport)
        head = b"GET " + path + b" HTTP/1.1\r\n"
        if host is not None:
            head += b"Host: " + host + b"\r\n"
        channel.dataReceived(head + b"Connection: close\r\n\r\n")
        return transport.value()

    def page_config(self, response: bytes) -> dict[str, Any]:
        match = _CONFIG.search(response)
        assert match is not None, response
        config: dict[str, Any] = json.loads(match.group(1))
        return config

    def connect(
        self, query: str = "", protocols: list[str] | None = None
    ) -> tuple[RecordingClient, StrictTransport]:
        """A WebSocket client through the site, the handshake run to its end."""
        url = "ws://127.0.0.1:8080/" + (f"?{query}" if query else "")
        client_factory = WebSocketClientFactory(
            url, reactor=self.clock, protocols=protocols
        )
        client_factory.protocol = RecordingClient
        client_factory.setProtocolOptions(
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            serverConnectionDropTimeout=0,
            autoPingInterval=0,
        )
        peer = IPv4Address("TCP", "127.0.0.1", next(self.ports))
        server = self.site.buildProtocol(peer)
        client = client_factory.buildProtocol(SERVER)
        server_transport = StrictTransport(server, True, SERVER, peer)
        client_transport = iosim.FakeTransport(client, False, peer, SERVER)
        pump = iosim.connect(
            server, server_transport, client, client_transport, clock=self.clock
        )
        self.pumps.append(pump)
        return client, server_transport

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()


class PageTests(DemoSiteTestCase):
    """GET / and GET /token."""

    def test_page_carries_a_token_the_gate_accepts(self) -> None:
        """The page embeds a token signed with the service's key, valid 30 s."""
        response = self.get(b"/")
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response[:80])
        config = self.page_config(response)
        self.assertTrue(config["auth"])
        assert self.verifier is not None
        accepted = self.verifier.verify(config["token"], NOW)
        self.assertEqual(accepted.expires_at, NOW + 30)
        self.assertEqual(config["url"], "ws://127.0.0.1:8080/")
        self.assertEqual(config["tokenUrl"], "http://127.0.0.1:8080/token")
        self.assertEqual(config["keep"], LINES_KEPT)

    def test_each_load_gets_its_own_token(self) -> None:
        """Two loads in the same instant carry different tokens."""
        first = self.page_config(self.get(b"/"))["token"]
        second = self.page_config(self.get(b"/"))["token"]
        self.assertNotEqual(first, second)

    def test_page_is_never_cached_and_locked_down(self) -> None:
        """The page forbids caching and anything but its own inline code."""
        head = self.get(b"/").split(b"\r\n\r\n", 1)[0].lower()
        self.assertIn(b"cache-control: no-store", head)
        policy = re.search(rb"content-security-policy: ([^\r]*)", head)
        assert policy is not None
        self.assertIn(b"default-src 'none'", policy.group(1))
        self.assertIn(b"connect-src 'self'", policy.group(1))
        self.assertIn(b"x-frame-options: deny", head)

    def test_page_needs_nothing_from_elsewhere(self) -> None:
        """No URL in the page points anywhere: it works offline."""
        body = self.get(b"/").split(b"\r\n\r\n", 1)[1]
        body = _CONFIG.sub(b"", body)
        self.assertNotIn(b"http:", body)
        self.assertNotIn(b"https:", body)
        self.assertNotIn(b"//", re.sub(rb"\s//[^\n]*", b"", body))
        self.assertNotIn(b"@import", body)

    def test_nonce_matches_policy(self) -> None:
        """The inline script and style carry the nonce the policy names."""
        response = self.get(b"/")
        [nonce] = set(re.findall(rb"'nonce-([A-Za-z0-9_-]+)'", response))
        self.assertEqual(response.count(b'nonce="' + nonce + b'"'), 2)

    def test_token_endpoint(self) -> None:
        """GET /token answers a fresh, uncacheable token as JSON."""
        head, body = self.get(b"/token").split(b"\r\n\r\n", 1)
        self.assertIn(b"content-type: application/json", head.lower())
        self.assertIn(b"cache-control: no-store", head.lower())
        token = json.loads(body)["token"]
        assert self.verifier is not None
        self.verifier.verify(token, NOW + 29)

    def test_incomplete_request_times_out(self) -> None:
        """A connection that never finishes its request is dropped at the timeout."""
        site = demo_site(self.factory, self.tokens, self.clock, timeout=5)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 3))
        transport = StringTransport(hostAddress=SERVER)
        channel.makeConnection(transport)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: 127.0.0.1")
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_other_paths_not_found(self) -> None:
        """Nothing else is served."""
        self.assertTrue(self.get(b"/secret").startswith(b"HTTP/1.1 404 "))

    def test_hostile_host_header_refused(self) -> None:
        """A Host header that could break out of the page is a 400."""
        response = self.get(b"/", host=b'x"></script><script>alert(1)')
        self.assertTrue(response.startswith(b"HTTP/1.1 400 "), response[:80])
        self.assertNotIn(b"<script>alert", response)

    def test_ipv6_host(self) -> None:
        """A bracketed IPv6 Host makes a usable WebSocket URL."""
        config = self.page_config(self.get(b"/", host=b"[::1]:8080"))
        self.assertEqual(config["url"], "ws://[::1]:8080/")

    def test_page_token_not_logged(self) -> None:
        """Serving pages and tokens logs neither token."""
        tokens = [
            self.page_config(self.get(b"/"))["token"],
            json.loads(self.get(b"/token").split(b"\r\n\r\n", 1)[1])["token"],
        ]
        logged = repr(self.events)
        for token in tokens:
            for part in token.split("."):
                self.assertNotIn(part, logged)

    def test_script_json_cannot_close_the_element(self) -> None:
        """Embedded JSON never contains a closing tag or raw line separators."""
        text = script_json({"x": "</script><!--\u2028&"})
        self.assertNotIn("<", text)
        self.assertNotIn("\u2028", text)
        self.assertEqual(json.loads(text), {"x": "</script><!--\u2028&"})

    def test_tokens_expire_with_the_clock(self) -> None:
        """A page token is accepted until its 30 s have passed, then refused."""
        token = self.tokens.mint()
        assert token is not None and self.verifier is not None
        self.verifier.verify(token, NOW + 29.9)
        e = self.assertRaises(TokenRejected, self.verifier.verify, token, NOW + 30)
        self.assertEqual(e.reason, reasons.EXPIRED)


class ResumePositionTests(DemoSiteTestCase):
    """The page starts after the newest line held, so it misses none after loading."""

    ms = int(NOW * 1000)

    def test_no_position_before_the_first_line(self) -> None:
        """A node that has read nothing gives the page no position."""
        self.assertIsNone(self.page_config(self.get(b"/"))["since"])

    def test_position_is_the_newest_line(self) -> None:
        """After lines were read the page carries the id of the newest."""
        self.broadcaster.broadcast([b"one", b"two"])
        self.assertEqual(self.page_config(self.get(b"/"))["since"], f"{self.ms}-2")

    def test_first_connection_gets_what_came_after_the_page(self) -> None:
        """Connecting with the page's position replays the lines read since
        the page was rendered, then ``!live``, then live lines."""
        self.broadcaster.broadcast([b"before the page"])
        since = self.page_config(self.get(b"/"))["since"]
        self.broadcaster.broadcast([b"between page and connection"])
        query = f"t={self.tokens.mint()}&since={since}"
        client, _ = self.connect(query, protocols=["nanostream.v1"])
        self.clock.advance(0)
        self.flush()
        self.broadcaster.broadcast([b"live"])
        self.flush()
        self.assertEqual(
            client.messages,
            [f"{self.ms}-2 between page and connection".encode(), b"!live"]
            + [f"{self.ms}-3 live".encode()],
        )

    def test_no_position_without_history(self) -> None:
        """With --history-lines 0 a resume could only report a gap: no position."""
        server = support.serve(self.clock, None, history=History(0))
        site = demo_site(server.factory, self.tokens, self.clock)
        server.broadcaster.broadcast([b"one"])
        self.site = site
        self.assertIsNone(self.page_config(self.get(b"/"))["since"])

    def test_position_from_the_archive(self) -> None:
        """With a stream source the last id read counts, though no history holds it."""
        self.broadcaster.archive = object()  # type: ignore[assignment]
        self.broadcaster.last_key = key(1_700_000_000_123, 7)
        self.assertEqual(self.page_config(self.get(b"/"))["since"], "1700000000123-7")


class NoAuthPageTests(DemoSiteTestCase):
    """With --no-auth the page connects bare."""

    auth = False

    def test_page_without_token(self) -> None:
        """The page says there is no auth and carries no token."""
        config = self.page_config(self.get(b"/"))
        self.assertEqual((config["auth"], config["token"]), (False, None))

    def test_client_without_token_opens(self) -> None:
        """A bare WebSocket handshake through the site opens."""
        client, _ = self.connect()
        self.assertTrue(client.opened)


class UpgradeTests(DemoSiteTestCase):
    """WebSocket handshakes leave twisted.web and behave as on a plain port."""

    def test_handshake_through_the_site(self) -> None:
        """A page token opens a client with 101 through the site."""
        client, _ = self.connect("t=" + str(self.tokens.mint()))
        self.assertTrue(client.opened)
        self.assertTrue(client.raw.startswith(b"HTTP/1.1 101 "))

    def test_connection_belongs_to_the_protocol(self) -> None:
        """After the upgrade the raw connection feeds the WebSocket protocol,
        and its only producer is the client's sink, not the HTTP channel."""
        client, transport = self.connect("t=" + str(self.tokens.mint()))
        self.assertIsInstance(transport.protocol, NanostreamServerProtocol)
        self.assertIsInstance(transport.producer, ClientSink)
        self.assertTrue(transport.streamingProducer)

    def test_lines_arrive(self) -> None:
        """Broadcast lines reach a client that came in through the site, in order."""
        client, _ = self.connect("t=" + str(self.tokens.mint()))
        self.broadcaster.broadcast([b"one", b"two"])
        self.broadcaster.broadcast([b"three"])
        self.flush()
        self.assertEqual(client.messages, [b"one", b"two", b"three"])

    def test_slow_consumer_dropped(self) -> None:
        """A client whose connection takes no more bytes is dropped, the rest served."""
        slow, slow_transport = self.connect("t=" + str(self.tokens.mint()))
        quick, _ = self.connect("t=" + str(self.tokens.mint()))
        slow_transport.producer.pauseProducing()
        self.broadcaster.broadcast([b"x" * (40 * 1024)])
        self.assertEqual(len(self.broadcaster), 2)
        self.broadcaster.broadcast([b"y" * (40 * 1024)])
        self.assertEqual(len(self.broadcaster), 1)
        self.assertTrue(slow_transport.disconnecting)
        self.broadcaster.broadcast([b"after"])
        self.flush()
        self.assertEqual(quick.messages[-1], b"after")
        self.assertTrue(slow.closed)

    def test_used_token_refused(self) -> None:
        """A page token works once; its second use is refused with 401."""
        token = str(self.tokens.mint())
        first, _ = self.connect("t=" + token)
        second, _ = self.connect("t=" + token)
        self.assertTrue(first.opened)
        self.assertFalse(second.opened)
        self.assertTrue(second.raw.startswith(b"HTTP/1.1 401 "), second.raw[:80])
        refusals = [e for e in self.events if e.get("reason") == reasons.ALREADY_USED]
        self.assertEqual(len(refusals), 1)
        self.assertNotIn(token.split(".")[2], repr(self.events))

    def test_no_token_refused(self) -> None:
        """Upgrading without a token is refused by the same gate."""
        client, _ = self.connect()
        self.assertFalse(client.opened)
        self.assertTrue(client.raw.startswith(b"HTTP/1.1 401 "))

    def test_upgrade_on_any_path(self) -> None:
        """As on the plain port, the path of the handshake does not matter."""
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2))
        transport = StringTransport(hostAddress=SERVER)
        channel.makeConnection(transport)
        channel.dataReceived(
            b"GET /token?t=" + str(self.tokens.mint()).encode() + b" HTTP/1.1\r\n"
            b"Host: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))
        self.assertIsInstance(transport.producer, ClientSink)
        self.assertEqual(len(self.broadcaster), 1)
