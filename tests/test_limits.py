"""What a connection may cost before it is a client: time, bytes and room.

A handshake must finish within ``--handshake-timeout`` (a slowloris client
is dropped), stay within ``--max-handshake-bytes`` (Autobahn alone would
buffer until a blank line, however long that takes) and find room under
``--max-clients``.  Byte-level cases feed a server protocol on a
``StringTransport``; whole handshakes run over ``iosim`` as in
``test_websocket``.  Every timer runs on the test's Clock: the base class
fails a test that leaves one on the global reactor.
"""

from __future__ import annotations

from typing import Any

import support
from support import NOW, SECRET, mint
from test_websocket import SERVER_ADDRESS, WebSocketTestCase
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransportWithDisconnection,
)
from twisted.logger import LogLevel

from nanostream.auth import reasons
from nanostream.auth.admission import Refused
from nanostream.tap import ServiceOptions, makeService
from nanostream.websocket import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_HANDSHAKE_BYTES,
    NanostreamServerFactory,
    NanostreamServerProtocol,
)

REQUEST_HEADERS = (
    b"Host: 127.0.0.1:8080\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
)


def request(target: str = "/", extra_headers: bytes = b"") -> bytes:
    """A complete WebSocket opening request for ``target``."""
    return (
        b"GET "
        + target.encode("ascii")
        + b" HTTP/1.1\r\n"
        + REQUEST_HEADERS
        + extra_headers
        + b"\r\n"
    )


def request_of_size(size: int, target: str) -> bytes:
    """A complete request of exactly ``size`` bytes, padded by one header."""
    bare = len(request(target, b"X-Pad: \r\n"))
    assert size >= bare
    return request(target, b"X-Pad: " + b"p" * (size - bare) + b"\r\n")


class RawTransport(StringTransportWithDisconnection):
    """A StringTransport as lenient as TCP about a producer never registered."""

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


class PendingLedger:
    """A ledger that answers only when the test says, as Redis would later."""

    size = 0

    def __init__(self) -> None:
        self.answers: list[Deferred[bool]] = []

    def consume(self, token_id: bytes, expires_at: float) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.answers.append(d)
        return d


class LimitsTestCase(WebSocketTestCase):
    """Serves with the limits under test and opens raw connections."""

    def limited(
        self,
        *,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_handshake_bytes: int = DEFAULT_MAX_HANDSHAKE_BYTES,
        max_clients: int = 0,
        origins: tuple[str, ...] = (),
        ledger: Any = None,
    ) -> NanostreamServerFactory:
        """A factory assembled as makeService does, on the test's Clock.

        Autobahn's closing handshake timeout stays on, as in production.
        """
        self.factory = support.serve(
            self.clock,
            origins=origins,
            ledger=ledger,
            max_clients=max_clients,
            max_buffer_bytes=1024 * 1024,
            handshake_timeout=handshake_timeout,
            max_handshake_bytes=max_handshake_bytes,
            close_handshake_timeout=None,
        ).factory
        return self.factory

    def raw(self) -> tuple[NanostreamServerProtocol, RawTransport]:
        """A server protocol on a StringTransport, fed bytes by hand."""
        peer = IPv4Address("TCP", "127.0.0.1", next(self.ports))
        server = self.factory.buildProtocol(peer)
        transport = RawTransport(hostAddress=SERVER_ADDRESS, peerAddress=peer)
        transport.protocol = server
        server.makeConnection(transport)
        return server, transport

    def timeouts_logged(self) -> list[Any]:
        return self.mentioning("no complete handshake")


