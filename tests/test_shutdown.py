"""SIGTERM stops the reactor without the re-raise that makes the exit status -15."""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from nanostream.ops.shutdown import StopOnTerm


class Reactor(MemoryReactor):
    """Runs what is handed to callFromThread at once, and counts stops."""

    def __init__(self) -> None:
        super().__init__()
        self.stops = 0

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def stop(self) -> None:
        self.stops += 1


class StopOnTermTests(SynchronousTestCase):
    def setUp(self) -> None:
        previous = signal.getsignal(signal.SIGTERM)
        self.addCleanup(signal.signal, signal.SIGTERM, previous)
        self.reactor = Reactor()
        self.service = StopOnTerm(self.reactor)

    def start(self) -> None:
        self.service.startService()
        for hook in self.reactor.whenRunningHooks:
            hook[0](*hook[1], **hook[2])

    def test_replaces_the_reactors_handler_once_running(self) -> None:
        """Once the reactor runs, SIGTERM goes to the service, not the reactor."""
        reactors_handler = signal.signal(signal.SIGTERM, lambda *_: None)
        self.addCleanup(signal.signal, signal.SIGTERM, reactors_handler)
        self.service.startService()
        self.assertNotEqual(signal.getsignal(signal.SIGTERM), self.service.terminate)
        self.start()
        self.assertEqual(signal.getsignal(signal.SIGTERM), self.service.terminate)

    def test_stops_once(self) -> None:
        """Two SIGTERMs stop the reactor once, and say so once."""
        with capturedLogs() as events:
            self.service.terminate(signal.SIGTERM)
            self.service.terminate(signal.SIGTERM)
        self.assertEqual(self.reactor.stops, 1)
        self.assertEqual(len(events), 1)

    def test_left_alone_without_handlers(self) -> None:
        """A reactor run without signal handlers keeps SIGTERM's default."""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.start()
        self.assertEqual(signal.getsignal(signal.SIGTERM), signal.SIG_DFL)
