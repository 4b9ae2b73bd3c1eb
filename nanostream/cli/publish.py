"""``nanostream publish URL``: stdin's lines into a Redis channel, for a fleet.

``producer | nanostream publish redis://HOST:PORT/DB?channel=NAME`` feeds
every node subscribed to the channel.  Lines are split as the stdin source
splits them (BRIEF §4) and published in order, pipelined: up to ``--window``
PUBLISH commands are in flight at once, and reading stdin pauses while the
window is full, so memory stays bounded however fast the producer is.

No line is dropped silently.  When the connection is lost, every
unacknowledged line is sent again, in order, after reconnecting (so a line
whose acknowledgment was lost may arrive twice); a line that cannot be
published within ``--retries`` attempts, or that Redis refuses, ends the
process with a message and a non-zero status.  At end of input it exits 0
once Redis has acknowledged every line.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogPublisher,
)
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import provider

from nanostream.numbers import number_option
from nanostream.redis.backoff import Backoff
from nanostream.redis.client import (
    ClientProtocol,
    RedisClientFactory,
    RedisUnavailable,
    connect,
    describe,
)
from nanostream.redis.url import RedisTarget, RedisURLError, resolve
from nanostream.sources.splitter import DEFAULT_MAX_LINE_BYTES, LineSplitter

_log = Logger()

PROGRAM = "nanostream publish"

DEFAULT_WINDOW = 1000
DEFAULT_RETRIES = 8
DEFAULT_TIMEOUT = 10.0

#: Exit statuses (sysexits.h where one fits).
EXIT_OK = 0
EXIT_UNDELIVERED = 1
EXIT_USAGE = os.EX_USAGE
EXIT_UNAVAILABLE = os.EX_UNAVAILABLE


class PublishFailed(Exception):
    """Some lines could not be published; the message says how many and why."""


class PublishOptions(usage.Options):
    """Options of ``nanostream publish``."""

    synopsis = "Usage: nanostream publish redis://HOST:PORT/DB?channel=NAME [options]"
    longdesc = (
        "Publish each line read from stdin to a Redis pub/sub channel, "
        "pipelined, and exit 0 once Redis has acknowledged them all."
    )
    optFlags = [
        ["stats", None, "At exit, print how many lines went out and the peak window."],
    ]
    optParameters = [
        [
            "redis-password-file",
            None,
            None,
            "File holding the Redis password (instead of one in the URL).",
        ],
        [
            "window",
            None,
            DEFAULT_WINDOW,
            "Most PUBLISH commands awaiting Redis's answer at once.",
            number_option(int, "--window", 0, above=True),
        ],
        [
            "retries",
            None,
            DEFAULT_RETRIES,
            "Reconnection attempts after a loss, and sends of one line, before "
            "giving up.",
            number_option(int, "--retries", 0, above=True),
        ],
        [
            "timeout",
            None,
            DEFAULT_TIMEOUT,
            "Seconds to connect, and to wait for an answer, before the "
            "connection counts as lost.",
            number_option(float, "--timeout", 0, above=True),
        ],
        [
            "max-line-bytes",
            None,
            DEFAULT_MAX_LINE_BYTES,
            "Longer lines are not published, with a warning.",
            number_option(int, "--max-line-bytes", 0, above=True),
        ],
    ]

    def opt_version(self) -> None:
        """Print nanostream's version and exit."""
        from nanostream import __version__

        sys.stdout.write(f"nanostream {__version__}\n")
        raise SystemExit(0)

    def parseArgs(self, url: str) -> None:
        self["url"] = url

    def postOptions(self) -> None:
        try:
            self["target"] = resolve(
                self["url"],
                channel=True,
                password_file=self["redis-password-file"],
            )
        except RedisURLError as e:
            raise usage.UsageError(str(e)) from None