class HandshakeTimeoutTests(LimitsTestCase):
    """--handshake-timeout drops a connection that has not become a client."""

    def test_silent_connection_dropped(self) -> None:
        """A connection that sends nothing is dropped at the timeout, not before."""
        self.limited(handshake_timeout=5)
        server, transport = self.raw()
        self.clock.advance(4.9)
        self.assertTrue(transport.connected)
        self.clock.advance(0.1)
        self.assertFalse(transport.connected)
        [event] = self.timeouts_logged()
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["peer"], server.peer)
        self.assertEqual(event["timeout"], 5)
        self.assertEqual(self.factory.tracker.handshakes_timed_out, 1)

    def test_trickling_client_dropped_on_time(self) -> None:
        """Steady progress does not extend the deadline: slowloris is dropped."""
        self.limited(handshake_timeout=5)
        server, transport = self.raw()
        partial = request("/?t=" + mint())[:-2]
        for byte in range(39):
            server.dataReceived(partial[byte : byte + 1])
            self.clock.advance(0.125)
        self.assertTrue(transport.connected)
        server.dataReceived(partial[39:40])
        self.clock.advance(0.125)
        self.assertFalse(transport.connected)
        self.assertEqual(len(self.timeouts_logged()), 1)
        self.assertEqual(self.factory.tracker.open, 0)

    def test_timer_runs_on_given_reactor(self) -> None:
        """The timeout is scheduled on the factory's reactor, to the fraction."""
        self.limited(handshake_timeout=0.25)
        _, transport = self.raw()
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), NOW + 0.25)
        self.clock.advance(0.2)
        self.assertTrue(transport.connected)
        self.clock.advance(0.05)
        self.assertFalse(transport.connected)

    def test_completed_handshake_is_kept(self) -> None:
        """A client that completes its handshake in time is never timed out."""
        self.limited(handshake_timeout=5)
        connection = self.connect("t=" + mint())
        self.assertTrue(connection.client.opened)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.assertFalse(connection.client.closed)
        self.assertEqual(self.timeouts_logged(), [])
        self.assertEqual(self.factory.tracker.open, 1)
        self.assertEqual(self.factory.tracker.handshakes_timed_out, 0)

    def test_refused_handshake_leaves_no_timer(self) -> None:
        """A refused handshake cancels its timer as the connection closes."""
        self.limited(handshake_timeout=5)
        connection = self.connect("t=bad")
        self.assertTrue(connection.client.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_zero_means_no_timeout(self) -> None:
        """With a timeout of 0 a connection may idle in its handshake."""
        self.limited(handshake_timeout=0)
        _, transport = self.raw()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertTrue(transport.connected)


class HandshakeSizeTests(LimitsTestCase):
    """--max-handshake-bytes bounds the request line and headers."""

    def assertRefusedRaw(
        self,
        server: NanostreamServerProtocol,
        transport: RawTransport,
        status: int,
        reason: str,
    ) -> None:
        """The server answered ``status reason``, closed, and logged it once."""
        self.assertEqual(
            transport.value().split(b"\r\n", 1)[0],
            f"HTTP/1.1 {status} {reason}".encode(),
        )
        self.assertFalse(transport.connected)
        self.assertEqual(server.data, b"")
        [event] = self.mentioning(reason)
        self.assertEqual(event["reason"], reason)
        self.assertEqual(event["status"], status)
        self.assertEqual(event["peer"], server.peer)
        self.assertEqual(self.factory.admission.refused[reason], 1)

    def test_request_line_too_long(self) -> None:
        """A request line longer than the bound is refused with 414."""
        self.limited()
        server, transport = self.raw()
        server.dataReceived(b"GET /?t=" + b"a" * DEFAULT_MAX_HANDSHAKE_BYTES)
        self.assertRefusedRaw(server, transport, 414, reasons.REQUEST_LINE_TOO_LONG)

    def test_headers_too_large(self) -> None:
        """Headers that outgrow the bound are refused with 431."""
        self.limited()
        server, transport = self.raw()
        head = request("/?t=" + mint())[:-2]
        server.dataReceived(head + b"Cookie: " + b"c" * DEFAULT_MAX_HANDSHAKE_BYTES)
        self.assertRefusedRaw(server, transport, 431, reasons.HEADERS_TOO_LARGE)

    def test_refused_before_the_rest_arrives(self) -> None:
        """A 1 MiB request line is refused once the bound is passed, not buffered."""
        self.limited()
        server, transport = self.raw()
        chunk = b"GET /?t=" + b"a" * (4096 - 8)
        fed = 0
        while transport.connected:
            server.dataReceived(chunk)
            fed += len(chunk)
            self.assertLessEqual(len(server.data), DEFAULT_MAX_HANDSHAKE_BYTES)
            chunk = b"a" * 4096
        self.assertLessEqual(fed, DEFAULT_MAX_HANDSHAKE_BYTES + 4096)
        answer = transport.value()
        for _ in range(256):
            server.dataReceived(chunk)
        self.assertEqual(transport.value(), answer)
        self.assertEqual(server.data, b"")
        self.assertRefusedRaw(server, transport, 414, reasons.REQUEST_LINE_TOO_LONG)

    def test_request_at_the_bound_opens(self) -> None:
        """A valid request of exactly the bound completes its handshake."""
        self.limited(max_handshake_bytes=4096)
        server, transport = self.raw()
        server.dataReceived(request_of_size(4096, "/?t=" + mint()))
        self.assertTrue(
            transport.value().startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        )
        self.assertEqual(self.factory.tracker.open, 1)

    def test_one_byte_over_the_bound(self) -> None:
        """A request one byte over the bound is refused with 431."""
        self.limited(max_handshake_bytes=4096)
        server, transport = self.raw()
        server.dataReceived(request_of_size(4097, "/?t=" + mint()))
        self.assertRefusedRaw(server, transport, 431, reasons.HEADERS_TOO_LARGE)
        self.assertEqual(self.factory.tracker.open, 0)

    def test_frame_after_request_is_not_counted(self) -> None:
        """Bytes after a request that fits are the connection's, not the request's."""
        self.limited(max_handshake_bytes=4096)
        server, transport = self.raw()
        opening = request("/?t=" + mint())
        server.dataReceived(opening + b"\x00" * (4096 - len(opening) + 100))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))
        self.assertEqual(self.mentioning("too large"), [])

    def test_sending_while_the_ledger_decides(self) -> None:
        """A client that floods before its answer is dropped and never opens."""
        ledger = PendingLedger()
        self.limited(ledger=ledger)
        server, transport = self.raw()
        server.dataReceived(request("/?t=" + mint()))
        self.assertEqual(len(ledger.answers), 1)
        server.dataReceived(b"x" * (DEFAULT_MAX_HANDSHAKE_BYTES + 1))
        self.assertFalse(transport.connected)
        [event] = self.mentioning("before the handshake completed")
        self.assertEqual(event["peer"], server.peer)
        ledger.answers[0].callback(True)
        self.assertEqual(self.factory.tracker.open, 0)
        self.assertEqual(len(self.factory.broadcaster), 0)


