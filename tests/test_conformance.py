"""RFC 6455 conformance of the server side, for a server that does not echo.

The cases follow the categories of the Autobahn TestSuite that apply to a
listen-only server (framing, pings and pongs, close handling, UTF-8 of
client frames, limits); docs/reliability.rst records the suite's own run.
The client here is raw bytes, so it can send what no well-behaved library
would: reserved bits, unknown opcodes, bad close codes, broken UTF-8.  It
meets the real :class:`~nanostream.websocket.NanostreamServerFactory` over
``twisted.test.iosim``, Autobahn's timers on a ``Clock``.
"""

from __future__ import annotations

import base64
import os
import struct
from dataclasses import dataclass, field

import support
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from nanostream.websocket import MAX_CLIENT_MESSAGE_BYTES

SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 8080)

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

NORMAL = 1000
PROTOCOL_ERROR = 1002
INVALID_PAYLOAD = 1007
TOO_BIG = 1009

#: Close codes a peer may send (RFC 6455 §7.4; the suite's cases 7.7.x).
VALID_CLOSE_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011)
VALID_CLOSE_CODES += (3000, 3999, 4000, 4999)
#: Close codes a peer must not send (the suite's cases 7.9.x and 7.13.x).
INVALID_CLOSE_CODES = (0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999, 5000, 65535)

#: A UTF-8 sequence no decoder may accept: an encoded surrogate.
BAD_UTF8 = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"


def client_frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0
) -> bytes:
    """One masked frame, as only a client sends them, with any bits we like."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return head + mask + masked


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@dataclass
class Frame:
    """A frame the server sent."""

    fin: bool
    rsv: int
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        assert self.opcode == CLOSE
        if not self.payload:
            return None
        return int(struct.unpack("!H", self.payload[:2])[0])


def parse_server_frames(data: bytes) -> list[Frame]:
    """Every complete frame in ``data``; server frames must be unmasked."""
    frames = []
    at = 0
    while at + 2 <= len(data):
        first, second = data[at], data[at + 1]
        if second & 0x80:
            raise AssertionError("the server masked a frame")
        length = second & 0x7F
        at += 2
        if length == 126:
            (length,) = struct.unpack("!H", data[at : at + 2])
            at += 2
        elif length == 127:
            (length,) = struct.unpack("!Q", data[at : at + 8])
            at += 8
        if at + length > len(data):
            raise AssertionError("the server sent a truncated frame")
        frames.append(
            Frame(
                bool(first & 0x80),
                (first >> 4) & 7,
                first & 0x0F,
                data[at : at + length],
            )
        )
        at += length
    if at != len(data):
        raise AssertionError("trailing bytes after the server's last frame")
    return frames


@dataclass
class RawClient(Protocol):
    """Writes whatever bytes it is told and keeps what the server answers."""

    received: bytes = b""
    lost: Failure | None = None
    header: bytes = field(default=b"", init=False)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost = reason

    def frames(self) -> list[Frame]:
        """The server's frames after the HTTP response."""
        head, sep, rest = self.received.partition(b"\r\n\r\n")
        assert sep, "no complete HTTP response"
        self.header = head
        return parse_server_frames(rest)


@dataclass
class Session:
    """One raw client joined to one server protocol by an in-memory pipe."""

    client: RawClient
    pump: iosim.IOPump

    def send(self, *frames: bytes) -> None:
        for data in frames:
            self.client.transport.write(data)
        self.pump.flush()

    def frames(self) -> list[Frame]:
        return self.client.frames()

    def closes(self) -> list[Frame]:
        return [frame for frame in self.frames() if frame.opcode == CLOSE]

    @property
    def dropped(self) -> bool:
        """Whether the TCP connection is gone."""
        return self.client.lost is not None


