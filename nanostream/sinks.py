"""The per-client writers: how the broadcaster's bytes reach one connection.

Each client's sink knows, through Twisted's producer signals, how many of
our bytes its transport still holds (see :class:`SocketSink` for plain
sockets, :class:`ClientSink` for the rest).  The broadcaster drops a client
whose backlog passes ``--max-buffer-bytes``; a replay waits for the sink to
drain (:attr:`ClientSink.on_drain`) before it writes more.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import (
    IConsumer,
    IPullProducer,
    IPushProducer,
    ISSLTransport,
    ISystemHandle,
)
from zope.interface import implementer


class Client(Protocol):
    """What the broadcaster needs from a connection besides its write."""

    def dropSlowConsumer(self, unsent: int) -> None:
        """Close at once: ``unsent`` bytes are waiting and that is too many."""

    def goAway(self) -> None:
        """Close politely: the service is stopping."""

    def closeForGap(self) -> None:
        """Close: the source lost lines, and this client cannot be told in-band."""


@implementer(IPushProducer)
class ClientSink:
    """One client as the broadcaster sees it, over any transport (TLS too).

    Registered as the *push* producer of the client's transport, which
    pauses it when its buffer passes 64 KiB and resumes it once the buffer
    has drained completely.  Bytes written while paused count as unsent.
    """

    __slots__ = ("transport_write", "paused", "unsent", "client", "on_drain")

    #: How the sink registers with its transport (see IConsumer).
    streaming = True

    def __init__(
        self, transport_write: Callable[[bytes], None], client: Client
    ) -> None:
        self.transport_write = transport_write
        self.client = client
        self.paused = False
        self.unsent = 0
        #: Called once when the transport next drains, then forgotten; a
        #: replay waits on it before writing more.
        self.on_drain: Callable[[], None] | None = None

    @property
    def ready(self) -> bool:
        """Nothing of ours waits in the transport: more may be written now."""
        return not self.paused and not self.unsent

    def _drained(self) -> None:
        hook = self.on_drain
        if hook is not None:
            self.on_drain = None
            hook()

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
        if self.on_drain is not None:
            self._drained()

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
        if self.on_drain is not None:
            self._drained()

    def stopProducing(self) -> None:
        self.unsent = 1


def sink_for(transport: Any, client: Client) -> ClientSink:
    """The fast socket sink for plain TCP/UNIX connections, else the generic one.

    TLS connections must go through their transport, which encrypts.
    """
    write = transport.write
    if not ISSLTransport.providedBy(transport) and ISystemHandle.providedBy(transport):
        handle = transport.getHandle()
        if isinstance(handle, socket.socket):
            return SocketSink(write, handle.send, client)
    return ClientSink(write, client)
