"""The per-client writers: how the broadcaster's bytes reach one connection.

Each client's sink knows how many of our bytes still wait for its socket:
a plain socket's :class:`SocketSink` queues them itself, the generic
:class:`ClientSink` (TLS) learns it from Twisted's producer signals.  The
broadcaster drops a client whose backlog passes ``--max-buffer-bytes``.

A replay offers its chunks instead (:meth:`ClientSink.offer`): a plain
socket takes what the kernel takes, and the replay keeps the rest and waits
to be called when the socket is writable again, so every replayed byte is
written within the replays' budget per reactor turn, none in bulk when a
thousand sockets become writable in one poll.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any, Protocol

from twisted.internet import main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    ISSLTransport,
    ISystemHandle,
)
from zope.interface import implementer

#: The most buffers one ``sendmsg`` takes.
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16


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

    def offer(self, data: bytes | memoryview) -> int:
        """Write what may be written of ``data`` now; the bytes taken.

        The transport takes everything (and pauses its producer when its
        buffer is full): the caller waits for :attr:`ready` again.
        """
        self.send(data if isinstance(data, bytes) else bytes(data))
        return len(data)

    def when_writable(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` once more may be offered."""
        self.on_drain = hook

    def detach(self) -> None:
        """The connection is gone; the transport forgets its producer itself."""

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.unsent = 0
        if self.on_drain is not None:
            self._drained()

    def stopProducing(self) -> None:
        self.paused = True


class SocketSink(ClientSink):
    """A client on a plain socket: the fast path, also when it reads slowly.

    While nothing is queued a batch goes straight to the kernel with one
    ``send``.  What the kernel refuses waits in a queue of references to
    the broadcaster's batches (a view on the unsent tail of the first), so
    the bytes of a batch exist once however many clients are behind; the
    queue then goes out with one ``sendmsg`` per writable event.

    The sink becomes the transport's ``doWrite``: the reactor calls it
    directly when the socket is writable, once per event, and write
    interest ends with the queue (keeping it for one more event measured
    slower: docs/performance.rst, "Profiles").  Every write of
    the connection, Autobahn's pings and close frames included, must go
    through :meth:`send` once the sink exists.
    """

    __slots__ = ("_transport", "_socket", "_send", "_queue")

    def __init__(self, transport: Any, sock: socket.socket, client: Client) -> None:
        super().__init__(transport.write, client)
        self._transport = transport
        self._socket = sock
        self._send = sock.send
        self._queue: deque[bytes | memoryview] | None = None

    def attach(self, consumer: IConsumer) -> None:
        """Take over the transport's writes, behind what it still holds.

        The handshake response is still in the transport's buffer when the
        connection opens; it moves to the head of the queue (the transport
        is already waiting for the socket to be writable).
        """
        transport: Any = consumer
        held = transport.dataBuffer[transport.offset :] + b"".join(
            transport._tempDataBuffer
        )
        transport.dataBuffer = b""
        transport.offset = 0
        transport._tempDataBuffer = []
        transport._tempDataLen = 0
        transport.doWrite = self.doWrite
        if held:
            self._queue = deque([held])
            self.unsent = len(held)
            transport.startWriting()

    def detach(self) -> None:
        """The connection is gone: forget the queue and give doWrite back."""
        self._queue = None
        self.unsent = 0
        self._transport.__dict__.pop("doWrite", None)

    def send(self, data: bytes) -> int:
        queue = self._queue
        if queue is not None:
            queue.append(data)
            self.unsent += len(data)
            return self.unsent
        try:
            sent = self._send(data)
        except OSError:
            # Full (EAGAIN), or broken: the next writable event finds out.
            sent = 0
        size = len(data)
        if sent < size:
            self._queue = deque([memoryview(data)[sent:] if sent else data])
            self.unsent = size - sent
            if self._transport.connected:
                self._transport.startWriting()
        return self.unsent

    def offer(self, data: bytes | memoryview) -> int:
        """Send what the kernel takes of ``data`` now, queueing nothing.

        Behind queued bytes nothing is taken: the queue goes first.
        """
        if self._queue is not None:
            return 0
        try:
            return self._send(data)
        except OSError:
            # Full (EAGAIN), or broken: the next writable event finds out.
            return 0

    def when_writable(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` once the queue is sent and the socket takes more."""
        self.on_drain = hook
        if self._transport.connected:
            self._transport.startWriting()

    def doWrite(self) -> Any:
        """The socket is writable: send the queue, or stop watching for this.

        Returns what Twisted's ``doWrite`` would: None, or why the
        connection is lost.
        """
        queue = self._queue
        transport = self._transport
        if queue is None:
            why = self._idle(transport)
            if why is None and self.on_drain is not None:
                self._drained()
            return why
        try:
            if len(queue) == 1:
                sent = self._send(queue[0])
            elif len(queue) <= _IOV_MAX:
                sent = self._socket.sendmsg(queue)
            else:
                sent = self._socket.sendmsg(list(islice(queue, _IOV_MAX)))
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        unsent = self.unsent - sent
        self.unsent = unsent
        if not unsent:
            self._queue = None
            why = self._idle(transport)
            if why is None and self.on_drain is not None:
                self._drained()
            return why
        while sent:
            head = queue[0]
            size = len(head)
            if sent < size:
                queue[0] = memoryview(head)[sent:]
                break
            queue.popleft()
            sent -= size
        return None

    @staticmethod
    def _idle(transport: Any) -> Any:
        """Nothing of ours waits: stop watching, or let Twisted finish a close."""
        if transport.disconnecting or transport._tempDataLen or transport.dataBuffer:
            # Closing (or written to directly): Twisted's doWrite ends it.
            return type(transport).doWrite(transport)
        transport.stopWriting()
        return None


def sink_for(transport: Any, client: Client) -> ClientSink:
    """The fast socket sink for plain TCP/UNIX connections, else the generic one.

    TLS connections must go through their transport, which encrypts.
    """
    if _has_socket(transport):
        handle = transport.getHandle()
        if isinstance(handle, socket.socket):
            return SocketSink(transport, handle, client)
    return ClientSink(transport.write, client)


def write_now(transport: Any, data: bytes) -> bool:
    """Write ``data`` to a plain socket at once; False if the transport must.

    Before a connection opens (the handshake response, a refusal), this
    spares the transport's buffer a write-interest change and a writable
    event for bytes the kernel takes at once.  Only while the transport
    holds nothing, so nothing is overtaken; what the kernel refuses goes to
    the transport.
    """
    if (
        not _has_socket(transport)
        or not transport.connected
        or transport.disconnecting
        or transport.dataBuffer
        or transport._tempDataLen
    ):
        return False
    handle = transport.getHandle()
    if not isinstance(handle, socket.socket):
        return False
    try:
        sent = handle.send(data)
    except OSError:
        # Full, or broken: the transport finds out and closes properly.
        sent = 0
    if sent < len(data):
        transport.write(data[sent:])
    return True


def _has_socket(transport: object) -> bool:
    """Whether ``transport`` writes to a socket of its own without encrypting.

    Only Twisted's own socket transports qualify: the sink takes over their
    buffer and their ``doWrite``.
    """
    return (
        isinstance(transport, FileDescriptor)
        and not ISSLTransport.providedBy(transport)
        and bool(ISystemHandle.providedBy(transport))
    )
