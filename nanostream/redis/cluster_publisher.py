"""Lines into a Redis Cluster, in order, one pipelined batch at a time.

The Cluster counterpart of :class:`~nanostream.redis.publisher.Publisher`,
with the same interface and the same promise: no line dropped silently, a
line whose acknowledgment was lost may arrive twice.  redis-py's
``RedisCluster`` sends each batch (up to ``window`` lines) as one pipeline
to the master of the key's slot, following ``MOVED``/``ASK`` and relearning
the slot map after a failover; its calls block, so they run in a thread of
this publisher's own, one batch at a time, which keeps the lines in order.

A batch that fails for want of a connection (a master down, a failover
under way) is sent again, whole, after a backoff; ``retries`` failures in a
row, or a command Redis refuses, end the run with :class:`PublishFailed`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisError, ResponseError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from nanostream.redis.backoff import Backoff
from nanostream.redis.client import RedisUnavailable
from nanostream.redis.cluster import cluster_client
from nanostream.redis.publisher import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_WINDOW,
    Command,
    PublishFailed,
)
from nanostream.redis.url import RedisTarget

_log = Logger()

Run = Callable[..., "Deferred[Any]"]


def write_batch(client: Any, command: Command, lines: Sequence[bytes]) -> list[Any]:
    """Send one command per line as one pipeline; the replies (blocks)."""
    pipe = client.pipeline(transaction=False)
    for line in lines:
        pipe.execute_command(*command(line))
    replies: list[Any] = pipe.execute(raise_on_error=True)
    return replies


class ClusterPublisher:
    """Writes the lines it is given, in order, to a Redis Cluster."""

    def __init__(
        self,
        target: RedisTarget,
        reactor: Any,
        command: Command,
        *,
        window: int = DEFAULT_WINDOW,
        retries: int = DEFAULT_RETRIES,
        timeout: float = DEFAULT_TIMEOUT,
        backoff: Backoff | None = None,
        connect: Callable[[], Any] | None = None,
        run: Run | None = None,
    ) -> None:
        """
        :param connect: makes the client (blocks); tests hand in a fake.
        :param run: runs a blocking call, firing in the reactor thread.
        """
        self._target = target
        self._reactor = reactor
        self._command = command
        self._window = window
        self._retries = retries
        self._backoff = Backoff(initial=0.5) if backoff is None else backoff
        self._connect = connect or (lambda: cluster_client(target, timeout))
        self._pool: ThreadPool | None = None
        if run is None:
            pool = ThreadPool(minthreads=0, maxthreads=1, name="redis-publisher")
            self._pool = pool
            self._run: Run = lambda f, *a: deferToThreadPool(reactor, pool, f, *a)
        else:
            self._run = run
        #: Paused while lines wait for room in the window (stdin's reader).
        self.producer: IPushProducer | None = None
        self._paused = False
        self._client: Any = None
        self._waiting: deque[bytes] = deque()
        self._in_flight: list[bytes] = []
        self._failures = 0
        self._retry: Any = None
        self._ended = False
        self._finished = False
        self._done: Deferred[None] = Deferred()
        self.published = 0
        self.peak_in_flight = 0
        self.reconnects = 0

    def start(self) -> Deferred[None]:
        """Learn the Cluster's slot map; fails with :class:`RedisUnavailable`."""
        if self._pool is not None:
            self._pool.start()
        d = self._run(self._connect)

        def connected(client: Any) -> None:
            self._client = client
            self._send()

        def unreachable(failure: Failure) -> Failure:
            self._finish()
            reason = failure.getErrorMessage() or failure.type.__name__
            return Failure(
                RedisUnavailable(
                    f"cannot reach Redis Cluster at {self._target.masked()}: {reason}"
                )
            )

        return d.addCallbacks(connected, unreachable)

    def done(self) -> Deferred[None]:
        return self._done

    def broadcast(self, lines: Sequence[bytes]) -> None:
        """Queue lines for publishing, in order."""
        self._waiting.extend(lines)
        self._send()

    def end(self) -> None:
        """No more lines will come: finish once all are acknowledged."""
        self._ended = True
        self._check_done()

    # -- sending --------------------------------------------------------------

    def _send(self) -> None:
        if (
            self._client is not None
            and not self._in_flight
            and self._retry is None
            and not self._finished
        ):
            waiting = self._waiting
            batch = [waiting.popleft() for _ in range(min(self._window, len(waiting)))]
            if batch:
                self._in_flight = batch
                self.peak_in_flight = max(self.peak_in_flight, len(batch))
                d = self._run(write_batch, self._client, self._command, batch)
                d.addCallbacks(self._acked, self._refused)
        self._throttle()

    def _throttle(self) -> None:
        """Pause the line supply while a window's worth waits; resume below it."""
        producer = self.producer
        if producer is None:
            return
        full = len(self._waiting) >= self._window
        if full and not self._paused:
            self._paused = True
            producer.pauseProducing()
        elif not full and self._paused:
            self._paused = False
            producer.resumeProducing()

    def _acked(self, replies: list[Any]) -> None:
        if self._finished:
            return
        self.published += len(self._in_flight)
        self._in_flight = []
        if self._failures:
            self._failures = 0
            self.reconnects += 1
            self._backoff.reset()
            _log.warn("Redis Cluster answers again; publishing on")
        self._send()
        self._check_done()

    def _refused(self, failure: Failure) -> None:
        if self._finished:
            return
        if failure.check(ResponseError):
            self._fail(f"Redis refused a line: {failure.getErrorMessage()}")
            return
        if not failure.check(RedisError, OSError):
            _log.failure("publishing to Redis Cluster failed", failure)
        self._failures += 1
        reason = failure.getErrorMessage() or failure.type.__name__
        if self._failures >= self._retries:
            self._fail(
                f"{len(self._in_flight)} lines were sent {self._retries} times "
                f"without an answer ({reason})"
            )
            return
        delay = self._backoff.next_delay()
        _log.warn(
            "lost Redis Cluster: {reason}; {unacknowledged} lines will be sent "
            "again in {delay} s",
            reason=reason,
            unacknowledged=len(self._in_flight),
            delay=round(delay, 2),
        )
        self._waiting.extendleft(reversed(self._in_flight))
        self._in_flight = []
        self._retry = self._reactor.callLater(delay, self._again)

    def _again(self) -> None:
        self._retry = None
        self._send()

    # -- the end ----------------------------------------------------------------

    def _check_done(self) -> None:
        idle = not self._waiting and not self._in_flight
        if self._ended and idle and not self._finished:
            self._finish()
            self._done.callback(None)

    def _fail(self, why: str) -> None:
        if self._finished:
            return
        unpublished = len(self._waiting) + len(self._in_flight)
        self._finish()
        self._done.errback(
            PublishFailed(f"{why}; {unpublished} lines were not published")
        )

    def _finish(self) -> None:
        self._finished = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        client, self._client = self._client, None
        if client is not None:
            client.close()
        if self._pool is not None and self._pool.started:
            self._pool.stop()
