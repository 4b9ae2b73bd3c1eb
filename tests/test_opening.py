"""The lean opening handshake answers every request exactly as Autobahn does.

Each request goes to two server protocols on one factory: one as served,
one with the lean path switched off, so that Autobahn's own
``processHandshake`` decides.  The response bytes, the state, the request
``onConnect`` saw and whether the connection was closed must be the same.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import support
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase

from nanostream.websocket import NanostreamServerFactory, NanostreamServerProtocol

KEY = base64.b64encode(os.urandom(16)).decode()

#: What a browser sends, in the order it sends it.
BROWSER = [
    ("Host", "127.0.0.1:8080"),
    ("Connection", "Upgrade"),
    ("Pragma", "no-cache"),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0.0.0"),
    ("Upgrade", "websocket"),
    ("Origin", "http://127.0.0.1:8080"),
    ("Sec-WebSocket-Version", "13"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
]


def request(
    headers: list[tuple[str, str]] = BROWSER,
    uri: str = "/?t=x",
    line: str | None = None,
    rest: bytes = b"",
) -> bytes:
    start = f"GET {uri} HTTP/1.1" if line is None else line
    lines = [start, *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1") + rest


def replaced(name: str, value: str | None) -> list[tuple[str, str]]:
    """The browser's headers with ``name`` set to ``value`` (None: left out)."""
    kept = [(n, v) for n, v in BROWSER if n.lower() != name.lower()]
    return kept if value is None else [*kept, (name, value)]


#: What onConnect is told of a request.
REQUEST_FIELDS = (
    "peer", "headers", "host", "path", "params", "version", "origin", "protocols",
    "extensions",
)  # fmt: skip


class Transport(StringTransportWithDisconnection):
    """Autobahn lets go of a producer it may never have registered."""

    def unregisterProducer(self) -> None:
        self.producer = None


class Outcome:
    """What one protocol did with one request."""

    def __init__(
        self, factory: NanostreamServerFactory, clock: Clock, data: bytes, lean: bool
    ):
        address = IPv4Address("TCP", "127.0.0.1", 40001)
        self.protocol: NanostreamServerProtocol = factory.buildProtocol(address)
        self.seen: list[dict[str, Any]] = []
        self.lean_taken: list[bool] = []
        protocol = self.protocol
        decide = protocol.onConnect
        take = protocol._lean_handshake

        def on_connect(request: Any) -> Any:
            self.seen.append({name: getattr(request, name) for name in REQUEST_FIELDS})
            return decide(request)

        def lean_handshake(data: bytes, size: int) -> bool:
            taken = lean and take(data, size)
            self.lean_taken.append(taken)
            return taken

        protocol.onConnect = on_connect  # type: ignore[method-assign]
        protocol._lean_handshake = lean_handshake  # type: ignore[method-assign]
        self.transport = Transport(peerAddress=address)
        self.transport.protocol = protocol
        protocol.makeConnection(self.transport)
        protocol.dataReceived(data)
        # Handshakes are let in a few per reactor turn.
        clock.advance(0)

    def summary(self) -> tuple[Any, ...]:
        protocol = self.protocol
        return (
            self.transport.value(),
            protocol.state,
            self.transport.disconnecting,
            self.seen,
            protocol.__dict__.get("websocket_protocol_in_use"),
            protocol.data,
        )


class LeanOpeningTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(support.NOW)
        self.events = support.capture_logs(self)
        self.factory = support.serve(self.clock, None, max_buffer_bytes=1 << 20).factory

    def both(self, data: bytes) -> tuple[Outcome, Outcome]:
        lean = Outcome(self.factory, self.clock, data, lean=True)
        general = Outcome(self.factory, self.clock, data, lean=False)
        for outcome in (lean, general):
            if not outcome.transport.disconnecting:
                self.addCleanup(outcome.transport.loseConnection)
        return lean, general

    def assertSame(self, data: bytes, taken: bool | None = None) -> None:
        lean, general = self.both(data)
        self.assertEqual(lean.summary(), general.summary(), data)
        if taken is not None:
            self.assertEqual(lean.lean_taken, [taken], data)

    def test_a_browsers_request_takes_the_lean_path_and_opens(self) -> None:
        lean, general = self.both(request())
        self.assertEqual(lean.lean_taken, [True])
        self.assertEqual(general.lean_taken, [False])
        self.assertEqual(lean.summary(), general.summary())
        self.assertTrue(lean.transport.value().startswith(b"HTTP/1.1 101 "))

    def test_a_subprotocol_is_chosen_alike(self) -> None:
        headers = replaced("Sec-WebSocket-Protocol", "other, nanostream.v1")
        self.assertSame(request(headers, "/?t=x&since=12"), taken=True)
        lean, _ = self.both(request(headers))
        chosen = lean.protocol.__dict__["websocket_protocol_in_use"]
        self.assertEqual(chosen, "nanostream.v1")

    def test_bytes_after_the_request_are_read_as_frames(self) -> None:
        close = bytes([0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xE8 ^ 2])
        self.assertSame(request(rest=close), taken=True)

    def test_requests_the_lean_path_leaves_to_autobahn(self) -> None:
        for data in [
            request(line="POST /?t=x HTTP/1.1"),
            request(line="GET /?t=x HTTP/1.0"),
            request(uri="ws://127.0.0.1:8080/?t=x"),
            request(uri="//evil/?t=x"),
            request(uri="/p;q?t=x"),
            request(uri="/?t=x#frag"),
            request([*BROWSER, ("Host", "other")]),
            request([*BROWSER, ("X-Twice", "a"), ("x-twice", "b")]),
            request(replaced("Host", None)),
            request(replaced("Host", "h:port")),
            request(replaced("Host", "h:+80")),
            request(replaced("Upgrade", "h2c")),
            request(replaced("Connection", "keep-alive")),
            request(replaced("Sec-WebSocket-Version", "8")),
            request(replaced("Sec-WebSocket-Version", "x")),
            request(replaced("Sec-WebSocket-Key", "short==")),
            request(replaced("Sec-WebSocket-Key", KEY[:-2] + "AA")),
            request(replaced("Sec-WebSocket-Protocol", "a, a")),
            request(replaced("Origin", "")),
            request(replaced("Origin", "http://")),
            request(replaced("Origin", "http://[::1")),
            request(replaced("User-Agent", "caf\xe9")),
        ]:
            self.assertSame(data, taken=False)

    def test_requests_both_paths_take_alike(self) -> None:
        for data in [
            request(replaced("Origin", None)),
            request(replaced("Origin", "null")),
            request(replaced("Origin", "file://")),
            request(replaced("Host", "[::1]")),
            request(replaced("Host", "[::1]:8080")),
            request(replaced("Host", "")),
            request(replaced("Upgrade", "h2c, WebSocket")),
            request(replaced("Connection", "keep-alive, upgrade")),
            request(replaced("Sec-WebSocket-Extensions", None)),
            request(replaced("Sec-WebSocket-Extensions", "permessage-deflate; x=1")),
            request(uri="/feed?t=x&t=&since=&a+b=%41"),
            request(uri="/"),
        ]:
            self.assertSame(data, taken=True)

    def test_a_null_origin_is_left_to_autobahn_where_it_is_not_allowed(self) -> None:
        self.factory.setProtocolOptions(allowNullOrigin=False)
        for origin in ("null", "file:///page.html"):
            self.assertSame(request(replaced("Origin", origin)), taken=False)

    def test_a_narrower_origin_policy_is_left_to_autobahn(self) -> None:
        self.factory.setProtocolOptions(allowedOrigins=["http://127.0.0.1:*"])
        self.assertSame(request(), taken=False)
        self.assertSame(request(replaced("Origin", "http://evil.example")), taken=False)

    @settings(max_examples=300, deadline=None)
    @given(
        uri=st.sampled_from(["/", "/?t=x", "/a/b?t=1&x=", "/?a=%zz+", "/;p", "/x y"]),
        host=st.sampled_from(["127.0.0.1:8080", "h", "h:", "h:99x", "[::1]", " h "]),
        upgrade=st.sampled_from(["websocket", "WEBSOCKET", "ws", "", None]),
        connection=st.sampled_from(["Upgrade", "upgrade, close", "close", None]),
        version=st.sampled_from(["13", "013", "8", "", None]),
        key=st.sampled_from([KEY, KEY.lower(), KEY[:20] + "a===", "", None]),
        protocols=st.sampled_from([None, "nanostream.v1", "a,b", "a, a", ""]),
        origin=st.sampled_from([None, "https://x.example", "null", "ftp://x", "x"]),
        extensions=st.sampled_from([None, "permessage-deflate", 'x; y="1"', ""]),
        extra=st.sampled_from([[], [("X-Forwarded-For", "1.2.3.4")], [("A", "\t")]]),
    )
    def test_any_mix_of_headers_is_answered_alike(
        self,
        uri: str,
        host: str,
        upgrade: str | None,
        connection: str | None,
        version: str | None,
        key: str | None,
        protocols: str | None,
        origin: str | None,
        extensions: str | None,
        extra: list[tuple[str, str]],
    ) -> None:
        named = {
            "Host": host,
            "Upgrade": upgrade,
            "Connection": connection,
            "Sec-WebSocket-Version": version,
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Protocol": protocols,
            "Origin": origin,
            "Sec-WebSocket-Extensions": extensions,
        }
        headers = [(n, v) for n, v in named.items() if v is not None] + extra
        self.assertSame(request(headers, uri))
