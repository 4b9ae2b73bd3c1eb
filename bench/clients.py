"""WebSocket client backends for the load generator.

Two backends share one small interface, so every scenario runs on either:

* ``picows`` (with uvloop): frames are parsed in C and one Python call is
  made per message, which keeps the load generator cheaper per delivery
  than the servers it measures. It is the default whenever importable.
* ``websockets``: the fallback, so that the quick correctness check runs in
  the project's own test venv, which has ``websockets`` but not picows.

Per-client bookkeeping lives in :class:`Tally`, fed the first bytes of each
message; it needs nothing from either library.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from feed import HEAD_BYTES, SENT_KEY, SEQ_AT

# A connection's source address: None lets the kernel choose.
SourceAddr = tuple[str, int] | None


class Rejected(Exception):
    """The server answered the upgrade with an HTTP status other than 101,
    or with a 101 that does not select the subprotocol offered."""

    def __init__(self, status: int, why: str = "") -> None:
        super().__init__(f"HTTP {status}" + (f": {why}" if why else ""))
        self.status = status
        self.why = why


class Stream:
    """What all clients of one run share: expectations and completion."""

    def __init__(self, clients: int, expect: int, record_latency: bool) -> None:
        self.expect = expect
        self.pending = clients
        self.latencies: array[int] | None = array("q") if record_latency else None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.t_last_ns = 0
        self.tallies: list[Tally] = []
        self.reads = 0  # socket reads, counted by clients that read in bulk

    def finished(self) -> None:
        """Called once per client when it has all lines, or has gone away."""
        self.pending -= 1
        self.t_last_ns = time.monotonic_ns()
        if self.pending == 0 and not self.done.done():
            self.done.set_result(None)


class Tally:
    """One client's deliveries: counts and order.

    ``on_message`` runs once per delivery in the load generator, so it is
    kept to a slice, an ``int()`` and a comparison in the common case.
    """

    __slots__ = ("stream", "expect", "next", "lost", "backwards", "extra", "over")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.expect = stream.expect
        self.next = 0  # the sequence number expected next
        self.lost = 0  # skipped sequence numbers (gaps)
        self.backwards = 0  # duplicates and late arrivals
        self.extra = 0  # messages after the last expected one
        self.over = False
        stream.tallies.append(self)

    @property
    def received(self) -> int:
        """Every message this client got, whatever its sequence number."""
        return self.next - self.lost + self.backwards + self.extra

    def on_message(self, head: bytes) -> None:
        """Account for one message, given its first bytes."""
        seq = int(head[SEQ_AT : head.index(b",", SEQ_AT)])
        if seq == self.next and seq + 1 < self.expect:
            self.next = seq + 1
            return
        self._slow_path(seq)

    def _slow_path(self, seq: int) -> None:
        if self.over:
            self.extra += 1
            return
        if seq < self.next:
            self.backwards += 1
            return
        self.lost += seq - self.next
        self.next = seq + 1
        if self.next >= self.expect:
            self.over = True
            self.stream.finished()

    def on_close(self) -> None:
        """The connection ended: whatever has not arrived is lost."""
        if not self.over:
            self.over = True
            self.stream.finished()


class TimedTally(Tally):
    """A Tally that also records each message's latency."""

    __slots__ = ()

    def on_message(self, head: bytes) -> None:
        now = time.monotonic_ns()
        start = head.index(SENT_KEY, SEQ_AT) + len(SENT_KEY)
        sent = int(head[start : head.index(b",", start)])
        latencies = self.stream.latencies
        assert latencies is not None
        latencies.append(now - sent)
        Tally.on_message(self, head)


class V1Tally(Tally):
    """A Tally for ``nanostream.v1`` messages, ``<id> <line>``.

    Ids must count up by one with the lines, under one ``<ms>`` part: the
    difference between an id's count and its line's sequence number stays
    the same. A notice (``!...``) is a fault in a fan-out run, where no
    client resumes and the source loses nothing.
    """

    __slots__ = ("id_faults", "notices", "_ms", "_offset")

    def __init__(self, stream: Stream) -> None:
        super().__init__(stream)
        self.id_faults = 0
        self.notices = 0
        self._ms: bytes | None = None
        self._offset: int | None = None

    def on_message(self, head: bytes) -> None:
        if head.startswith(b"!"):
            self.notices += 1
            return
        ident, _, line = head.partition(b" ")
        ms, _, n = ident.partition(b"-")
        Tally.on_message(self, line)
        seq = int(line[SEQ_AT : line.index(b",", SEQ_AT)])
        offset = int(n) - seq if n.isdigit() else None
        if self._offset is None:
            self._ms, self._offset = ms, offset
        if offset is None or offset != self._offset or ms != self._ms:
            self.id_faults += 1


def new_tally(stream: Stream) -> Tally:
    """The right Tally for ``stream``: timed when latency is recorded."""
    return TimedTally(stream) if stream.latencies is not None else Tally(stream)


class Connection(Protocol):
    """An open client connection."""

    def close(self) -> None:
        """Start a closing handshake and drop the connection soon after."""


