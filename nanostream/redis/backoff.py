"""How long to wait before the next reconnection attempt.

Capped exponential backoff with jitter: quick to recover from a blip, gentle
on a Redis that is down, and never a whole fleet reconnecting in lock-step.
"""

from __future__ import annotations

import random
from collections.abc import Callable

#: First retry after a lost connection, in seconds.
INITIAL_DELAY = 0.1
#: The delay doubles with each failed attempt ...
FACTOR = 2.0
#: ... up to this many seconds.
MAX_DELAY = 10.0


class Backoff:
    """Delays for consecutive failed attempts; :meth:`reset` after a success.

    Each delay is drawn between half and all of the exponential value
    ("equal jitter"), so it still grows while nodes spread out.
    """

    def __init__(
        self,
        initial: float = INITIAL_DELAY,
        factor: float = FACTOR,
        maximum: float = MAX_DELAY,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.factor = factor
        self.maximum = maximum
        self._random = random
        self.attempts = 0

    def next_delay(self) -> float:
        """The wait before the next attempt; counts one more failure."""
        exponent = min(self.attempts, 64)
        self.attempts += 1
        ceiling = min(self.maximum, self.initial * self.factor**exponent)
        return ceiling * (0.5 + 0.5 * self._random())

    def reset(self) -> None:
        """A connection succeeded: the next failure starts from the beginning."""
        self.attempts = 0
