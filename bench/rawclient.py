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
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import hashlib
import os
from collections.abc import Sequence
from typing import cast
from urllib.parse import urlsplit

from clients import Rejected, SourceAddr, Tally

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
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
        """Lines as the server will see them: split on LF, CR and empties dropped."""
        with open(path, "rb") as f:
            raw = f.read().split(b"\n")
        lines = [line[:-1] if line.endswith(b"\r") else line for line in raw]
        return cls([line for line in lines if line])

    def frames_before(self, pos: int) -> int:
        """How many whole frames lie in the first ``pos`` bytes."""
        return bisect.bisect_right(self.ends, pos)


def _utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class ExactStream(asyncio.Protocol):
    """One client connection: HTTP upgrade, then the exact-match check."""

    def __init__(self, request: bytes, key: bytes, expected: Expected, tally: Tally):
        self._request = request
        self._accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self._expected = expected
        self._tally = tally
        self._pos = 0  # bytes of the expected stream matched so far
        self._head = b""  # the HTTP response, until it is complete
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
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head, rest = self._head[:end], self._head[end + 4 :]
        status_line, *headers = head.split(b"\r\n")
        parts = status_line.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        accept = next(
            (
                h.split(b":", 1)[1].strip()
                for h in headers
                if h.lower().startswith(b"sec-websocket-accept:")
            ),
            None,
        )
        if status != 101 or accept != self._accept:
            self.opened.set_exception(Rejected(status))
            assert self.transport is not None
            self.transport.close()
            return b""
        self.opened.set_result(None)
        return rest

    def _complete(self) -> None:
        """All lines arrived intact; anything more is parsed as frames."""
        tally = self._tally
        tally.next = tally.expect
        tally.over = True
        tally.stream.finished()
        self._frames = bytearray()

    def _diverge(self, data: bytes) -> None:
        """Switch to frame-by-frame parsing at the last frame boundary."""
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


async def open_exact(
    url: str, expected: Expected, tally: Tally, source: SourceAddr
) -> ExactStream:
    """Connect to ``url`` (ws://host:port/path?query) and complete the upgrade."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    kwargs = {} if source is None else {"local_addr": source}
    _, protocol = await loop.create_connection(
        lambda: ExactStream(request, key, expected, tally),
        parts.hostname,
        parts.port,
        **kwargs,
    )
    await asyncio.wait_for(protocol.opened, 30)
    return protocol
