"""A receive-only WebSocket client that checks fan-out by exact bytes.

In a fan-out run every client must receive exactly the frames of lines
0..M-1, in order, once each. Servers send unmasked frames with minimal
length encoding (RFC 6455 §5.2), so that stream is known in advance, byte
for byte, once the lines are. This client compares what arrives with it:
one ``startswith`` per read, a memcmp in C, instead of a Python call per
message. That keeps the load generator's cost per delivery close to the
kernel's and lets a fast server, not the load generator, set the pace.

It is no less strict than a parsing client: a lost, duplicated, reordered,
merged, truncated or mis-typed message breaks the match. From the first
byte that differs (a fragmented message, an unexpected ping, or a real
fault) it falls back to parsing frames one by one and counting sequence
numbers, so that faults are still reported as numbers.

A slow client (``fanout-slow-N``) is this client with a small receive
buffer (``SO_RCVBUF``, set before connecting so the window stays small)
that reads at most once per tick of a :class:`ReadPacer`: it drains slower
than a fast server writes, so the server's sockets fill and it must queue.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import hashlib
import os
import socket
from collections.abc import Sequence
from typing import cast
from urllib.parse import urlsplit

from clients import Rejected, SourceAddr, Tally

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The MSS slow clients announce: Ethernet's 1500-byte MTU less IP and TCP.
SLOW_MSS = 1460
_CLOSE_OK = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # masked with a zero key


def frame(payload: bytes, opcode: int = 1) -> bytes:
    """The unmasked, unfragmented frame a server sends for ``payload``."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


class Expected:
    """The byte stream every client should receive, and its frame bounds."""

    def __init__(self, lines: Sequence[bytes]) -> None:
        frames = [frame(line, 1 if _utf8(line) else 2) for line in lines]
        self.data = b"".join(frames)
        self.ends: list[int] = []
        end = 0
        for f in frames:
            end += len(f)
            self.ends.append(end)

    @classmethod
    def from_file(cls, path: str) -> Expected:
        return cls(read_lines(path))

    def frames_before(self, pos: int) -> int:
        """How many whole frames lie in the first ``pos`` bytes."""
        return bisect.bisect_right(self.ends, pos)


def read_lines(path: str) -> list[bytes]:
    """Lines as the server will see them: split on LF, CR and empties dropped."""
    with open(path, "rb") as f:
        raw = f.read().split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in raw]
    return [line for line in lines if line]


