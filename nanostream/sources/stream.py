"""The byte-stream side of a source: one producer's bytes into lines."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanostream.sources import LineSink, SourceStatus
from nanostream.sources.ahead import ReadAhead
from nanostream.sources.splitter import LineSplitter

_log = Logger()


class LineSourceProtocol(Protocol):
    """Splits one producer's byte stream and hands each read's lines on.

    Unlike ``LineReceiver`` it never closes the connection over a long line:
    that line is dropped with a warning and reading goes on.
    """

    def __init__(
        self,
        sink: LineSink,
        max_line_bytes: int,
        name: str,
        on_end: Callable[[Failure], None] | None = None,
        status: SourceStatus | None = None,
        ahead: ReadAhead | None = None,
    ) -> None:
        """
        :param ahead: where a producer's connection is offered for early
            reads (the broadcaster's, while clients are let in).
        """
        self._sink = sink
        self._name = name
        self._on_end = on_end
        self._status = SourceStatus() if status is None else status
        self._splitter = LineSplitter(max_line_bytes, self._overlong)
        self._ahead = ahead
        self._watched: FileDescriptor | None = None

    def connectionMade(self) -> None:
        # A pipe, TCP or UNIX connection is read by the reactor itself; TLS
        # reads through a wrapper, and is left to the reactor's turn.
        if self._ahead is not None and isinstance(self.transport, FileDescriptor):
            self._watched = self.transport
            self._ahead.watch(self.transport)

    def dataReceived(self, data: bytes) -> None:
        lines = self._splitter.feed(data)
        if lines:
            self._sink.broadcast(lines)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """A clean close ends the input: its last line goes out without ``\\n``.

        Any other loss (a reset, a read error) cuts the stream short, so an
        unfinished line is a fragment and is discarded: lines are never
        truncated.
        """
        if self._watched is not None and self._ahead is not None:
            self._ahead.unwatch(self._watched)
            self._watched = None
        lines = self._splitter.finish()
        if lines and not reason.check(ConnectionDone):
            _log.warn(
                "discarded an unfinished line of {length} bytes from {source}: "
                "the connection was lost ({why}), not closed",
                length=len(lines[0]),
                source=self._name,
                why=reason.getErrorMessage(),
            )
            lines = []
        if lines:
            self._sink.broadcast(lines)
        if self._on_end is not None:
            self._on_end(reason)

    def _overlong(self, length: int) -> None:
        self._status.lines_discarded += 1
        _log.warn(
            "discarded a line of at least {length} bytes from {source}: "
            "longer than {limit}",
            length=length,
            limit=self._splitter.max_line_bytes,
            source=self._name,
        )


class LineSourceFactory(Factory):
    """Producers connecting to an endpoint source, one splitter each."""

    def __init__(
        self,
        sink: LineSink,
        max_line_bytes: int,
        status: SourceStatus | None = None,
        ahead: ReadAhead | None = None,
    ) -> None:
        """
        :param ahead: where producers' connections are offered for early
            reads (the broadcaster's, while clients are let in).
        """
        self._sink = sink
        self._max_line_bytes = max_line_bytes
        #: Where producers' connections are offered for early reads.
        self.ahead = ahead
        self.status = SourceStatus() if status is None else status
        self.status.down("no producer connected")
        self.producers = 0

    def buildProtocol(self, addr: IAddress | None) -> LineSourceProtocol:
        name = _describe(addr)
        self.producers += 1
        self.status.up(f"{self.producers} producers connected")
        _log.info(
            "producer connected: {producer} ({producers} producers)",
            producer=name,
            producers=self.producers,
        )

        def ended(reason: Failure) -> None:
            self.producers -= 1
            if self.producers:
                self.status.up(f"{self.producers} producers connected")
            else:
                self.status.down("no producer connected")
            _log.info(
                "producer disconnected: {producer} ({producers} producers)",
                producer=name,
                producers=self.producers,
            )

        return LineSourceProtocol(
            self._sink, self._max_line_bytes, name, ended, self.status, self.ahead
        )


def _describe(addr: IAddress | None) -> str:
    host = getattr(addr, "host", None)
    if host is not None:
        return f"{host}:{getattr(addr, 'port', '')}"
    name = getattr(addr, "name", None)
    return name.decode() if isinstance(name, bytes) else str(name or addr)
