"""``nanostream.v1`` clients for the resume scenarios, on the standard library.

A v1 client offers the subprotocol and gets every line as ``<id> <line>``,
and notices that start with ``!``. Three kinds of client live here:

* :class:`Recorder` keeps every frame it receives, byte for byte, with the
  offset of each line's frame: with a stdin source line ``n`` has id
  ``<start ms>-<n>``, so the recorder is the reference every other v1
  client of the run is compared with.
* :class:`Follower` is a client that resumes (``?since=``) or reconnects
  plainly. It compares what it receives with the recorder's bytes from
  the line after its ``since``: one ``startswith`` per read, a memcmp, so a
  thousand of them replaying a thousand lines each stay cheap. The only
  frame not in the recorder is ``!live``, accepted once, at a frame
  boundary; the frame after it must be the recorder's next line, which
  proves the seam: nothing lost, nothing repeated.
* :class:`LiveClient` parses each message, checks that ids count up by one,
  and records the line's latency (receipt minus the send time in the line).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from array import array
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import feed
from clients import Rejected
from rawclient import Upgrade, frame, frame_bounds, upgrade_request

SUBPROTOCOL = "nanostream.v1"
LIVE = frame(b"!live")
_CLOSE_OK = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # masked with a zero key


def parse_id(ident: bytes) -> tuple[bytes, int] | None:
    """``(ms, n)`` of an id ``<ms>-<n>``, None if it is not one."""
    ms, dash, n = ident.partition(b"-")
    if not (dash and ms.isdigit() and n.isdigit()):
        return None
    return ms, int(n)


class Client(asyncio.Protocol):
    """The opening handshake; subclasses take the frames after it."""

    def __init__(self, request: bytes, upgrade: Upgrade) -> None:
        self._request = request
        self._upgrade = upgrade
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.t_open = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            try:
                rest = self._upgrade.feed(data)
            except Rejected as exc:
                self.opened.set_exception(exc)
                assert self.transport is not None
                self.transport.close()
                return
            if rest is None:
                return
            self.t_open = time.monotonic_ns()
            self.opened.set_result(None)
            if not rest:
                return
            data = rest
        self.on_data(data)

    def on_data(self, data: bytes) -> None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during handshake"))
        self.on_lost()

    def on_lost(self) -> None:
        """The connection is gone."""

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_CLOSE_OK)
            self.transport.close()


async def connect(
    make: Callable[[bytes, Upgrade], Client], url: str, protocol: str | None
) -> Client:
    """Open ``url`` with a client built by ``make``; raise Rejected if refused."""
    parts = urlsplit(url)
    request, upgrade = upgrade_request(url, protocol)
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: make(request, upgrade), parts.hostname, parts.port
    )
    await asyncio.wait_for(client.opened, 30)
    return client


def messages(buf: bytearray) -> list[tuple[int, bytes]]:
    """Take the whole frames off the front of ``buf``: (opcode, payload) each."""
    out = []
    at = 0
    while (bounds := frame_bounds(buf, at)) is not None:
        opcode, start, end = bounds
        out.append((opcode, bytes(buf[start:end])))
        at = end
    del buf[:at]
    return out


class Recorder(Client):
    """Keeps every frame of the run's lines: the reference for followers."""

    def __init__(self, request: bytes, upgrade: Upgrade) -> None:
        super().__init__(request, upgrade)
        self.data = bytearray()
        self.offsets: list[int] = []  # offsets[n - 1]: where line n's frame starts
        self.ms: bytes | None = None
        self.faults: list[str] = []
        self.waiting: set[Follower] = set()
        self._buf = bytearray()

    @property
    def newest(self) -> int:
        """The count part of the newest id recorded (0 before any)."""
        return len(self.offsets)

    def on_data(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        at = 0
        grew = False
        while (bounds := frame_bounds(buf, at)) is not None:
            opcode, start, end = bounds
            if opcode in (1, 2):
                self._record(bytes(buf[at:end]), bytes(buf[start:end]))
                grew = True
            at = end
        del buf[:at]
        if grew and self.waiting:
            waiting, self.waiting = self.waiting, set()
            for follower in waiting:
                follower.retry()

    def _record(self, whole: bytes, payload: bytes) -> None:
        parsed = parse_id(payload.split(b" ", 1)[0])
        if parsed is None:
            self.faults.append(f"not a line: {payload[:40]!r}")
            return
        ms, n = parsed
        if self.ms is None:
            self.ms = ms
        if ms != self.ms or n != self.newest + 1:
            self.faults.append(f"id {ms.decode()}-{n} after {self.newest}")
        self.offsets.append(len(self.data))
        self.data += whole

    def frames_before(self, pos: int) -> int:
        return bisect.bisect_left(self.offsets, pos)

    def is_boundary(self, pos: int) -> bool:
        i = bisect.bisect_left(self.offsets, pos)
        return pos == len(self.data) or (
            i < len(self.offsets) and self.offsets[i] == pos
        )


class Follower(Client):
    """A reconnecting client, checked against the recorder byte for byte.

    With ``since`` it must receive the recorder's frames from line
    ``since + 1`` on, then ``!live`` (``t_live``), then the next line; without
    it, its first message is a line, and is the recorder's (``t_live`` then).
    """

    def __init__(
        self,
        request: bytes,
        upgrade: Upgrade,
        recorder: Recorder,
        since: int | None,
        done: Callable[[Follower], None],
    ) -> None:
        super().__init__(request, upgrade)
        self._rec = recorder
        self.since = since
        self._done = done
        self.state = "replay" if since is not None else "first"
        self.pos = recorder.offsets[since] if since is not None else 0
        self._pending = bytearray()
        self._t_data = 0
        self.t_live = 0
        self.replayed: int | None = None
        self.fault: str | None = None
        self.finished = False

    def on_data(self, data: bytes) -> None:
        if self.finished:
            return
        self._t_data = time.monotonic_ns()
        if (
            self.state == "replay"
            and not self._pending
            and self._rec.data.startswith(data, self.pos)
        ):
            self.pos += len(data)
            return
        self._pending += data
        self._advance()

    def retry(self) -> None:
        """The recorder has more: look again at what waited for it."""
        if not self.finished:
            self._advance()

    def _advance(self) -> None:
        buf = self._pending
        if self.state == "replay" and buf and not self._consume_matching():
            return
        self._frames()

    def _consume_matching(self) -> bool:
        """Take the longest run of ``_pending`` that matches the recorder.

        What is left then starts at a frame boundary (``!live``, a line the
        recorder has not got yet, or a fault). False once finished or when
        nothing is left.
        """
        rec, buf, pos = self._rec, self._pending, self.pos
        data = rec.data
        n = min(len(buf), len(data) - pos)
        with memoryview(buf) as view:
            if data.startswith(view[:n], pos):
                good = n
            else:
                good, bad = 0, n
                while bad - good > 1:
                    mid = (good + bad) // 2
                    if data.startswith(view[:mid], pos):
                        good = mid
                    else:
                        bad = mid
        if good == len(buf):
            self.pos += good
            buf.clear()
            return False
        end = pos + good
        i = bisect.bisect_right(rec.offsets, end)
        boundary = end if end == len(data) else rec.offsets[i - 1] if i else 0
        if boundary < pos:
            # An earlier read matched the start of this frame: take it back.
            buf[0:0] = data[boundary:pos]
        else:
            del buf[: boundary - pos]
        self.pos = boundary
        return True

    def _frames(self) -> None:
        """Frame by frame from a boundary: ``!live``, the first line, the seam."""
        rec, buf = self._rec, self._pending
        while (bounds := frame_bounds(buf, 0)) is not None:
            _, start, end = bounds
            whole = bytes(buf[:end])
            if self.state == "first":
                if whole[start:].startswith(b"!"):
                    return self._finish(f"a notice without since: {whole[start:]!r}")
                parsed = parse_id(whole[start:].split(b" ", 1)[0])
                if parsed is None:
                    return self._finish(f"not a line: {whole[start : start + 40]!r}")
                if parsed[1] > rec.newest:
                    rec.waiting.add(self)
                    return
                self.pos = rec.offsets[parsed[1] - 1]
            elif self.state == "replay" and whole == LIVE:
                if not rec.is_boundary(self.pos):
                    return self._finish("!live inside a line")
                assert self.since is not None
                self.replayed = rec.frames_before(self.pos) - self.since
                self.t_live = self._t_data
                self.state = "seam"
                del buf[:end]
                continue
            if len(rec.data) - self.pos < len(whole):
                if not whole.startswith(rec.data[self.pos :]):
                    return self._finish(self._mismatch(whole, start))
                rec.waiting.add(self)
                return
            if not rec.data.startswith(whole, self.pos):
                return self._finish(self._mismatch(whole, start))
            self.pos += len(whole)
            del buf[:end]
            if self.state in ("first", "seam"):
                if self.state == "first":
                    self.t_live = self._t_data
                return self._finish(None)
            if buf and not self._consume_matching():
                return

    def _mismatch(self, whole: bytes, start: int) -> str:
        n = self._rec.frames_before(self.pos) + 1
        return f"expected line {n} ({self.state}), got {whole[start : start + 40]!r}"

    def _finish(self, fault: str | None) -> None:
        self.finished = True
        self.fault = fault
        self._pending.clear()
        self._rec.waiting.discard(self)
        self._done(self)

    def on_lost(self) -> None:
        if not self.finished and self.opened.done() and not self.opened.exception():
            self._finish(f"connection closed in state {self.state}")


class Latencies:
    """Receipt time and latency of every line any live client got."""

    def __init__(self) -> None:
        self.at = array("q")
        self.latency = array("q")
        self.id_faults = 0
        self.notices = 0
        self.closed = 0

    def window(self, spans: list[list[int]]) -> dict[str, float | int]:
        """p50, p99 and max (ms) of the lines received in any [start, end)."""
        at, latency = self.at, self.latency
        chosen = sorted(
            latency[i]
            for i in range(len(at))
            if any(start <= at[i] < end for start, end in spans)
        )
        if not chosen:
            return {"count": 0}

        def q(p: float) -> float:
            return round(chosen[min(len(chosen) - 1, int(p * len(chosen)))] / 1e6, 3)

        return {
            "count": len(chosen),
            "p50": q(0.5),
            "p99": q(0.99),
            "max": round(chosen[-1] / 1e6, 3),
        }


class LiveClient(Client):
    """Measures each line's latency and checks that ids count up by one."""

    def __init__(self, request: bytes, upgrade: Upgrade, book: Latencies) -> None:
        super().__init__(request, upgrade)
        self._book = book
        self._buf = bytearray()
        self._last: tuple[bytes, int] | None = None

    def on_data(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self._buf += data
        book = self._book
        for opcode, payload in messages(self._buf):
            if opcode not in (1, 2):
                continue
            if payload.startswith(b"!"):
                book.notices += 1
                continue
            ident, _, line = payload.partition(b" ")
            parsed = parse_id(ident)
            last = self._last
            if parsed is None or (
                last is not None and (parsed[0] != last[0] or parsed[1] != last[1] + 1)
            ):
                book.id_faults += 1
            self._last = parsed
            _, sent = feed.parse_head(line[: feed.HEAD_BYTES])
            book.at.append(now)
            book.latency.append(now - sent)

    def on_lost(self) -> None:
        self._book.closed += 1


class Probe(Client):
    """Waits for one message: proves the source is feeding the server."""

    def __init__(self, request: bytes, upgrade: Upgrade) -> None:
        super().__init__(request, upgrade)
        self._buf = bytearray()
        self.message: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def on_data(self, data: bytes) -> None:
        self._buf += data
        for opcode, payload in messages(self._buf):
            if opcode in (1, 2) and not self.message.done():
                self.message.set_result(payload)