class LateAnswerTests(LimitsTestCase):
    """A ledger answering after the client left must not open a ghost client."""

    def test_client_gone_before_the_answer(self) -> None:
        """A client that disconnects while the ledger decides is never counted."""
        ledger = PendingLedger()
        self.limited(ledger=ledger)
        server, transport = self.raw()
        server.dataReceived(request("/?t=" + mint()))
        transport.loseConnection()
        ledger.answers[0].callback(True)
        self.assertEqual(self.factory.tracker.open, 0)
        self.assertEqual(len(self.factory.broadcaster), 0)
        self.assertEqual(self.mentioning("client connected"), [])

    def test_second_request_while_deciding(self) -> None:
        """A request sent while the first is decided starts no second handshake."""
        ledger = PendingLedger()
        self.limited(ledger=ledger)
        server, transport = self.raw()
        server.dataReceived(request("/?t=" + mint(sub="first")))
        server.dataReceived(request("/?t=" + mint(sub="second")))
        self.assertEqual(len(ledger.answers), 1)
        ledger.answers[0].callback(True)
        self.assertEqual(transport.value().count(b"HTTP/1.1 101 "), 1)
        self.assertEqual(self.factory.tracker.accepted, 1)

    def test_timed_out_before_the_answer(self) -> None:
        """A handshake timed out while the ledger decides is never counted."""
        ledger = PendingLedger()
        self.limited(ledger=ledger, handshake_timeout=1)
        server, transport = self.raw()
        server.dataReceived(request("/?t=" + mint()))
        self.clock.advance(1)
        self.assertFalse(transport.connected)
        ledger.answers[0].callback(True)
        self.assertEqual(self.factory.tracker.open, 0)
        self.assertEqual(len(self.factory.broadcaster), 0)


class MaxClientsTests(LimitsTestCase):
    """--max-clients refuses handshakes beyond N open clients with 503."""

    def test_refused_beyond_the_bound(self) -> None:
        """With N clients open the next handshake gets 503 too many clients."""
        self.limited(max_clients=2)
        self.connect("t=" + mint(sub="a"))
        self.connect("t=" + mint(sub="b"))
        third = self.connect("t=" + mint(sub="c"))
        self.assertEqual(
            third.client.status_line, f"HTTP/1.1 503 {reasons.TOO_MANY_CLIENTS}"
        )
        self.assertFalse(third.client.opened)
        self.assertEqual(self.factory.tracker.open, 2)
        [event] = self.mentioning(reasons.TOO_MANY_CLIENTS)
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(event["peer"], third.peer)
        self.assertEqual(event["status"], 503)
        self.assertEqual(self.factory.admission.refused[reasons.TOO_MANY_CLIENTS], 1)

    def test_refused_token_stays_unused(self) -> None:
        """A client refused for want of room gets in later with the same token."""
        self.limited(max_clients=1)
        first = self.connect("t=" + mint(sub="a"))
        token = mint(sub="b")
        self.assertFalse(self.connect("t=" + token).client.opened)
        first.client.sendClose()
        first.flush()
        self.assertEqual(self.factory.tracker.open, 0)
        self.assertTrue(self.connect("t=" + token).client.opened)

    def test_refusals_take_no_room(self) -> None:
        """Refused handshakes do not count against the bound."""
        self.limited(max_clients=1)
        for _ in range(3):
            self.assertFalse(self.connect("t=bad").client.opened)
        self.assertTrue(self.connect("t=" + mint()).client.opened)

    def test_zero_means_no_bound(self) -> None:
        """By default any number of clients may be open."""
        self.limited()
        for sub in range(20):
            self.assertTrue(self.connect("t=" + mint(sub=str(sub))).client.opened)
        self.assertEqual(self.factory.tracker.open, 20)

    def test_origin_checked_first(self) -> None:
        """A disallowed Origin is refused as such even when the server is full."""
        self.limited(max_clients=1, origins=("https://ok.example",))
        self.connect("t=" + mint(sub="a"), origin="https://ok.example")
        refused = self.connect("t=" + mint(sub="b"), origin="https://evil.example")
        self.assertEqual(
            refused.client.status_line, f"HTTP/1.1 403 {reasons.ORIGIN_NOT_ALLOWED}"
        )


