"""Resume at the protocol level: the ``nanostream.v1`` subprotocol, ``since``
refusals, replay and source gaps, over an in-memory connection.

Both ends are real Autobahn protocols joined by ``twisted.test.iosim``, as in
``test_websocket``; here the broadcaster and its history also run on the
test's Clock, so a replay's steps run when the pump flushes.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import count
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from test_broadcast import parse_frames
from test_socket_sink import FakeSocket, Peer
from test_websocket import (
    _CLIENT_TIMERS_OFF,
    ALLOWED_ORIGIN,
    NOW,
    SECRET,
    SERVER_ADDRESS,
    Connection,
    RecordingClient,
    WebSocketTestCase,
    rendered,
)
from test_websocket import mint as mint_claims
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth import reasons
from nanostream.auth.admission import Admission
from nanostream.auth.ledger import MemoryLedger
from nanostream.auth.origins import OriginPolicy
from nanostream.auth.tokens import TokenVerifier
from nanostream.broadcast import Broadcaster
from nanostream.clients import ClientTracker
from nanostream.resume.history import History
from nanostream.websocket import NanostreamServerFactory

V1 = "nanostream.v1"

#: Autobahn's server timers, which the tests' Clock would otherwise hold.
_SERVER_TIMERS_OFF = {"openHandshakeTimeout": 0, "closeHandshakeTimeout": 0}

#: The ``<ms>`` part of every id a node started at NOW gives its lines.
START_MS = b"%d" % (NOW * 1000)


_jti = count(1)


def mint() -> str:
    """A valid token unlike every other one minted here (its own ``jti``)."""
    return mint_claims(jti=f"token-{next(_jti)}")


def lid(n: int) -> bytes:
    """The id of the n-th line the node read."""
    return START_MS + b"-%d" % n


def text(*payloads: bytes) -> list[tuple[bytes, bool]]:
    """``payloads`` as text messages, the way RecordingClient records them."""
    return [(payload, False) for payload in payloads]


def with_ids(first: int, last: int) -> list[tuple[bytes, bool]]:
    """Lines ``line first`` .. ``line last`` as a v1 client receives them."""
    return text(*(lid(n) + b" line %d" % n for n in range(first, last + 1)))


def numbered(first: int, last: int) -> list[bytes]:
    return [b"line %d" % n for n in range(first, last + 1)]


def response_headers(client: RecordingClient) -> dict[str, str]:
    """The server's opening response headers, names in lower case."""
    head = client.raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    headers = {}
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


class ResumeTestCase(WebSocketTestCase):
    """A factory whose broadcaster keeps a history on the test's Clock."""

    def serve(
        self,
        *,
        verifier: Any = "default",
        ledger: Any = "default",
        origins: Sequence[str] = (),
        max_buffer_bytes: int = 1024 * 1024,
        history_lines: int = 100,
    ) -> NanostreamServerFactory:
        if verifier == "default":
            verifier = TokenVerifier(SECRET, max_ttl=3600)
        if ledger == "default":
            ledger = MemoryLedger(self.clock)
        admission = Admission(self.clock, verifier, ledger, OriginPolicy(origins))
        broadcaster = Broadcaster(
            max_buffer_bytes, self.clock, History(history_lines, 10**6)
        )
        factory = NanostreamServerFactory(
            admission, broadcaster, ClientTracker(), ping_interval=0, reactor=self.clock
        )
        factory.setProtocolOptions(**_SERVER_TIMERS_OFF)
        self.factory = factory
        return factory

    @property
    def broadcaster(self) -> Broadcaster:
        return self.factory.broadcaster

    def connect(
        self,
        query: str = "",
        origin: str | None = None,
        protocols: Sequence[str] | None = None,
    ) -> Connection:
        """Open ``/?query``, offering ``protocols``, and run the handshake."""
        url = f"ws://127.0.0.1:8080/?{query}" if query else "ws://127.0.0.1:8080/"
        client_factory = WebSocketClientFactory(
            url,
            origin=origin,
            protocols=list(protocols) if protocols else None,
            reactor=self.clock,
        )
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

    def v1(self, query: str = "", origin: str | None = None) -> Connection:
        """A connection offering ``nanostream.v1`` with a fresh token."""
        token = "t=" + mint()
        return self.connect(
            f"{token}&{query}" if query else token, origin=origin, protocols=[V1]
        )