class Publisher:
    """Publishes lines in order over one connection, with a bounded window.

    ``pause``/``resume`` are called to stop and restart the line supply
    (stdin) as lines queue up and drain.  :meth:`done` fires once every line
    given before :meth:`end` has been acknowledged, or fails with
    :class:`PublishFailed`.
    """

    def __init__(
        self,
        factory: RedisClientFactory,
        reactor: Any,
        *,
        window: int = DEFAULT_WINDOW,
        retries: int = DEFAULT_RETRIES,
        timeout: float = DEFAULT_TIMEOUT,
        backoff: Backoff | None = None,
        pause: Callable[[], None] = lambda: None,
        resume: Callable[[], None] = lambda: None,
    ) -> None:
        self._factory = factory
        self._reactor = reactor
        self._clock = factory.clock
        self._channel = factory.target.channel
        self._window = window
        self._retries = retries
        self._timeout = timeout
        self._backoff = (
            Backoff(initial=0.5, maximum=10.0) if backoff is None else backoff
        )
        self._pause = pause
        self._resume = resume
        self._paused = False
        # [line, sends so far]; waiting holds what is not sent yet, in order,
        # and in_flight what was sent and is not acknowledged yet, in order.
        self._waiting: deque[list[Any]] = deque()
        self._in_flight: deque[list[Any]] = deque()
        self._protocol: Any = None
        self._ended = False
        self._finished = False
        self._done: Deferred[None] = Deferred()
        self._watchdog: Any = None
        self._progress = 0.0
        self.published = 0
        self.peak_in_flight = 0
        self.reconnects = 0
        factory.on_lost = self._lost

    def start(self, protocol: Any) -> None:
        """Begin with a connection already made (see :func:`connect`)."""
        self._protocol = protocol
        self._send()

    def done(self) -> Deferred[None]:
        return self._done

    def add(self, lines: Iterable[bytes]) -> None:
        """Queue lines for publishing, in order."""
        self._waiting.extend([line, 0] for line in lines)
        self._send()

    def end(self) -> None:
        """No more lines will come: finish once all are acknowledged."""
        self._ended = True
        self._check_done()

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
                    "PUBLISH", self._channel, entry[0], apply_timeout=False
                )
                d.addCallbacks(self._acked, self._refused, errbackArgs=(protocol,))
            if len(in_flight) > self.peak_in_flight:
                self.peak_in_flight = len(in_flight)
            if in_flight and self._watchdog is None:
                self._watchdog = self._clock.callLater(self._timeout, self._stalled)
        if waiting and not self._paused:
            self._paused = True
            self._pause()
        elif not waiting and self._paused:
            self._paused = False
            self._resume()

    def _acked(self, receivers: Any) -> None:
        self._in_flight.popleft()
        self.published += 1
        self._progress = self._clock.seconds()
        if self._waiting:
            self._send()
        elif self._paused:
            self._paused = False
            self._resume()
        self._check_done()

    def _refused(self, failure: Failure, protocol: Any) -> None:
        if protocol is not self._protocol:
            # Lost with the connection; _lost has queued it again.
            return None
        if failure.check(txredisapi.ResponseError):
            self._fail(
                f"Redis refused to publish: {failure.getErrorMessage()}",
            )
            return None
        # A connection-level failure: the loss handler takes care of it.
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

    # -- losing and regaining the connection -------------------------------------

    def _lost(self, protocol: Any, why: Failure) -> None:
        if protocol is not self._protocol or self._finished:
            return
        self._protocol = None
        self._disarm()
        unacknowledged = len(self._in_flight)
        self._waiting.extendleft(reversed(self._in_flight))
        self._in_flight.clear()
        worn = sum(1 for entry in self._waiting if entry[1] >= self._retries)
        if worn:
            self._fail(
                f"{worn} lines were sent {self._retries} times without an answer"
                f" ({describe(why)})"
            )
            return
        _log.warn(
            "lost Redis: {reason}; {unacknowledged} lines will be sent again",
            reason=describe(why),
            unacknowledged=unacknowledged,
        )
        self._send()
        self._reconnect()

    def _reconnect(self) -> None:
        if self._backoff.attempts >= self._retries:
            self._fail(f"could not reconnect to Redis in {self._retries} attempts")
            return
        delay = self._backoff.next_delay()
        self._clock.callLater(delay, self._attempt)

    def _attempt(self) -> None:
        d = connect(self._factory, self._reactor, self._timeout)
        d.addCallbacks(self._reconnected, self._not_reconnected)

    def _reconnected(self, protocol: Any) -> None:
        if self._finished:
            protocol.transport.loseConnection()
            return
        self._backoff.reset()
        self.reconnects += 1
        _log.warn(
            "reconnected to Redis; sending {waiting} lines again",
            waiting=len(self._waiting),
        )
        self._protocol = protocol
        self._send()
        self._check_done()

    def _not_reconnected(self, failure: Failure) -> None:
        if self._finished:
            return
        _log.warn(
            "cannot reconnect to Redis: {reason}", reason=failure.getErrorMessage()
        )
        self._reconnect()

    # -- the end ----------------------------------------------------------------

    def _check_done(self) -> None:
        if (
            self._ended
            and not self._waiting
            and not self._in_flight
            and not self._finished
        ):
            self._finished = True
            self._disarm()
            self._close()
            self._done.callback(None)

    def _fail(self, why: str) -> None:
        if self._finished:
            return
        self._finished = True
        self._disarm()
        unpublished = len(self._waiting) + len(self._in_flight)
        self._close()
        self._done.errback(
            PublishFailed(f"{why}; {unpublished} lines were not published")
        )

    def _close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.connected:
            protocol.transport.loseConnection()


