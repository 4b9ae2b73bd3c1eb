"""Fans lines out to every open client: the hot path (BRIEF §4).

Each batch of lines that arrived together is framed once, joined into one
buffer, and written once per client.  Nothing waits to gather a batch:
a batch is exactly what one read from the source produced.

Each client's transport tells us, through Twisted's producer signals, when
its send buffer is full; from then on every byte we add counts against
``max_buffer_bytes`` until the buffer drains.  Past that the client is a slow
consumer and is dropped, so it never stalls the source, the other clients,
or grows our memory beyond the bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from autobahn.websocket.protocol import PreparedMessage
from twisted.internet.interfaces import IPushProducer
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
    """One client as the broadcaster sees it: a write and a fill level.

    Registered as the push producer of the client's transport, which pauses
    it when the kernel stops taking bytes and resumes it once its buffer has
    drained completely.
    """

    __slots__ = ("write", "paused", "unsent", "client")

    def __init__(self, write: Callable[[bytes], None], client: Client) -> None:
        self.write = write
        self.client = client
        self.paused = False
        self.unsent = 0

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.unsent = 0

    def stopProducing(self) -> None:
        self.paused = True


class Broadcaster:
    """The registry of open clients and the per-batch fan-out."""

    def __init__(self, max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES) -> None:
        self.max_buffer_bytes = max_buffer_bytes
        self._sinks: set[ClientSink] = set()

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

    def broadcast(self, lines: Iterable[bytes]) -> None:
        """Deliver a batch of lines, in order, to every registered client."""
        data = b"".join([frame(line) for line in lines])
        if not data or not self._sinks:
            return
        size = len(data)
        limit = self.max_buffer_bytes
        slow = None
        for sink in self._sinks:
            sink.write(data)
            if sink.paused:
                sink.unsent += size
                if sink.unsent > limit:
                    if slow is None:
                        slow = []
                    slow.append(sink)
        if slow is not None:
            for sink in slow:
                self._sinks.discard(sink)
                sink.client.dropSlowConsumer(sink.unsent)