def _utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class ReadPacer:
    """Lets each client read at most once per ``tick`` seconds.

    A client that has read pauses its transport and waits here; one timer
    resumes all waiting clients at once, so the pacing costs one timer per
    tick however many clients there are.
    """

    def __init__(self, tick: float) -> None:
        self._tick = tick
        self._held: list[asyncio.Transport] = []
        self.holds = 0
        self._handle: asyncio.TimerHandle | None = (
            asyncio.get_running_loop().call_later(tick, self._release)
        )

    def hold(self, transport: asyncio.Transport) -> None:
        """Stop reading ``transport`` until the next tick."""
        if self._handle is None:
            return
        transport.pause_reading()
        self._held.append(transport)
        self.holds += 1

    def _release(self) -> None:
        held, self._held = self._held, []
        for transport in held:
            if not transport.is_closing():
                transport.resume_reading()
        self._handle = asyncio.get_running_loop().call_later(self._tick, self._release)

    def stop(self) -> None:
        """Read at full speed from now on: the closing handshakes must not wait."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        held, self._held = self._held, []
        for transport in held:
            if not transport.is_closing():
                transport.resume_reading()


class ExactStream(asyncio.Protocol):
    """One client connection: HTTP upgrade, then the exact-match check."""

    def __init__(
        self,
        request: bytes,
        upgrade: Upgrade,
        expected: Expected | IdLines,
        tally: Tally,
        pacer: ReadPacer | None = None,
    ):
        self._request = request
        self._upgrade = upgrade
        # nanostream.v1: the bytes are known once the first id is (IdLines).
        self._lines = expected if isinstance(expected, IdLines) else None
        self._expected = expected if isinstance(expected, Expected) else None
        self._first = b""  # a v1 stream's bytes until its first frame is whole
        self._tally = tally
        self._pacer = pacer
        self._pos = 0  # bytes of the expected stream matched so far
        self._frames: bytearray | None = None  # set once parsing frame by frame
        self._fragments: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during handshake"))
        self._tally.on_close()

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            data = self._handshake(data)
            if not data:
                return
        if self._pacer is not None and self.transport is not None:
            self._pacer.hold(self.transport)
        if self._expected is None:
            data = self._resolve(data)
            if not data:
                return
        self._tally.stream.reads += 1
        if self._frames is None:
            expected = self._expected.data
            if expected.startswith(data, self._pos):
                self._pos += len(data)
                if self._pos == len(expected):
                    self._complete()
                else:
                    # Once per read, not per message: keeps progress visible.
                    self._tally.next = self._expected.frames_before(self._pos)
                return
            self._diverge(data)
        self._frames += data
        self._parse()

    def _handshake(self, data: bytes) -> bytes:
        """Read the HTTP response; return what follows it, if it was a 101."""
        try:
            rest = self._upgrade.feed(data)
        except Rejected as exc:
            self.opened.set_exception(exc)
            assert self.transport is not None
            self.transport.close()
            return b""
        if rest is None:
            return b""
        self.opened.set_result(None)
        return rest

    def _resolve(self, data: bytes) -> bytes:
        """Learn a v1 stream's first id from its first frame, then its bytes."""
        assert self._lines is not None
        self._first += data
        bounds = frame_bounds(self._first, 0)
        if bounds is None:
            return b""
        _, start, end = bounds
        self._expected = self._lines.expected(self._first[start:end])
        data, self._first = self._first, b""
        return data

    def _complete(self) -> None:
        """All lines arrived intact; anything more is parsed as frames."""
        tally = self._tally
        tally.next = tally.expect
        tally.over = True
        tally.stream.finished()
        self._frames = bytearray()

    def _diverge(self, data: bytes) -> None:
        """Switch to frame-by-frame parsing at the last frame boundary."""
        assert self._expected is not None
        done = self._expected.frames_before(self._pos)
        start = self._expected.ends[done - 1] if done else 0
        self._tally.next = done
        self._frames = bytearray(self._expected.data[start : self._pos])

    def _parse(self) -> None:
        buf = self._frames
        assert buf is not None and self.transport is not None
        while len(buf) >= 2:
            opcode, fin = buf[0] & 0x0F, buf[0] & 0x80
            size, at = buf[1] & 0x7F, 2
            if size == 126:
                size, at = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                size, at = int.from_bytes(buf[2:10], "big"), 10
            if buf[1] & 0x80:
                at += 4  # a masked server frame is a protocol error; skip the key
            if len(buf) < at + size:
                return
            payload = bytes(buf[at : at + size])
            del buf[: at + size]
            if opcode in (1, 2) or (opcode == 0 and self._fragments):
                self._fragments.append(payload)
                if fin:
                    message = b"".join(self._fragments)
                    self._fragments.clear()
                    self._tally.on_message(message)
            elif opcode == 8:
                self.transport.write(_CLOSE_OK)
                self.transport.close()
                return
            elif opcode == 9:
                self.transport.write(_masked(0xA, payload))

    def close(self) -> None:
        """Say goodbye (close 1000) and drop the connection."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_CLOSE_OK)
            self.transport.close()


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client frame: clients must mask; a zero key leaves the bytes as they are."""
    return bytes((0x80 | opcode, 0x80 | len(payload))) + b"\x00\x00\x00\x00" + payload


