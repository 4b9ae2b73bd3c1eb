"""Full collections run from the timer, and the interpreter starts none."""

from __future__ import annotations

import gc

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nanostream.ops.collection import (
    CHECK_STEP,
    FULL_COLLECTION_INTERVAL,
    NEVER,
    TimedFullCollections,
)


class TimedFullCollectionsTests(SynchronousTestCase):
    """While the service runs, full collections come only from its timer."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *self.before)
        self.full: list[int] = []

        def seen(phase: str, info: dict[str, int]) -> None:
            if phase == "start" and info["generation"] == 2:
                self.full.append(info["generation"])

        gc.callbacks.append(seen)
        self.addCleanup(gc.callbacks.remove, seen)
        self.service = TimedFullCollections(clock=self.clock)

    def test_interpreter_starts_no_full_collection(self) -> None:
        """The oldest generation's threshold is out of reach while running."""
        self.service.startService()
        self.addCleanup(self.service.stopService)
        young, middle, oldest = gc.get_threshold()
        self.assertEqual((young, middle), self.before[:2])
        self.assertEqual(oldest, NEVER)

    def test_thresholds_restored_on_stop(self) -> None:
        """Stopping gives the interpreter its own thresholds back."""
        self.service.startService()
        self.service.stopService()
        self.assertEqual(gc.get_threshold(), self.before)

    def test_a_full_collection_per_interval(self) -> None:
        """One at start, then one each interval, each of every generation."""
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.assertEqual(len(self.full), 1)
        self.clock.advance(FULL_COLLECTION_INTERVAL - 1)
        self.assertEqual(len(self.full), 1)
        self.clock.advance(1)
        self.clock.advance(FULL_COLLECTION_INTERVAL)
        self.assertEqual(len(self.full), 3)

    def test_old_cycles_freed_by_the_timer(self) -> None:
        """A cycle that reached the oldest generation is freed on the next tick."""
        self.service.startService()
        self.addCleanup(self.service.stopService)
        freed: list[bool] = []

        class Node:
            def __del__(self) -> None:
                freed.append(True)

        a, b = Node(), Node()
        a.other, b.other = b, a  # type: ignore[attr-defined]
        gc.collect(1)  # both survive into the oldest generation
        del a, b
        for _ in range(5):
            gc.collect(1)
        self.assertEqual(freed, [])
        self.clock.advance(FULL_COLLECTION_INTERVAL)
        self.assertEqual(freed, [True, True])

    def test_waits_while_clients_are_let_in(self) -> None:
        """A collection due in a wave of clients runs once the wave is past."""
        busy = [False]
        service = TimedFullCollections(clock=self.clock, busy=lambda: busy[0])
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(self.full), 1)
        busy[0] = True
        self.clock.pump([1.0] * int(FULL_COLLECTION_INTERVAL + 5))
        self.assertEqual(len(self.full), 1)
        busy[0] = False
        self.clock.advance(CHECK_STEP)
        self.assertEqual(len(self.full), 2)
        self.assertEqual(service.collections, 2)

    def test_waits_at_most_another_interval(self) -> None:
        """Clients let in without end do not put collections off for ever."""
        service = TimedFullCollections(clock=self.clock, busy=lambda: True)
        service.startService()
        self.addCleanup(service.stopService)
        self.clock.pump([1.0] * int(2 * FULL_COLLECTION_INTERVAL - 1))
        self.assertEqual(len(self.full), 1)
        self.clock.advance(1.0)
        self.assertEqual(len(self.full), 2)
