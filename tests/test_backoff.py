"""The reconnection delays: exponential, capped, jittered, reset on success."""

from __future__ import annotations

from fake_redis import FixedRandom
from twisted.trial.unittest import SynchronousTestCase

from nanostream.redis.backoff import Backoff


class BackoffTests(SynchronousTestCase):
    def test_doubles_up_to_the_cap(self) -> None:
        """Without jitter the delays double from the initial one until the cap."""
        backoff = Backoff(initial=0.1, factor=2, maximum=1.0, random=FixedRandom(1.0))
        delays = [round(backoff.next_delay(), 6) for _ in range(7)]
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])

    def test_jitter_keeps_at_least_half(self) -> None:
        """The jitter draws each delay between half and all of its ceiling."""
        backoff = Backoff(initial=1, factor=2, maximum=60, random=FixedRandom(0.0, 0.5))
        self.assertEqual(backoff.next_delay(), 0.5)
        self.assertEqual(backoff.next_delay(), 1.5)

    def test_reset(self) -> None:
        """After a success the next failure waits the initial delay again."""
        backoff = Backoff(initial=0.1, factor=2, maximum=10, random=FixedRandom(1.0))
        for _ in range(5):
            backoff.next_delay()
        backoff.reset()
        self.assertEqual(backoff.attempts, 0)
        self.assertAlmostEqual(backoff.next_delay(), 0.1)

    def test_long_outage_does_not_overflow(self) -> None:
        """Thousands of failures in a row still give the capped delay."""
        backoff = Backoff(initial=0.1, factor=2, maximum=10, random=FixedRandom(1.0))
        for _ in range(5000):
            delay = backoff.next_delay()
        self.assertEqual(delay, 10)