def upgrade_request(url: str, protocol: str | None = None) -> tuple[bytes, Upgrade]:
    """The opening handshake for ``url``, and the checker of its answer."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16))
    offer = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{offer}\r\n"
    ).encode()
    return request, Upgrade(key, protocol)


class Upgrade:
    """Reads the server's answer to an opening handshake.

    A 101 counts only with the right ``Sec-WebSocket-Accept`` and, when a
    subprotocol was offered, that subprotocol selected.
    """

    def __init__(self, key: bytes, protocol: str | None = None) -> None:
        self._accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self._protocol = protocol.encode() if protocol else None
        self._head = b""

    def feed(self, data: bytes) -> bytes | None:
        """None until the answer is whole; then the bytes after it.

        Raises Rejected for anything but a proper 101.
        """
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return None
        head, rest = self._head[:end], self._head[end + 4 :]
        self._head = b""
        status_line, *lines = head.split(b"\r\n")
        parts = status_line.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if status != 101 or headers.get(b"sec-websocket-accept") != self._accept:
            raise Rejected(status)
        if headers.get(b"sec-websocket-protocol") != self._protocol:
            raise Rejected(status, "subprotocol not selected")
        return rest


def frame_bounds(buf: bytes | bytearray, at: int) -> tuple[int, int, int] | None:
    """``(opcode, payload start, frame end)`` of the frame at ``at``, if whole."""
    if len(buf) < at + 2:
        return None
    size, start = buf[at + 1] & 0x7F, at + 2
    if size == 126:
        if len(buf) < at + 4:
            return None
        size, start = int.from_bytes(buf[at + 2 : at + 4], "big"), at + 4
    elif size == 127:
        if len(buf) < at + 10:
            return None
        size, start = int.from_bytes(buf[at + 2 : at + 10], "big"), at + 10
    if buf[at + 1] & 0x80:
        start += 4
    if len(buf) < start + size:
        return None
    return buf[at] & 0x0F, start, start + size


class IdLines:
    """The lines of a ``nanostream.v1`` fan-out run, whose ids are learnt late.

    A v1 client gets ``<id> <line>``; the ids are ``<start ms>-<n>``, the
    server's start time unknown to us, so the exact byte stream is built
    when a client sees its first message, once for all clients alike.
    """

    def __init__(self, lines: Sequence[bytes]) -> None:
        self.lines = lines
        self._built: dict[bytes, Expected] = {}

    @classmethod
    def from_file(cls, path: str) -> IdLines:
        return cls(read_lines(path))

    def expected(self, first_message: bytes) -> Expected:
        """The stream that starts with ``first_message``: ids counting up by one."""
        first_id = first_message.split(b" ", 1)[0]
        built = self._built.get(first_id)
        if built is None:
            ms, _, n = first_id.partition(b"-")
            if not (ms.isdigit() and n.isdigit()):
                ms, n = b"0", b"0"  # not an id: the comparison will say so
            start = int(n)
            built = Expected(
                [
                    b"%s-%d %s" % (ms, start + i, line)
                    for i, line in enumerate(self.lines)
                ]
            )
            self._built[first_id] = built
        return built


async def open_exact(
    url: str,
    expected: Expected | IdLines,
    tally: Tally,
    source: SourceAddr,
    protocol: str | None = None,
    rcvbuf: int | None = None,
    pacer: ReadPacer | None = None,
) -> ExactStream:
    """Connect to ``url`` (ws://host:port/path?query) and complete the upgrade;
    ``rcvbuf`` and ``pacer`` make a slow client."""
    parts = urlsplit(url)
    request, upgrade = upgrade_request(url, protocol)
    loop = asyncio.get_running_loop()

    def make() -> ExactStream:
        return ExactStream(request, upgrade, expected, tally, pacer)

    if rcvbuf is None:
        kwargs = {} if source is None else {"local_addr": source}
        _, protocol_ = await loop.create_connection(
            make, parts.hostname, parts.port, **kwargs
        )
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Before connect: the window scale is fixed by the SYN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            # An Ethernet-sized MSS, as from a client across a real network:
            # loopback's 64 KiB MSS would let the server's kernel autotune
            # its send buffer to megabytes and hold every byte itself.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SLOW_MSS)
            sock.setblocking(False)
            if source is not None:
                sock.bind(source)
            await loop.sock_connect(sock, (parts.hostname, parts.port))
        except BaseException:
            sock.close()
            raise
        _, protocol_ = await loop.create_connection(make, sock=sock)
    await asyncio.wait_for(protocol_.opened, 30)
    return protocol_