class PendingMaxClientsTests(LimitsTestCase):
    """Handshakes waiting for the ledger (Redis) count under --max-clients."""

    def test_waiting_handshakes_hold_their_places(self) -> None:
        """With N handshakes waiting on the ledger the next gets 503 at once,
        and the N that then open never exceed the bound."""
        ledger = PendingLedger()
        self.limited(max_clients=2, ledger=ledger)
        waiting = [self.connect("t=" + mint(sub=sub)) for sub in ("a", "b")]
        third = self.connect("t=" + mint(sub="c"))
        self.assertEqual(
            third.client.status_line, f"HTTP/1.1 503 {reasons.TOO_MANY_CLIENTS}"
        )
        self.assertEqual(len(ledger.answers), 2)
        for answer in ledger.answers:
            answer.callback(True)
        self.flush()
        self.assertEqual([c.client.opened for c in waiting], [True, True])
        self.assertEqual(self.factory.tracker.open, 2)
        self.assertEqual(self.factory.tracker.pending, 0)

    def test_refused_answer_frees_the_place(self) -> None:
        """A token the ledger says was used gives its place to the next one."""
        ledger = PendingLedger()
        self.limited(max_clients=1, ledger=ledger)
        used = self.connect("t=" + mint(sub="a"))
        ledger.answers[0].callback(False)
        self.flush()
        self.assertEqual(
            used.client.status_line, f"HTTP/1.1 401 {reasons.ALREADY_USED}"
        )
        self.connect("t=" + mint(sub="b"))
        self.assertEqual(len(ledger.answers), 2)
        ledger.answers[1].callback(True)
        self.assertEqual(self.factory.tracker.open, 1)

    def test_failed_ledger_frees_the_place(self) -> None:
        """A ledger that fails refuses the handshake (503) and frees its place."""
        ledger = PendingLedger()
        self.limited(max_clients=1, ledger=ledger)
        failed = self.connect("t=" + mint(sub="a"))
        ledger.answers[0].errback(RuntimeError("Redis went away"))
        self.flush()
        self.assertEqual(
            failed.client.status_line, f"HTTP/1.1 503 {reasons.LEDGER_UNAVAILABLE}"
        )
        self.assertEqual(self.factory.tracker.pending, 0)
        self.assertFalse(self.factory.tracker.full())

    def test_client_gone_frees_the_place(self) -> None:
        """A client that leaves while waiting is released once the answer comes."""
        ledger = PendingLedger()
        self.limited(max_clients=1, ledger=ledger)
        server, transport = self.raw()
        server.dataReceived(request("/?t=" + mint()))
        transport.loseConnection()
        self.assertTrue(self.factory.tracker.full())
        ledger.answers[0].callback(True)
        self.assertEqual(
            (self.factory.tracker.open, self.factory.tracker.pending), (0, 0)
        )


class AssemblyTests(WebSocketTestCase):
    """makeService hands the three limits to the factory and the gate."""

    def test_options_reach_the_factory(self) -> None:
        """--handshake-timeout, --max-handshake-bytes and --max-clients take effect."""
        options = ServiceOptions(environ={})
        options.parseOptions(
            ["--secret", SECRET.decode(), "--source", "tcp:9000"]
            + ["--handshake-timeout", "2.5", "--max-handshake-bytes", "4096"]
            + ["--max-clients", "3"]
        )
        reactor = MemoryReactorClock()
        service = makeService(options, reactor=reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        factory = {port: f for port, f, *_ in reactor.tcpServers}[8080]
        self.assertEqual(factory.protocol.openHandshakeTimeout, 2.5)
        self.assertEqual(factory.max_handshake_bytes, 4096)
        self.assertEqual(factory.tracker.max_clients, 3)
        factory.tracker.open = 3
        failure = self.failureResultOf(
            maybeDeferred(factory.admission.decide, "tcp4:127.0.0.1:1", None, [mint()]),
            Refused,
        )
        self.assertEqual(failure.value.reason, reasons.TOO_MANY_CLIENTS)
