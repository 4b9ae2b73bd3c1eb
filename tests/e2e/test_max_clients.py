"""``--max-clients`` with a Redis ledger that answers slowly.

Redis is made slow by ``DEBUG SLEEP`` on a server of the test's own: every
handshake of the burst then waits for its ledger answer at the same time,
which is when a bound checked only against open clients would let them all
through.
"""

from __future__ import annotations

import re
import threading

from redis_server import RedisClient, private_redis, unique
from websockets.exceptions import InvalidStatus

from .harness import EVENT_TIMEOUT, ServiceTestCase

BOUND = 3
BURST = 10
#: Seconds Redis sleeps: far longer than the burst takes to reach the service,
#: also on a loaded machine (a late handshake would find Redis awake).
REDIS_SLEEP = 6

_CONNECTED = re.compile(r"client connected: \S+ \((\d+) clients\)")


class SlowLedgerBurstTests(ServiceTestCase):
    def test_burst_never_exceeds_the_bound(self) -> None:
        """A burst of handshakes while Redis sleeps: BOUND open, never more, and
        every other one is refused with 503 at once."""
        redis = private_redis(self, options=["--enable-debug-command", "yes"])
        service = self.start(
            options=[
                "--ledger",
                redis.url,
                "--ledger-prefix",
                unique("burst") + ":",
                "--ledger-timeout",
                str(REDIS_SLEEP * 5),
                "--max-clients",
                str(BOUND),
            ]
        )
        service.log.wait_for("ledger connected to Redis")
        tokens = [service.mint() for _ in range(BURST)]
        statuses: list[int] = []

        def attempt(token: str) -> None:
            try:
                service.connect(token)
            except InvalidStatus as e:
                statuses.append(e.response.status_code)
            else:
                statuses.append(101)

        sleeper = RedisClient(redis.target, timeout=EVENT_TIMEOUT + REDIS_SLEEP)
        self.addCleanup(sleeper.close)
        sleeper.send("DEBUG", "SLEEP", str(REDIS_SLEEP))
        threads = [threading.Thread(target=attempt, args=(t,)) for t in tokens]
        for thread in threads:
            thread.start()
        self.assertEqual(sleeper.reply(), b"OK")
        for thread in threads:
            thread.join(EVENT_TIMEOUT + REDIS_SLEEP)

        self.assertEqual(sorted(statuses), [101] * BOUND + [503] * (BURST - BOUND))
        # A client may see its 101 before the server's line about it is read.
        after = 0
        for _ in range(BOUND):
            after = service.log.find(_CONNECTED.pattern, after=after)[0] + 1
        refusals = service.log.text().count("too many clients")
        self.assertEqual(refusals, BURST - BOUND)
        counts = [int(m[1]) for m in _CONNECTED.finditer(service.log.text())]
        self.assertEqual(len(counts), BOUND)
        self.assertLessEqual(max(counts), BOUND)