class SubprotocolTests(ResumeTestCase):
    """``nanostream.v1`` is chosen only when offered, and changes only its clients."""

    def test_selected_when_offered(self) -> None:
        """A client offering nanostream.v1 gets it in the 101 response."""
        connection = self.connect("t=" + mint(), protocols=[V1])
        client = connection.client
        self.assertEqual(client.status_line, "HTTP/1.1 101 Switching Protocols")
        self.assertEqual(response_headers(client)["sec-websocket-protocol"], V1)
        self.assertEqual(client.websocket_protocol_in_use, V1)

    def test_selected_among_others(self) -> None:
        """Offered after another subprotocol, nanostream.v1 is still the one chosen."""
        connection = self.connect("t=" + mint(), protocols=["chat", V1])
        self.assertTrue(connection.client.opened)
        headers = response_headers(connection.client)
        self.assertEqual(headers["sec-websocket-protocol"], V1)

    def test_not_selected_otherwise(self) -> None:
        """Without nanostream.v1 on offer the response names no subprotocol."""
        for protocols in (None, ["chat"]):
            with self.subTest(protocols=protocols):
                connection = self.connect("t=" + mint(), protocols=protocols)
                self.assertEqual(
                    connection.client.status_line, "HTTP/1.1 101 Switching Protocols"
                )
                headers = response_headers(connection.client)
                self.assertNotIn("sec-websocket-protocol", headers)

    def test_raw_and_v1_clients_side_by_side(self) -> None:
        """A raw client gets the bare lines; a v1 client gets ``<id> <line>``."""
        raw = self.connect("t=" + mint())
        v1 = self.v1()
        self.broadcaster.broadcast([b"one", b"\xff\xfe", b"!live"])
        self.broadcaster.broadcast([b""])
        self.flush()
        self.assertEqual(
            raw.client.messages,
            [(b"one", False), (b"\xff\xfe", True), (b"!live", False), (b"", False)],
        )
        self.assertEqual(
            v1.client.messages,
            [
                (lid(1) + b" one", False),
                (lid(2) + b" \xff\xfe", True),
                (lid(3) + b" !live", False),
                (lid(4) + b" ", False),
            ],
        )

    def test_v1_without_since_starts_at_the_next_line(self) -> None:
        """Without since, a v1 client's first message is the next line, no notice."""
        self.broadcaster.broadcast(numbered(1, 3))
        connection = self.v1()
        self.broadcaster.broadcast(numbered(4, 4))
        self.flush()
        self.assertEqual(connection.client.messages, with_ids(4, 4))


