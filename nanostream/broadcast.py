"""Fans lines out to every open client: the hot path (BRIEF §4).

Each batch of lines that arrived together is framed once, joined into one
buffer, and written once per client.  Nothing waits to gather a batch:
a batch is exactly what one read from the source produced.

Each client's sink knows, through Twisted's producer signals, how many of
our bytes its transport still holds (see :class:`SocketSink` for plain
sockets, :class:`ClientSink` for the rest).  Past ``max_buffer_bytes`` the
client is a slow consumer and is dropped, so it never stalls the source,
the other clients, or grows our memory beyond the bound.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from autobahn.websocket.protocol import PreparedMessage
from twisted.internet.interfaces import (
    IConsumer,
    IPullProducer,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ISystemHandle,
)
from twisted.logger import Logger
from zope.interface import implementer

DEFAULT_MAX_BUFFER_BYTES = 4 * 1024 * 1024

_log = Logger()


def is_text(line: bytes) -> bool:
    """A line goes out as a text message when it is valid UTF-8."""
    if line.isascii():
        return True
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def frame(line: bytes) -> bytes:
    """The complete, unmasked WebSocket frame carrying one line."""
    return PreparedMessage(line, not is_text(line), False, True).payloadHybi


class Client(Protocol):
    """What the broadcaster needs from a connection besides its write."""

    def dropSlowConsumer(self, unsent: int) -> None:
        """Close at once: ``unsent`` bytes are waiting and that is too many."""

    def goAway(self) -> None:
        """Close politely: the service is stopping."""


@implementer(IPushProducer)
class ClientSink:
    """One client as the broadcaster sees it, over any transport (TLS too).

    Registered as the *push* producer of the client's transport, which
    pauses it when its buffer passes 64 KiB and resumes it once the buffer
    has drained completely.  Bytes written while paused count as unsent.
    """

    __slots__ = ("transport_write", "paused", "unsent", "client")

    #: How the sink registers with its transport (see IConsumer).
    streaming = True

    def __init__(
        self, transport_write: Callable[[bytes], None], client: Client
    ) -> None:
        self.transport_write = transport_write
        self.client = client
        self.paused = False
        self.unsent = 0

    def attach(self, consumer: IConsumer) -> None:
        """Become the producer of ``consumer``, the client's transport."""
        consumer.registerProducer(self, self.streaming)

    def send(self, data: bytes) -> int:
        """Write ``data``; return the bytes now counted as unsent."""
        self.transport_write(data)
        if self.paused:
            self.unsent += len(data)
        return self.unsent

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.unsent = 0

    def stopProducing(self) -> None:
        self.paused = True


@implementer(IPullProducer)
class SocketSink(ClientSink):
    """A client on a plain socket: the fast path.

    While the transport holds none of our bytes we hand each batch straight
    to the kernel with one ``send``; Twisted's buffer (and its pair of epoll
    calls per write) only takes what the kernel would not.  As a *pull*
    producer the sink hears ``resumeProducing`` exactly when that buffer has
    drained, so ``unsent`` is the transport's true backlog and ordering is
    kept: nothing bypasses bytes already queued.  Every write of the
    connection, Autobahn's pings and close frames included, must go
    through :meth:`send` once the sink exists.
    """

    __slots__ = ("socket_send",)

    streaming = False

    def __init__(
        self,
        transport_write: Callable[[bytes], None],
        socket_send: Callable[[bytes], int],
        client: Client,
    ) -> None:
        super().__init__(transport_write, client)
        self.socket_send = socket_send
        # The handshake response may still sit in the transport's buffer;
        # queue behind it until the transport reports a drain.
        self.unsent = 1

    def attach(self, consumer: IConsumer) -> None:
        """Register, and still queue until the transport reports a drain.

        Twisted resumes a pull producer the moment it is registered, while
        the handshake response still waits in the transport's buffer; taken
        for a drain, that call would let lines overtake the response.
        """
        consumer.registerProducer(self, self.streaming)
        self.unsent = 1

    def send(self, data: bytes) -> int:
        if self.unsent:
            self.transport_write(data)
            self.unsent += len(data)
            return self.unsent
        try:
            sent = self.socket_send(data)
        except OSError:
            # Full (EAGAIN) or broken: the transport queues the bytes and,
            # if the connection is gone, finds out and closes it properly.
            sent = 0
        if sent < len(data):
            rest = data[sent:]
            self.transport_write(rest)
            self.unsent = len(rest)
        return self.unsent

    def resumeProducing(self) -> None:
        self.unsent = 0

    def stopProducing(self) -> None:
        self.unsent = 1


def sink_for(transport: Any, client: Client) -> ClientSink:
    """The fast socket sink for plain TCP/UNIX connections, else the generic one.

    TLS connections must go through their transport, which encrypts.
    """
    if not ISSLTransport.providedBy(transport) and ISystemHandle.providedBy(transport):
        handle = transport.getHandle()
        if isinstance(handle, socket.socket):
            return SocketSink(transport.write, handle.send, client)
    return ClientSink(transport.write, client)


class Broadcaster:
    """The registry of open clients and the per-batch fan-out.

    Its counters are plain integers, bumped once per batch (never per
    client) and read by :mod:`nanostream.ops.metrics` only when scraped.
    """

    def __init__(
        self,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.max_buffer_bytes = max_buffer_bytes
        self._sinks: set[ClientSink] = set()
        self._seconds = clock.seconds
        self.lines_received = 0
        self.messages_delivered = 0
        self.bytes_delivered = 0
        self.slow_consumers_dropped = 0
        #: When the last line arrived; until then, when we were built.
        self.last_line_at: float = clock.seconds()

    def __len__(self) -> int:
        return len(self._sinks)

    def add(self, sink: ClientSink) -> None:
        self._sinks.add(sink)

    def remove(self, sink: ClientSink) -> None:
        self._sinks.discard(sink)

    def close_all(self) -> None:
        """Ask every client to go away (at shutdown) and forget them."""
        sinks = list(self._sinks)
        self._sinks.clear()
        for sink in sinks:
            try:
                sink.client.goAway()
            except Exception:
                _log.failure("could not close a client")

    def broadcast(self, lines: Sequence[bytes]) -> None:
        """Deliver a batch of lines, in order, to every registered client."""
        count = len(lines)
        if not count:
            return
        self.lines_received += count
        self.last_line_at = self._seconds()
        clients = len(self._sinks)
        if not clients:
            return
        data = b"".join([frame(line) for line in lines])
        size = len(data)
        self.messages_delivered += count * clients
        self.bytes_delivered += size * clients
        limit = self.max_buffer_bytes
        slow = None
        for sink in self._sinks:
            if sink.send(data) > limit:
                if slow is None:
                    slow = []
                slow.append(sink)
        if slow is not None:
            self.slow_consumers_dropped += len(slow)
            for sink in slow:
                self._sinks.discard(sink)
                sink.client.dropSlowConsumer(sink.unsent)