class ConformanceTestCase(SynchronousTestCase):
    """A --no-auth server on a Clock, and raw clients that have shaken hands."""

    def setUp(self) -> None:
        self.clock = Clock()
        support.forbid_global_timers(self)
        server = support.serve(self.clock, None, max_buffer_bytes=1024 * 1024)
        self.broadcaster = server.broadcaster
        self.factory = server.factory
        self.ports = iter(range(50001, 51000))

    def open(self) -> Session:
        """A raw client whose opening handshake succeeded."""
        client_address = IPv4Address("TCP", "127.0.0.1", next(self.ports))
        server = self.factory.buildProtocol(client_address)
        client = RawClient()
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, True, SERVER_ADDRESS, client_address),
            client,
            iosim.FakeTransport(client, False, client_address, SERVER_ADDRESS),
            clock=self.clock,
        )
        key = base64.b64encode(os.urandom(16))
        client.transport.write(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        pump.flush()
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101 "))
        return Session(client, pump)

    def assertFailed(self, session: Session, code: int) -> None:
        """The server closed with ``code``, left the fan-out, and dropped TCP.

        Failing a connection may drop TCP at once (RFC 6455 §7.1.7) or after
        the client answers the close; either way exactly one close is sent.
        """
        self.assertEqual([frame.close_code for frame in session.closes()], [code])
        self.assertEqual(len(self.broadcaster), 0)
        if not session.dropped:
            session.send(client_frame(CLOSE, close_payload(code)))
        self.assertTrue(session.dropped)
        self.assertEqual(len(session.closes()), 1, "a second close frame was sent")

    def assertStillOpen(self, session: Session) -> None:
        """No close frame, and the connection still hears the broadcast."""
        self.assertEqual(session.closes(), [])
        self.assertFalse(session.dropped)
        self.broadcaster.broadcast([b"still listening"])
        session.pump.flush()
        self.assertEqual(
            [f.payload for f in session.frames() if f.opcode == TEXT][-1:],
            [b"still listening"],
        )


class FramingTests(ConformanceTestCase):
    """Frames and fragments from clients (the suite's sections 3, 4 and 5)."""

    def test_fragmented_message_is_read(self) -> None:
        """A text message in three fragments is accepted (and dropped)."""
        session = self.open()
        session.send(
            client_frame(TEXT, b"frag", fin=False),
            client_frame(CONTINUATION, b"men", fin=False),
            client_frame(CONTINUATION, b"ted"),
        )
        self.assertStillOpen(session)

    def test_ping_between_fragments_is_answered(self) -> None:
        """A ping inside a fragmented message gets its pong; the message is read."""
        session = self.open()
        session.send(
            client_frame(TEXT, b"fragment1", fin=False),
            client_frame(PING, b"ping payload"),
            client_frame(CONTINUATION, b"fragment2"),
        )
        pongs = [f.payload for f in session.frames() if f.opcode == PONG]
        self.assertEqual(pongs, [b"ping payload"])
        self.assertStillOpen(session)

    def test_continuation_without_a_message(self) -> None:
        """A continuation frame that continues nothing fails with 1002."""
        for fin in (True, False):
            session = self.open()
            session.send(client_frame(CONTINUATION, b"orphan", fin=fin))
            self.assertFailed(session, PROTOCOL_ERROR)

    def test_new_message_inside_a_fragmented_one(self) -> None:
        """A text frame while a fragmented message is open fails with 1002."""
        session = self.open()
        session.send(
            client_frame(TEXT, b"fragment1", fin=False),
            client_frame(TEXT, b"fragment2"),
        )
        self.assertFailed(session, PROTOCOL_ERROR)

    def test_reserved_bits(self) -> None:
        """Every combination of the RSV bits fails with 1002 (no extension agreed)."""
        for rsv in range(1, 8):
            for opcode in (TEXT, BINARY, PING):
                session = self.open()
                session.send(client_frame(opcode, b"Hello", rsv=rsv))
                self.assertFailed(session, PROTOCOL_ERROR)

    def test_unknown_opcodes(self) -> None:
        """Reserved data (3-7) and control (11-15) opcodes fail with 1002."""
        for opcode in (*range(3, 8), *range(11, 16)):
            session = self.open()
            session.send(client_frame(opcode, b"what is this"))
            self.assertFailed(session, PROTOCOL_ERROR)

    def test_binary_is_not_checked_as_utf8(self) -> None:
        """A binary message with any bytes is read and dropped."""
        session = self.open()
        session.send(client_frame(BINARY, bytes(range(256))))
        self.assertStillOpen(session)


class PingTests(ConformanceTestCase):
    """Pings and pongs (the suite's section 2)."""

    def test_pong_carries_the_ping_payload(self) -> None:
        """Each ping, empty to 125 bytes, text or binary, is answered in kind."""
        session = self.open()
        payloads = [b"", b"Hello, world!", bytes(range(125)), b"\xff\xfe\x00"]
        for payload in payloads:
            session.send(client_frame(PING, payload))
        pongs = [f.payload for f in session.frames() if f.opcode == PONG]
        self.assertEqual(pongs, payloads)
        self.assertStillOpen(session)

    def test_pong_while_broadcasting(self) -> None:
        """A ping between broadcast lines is answered by a well-formed pong."""
        session = self.open()
        self.broadcaster.broadcast([b"line 1", b"line 2"])
        session.client.transport.write(client_frame(PING, b"are you there"))
        self.broadcaster.broadcast([b"line 3"])
        session.pump.flush()
        self.broadcaster.broadcast([b"line 4"])
        session.pump.flush()
        frames = [(f.opcode, f.payload) for f in session.frames()]
        self.assertEqual(
            [payload for opcode, payload in frames if opcode == TEXT],
            [b"line 1", b"line 2", b"line 3", b"line 4"],
        )
        self.assertEqual(
            [payload for opcode, payload in frames if opcode == PONG],
            [b"are you there"],
        )
        self.assertTrue(all(f.fin and not f.rsv for f in session.frames()))

    def test_unsolicited_pong_is_ignored(self) -> None:
        """A pong nobody asked for is allowed and changes nothing."""
        session = self.open()
        session.send(client_frame(PONG, b"unsolicited"))
        self.assertStillOpen(session)

    def test_oversized_control_frames(self) -> None:
        """A ping, pong or close with more than 125 bytes of payload fails with 1002."""
        for opcode in (PING, PONG, CLOSE):
            session = self.open()
            payload = (
                close_payload(NORMAL, b"x" * 124) if opcode == CLOSE else b"x" * 126
            )
            session.send(client_frame(opcode, payload))
            self.assertFailed(session, PROTOCOL_ERROR)

    def test_fragmented_control_frames(self) -> None:
        """A ping or pong without FIN fails with 1002: control frames are whole."""
        for opcode in (PING, PONG):
            session = self.open()
            session.send(
                client_frame(opcode, b"frag", fin=False),
                client_frame(CONTINUATION, b"ment"),
            )
            self.assertFailed(session, PROTOCOL_ERROR)


class CloseTests(ConformanceTestCase):
    """Closing handshakes the client starts (the suite's section 7)."""

    def assertEchoed(self, session: Session, payload: bytes, code: int | None) -> None:
        """The client closes with ``payload``; the server answers ``code`` and drops."""
        session.send(client_frame(CLOSE, payload))
        self.assertEqual([f.close_code for f in session.closes()], [code])
        self.assertTrue(session.dropped)
        self.assertEqual(len(self.broadcaster), 0)

    def test_valid_codes_are_echoed(self) -> None:
        """A close with a valid code is answered with the same code, then TCP drops."""
        for code in VALID_CLOSE_CODES:
            self.assertEchoed(self.open(), close_payload(code, b"bye"), code)

    def test_close_without_code(self) -> None:
        """An empty close is answered with a close and TCP drops."""
        session = self.open()
        session.send(client_frame(CLOSE))
        self.assertEqual(len(session.closes()), 1)
        self.assertIn(session.closes()[0].close_code, (None, NORMAL))
        self.assertTrue(session.dropped)

    def test_invalid_codes(self) -> None:
        """A close with a code no peer may send fails with 1002."""
        for code in INVALID_CLOSE_CODES:
            session = self.open()
            session.send(client_frame(CLOSE, close_payload(code)))
            self.assertEqual(
                [f.close_code for f in session.closes()], [PROTOCOL_ERROR], code
            )
            self.assertTrue(session.dropped)

    def test_one_byte_close_payload(self) -> None:
        """A close payload of one byte cannot hold a code: 1002."""
        session = self.open()
        session.send(client_frame(CLOSE, b"\x03"))
        self.assertEqual([f.close_code for f in session.closes()], [PROTOCOL_ERROR])
        self.assertTrue(session.dropped)

    def test_invalid_utf8_reason(self) -> None:
        """A close reason that is not UTF-8 fails with 1007."""
        session = self.open()
        session.send(client_frame(CLOSE, close_payload(NORMAL, BAD_UTF8)))
        self.assertEqual([f.close_code for f in session.closes()], [INVALID_PAYLOAD])
        self.assertTrue(session.dropped)

    def test_frames_after_close_are_ignored(self) -> None:
        """Nothing the client sends after its close frame is answered."""
        session = self.open()
        session.client.transport.write(client_frame(CLOSE, close_payload(NORMAL)))
        session.send(client_frame(PING, b"too late"), client_frame(TEXT, b"late"))
        self.assertEqual([f.opcode for f in session.frames()], [CLOSE])
        self.assertTrue(session.dropped)


class Utf8Tests(ConformanceTestCase):
    """UTF-8 in client text frames (the suite's section 6)."""

    def test_invalid_utf8_text(self) -> None:
        """A text message that is not UTF-8 fails with 1007."""
        session = self.open()
        session.send(client_frame(TEXT, BAD_UTF8))
        self.assertFailed(session, INVALID_PAYLOAD)

    def test_invalid_utf8_fails_before_the_last_fragment(self) -> None:
        """Bad UTF-8 fails the connection as soon as it arrives, not at the end."""
        session = self.open()
        session.send(client_frame(TEXT, b"fine so far", fin=False))
        session.send(client_frame(CONTINUATION, b"\xed\xa0\x80", fin=False))
        self.assertFailed(session, INVALID_PAYLOAD)

    def test_valid_utf8_split_across_fragments(self) -> None:
        """A character split between fragments is valid UTF-8 and is accepted."""
        text = "κόσμε \U0001f600".encode()
        session = self.open()
        session.send(
            client_frame(TEXT, text[:2], fin=False),
            client_frame(CONTINUATION, text[2:-2], fin=False),
            client_frame(CONTINUATION, text[-2:]),
        )
        self.assertStillOpen(session)


class LimitTests(ConformanceTestCase):
    """How much a client may send (the suite's section 9, scaled to our limit)."""

    def test_message_at_the_limit(self) -> None:
        """A message of exactly the limit is read and dropped."""
        session = self.open()
        session.send(client_frame(BINARY, b"x" * MAX_CLIENT_MESSAGE_BYTES))
        self.assertStillOpen(session)

    def test_oversized_message(self) -> None:
        """One byte over the limit fails with 1009."""
        session = self.open()
        session.send(client_frame(TEXT, b"x" * (MAX_CLIENT_MESSAGE_BYTES + 1)))
        self.assertFailed(session, TOO_BIG)

    def test_oversized_in_fragments(self) -> None:
        """Fragments that add up to more than the limit fail with 1009."""
        session = self.open()
        half = b"x" * (MAX_CLIENT_MESSAGE_BYTES // 2 + 1)
        session.send(
            client_frame(BINARY, half, fin=False),
            client_frame(CONTINUATION, half),
        )
        self.assertFailed(session, TOO_BIG)

    def test_declared_length_is_enough(self) -> None:
        """A header announcing a huge payload fails with 1009 before it arrives.

        The client's answering close would be read as more of that payload,
        so the close-handshake timeout is what drops TCP.
        """
        self.factory.setProtocolOptions(closeHandshakeTimeout=1)
        session = self.open()
        header = bytes([0x80 | BINARY, 0x80 | 127]) + struct.pack("!Q", 1 << 40)
        session.send(header + os.urandom(4) + b"only the start")
        self.assertEqual([f.close_code for f in session.closes()], [TOO_BIG])
        self.assertEqual(len(self.broadcaster), 0)
        session.send(client_frame(PING, b"anyone?"), b"x" * 1000)
        self.assertEqual([f.opcode for f in session.frames()], [CLOSE])
        self.assertFalse(session.dropped)
        self.clock.advance(1)
        session.pump.flush()
        self.assertTrue(session.dropped)