class StdinLines(Protocol):
    """stdin's bytes into lines for a :class:`Publisher`."""

    def __init__(self, publisher: Publisher, max_line_bytes: int) -> None:
        self._publisher = publisher
        self._splitter = LineSplitter(max_line_bytes, self._overlong)

    def dataReceived(self, data: bytes) -> None:
        lines = self._splitter.feed(data)
        if lines:
            self._publisher.add(lines)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        lines = self._splitter.finish()
        if lines:
            self._publisher.add(lines)
        self._publisher.end()

    def _overlong(self, length: int) -> None:
        _log.warn(
            "not published: a line of at least {length} bytes, longer than {limit}",
            length=length,
            limit=self._splitter.max_line_bytes,
        )


def publish(reactor: Any, options: PublishOptions) -> Deferred[Publisher]:
    """Connect, then publish stdin; fire with the publisher when all is sent."""
    from twisted.internet import stdio

    target: RedisTarget = options["target"]
    factory = RedisClientFactory(ClientProtocol, target, reactor)
    timeout = options["timeout"]
    d = connect(factory, reactor, timeout)

    def connected(protocol: Any) -> Deferred[Publisher]:
        reader: dict[str, Any] = {}
        publisher = Publisher(
            factory,
            reactor,
            window=options["window"],
            retries=options["retries"],
            timeout=timeout,
            pause=lambda: reader["stdio"].pauseProducing(),
            resume=lambda: reader["stdio"].resumeProducing(),
        )
        publisher.start(protocol)
        lines = StdinLines(publisher, options["max-line-bytes"])
        reader["stdio"] = stdio.StandardIO(lines, reactor=reactor)
        return publisher.done().addCallback(lambda _: publisher)

    def unreachable(failure: Failure) -> Failure:
        failure.trap(RedisUnavailable)
        return Failure(
            RedisUnavailable(
                f"cannot reach Redis at {target.masked()}: {failure.getErrorMessage()}"
            )
        )

    return d.addCallbacks(connected, unreachable)


@provider(ILogObserver)
def _to_stderr(event: dict[str, Any]) -> None:
    text = formatEvent(event)
    sys.stderr.write(f"{PROGRAM}: {text}\n")


def main(argv: list[str]) -> int:
    """Run ``nanostream publish ARGV``; the exit status."""
    options = PublishOptions()
    if argv and not argv[0].startswith("-"):
        # Options may follow the URL, as people tend to write them.
        argv = [*argv[1:], argv[0]]
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        sys.stderr.write(f"{PROGRAM}: {e}\n")
        return EXIT_USAGE
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else EXIT_OK

    from twisted.internet import reactor

    observer = FilteringLogObserver(
        _to_stderr,
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
    )
    globalLogPublisher.addObserver(observer)
    outcome: list[Any] = []

    def run() -> None:
        d = publish(reactor, options)
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    try:
        reactor.callWhenRunning(run)
        reactor.run()
    finally:
        globalLogPublisher.removeObserver(observer)
    return _report(outcome, options["stats"])


def _report(outcome: list[Any], stats: bool) -> int:
    if not outcome:
        sys.stderr.write(f"{PROGRAM}: interrupted; lines may not have been sent\n")
        return EXIT_UNDELIVERED
    result = outcome[0]
    if isinstance(result, Failure):
        sys.stderr.write(f"{PROGRAM}: {result.getErrorMessage()}\n")
        if result.check(RedisUnavailable):
            return EXIT_UNAVAILABLE
        if not result.check(PublishFailed):
            sys.stderr.write(result.getTraceback())
        return EXIT_UNDELIVERED
    if stats:
        sys.stderr.write(
            f"{PROGRAM}: published {result.published} lines, at most "
            f"{result.peak_in_flight} in flight, {result.reconnects} reconnections\n"
        )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
