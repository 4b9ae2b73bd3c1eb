"""Lines into Redis, in order and pipelined, over a connection kept up.

Each line becomes one command: ``PUBLISH CHANNEL line`` for a pub/sub
channel, or ``XADD KEY MAXLEN ~ N * line <line>`` for a stream (an entry
with the one field ``line``, the stream trimmed to about ``N`` entries).
Up to ``window`` commands are in flight at once; while more wait, the line
supply (stdin) is paused, so memory stays bounded however fast it is.

No line is dropped silently.  When the connection is lost, every
unacknowledged line is sent again, in order, after reconnecting: a line
whose acknowledgment was lost with the connection then arrives twice (two
PUBLISH messages, or two stream entries with different ids).  A line sent
``retries`` times without an answer, ``retries`` failed reconnections in a
row, or a command Redis refuses ends the run with :class:`PublishFailed`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanostream.redis.backoff import Backoff
from nanostream.redis.client import (
    RedisClientFactory,
    RedisConnection,
    RedisUnavailable,
)
from nanostream.redis.url import RedisTarget

_log = Logger()

DEFAULT_WINDOW = 1000
DEFAULT_RETRIES = 8
DEFAULT_TIMEOUT = 10.0
#: Entries a stream keeps (about: ``MAXLEN ~`` trims whole nodes, cheaply).
DEFAULT_MAXLEN = 100_000

#: The command that writes one line.
Command = Callable[[bytes], Sequence[Any]]


#: Error replies of a Redis that is starting, failing over or busy with a
#: script: the line is sent again once it answers, as after a lost connection.
PASSING_ERRORS = ("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN")


class PublishFailed(Exception):
    """Some lines could not be published; the message says how many and why."""


def command_for(
    target: RedisTarget, maxlen: int = DEFAULT_MAXLEN, *, sharded: bool = False
) -> Command:
    """PUBLISH to the target's channel, or XADD to its stream.

    ``sharded`` (a Redis Cluster) publishes with ``SPUBLISH``: the message
    goes to the shard that owns the channel's slot, where the nodes'
    ``SSUBSCRIBE`` listens, rather than to every node of the Cluster.
    """
    key = target.stream
    if key is not None:
        return lambda line: ("XADD", key, "MAXLEN", "~", maxlen, "*", "line", line)
    channel = target.channel
    if channel is None:
        raise ValueError("the target names neither a channel nor a stream")
    verb = "SPUBLISH" if sharded else "PUBLISH"
    return lambda line: (verb, channel, line)


class Publisher:
    """Writes the lines it is given, in order, with a bounded window.

    It is the sink of a line source (``broadcast``) and the handler of its
    :class:`~nanostream.redis.client.RedisConnection` (``prepare``, ``up``,
    ``down``, ``retrying``), which reconnects with backoff.  :meth:`start`
    fires once the first connection is ready; :meth:`done` once every line
    given before :meth:`end` has been acknowledged, or fails with
    :class:`PublishFailed`.
    """

    def __init__(
        self,
        factory: RedisClientFactory,
        reactor: Any,
        command: Command,
        *,
        window: int = DEFAULT_WINDOW,
        retries: int = DEFAULT_RETRIES,
        timeout: float = DEFAULT_TIMEOUT,
        backoff: Backoff | None = None,
    ) -> None:
        self._target = factory.target
        self._clock = factory.clock
        self._command = command
        self._window = window
        self._retries = retries
        self._timeout = timeout
        self._connection = RedisConnection(
            factory,
            reactor,
            self,
            backoff=Backoff(initial=0.5) if backoff is None else backoff,
            timeout=timeout,
        )
        #: Paused while lines wait for room in the window (stdin's reader).
        self.producer: IPushProducer | None = None
        self._paused = False
        # [line, sends so far]; waiting holds what is not sent yet, in order,
        # and in_flight what was sent and is not acknowledged yet, in order.
        self._waiting: deque[list[Any]] = deque()
        self._in_flight: deque[list[Any]] = deque()
        self._protocol: Any = None
        self._ended = False
        self._finished = False
        self._connected: Deferred[None] = Deferred()
        self._done: Deferred[None] = Deferred()
        self._watchdog: Any = None
        self._progress = 0.0
        self.published = 0
        self.peak_in_flight = 0
        self.reconnects = 0

    def start(self) -> Deferred[None]:
        """Connect; fails with :class:`RedisUnavailable` if the first attempt does."""
        self._connection.startService()
        return self._connected

    def done(self) -> Deferred[None]:
        return self._done

    def broadcast(self, lines: Sequence[bytes]) -> None:
        """Queue lines for publishing, in order."""
        self._waiting.extend([line, 0] for line in lines)
        self._send()

    def end(self) -> None:
        """No more lines will come: finish once all are acknowledged."""
        self._ended = True
        self._check_done()

    # -- the connection (nanostream.redis.client.Handler) -----------------------

    def prepare(self, protocol: Any) -> None:
        return None

    def up(self, protocol: Any) -> None:
        self._protocol = protocol
        if not self._connected.called:
            self._connected.callback(None)
        else:
            self.reconnects += 1
            _log.warn(
                "reconnected to Redis; sending {waiting} lines again",
                waiting=len(self._waiting),
            )
        self._send()
        self._check_done()

    def down(self, reason: str, delay: float) -> None:
        self._protocol = None
        self._disarm()
        unacknowledged = len(self._in_flight)
        self._waiting.extendleft(reversed(self._in_flight))
        self._in_flight.clear()
        worn = sum(1 for entry in self._waiting if entry[1] >= self._retries)
        if worn:
            self._fail(
                f"{worn} lines were sent {self._retries} times without an answer"
                f" ({reason})"
            )
            return
        _log.warn(
            "lost Redis: {reason}; {unacknowledged} lines will be sent again",
            reason=reason,
            unacknowledged=unacknowledged,
        )
        self._send()

    def retrying(self, reason: str, delay: float, attempts: int) -> None:
        if not self._connected.called:
            self._finish()
            self._connected.errback(
                RedisUnavailable(
                    f"cannot reach Redis at {self._target.masked()}: {reason}"
                )
            )
        elif attempts >= self._retries:
            self._fail(
                f"could not reconnect to Redis in {self._retries} attempts ({reason})"
            )
        else:
            _log.warn("cannot reconnect to Redis: {reason}", reason=reason)

    # -- sending --------------------------------------------------------------

    def _send(self) -> None:
        protocol = self._protocol
        waiting = self._waiting
        in_flight = self._in_flight
        if protocol is not None:
            if not in_flight:
                self._progress = self._clock.seconds()
            room = self._window - len(in_flight)
            while waiting and room > 0:
                entry = waiting.popleft()
                entry[1] += 1
                in_flight.append(entry)
                room -= 1
                d = protocol.execute_command(
                    *self._command(entry[0]), apply_timeout=False
                )
                d.addCallbacks(self._acked, self._refused, errbackArgs=(protocol,))
            if len(in_flight) > self.peak_in_flight:
                self.peak_in_flight = len(in_flight)
            if in_flight and self._watchdog is None:
                self._watchdog = self._clock.callLater(self._timeout, self._stalled)
        self._throttle()

    def _throttle(self) -> None:
        """Pause the line supply while lines wait; resume once none do."""
        producer = self.producer
        if producer is None:
            return
        if self._waiting and not self._paused:
            self._paused = True
            producer.pauseProducing()
        elif not self._waiting and self._paused:
            self._paused = False
            producer.resumeProducing()

    def _acked(self, reply: Any) -> None:
        self._in_flight.popleft()
        self.published += 1
        self._progress = self._clock.seconds()
        if self._waiting:
            self._send()
        self._check_done()

    def _refused(self, failure: Failure, protocol: Any) -> None:
        if protocol is not self._protocol:
            # Lost with the connection; down() has queued it again.
            return None
        if failure.check(txredisapi.ResponseError):
            message = failure.getErrorMessage()
            if not message.startswith(PASSING_ERRORS):
                self._fail(f"Redis refused a line: {message}")
                return None
            _log.warn(
                "Redis is not ready ({why}); reconnecting", why=message.split()[0]
            )
        # A connection-level failure, or a Redis that will soon answer again:
        # down() reconnects with backoff and sends the line again.
        if protocol.connected:
            protocol.transport.abortConnection()
        return None

    def _disarm(self) -> None:
        if self._watchdog is not None:
            if self._watchdog.active():
                self._watchdog.cancel()
            self._watchdog = None

    def _stalled(self) -> None:
        """Checked once per timeout, not once per line: is Redis answering?"""
        self._watchdog = None
        protocol = self._protocol
        if not self._in_flight or protocol is None:
            return
        quiet = self._clock.seconds() - self._progress
        if quiet < self._timeout:
            self._watchdog = self._clock.callLater(self._timeout - quiet, self._stalled)
            return
        if protocol.connected:
            _log.warn(
                "no answer from Redis within {timeout} s; reconnecting",
                timeout=self._timeout,
            )
            protocol.transport.abortConnection()

    # -- the end ----------------------------------------------------------------

    def _check_done(self) -> None:
        if (
            self._ended
            and not self._waiting
            and not self._in_flight
            and not self._finished
        ):
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
        self._disarm()
        self._protocol = None
        if self._connection.running:
            self._connection.stopService()
