"""The WebSocket glue over an in-memory connection: admission, fan-out, closes.

Both ends are real Autobahn protocols, joined by ``twisted.test.iosim`` and
flushed by hand; the admission gate reads a ``Clock``.  Autobahn's client
schedules its handshake, close and ping timers on the global reactor
whatever reactor it is given (the server's run on its factory's reactor, see
``ReactorTimer``), so those timers are switched off, and each test checks
that it left nothing scheduled there.
"""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass
from typing import Any

import jwt
import support
import txaio
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogEvent, eventAsText
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth import reasons
from nanostream.auth.tokens import AcceptedToken
from nanostream.clients import BroadcastService
from nanostream.websocket import (
    MAX_CLIENT_MESSAGE_BYTES,
    NanostreamServerFactory,
    NanostreamServerProtocol,
)

SECRET = support.SECRET
NOW = support.NOW
mint = support.mint
SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 8080)
ALLOWED_ORIGIN = "https://live.example.com"

#: Autobahn options that would start timers on the global reactor.
_CLIENT_TIMERS_OFF = {
    "openHandshakeTimeout": 0,
    "closeHandshakeTimeout": 0,
    "serverConnectionDropTimeout": 0,
    "autoPingInterval": 0,
}


def rendered(event: LogEvent) -> str:
    """All an observer could write of an event: its text, traceback and fields."""
    fields = "\n".join(f"{key}={value!r}" for key, value in event.items())
    return eventAsText(event, includeTraceback=True) + "\n" + fields