class BadResumeTests(ResumeTestCase):
    """A bad ``since`` is refused with 400, before the token is used up."""

    def assertBadResume(
        self,
        query: str,
        *,
        protocols: Sequence[str] | None = (V1,),
        origin: str | None = None,
    ) -> None:
        """``?t=TOKEN&query`` is refused for its ``since`` and TOKEN still opens."""
        self.events.clear()
        token = mint()
        connection = self.connect(f"t={token}&{query}", origin, protocols)
        client = connection.client
        self.assertEqual(
            client.status_line, f"HTTP/1.1 400 {reasons.BAD_RESUME}", query
        )
        self.assertFalse(client.opened)
        events = self.mentioning(reasons.BAD_RESUME)
        self.assertEqual(len(events), 1, [rendered(e) for e in events])
        [event] = events
        self.assertEqual(event["reason"], reasons.BAD_RESUME)
        self.assertEqual(event["peer"], connection.peer)
        self.assertEqual(event["origin"], origin)
        self.assertEqual(len(self.broadcaster), 0)
        again = self.connect(f"t={token}", origin, [V1])
        self.assertTrue(again.client.opened, again.client.status_line)
        again.client.sendClose()
        again.flush()

    def test_malformed(self) -> None:
        """Anything but ``<ASCII digits>-<ASCII digits>`` is a bad position."""
        for since in (
            "abc",
            "",
            "1-",
            "-1",
            "1",
            "1-1-1",
            "1--1",
            "+1-1",
            "%201-1",
            "1-1%0A",
            "1-0x1",
            "1_0-1",
            # Arabic-Indic one, fullwidth one, superscript two.
            "%D9%A1-1",
            "1-%EF%BC%91",
            "%C2%B2-1",
        ):
            with self.subTest(since=since):
                self.assertBadResume("since=" + since)

    def test_part_beyond_64_bits(self) -> None:
        """A part above 2**64 - 1 is a bad position, in either place."""
        for since in (f"{2**64}-0", f"0-{2**64}", f"{10**30}-1"):
            with self.subTest(since=since):
                self.assertBadResume("since=" + since)

    def test_largest_parts_accepted(self) -> None:
        """Both parts at 2**64 - 1 are a valid position (not held: a gap)."""
        since = f"{2**64 - 1}-{2**64 - 1}"
        connection = self.v1("since=" + since)
        self.flush()
        self.assertTrue(connection.client.opened)
        self.assertEqual(
            connection.client.messages,
            text(b"!gap " + since.encode() + b" -", b"!live"),
        )

    def test_repeated(self) -> None:
        """``since`` given twice is refused even when both values are valid."""
        for query in ("since=1-1&since=1-1", "since=1-1&since=", "since=&since=2-2"):
            with self.subTest(query=query):
                self.assertBadResume(query)

    def test_without_the_subprotocol(self) -> None:
        """A valid since without nanostream.v1 on offer is refused."""
        for protocols in (None, ["chat"]):
            with self.subTest(protocols=protocols):
                self.assertBadResume("since=" + lid(1).decode(), protocols=protocols)

    def test_logged_with_the_origin(self) -> None:
        """The refusal's log event names the request's (allowed) Origin."""
        self.serve(origins=[ALLOWED_ORIGIN])
        self.assertBadResume("since=x", origin=ALLOWED_ORIGIN)

    def test_origin_is_checked_first(self) -> None:
        """A bad origin with a bad since is refused for the origin: 403."""
        self.serve(origins=[ALLOWED_ORIGIN])
        connection = self.connect(
            "t=" + mint() + "&since=x",
            origin="https://evil.example.net",
            protocols=[V1],
        )
        self.assertEqual(
            connection.client.status_line,
            f"HTTP/1.1 403 {reasons.ORIGIN_NOT_ALLOWED}",
        )
        self.assertEqual(self.mentioning(reasons.BAD_RESUME), [])

    def test_checked_before_the_token(self) -> None:
        """A bad since with no token, or a bad one, is 400: the token is not read."""
        for query in ("since=x", "t=&since=x", "t=not.a.token&since=1-"):
            with self.subTest(query=query):
                self.events.clear()
                connection = self.connect(query, protocols=[V1])
                self.assertEqual(
                    connection.client.status_line,
                    f"HTTP/1.1 400 {reasons.BAD_RESUME}",
                )
                self.assertEqual(self.mentioning(reasons.NO_TOKEN), [])
                self.assertEqual(self.mentioning(reasons.INVALID), [])

    def test_counted_by_reason(self) -> None:
        """Each refusal counts once under its reason, for the metrics."""
        self.assertBadResume("since=x")
        self.assertBadResume("since=1-1", protocols=None)
        self.assertEqual(self.factory.admission.refused[reasons.BAD_RESUME], 2)