class Backend(Protocol):
    """How the load generator opens connections."""

    name: str

    async def open(
        self, url: str, tally: Tally | None, source: SourceAddr
    ) -> Connection:
        """Complete a WebSocket handshake; raise Rejected on a non-101 answer."""

    async def handshake(self, url: str, source: SourceAddr) -> int:
        """Connect, wait for the 101, close cleanly; return the HTTP status."""


def _source_kwargs(source: SourceAddr) -> dict[str, Any]:
    return {} if source is None else {"local_addr": source}


class PicowsBackend:
    """Clients on picows: C framing, one Python call per message."""

    name = "picows"

    def __init__(self) -> None:
        import picows

        self._picows = picows

        text, binary, close = (
            picows.WSMsgType.TEXT,
            picows.WSMsgType.BINARY,
            picows.WSMsgType.CLOSE,
        )

        class Listener(picows.WSListener):  # type: ignore[misc]
            def __init__(self, tally: Tally | None) -> None:
                self.tally = tally
                self.closed: asyncio.Future[None] | None = None

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                kind = frame.msg_type
                if kind is text or kind is binary:
                    if self.tally is not None:
                        self.tally.on_message(frame.get_payload_as_bytes())
                elif kind is close:
                    if not transport.is_close_frame_sent:
                        transport.send_close(frame.get_close_code())
                    transport.disconnect()

            def on_ws_disconnected(self, transport: Any) -> None:
                if self.tally is not None:
                    self.tally.on_close()

        self._listener = Listener

    async def _connect(self, url: str, tally: Tally | None, source: SourceAddr) -> Any:
        try:
            transport, _ = await self._picows.ws_connect(
                lambda: self._listener(tally),
                url,
                websocket_handshake_timeout=30,
                **_source_kwargs(source),
            )
        except self._picows.WSInvalidStatusError as exc:
            status = exc.response.status if exc.response is not None else 0
            raise Rejected(int(status)) from None
        return transport

    async def open(
        self, url: str, tally: Tally | None, source: SourceAddr
    ) -> Connection:
        transport = await self._connect(url, tally, source)
        return _PicowsConnection(transport, self._picows.WSCloseCode.OK)

    async def handshake(self, url: str, source: SourceAddr) -> int:
        try:
            transport = await self._connect(url, None, source)
        except Rejected as exc:
            return exc.status
        transport.send_close(self._picows.WSCloseCode.OK)
        try:
            await asyncio.wait_for(transport.wait_disconnected(), 10)
        except (asyncio.TimeoutError, Exception):
            transport.disconnect(False)
        return 101


class _PicowsConnection:
    def __init__(self, transport: Any, ok: Any) -> None:
        self._transport = transport
        self._ok = ok

    def close(self) -> None:
        if not self._transport.is_disconnected:
            self._transport.send_close(self._ok)
            self._transport.disconnect()


class WebsocketsBackend:
    """Clients on the ``websockets`` library: slower, but everywhere."""

    name = "websockets"

    def __init__(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        self._connect_fn = connect
        self._invalid_status = InvalidStatus

    async def _connect(self, url: str, source: SourceAddr) -> Any:
        try:
            return await self._connect_fn(
                url,
                ping_interval=None,
                compression=None,
                max_size=None,
                open_timeout=30,
                close_timeout=5,
                **_source_kwargs(source),
            )
        except self._invalid_status as exc:
            raise Rejected(exc.response.status_code) from None

    async def open(
        self, url: str, tally: Tally | None, source: SourceAddr
    ) -> Connection:
        ws = await self._connect(url, source)
        return _WebsocketsConnection(ws, tally)

    async def handshake(self, url: str, source: SourceAddr) -> int:
        try:
            ws = await self._connect(url, source)
        except Rejected as exc:
            return exc.status
        await ws.close()
        return 101


class _WebsocketsConnection:
    def __init__(self, ws: Any, tally: Tally | None) -> None:
        self._ws = ws
        self._pump = asyncio.ensure_future(self._receive(tally))

    async def _receive(self, tally: Tally | None) -> None:
        try:
            async for message in self._ws:
                if tally is not None:
                    head = message[:HEAD_BYTES]
                    tally.on_message(head.encode() if isinstance(head, str) else head)
        except Exception:  # noqa: BLE001 - any ending is a disconnection
            pass
        finally:
            if tally is not None:
                tally.on_close()

    def close(self) -> None:
        asyncio.ensure_future(self._ws.close())


def pick_backend(name: str) -> Backend:
    """Return the named backend; ``auto`` prefers picows when importable."""
    if name in ("auto", "picows"):
        try:
            return PicowsBackend()
        except ImportError:
            if name == "picows":
                raise
    return WebsocketsBackend()


async def bounded(
    count: int, concurrency: int, job: Callable[[int], Awaitable[None]]
) -> None:
    """Run ``job(0..count-1)`` with at most ``concurrency`` in flight."""
    indices = iter(range(count))

    async def worker() -> None:
        for i in indices:
            await job(i)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, count)))))
