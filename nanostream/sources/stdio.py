"""The default source: lines piped into the process's stdin."""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet import stdio
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanostream.sources import LineSink, SourceStatus
from nanostream.sources.protocol import LineSourceProtocol

_log = Logger()


class StdioSource(Service):
    """Reads stdin from start until EOF, then calls ``on_eof`` (stop the service)."""

    def __init__(
        self,
        sink: LineSink,
        max_line_bytes: int,
        on_eof: Callable[[], None],
        reactor: object = None,
        status: SourceStatus | None = None,
        *,
        stdin: int = 0,
        stdout: int = 1,
    ) -> None:
        """
        :param stdin: the descriptor to read; tests hand in a pipe instead.
        :param stdout: the descriptor ``StandardIO`` also holds open.
        """
        self.status = SourceStatus() if status is None else status
        self._stdin = stdin
        self._stdout = stdout
        self._sink = sink
        self._max_line_bytes = max_line_bytes
        self._on_eof = on_eof
        self._reactor = reactor
        self._stdio: stdio.StandardIO | None = None

    def startService(self) -> None:
        super().startService()
        protocol = LineSourceProtocol(
            self._sink, self._max_line_bytes, "stdin", self._ended, self.status
        )
        _log.info("source: stdin")
        self.status.up("reading stdin")
        self._stdio = stdio.StandardIO(
            protocol, self._stdin, self._stdout, reactor=self._reactor
        )

    def _ended(self, reason: Failure) -> None:
        self._stdio = None
        self.status.down("stdin closed")
        if not self.running:
            return
        _log.info("source ended: end of stdin; closing every client")
        self._on_eof()

    def stopService(self) -> None:
        super().stopService()
        if self._stdio is not None:
            self._stdio.loseConnection()
