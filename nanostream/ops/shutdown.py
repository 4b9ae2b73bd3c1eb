"""SIGTERM is how supervisors ask for a stop: after an orderly one, exit 0.

Twisted's own handler stops the reactor and then has ``twistd`` and
``twist`` re-raise the signal, so the process ends killed by SIGTERM:
status -15, or 143 as shells and container runtimes report it, which many
supervisors and monitors count as a failure.  The handler here stops the
reactor the same way (clients get 1001, services stop in order) and leaves
the exit status alone.  SIGINT keeps Twisted's handling, as a terminal's
Ctrl-C expects.  See docs/running.rst.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

_log = Logger()


class StopOnTerm(Service):
    """Replaces the reactor's SIGTERM handler once the reactor runs."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        # The reactor installs its handlers as it starts running; after that.
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
            # Run without signal handlers (installSignalHandlers=False): the
            # embedding program decides what SIGTERM does.
            return
        signal.signal(signal.SIGTERM, self.terminate)

    def terminate(self, signum: int, frame: FrameType | None = None) -> None:
        """Stop the reactor, once, as Twisted's handler would."""
        if self._stopping:
            return
        self._stopping = True
        _log.info("received SIGTERM, shutting down")
        self._reactor.callFromThread(self._reactor.stop)
