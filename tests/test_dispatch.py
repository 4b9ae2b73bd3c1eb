"""The reactor's events dispatched in one frame, with Twisted's log context."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone
from twisted.internet.pollreactor import PollReactor
from twisted.internet.testing import MemoryReactorClock
from twisted.python import context, log
from twisted.python.log import ILogContext
from twisted.trial.unittest import SynchronousTestCase

from nanostream.ops.dispatch import BUGGY_PREFIX, LeanDispatch, applies_to


class Pipe:
    """A readable descriptor that records, for each read, the log system."""

    prefix = "Pipe,7"

    def __init__(self, test: SynchronousTestCase, then: Any = None) -> None:
        self.r, self.w = os.pipe()
        test.addCleanup(os.close, self.w)
        test.addCleanup(self._close)
        self.systems: list[str] = []
        self.lost: list[Any] = []
        self.then = then
        self.connected = True
        self.disconnecting = False

    def _close(self) -> None:
        if self.r >= 0:
            os.close(self.r)

    def fileno(self) -> int:
        return self.r

    def logPrefix(self) -> str:
        return self.prefix

    def doRead(self) -> Any:
        os.read(self.r, 100)
        self.systems.append(context.get(ILogContext)["system"])
        return self.then() if self.then else None

    def connectionLost(self, reason: Any) -> None:
        self.lost.append(reason)


class BuggyPrefix(Pipe):
    def logPrefix(self) -> str:
        raise RuntimeError("no prefix")


class LeanDispatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = EPollReactor()
        self.addCleanup(self._close_reactor)
        self.dispatch = LeanDispatch(self.reactor)

    def _close_reactor(self) -> None:
        # Closing the epoll descriptor drops every registration at once.
        self.reactor._poller.close()

    def pipe(self, kind: type[Pipe] = Pipe, then: Any = None) -> Pipe:
        pipe = kind(self, then)
        self.reactor.addReader(pipe)  # type: ignore[arg-type]
        os.write(pipe.w, b"x")
        return pipe

    def test_installed_and_removed_with_the_service(self) -> None:
        self.assertTrue(applies_to(self.reactor))
        self.dispatch.startService()
        self.assertTrue(self.dispatch.installed)
        self.assertIn("doIteration", vars(self.reactor))
        self.dispatch.stopService()
        self.assertNotIn("doIteration", vars(self.reactor))
        self.assertEqual(self.reactor.doIteration, self.reactor.doPoll)

    def test_handler_runs_with_its_log_prefix_as_system(self) -> None:
        self.dispatch.startService()
        first, second = self.pipe(), self.pipe()
        second.prefix = "Pipe,8"
        self.reactor.doIteration(0)
        self.assertEqual(first.systems, ["Pipe,7"])
        self.assertEqual(second.systems, ["Pipe,8"])
        # The pushed context is gone again afterwards.
        self.assertEqual(context.get(ILogContext)["system"], "-")

    def test_same_context_as_twisteds_own_dispatch(self) -> None:
        twisted_pipe = self.pipe()
        self.reactor.doIteration(0)
        self.dispatch.startService()
        lean_pipe = self.pipe()
        self.reactor.removeReader(twisted_pipe)  # type: ignore[arg-type]
        self.reactor.doIteration(0)
        self.assertEqual(twisted_pipe.systems, lean_pipe.systems)

    def test_a_disconnecting_handler_loses_its_connection(self) -> None:
        self.dispatch.startService()
        pipe = self.pipe(then=ConnectionDone)
        self.reactor.doIteration(0)
        self.assertEqual(len(pipe.lost), 1)
        self.assertNotIn(pipe, self.reactor.getReaders())

    def test_a_failing_handler_is_logged_and_the_others_still_run(self) -> None:
        def fail() -> None:
            raise ValueError("broken handler")

        self.dispatch.startService()
        broken, healthy = self.pipe(then=fail), self.pipe()
        seen: list[dict[str, Any]] = []
        log.addObserver(seen.append)
        self.addCleanup(log.removeObserver, seen.append)
        self.reactor.doIteration(0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(healthy.systems, ["Pipe,7"])
        self.assertEqual(len(broken.lost), 1)
        failures = [event for event in seen if event.get("isError")]
        self.assertEqual([event["system"] for event in failures], ["Pipe,7"])

    def test_a_buggy_log_prefix_is_logged_and_the_handler_still_runs(self) -> None:
        self.dispatch.startService()
        pipe = self.pipe(BuggyPrefix)
        self.reactor.doIteration(0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(pipe.systems, [BUGGY_PREFIX])

    def test_a_timeout_with_nothing_ready_returns(self) -> None:
        self.dispatch.startService()
        self.reactor.doIteration(0)
        self.reactor.doIteration(0.001)

    def test_other_reactors_are_left_alone(self) -> None:
        for other in (MemoryReactorClock(), PollReactor()):
            self.assertFalse(applies_to(other))
            dispatch = LeanDispatch(other)
            dispatch.startService()
            self.assertFalse(dispatch.installed)
            self.assertNotIn("doIteration", vars(other))
            dispatch.stopService()

    def test_a_reactor_whose_loop_was_changed_is_left_alone(self) -> None:
        self.reactor.doIteration = self.reactor.doPoll  # type: ignore[method-assign]
        self.assertFalse(applies_to(self.reactor))

    def test_a_subclass_with_its_own_poll_is_left_alone(self) -> None:
        class Custom(EPollReactor):
            def doPoll(self, timeout: float | None) -> None:
                super().doPoll(timeout)

        custom = Custom()
        self.addCleanup(custom._poller.close)
        self.assertFalse(applies_to(custom))