class RecordingClient(WebSocketClientProtocol):
    """Autobahn's own client, keeping every byte, message and close it gets."""

    # This is the test's peer, not the code under test: its chatter about a
    # refused handshake would otherwise be counted as the server's.
    log = txaio.make_logger(level="none")

    def __init__(self) -> None:
        super().__init__()
        self.raw = b""
        self.opened = False
        self.messages: list[tuple[bytes, bool]] = []
        self.close_code: int | None = None
        self.closed_cleanly: bool | None = None

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        super().dataReceived(data)

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append((payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed_cleanly = wasClean
        self.close_code = code

    @property
    def status_line(self) -> str:
        """The first line of the server's HTTP response."""
        return self.raw.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def closed(self) -> bool:
        return self.closed_cleanly is not None


@dataclass
class Connection:
    """One client joined to one server protocol by an in-memory pipe."""

    client: RecordingClient
    server: NanostreamServerProtocol
    server_transport: iosim.FakeTransport
    pump: iosim.IOPump
    peer: str

    def flush(self) -> None:
        self.pump.flush()


class BrokenVerifier:
    """A verifier with a bug in it."""

    def verify(self, token: str, now: float) -> AcceptedToken:
        raise RuntimeError("verifier bug")


class FailingLedger:
    """A ledger that cannot tell, such as a shared one that is unreachable."""

    size = 0

    def consume(self, token_id: bytes, expires_at: float) -> Deferred[bool]:
        return fail(RuntimeError("ledger unreachable"))


class WebSocketTestCase(SynchronousTestCase):
    """A server factory on a Clock, the log captured, and a way to connect."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.events = support.capture_logs(self)
        support.forbid_global_timers(self)
        self.ports = iter(range(40001, 41000))
        self.connections: list[Connection] = []
        self.factory = self.serve()

    def serve(
        self, key: bytes | None = SECRET, **options: Any
    ) -> NanostreamServerFactory:
        """The factory under test, its timers off; keywords of make_server.

        ``key=None`` serves without tokens.
        """
        options.setdefault("max_buffer_bytes", 1024 * 1024)
        self.factory = support.serve(self.clock, key, **options).factory
        return self.factory

    def connect(self, query: str = "", origin: str | None = None) -> Connection:
        """Open a connection to ``/?query`` and run the handshake to its end."""
        url = f"ws://127.0.0.1:8080/?{query}" if query else "ws://127.0.0.1:8080/"
        client_factory = WebSocketClientFactory(url, origin=origin, reactor=self.clock)
        client_factory.protocol = RecordingClient
        client_factory.setProtocolOptions(**_CLIENT_TIMERS_OFF)
        port = next(self.ports)
        client_address = IPv4Address("TCP", "127.0.0.1", port)
        server = self.factory.buildProtocol(client_address)
        client = client_factory.buildProtocol(SERVER_ADDRESS)
        server_transport = iosim.FakeTransport(
            server, True, SERVER_ADDRESS, client_address
        )
        client_transport = iosim.FakeTransport(
            client, False, client_address, SERVER_ADDRESS
        )
        pump = iosim.connect(
            server, server_transport, client, client_transport, clock=self.clock
        )
        connection = Connection(
            client, server, server_transport, pump, f"tcp4:127.0.0.1:{port}"
        )
        self.connections.append(connection)
        return connection

    def flush(self) -> None:
        for connection in self.connections:
            connection.flush()

    def mentioning(self, text: str) -> list[LogEvent]:
        return [event for event in self.events if text in rendered(event)]


class AdmittedClientTests(WebSocketTestCase):
    """A client with a valid token opens and hears every line."""

    def test_valid_token_opens(self) -> None:
        """A fresh valid token completes the handshake with 101."""
        connection = self.connect("t=" + mint())
        self.assertTrue(connection.client.opened)
        self.assertEqual(
            connection.client.status_line, "HTTP/1.1 101 Switching Protocols"
        )
        self.assertEqual(len(self.factory.broadcaster), 1)

    def test_lines_arrive_in_order_as_text_or_binary(self) -> None:
        """Broadcast lines arrive in order: UTF-8 as text, anything else as binary."""
        connection = self.connect("t=" + mint())
        self.factory.broadcaster.broadcast([b"one", "zwei \u00fc".encode(), b"\xff"])
        self.factory.broadcaster.broadcast([b"four"])
        connection.flush()
        self.assertEqual(
            connection.client.messages,
            [
                (b"one", False),
                ("zwei \u00fc".encode(), False),
                (b"\xff", True),
                (b"four", False),
            ],
        )

    def test_every_client_hears_each_line(self) -> None:
        """Two open clients both receive the same lines."""
        first = self.connect("t=" + mint(sub="a"))
        second = self.connect("t=" + mint(sub="b"))
        self.factory.broadcaster.broadcast([b"hello"])
        self.flush()
        self.assertEqual(first.client.messages, [(b"hello", False)])
        self.assertEqual(second.client.messages, [(b"hello", False)])

    def test_tracker_counts_opens_and_closes(self) -> None:
        """The ClientTracker counts open connections up and down."""
        first = self.connect("t=" + mint(sub="a"))
        self.connect("t=" + mint(sub="b"))
        self.assertEqual(self.factory.tracker.open, 2)
        first.client.sendClose()
        first.flush()
        self.assertTrue(first.client.closed)
        self.assertEqual(self.factory.tracker.open, 1)
        self.assertEqual(len(self.factory.broadcaster), 1)

    def test_open_and_close_logged_with_count(self) -> None:
        """Opening and closing each log one info event with the client count."""
        connection = self.connect("t=" + mint())
        connection.client.sendClose()
        connection.flush()
        logged = [
            (event["log_format"].split(":")[0], event["clients"])
            for event in self.events
            if event.get("peer") == connection.peer and "clients" in event
        ]
        self.assertEqual(logged, [("client connected", 1), ("client disconnected", 0)])

    def test_no_auth_admits_without_token(self) -> None:
        """With --no-auth (no verifier) a client without a token opens."""
        self.serve(None)
        connection = self.connect()
        self.assertTrue(connection.client.opened)


class RejectionTests(WebSocketTestCase):
    """Each refusal of a handshake gets its status, its phrase and one log event."""

    def assertRefused(
        self,
        connection: Connection,
        reason: str,
        status: int = 401,
        still_open: int = 0,
    ) -> None:
        """The handshake failed with ``status reason`` and one nanostream event.

        :param still_open: how many clients opened earlier in the test.
        """
        client = connection.client
        self.assertEqual(client.status_line, f"HTTP/1.1 {status} {reason}")
        self.assertFalse(client.opened)
        self.assertTrue(client.closed)
        self.assertEqual(self.factory.tracker.open, still_open)
        self.assertEqual(len(self.factory.broadcaster), still_open)
        # Autobahn's own handshake logging must not repeat the refusal.
        events = self.mentioning(reason)
        self.assertEqual(len(events), 1, [rendered(e) for e in events])
        [event] = events
        self.assertTrue(event["log_namespace"].startswith("nanostream."))
        self.assertEqual(event["reason"], reason)
        self.assertEqual(event["peer"], connection.peer)
        self.assertIn("origin", event)

    def test_no_token(self) -> None:
        """A request without ``t`` is refused: no token supplied."""
        self.assertRefused(self.connect(), reasons.NO_TOKEN)

    def test_empty_token(self) -> None:
        """An empty ``t`` is refused: no token supplied."""
        self.assertRefused(self.connect("t="), reasons.NO_TOKEN)

    def test_garbage_token(self) -> None:
        """A value that is no JWS is refused: invalid token."""
        self.assertRefused(self.connect("t=not.a.token"), reasons.INVALID)

    def test_other_algorithm(self) -> None:
        """A token signed with HS384 is refused: invalid token."""
        token = jwt.encode({"exp": NOW + 60}, SECRET, algorithm="HS384")
        self.assertRefused(self.connect("t=" + token), reasons.INVALID)

    def test_repeated_parameter(self) -> None:
        """Two ``t`` parameters are refused as invalid, even if both are valid."""
        query = f"t={mint(sub='a')}&t={mint(sub='b')}"
        self.assertRefused(self.connect(query), reasons.INVALID)

    def test_repeated_parameter_one_empty(self) -> None:
        """An empty ``t`` beside a valid one still makes two: invalid token."""
        for query in ("t=&t=" + mint(sub="a"), "t=" + mint(sub="b") + "&t"):
            with self.subTest(query=query):
                self.events.clear()
                self.assertRefused(self.connect(query), reasons.INVALID)

    def test_no_expiration(self) -> None:
        """A token without ``exp`` is refused: token has no expiration."""
        token = mint(exp=None)
        self.assertRefused(self.connect("t=" + token), reasons.NO_EXPIRATION)

    def test_expired(self) -> None:
        """A token whose ``exp`` has passed on the Clock is refused as expired."""
        token = mint(exp=NOW + 10)
        self.clock.advance(10)
        self.assertRefused(self.connect("t=" + token), reasons.EXPIRED)

    def test_not_yet_valid(self) -> None:
        """A token whose ``nbf`` lies ahead is refused: token not yet valid."""
        token = mint(nbf=NOW + 30)
        self.assertRefused(self.connect("t=" + token), reasons.NOT_YET_VALID)

    def test_lifetime_too_long(self) -> None:
        """A token expiring beyond the maximum lifetime is refused."""
        token = mint(exp=NOW + 7200)
        self.assertRefused(self.connect("t=" + token), reasons.TOO_LONG)

    def test_origin_not_allowed(self) -> None:
        """A disallowed Origin is refused with 403 and logged with that origin."""
        self.serve(origins=[ALLOWED_ORIGIN])
        connection = self.connect("t=" + mint(), origin="https://evil.example.net")
        self.assertRefused(connection, reasons.ORIGIN_NOT_ALLOWED, status=403)
        [event] = self.mentioning(reasons.ORIGIN_NOT_ALLOWED)
        self.assertEqual(event["origin"], "https://evil.example.net")

    def test_allowed_origin_opens(self) -> None:
        """An Origin on the allow-list opens normally."""
        self.serve(origins=[ALLOWED_ORIGIN])
        connection = self.connect("t=" + mint(), origin=ALLOWED_ORIGIN)
        self.assertTrue(connection.client.opened)

    def test_reused_token(self) -> None:
        """The second handshake with one token is refused: token already used."""
        token = mint()
        self.assertTrue(self.connect("t=" + token).client.opened)
        connection = self.connect("t=" + token)
        self.assertRefused(connection, reasons.ALREADY_USED, still_open=1)

    def test_padded_signature_is_already_used(self) -> None:
        """Padding the signature segment does not make a used token new."""
        token = mint()
        self.assertTrue(self.connect("t=" + token).client.opened)
        self.assertEqual(len(token.rsplit(".", 1)[1]) % 4, 3)
        connection = self.connect("t=" + token + "%3D")
        self.assertRefused(connection, reasons.ALREADY_USED, still_open=1)

    def test_percent_encoded_is_already_used(self) -> None:
        """Percent-encoding every character of a used token does not make it new."""
        token = mint()
        self.assertTrue(self.connect("t=" + token).client.opened)
        encoded = "".join(f"%{byte:02X}" for byte in token.encode("ascii"))
        connection = self.connect("t=" + encoded)
        self.assertRefused(connection, reasons.ALREADY_USED, still_open=1)

    def test_token_never_logged(self) -> None:
        """No captured event, accepted or refused, carries a token or the secret."""
        used = mint(sub="used")
        tokens = [
            used,
            mint(exp=NOW - 1),
            mint(exp=NOW + 7200),
            mint(nbf=NOW + 30),
            mint(exp=None, sub="x"),
            mint(b"another key entirely, just as long as the real one: 0123456789"),
        ]
        for token in tokens:
            self.connect("t=" + token)
        self.connect("t=" + used)
        self.connect("t=" + used + "%3D")
        self.factory.broadcaster.broadcast([b"line"])
        self.flush()
        self.assertTrue(self.events)
        for event in self.events:
            text = rendered(event)
            for token in tokens:
                self.assertNotIn(token, text)
                self.assertNotIn(token.rsplit(".", 1)[1], text)
            self.assertNotIn(SECRET.decode(), text)

    def test_admission_bug_is_500_and_logged(self) -> None:
        """An exception inside admission refuses with 500 and logs a failure."""
        self.serve(verifier=BrokenVerifier())
        connection = self.connect("t=" + mint())
        self.assertEqual(
            connection.client.status_line, "HTTP/1.1 500 Internal Server Error"
        )
        self.assertFalse(connection.client.opened)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        [event] = [e for e in self.events if "log_failure" in e]
        self.assertEqual(event["peer"], connection.peer)

    def test_ledger_failure_refuses(self) -> None:
        """A ledger that cannot answer refuses the handshake with a 5xx."""
        self.serve(ledger=FailingLedger())
        connection = self.connect("t=" + mint())
        self.assertRegex(connection.client.status_line, r"^HTTP/1\.1 5\d\d ")
        self.assertFalse(connection.client.opened)
        self.assertEqual(self.factory.tracker.open, 0)
        self.assertEqual(len(self.factory.broadcaster), 0)
        # Whether the ledger's error is logged as a bug or as a refusal is the
        # gate's choice; it must not be left unhandled.
        self.flushLoggedErrors(RuntimeError)


class ClientFrameTests(WebSocketTestCase):
    """What clients send is read and dropped; too much closes them with 1009."""

    def test_client_messages_reach_nobody(self) -> None:
        """A client's message is dropped: neither it nor another client gets it."""
        talker = self.connect("t=" + mint(sub="a"))
        listener = self.connect("t=" + mint(sub="b"))
        talker.client.sendMessage(b"hello everyone")
        talker.client.sendMessage(b"\x00\x01", isBinary=True)
        self.flush()
        self.assertEqual(talker.client.messages, [])
        self.assertEqual(listener.client.messages, [])
        self.assertFalse(talker.client.closed)
        self.factory.broadcaster.broadcast([b"still here"])
        self.flush()
        self.assertEqual(talker.client.messages, [(b"still here", False)])

    def test_oversized_message_closes_with_1009(self) -> None:
        """A client message over the limit closes that client with 1009 only."""
        talker = self.connect("t=" + mint(sub="a"))
        listener = self.connect("t=" + mint(sub="b"))
        talker.client.sendMessage(b"x" * (MAX_CLIENT_MESSAGE_BYTES + 1))
        self.flush()
        self.assertEqual(talker.client.close_code, 1009)
        self.assertFalse(listener.client.closed)
        self.assertEqual(self.factory.tracker.open, 1)
        self.factory.broadcaster.broadcast([b"after"])
        self.flush()
        self.assertEqual(listener.client.messages, [(b"after", False)])

    def test_message_at_limit_is_tolerated(self) -> None:
        """A client message of exactly the limit is dropped without closing."""
        talker = self.connect("t=" + mint())
        talker.client.sendMessage(b"x" * MAX_CLIENT_MESSAGE_BYTES)
        talker.flush()
        self.assertFalse(talker.client.closed)


class ClosingTests(WebSocketTestCase):
    """The server closes clients that must go: at shutdown and when slow."""

    def test_go_away_sends_1001(self) -> None:
        """goAway closes the client with 1001 and the tracker counts it gone."""
        connection = self.connect("t=" + mint())
        connection.server.goAway()
        connection.flush()
        self.assertEqual(connection.client.close_code, 1001)
        self.assertTrue(connection.client.closed_cleanly)
        self.assertEqual(self.factory.tracker.open, 0)

    def test_service_stop_closes_every_client(self) -> None:
        """Stopping BroadcastService sends 1001 to all and ends once they closed."""
        first = self.connect("t=" + mint(sub="a"))
        second = self.connect("t=" + mint(sub="b"))
        service = BroadcastService(
            self.factory.broadcaster, self.factory.tracker, self.clock, []
        )
        service.startService()
        stopped = service.stopService()
        self.assertNoResult(stopped)
        self.flush()
        self.assertEqual(
            [first.client.close_code, second.client.close_code], [1001] * 2
        )
        self.successResultOf(stopped)

    def test_slow_consumer_dropped_others_keep_receiving(self) -> None:
        """A paused client is dropped past max_buffer_bytes; the other hears on."""
        self.serve(max_buffer_bytes=1000)
        slow = self.connect("t=" + mint(sub="slow"))
        fast = self.connect("t=" + mint(sub="fast"))
        # The kernel stops taking this client's bytes.
        slow.server_transport.producer.pauseProducing()
        line = b"x" * 400
        self.factory.broadcaster.broadcast([line])
        self.factory.broadcaster.broadcast([line])
        self.assertEqual(len(self.factory.broadcaster), 2)
        self.assertEqual(self.mentioning("slow consumer"), [])
        self.factory.broadcaster.broadcast([line])
        self.assertEqual(len(self.factory.broadcaster), 1)
        [event] = self.mentioning("slow consumer")
        self.assertEqual(event["peer"], slow.peer)
        self.assertGreater(event["unsent"], 1000)
        self.flush()
        self.assertTrue(slow.client.closed)
        self.assertFalse(slow.client.closed_cleanly)
        self.assertFalse(fast.client.closed)
        self.assertEqual(self.factory.tracker.open, 1)
        self.factory.broadcaster.broadcast([b"more"])
        fast.flush()
        self.assertEqual(fast.client.messages, [(line, False)] * 3 + [(b"more", False)])

    def test_resumed_client_is_kept(self) -> None:
        """A client whose buffer drains in time is not counted as slow."""
        self.serve(max_buffer_bytes=1000)
        connection = self.connect("t=" + mint())
        producer = connection.server_transport.producer
        for _ in range(5):
            producer.pauseProducing()
            self.factory.broadcaster.broadcast([b"x" * 400])
            producer.resumeProducing()
        self.assertEqual(len(self.factory.broadcaster), 1)
        connection.flush()
        self.assertEqual(len(connection.client.messages), 5)


class MemoryTests(WebSocketTestCase):
    """A closed connection's memory is freed when it closes."""

    def test_closed_protocol_freed_without_garbage_collector(self) -> None:
        """Reference counting alone frees a closed client: no cycle is left."""
        gc.disable()
        self.addCleanup(gc.enable)
        connection = self.connect("t=" + mint())
        server = weakref.ref(connection.server)
        connection.client.sendClose()
        connection.flush()
        self.assertTrue(connection.client.closed)
        # Twisted's TCP transports forget their protocol once the connection
        # is lost; iosim's keep it, so the test lets go of it instead.
        connection.server_transport.protocol = None
        self.connections.clear()
        del connection
        self.events.clear()
        self.assertIsNone(server())