class ReplayTests(ResumeTestCase):
    """A valid ``since``: the missed lines, then ``!live``, then the live ones."""

    def test_held_since_replays_then_goes_live(self) -> None:
        """Resuming at a held id gives every later line, !live, then live lines."""
        self.broadcaster.broadcast(numbered(1, 5))
        connection = self.v1("since=" + lid(2).decode())
        self.flush()
        self.assertEqual(connection.client.messages, [*with_ids(3, 5), *text(b"!live")])
        self.broadcaster.broadcast(numbered(6, 7))
        self.flush()
        self.assertEqual(
            connection.client.messages,
            [*with_ids(3, 5), *text(b"!live"), *with_ids(6, 7)],
        )
        self.assertEqual(self.broadcaster.resumes_exact, 1)

    def test_lines_during_the_replay_follow_it(self) -> None:
        """Lines read before the replay is written come once, before or after !live."""
        self.broadcaster.broadcast(numbered(1, 3))
        connection = self.v1("since=" + lid(1).decode())
        # The handshake is done; the replay has not run yet.
        self.broadcaster.broadcast(numbered(4, 5))
        self.flush()
        self.broadcaster.broadcast(numbered(6, 6))
        self.flush()
        messages = connection.client.messages
        self.assertEqual(messages.count((b"!live", False)), 1)
        self.assertEqual(
            [m for m in messages if m != (b"!live", False)], with_ids(2, 6)
        )

    def test_since_past_the_history_bound(self) -> None:
        """An evicted since: !gap with the oldest held id, the held lines, !live."""
        self.serve(history_lines=3)
        self.broadcaster.broadcast(numbered(1, 10))
        connection = self.v1("since=" + lid(2).decode())
        self.flush()
        self.assertEqual(
            connection.client.messages,
            [
                *text(b"!gap " + lid(2) + b" " + lid(8)),
                *with_ids(8, 10),
                *text(b"!live"),
            ],
        )

    def test_gap_echoes_since_as_given(self) -> None:
        """!gap repeats the since the client sent, leading zeros and all."""
        self.serve(history_lines=3)
        self.broadcaster.broadcast(numbered(1, 4))
        connection = self.v1("since=0001-0002")
        self.flush()
        self.assertEqual(
            connection.client.messages[0], (b"!gap 0001-0002 " + lid(2), False)
        )

    def test_resume_uses_up_its_token(self) -> None:
        """A resume is a handshake like any other: its token works once."""
        self.broadcaster.broadcast(numbered(1, 2))
        query = f"t={mint()}&since={lid(1).decode()}"
        self.assertTrue(self.connect(query, protocols=[V1]).client.opened)
        again = self.connect(query, protocols=[V1])
        self.assertEqual(
            again.client.status_line, f"HTTP/1.1 401 {reasons.ALREADY_USED}"
        )


class SourceGapTests(ResumeTestCase):
    """When the source lost lines, raw clients go and v1 clients are told."""

    def test_raw_closed_with_1011_v1_told(self) -> None:
        """A source gap closes a raw client with 1011; a v1 client gets !gap."""
        raw = self.connect("t=" + mint())
        v1 = self.v1()
        self.broadcaster.broadcast(numbered(1, 2))
        self.broadcaster.source_gap()
        self.flush()
        self.assertEqual(raw.client.close_code, 1011)
        self.assertTrue(raw.client.closed_cleanly)
        self.assertFalse(v1.client.closed)
        self.assertEqual(self.factory.tracker.open, 1)
        self.broadcaster.broadcast([b"after"])
        self.flush()
        self.assertEqual(
            v1.client.messages,
            [
                *with_ids(1, 2),
                *text(b"!gap " + lid(2) + b" " + lid(3), lid(3) + b" after"),
            ],
        )
        self.assertEqual(raw.client.messages, text(*numbered(1, 2)))

    def test_raw_client_after_the_gap_stays(self) -> None:
        """A raw client that connects after the gap hears the next line."""
        self.broadcaster.broadcast(numbered(1, 1))
        self.broadcaster.source_gap()
        raw = self.connect("t=" + mint())
        self.broadcaster.broadcast([b"after"])
        self.flush()
        self.assertFalse(raw.client.closed)
        self.assertEqual(raw.client.messages, text(b"after"))


class ReplayStartTests(SynchronousTestCase):
    """A replay on a plain socket starts once the handshake response is out."""

    def test_backlog_beyond_the_bound_does_not_drop(self) -> None:
        """A resume whose backlog exceeds --max-buffer-bytes is fed, not dropped.

        Until the handshake response has left, a plain-socket sink queues
        behind it and counts what it queues as unsent: a replay chunk
        written then would make a client that is not slow look slow.
        """
        clock = Clock()
        clock.advance(NOW)
        broadcaster = Broadcaster(16 * 1024, clock, History(10_000, 10**7))
        lines = [b"%04d " % n + b"x" * 1995 for n in range(1, 201)]
        broadcaster.broadcast(lines)
        connection = Peer(FakeSocket(), held=b"HTTP/1.1 101\r\n\r\n")
        broadcaster.resume(connection.sink, lid(1))
        clock.advance(0)
        self.assertEqual(connection.dropped, [])
        # The socket is writable: the handshake response leaves.
        connection.transport.doWrite()
        for _ in range(100):
            clock.advance(0)
            connection.transport.doWrite()
        self.assertEqual(connection.dropped, [])
        head, _, delivered = bytes(connection.socket.received).partition(b"\r\n\r\n")
        self.assertEqual(head, b"HTTP/1.1 101")
        self.assertEqual(
            [payload for _, payload in parse_frames(delivered)],
            [lid(n) + b" " + lines[n - 1] for n in range(2, 201)] + [b"!live"],
        )
