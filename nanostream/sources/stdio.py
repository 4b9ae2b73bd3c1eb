"""The default source: lines piped into the process's stdin.

Read through :class:`~nanostream.sources.pipe.PipeReader` rather than
``StandardIO``, for larger batches; stdout is left alone.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorFDSet
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanostream.sources import LineSink, SourceStatus
from nanostream.sources.ahead import ReadAhead
from nanostream.sources.pipe import PipeReader
from nanostream.sources.stream import LineSourceProtocol

_log = Logger()


class StdioSource(Service):
    """Reads stdin from start until EOF, then calls ``on_eof`` (stop the service)."""

    def __init__(
        self,
        sink: LineSink,
        max_line_bytes: int,
        on_eof: Callable[[], None],
        reactor: IReactorFDSet | None = None,
        status: SourceStatus | None = None,
        *,
        stdin: int = 0,
        ahead: ReadAhead | None = None,
    ) -> None:
        """
        :param stdin: the descriptor to read; tests hand in a pipe instead.
        :param ahead: where to offer the reader's early reads (the
            broadcaster's, while clients are let in).
        """
        #: Where the reader's early reads are offered; None for none.
        self.ahead = ahead
        self.status = SourceStatus() if status is None else status
        self._stdin = stdin
        self._sink = sink
        self._max_line_bytes = max_line_bytes
        self._on_eof = on_eof
        self._reactor = reactor
        self._reader: PipeReader | None = None

    def startService(self) -> None:
        super().startService()
        # The protocol offers the reader for early reads while it is open,
        # as it does a producer's connection.
        protocol = LineSourceProtocol(
            self._sink,
            self._max_line_bytes,
            "stdin",
            self._ended,
            self.status,
            self.ahead,
        )
        _log.info("source: stdin")
        self.status.up("reading stdin")
        self._reader = PipeReader(self._stdin, protocol, self._reactor)

    def _ended(self, reason: Failure) -> None:
        self._reader = None
        self.status.down("stdin closed")
        if not self.running:
            return
        _log.info("source ended: end of stdin; closing every client")
        self._on_eof()

    def stopService(self) -> None:
        super().stopService()
        if self._reader is not None:
            self._reader.loseConnection()
