"""``nanostream publish URL``: stdin's lines into Redis, for a fleet.

``producer | nanostream publish redis://HOST:PORT/DB?channel=NAME`` feeds
every node subscribed to the channel; ``...?stream=KEY`` appends to a Redis
stream instead, which nodes read from where they stopped.  A URL naming a
Redis Cluster member publishes to the Cluster (a channel with ``SPUBLISH``).
stdin is read and split as the service's stdin source does it
(:class:`~nanostream.sources.stream.LineSourceProtocol`), and the lines go
to a :class:`~nanostream.redis.publisher.Publisher`, whose docstring tells
what is guaranteed.  Exit 0 once Redis has acknowledged every line after the
end of input; 1 when lines were not published; 69 when Redis cannot be
reached at start; 64 on a usage error.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from redis.exceptions import RedisError
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogPublisher,
)
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import provider

from nanostream.cli.options import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    Subcommand,
)
from nanostream.numbers import number_option
from nanostream.redis.client import ClientProtocol, RedisClientFactory, RedisUnavailable
from nanostream.redis.cluster import is_cluster
from nanostream.redis.cluster_publisher import ClusterPublisher
from nanostream.redis.publisher import (
    DEFAULT_MAXLEN,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_WINDOW,
    Publisher,
    PublishFailed,
    command_for,
)
from nanostream.redis.url import RedisTarget, RedisURLError, resolve
from nanostream.sources.pipe import PipeReader
from nanostream.sources.splitter import DEFAULT_MAX_LINE_BYTES
from nanostream.sources.stream import LineSourceProtocol

PROGRAM = "nanostream publish"


class PublishOptions(Subcommand):
    """Options of ``nanostream publish``."""

    synopsis = (
        "Usage: nanostream publish redis://HOST:PORT/DB?channel=NAME [options]\n"
        "       nanostream publish redis://HOST:PORT/DB?stream=KEY [options]"
    )
    longdesc = (
        "Publish each line read from stdin to a Redis pub/sub channel "
        "(PUBLISH), or append it to a Redis stream (XADD, field 'line'), "
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
            "maxlen",
            None,
            None,
            f"Entries a stream keeps, about (XADD MAXLEN ~); only with "
            f"?stream=. [default: {DEFAULT_MAXLEN}]",
            number_option(int, "--maxlen", 0, above=True),
        ],
        [
            "window",
            None,
            DEFAULT_WINDOW,
            "Most commands awaiting Redis's answer at once.",
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

    def parseArgs(self, *urls: str) -> None:
        if len(urls) != 1:
            raise usage.UsageError(
                "publish takes one URL: redis://HOST:PORT/DB?channel=NAME "
                "or ?stream=KEY"
            )
        self["url"] = urls[0]

    def postOptions(self) -> None:
        try:
            target = resolve(
                self["url"],
                channel=True,
                stream=True,
                password_file=self["redis-password-file"],
            )
        except RedisURLError as e:
            raise usage.UsageError(str(e)) from None
        if target.stream is None and self["maxlen"] is not None:
            raise usage.UsageError("--maxlen applies to a stream (?stream=KEY) only")
        if self["maxlen"] is None:
            self["maxlen"] = DEFAULT_MAXLEN
        self["target"] = target

    def run(self, environ: Mapping[str, str]) -> int:
        from twisted.internet import reactor

        observer = FilteringLogObserver(
            _to_stderr,
            [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
        )
        globalLogPublisher.addObserver(observer)
        outcome: list[Any] = []

        def start() -> None:
            d = publish(reactor, self)
            d.addBoth(outcome.append)
            d.addBoth(lambda _: reactor.stop())

        try:
            reactor.callWhenRunning(start)
            reactor.run()
        finally:
            globalLogPublisher.removeObserver(observer)
        return report(outcome, self["stats"])


def publish(
    reactor: Any, options: PublishOptions, stdin: int = 0
) -> Deferred[Publisher | ClusterPublisher]:
    """Connect, then publish what ``stdin`` holds; fire with the publisher.

    Whether the URL names a Redis Cluster member is asked first, in a
    thread; the answer picks the publisher.
    """
    target: RedisTarget = options["target"]
    d = deferToThread(is_cluster, target, options["timeout"])

    def unreachable(failure: Failure) -> Failure:
        failure.trap(RedisError, OSError)
        reason = failure.getErrorMessage() or failure.type.__name__
        return Failure(
            RedisUnavailable(f"cannot reach Redis at {target.masked()}: {reason}")
        )

    d.addErrback(unreachable)
    return d.addCallback(lambda cluster: _publish(reactor, options, stdin, cluster))


def _publish(
    reactor: Any, options: PublishOptions, stdin: int, cluster: bool
) -> Deferred[Publisher | ClusterPublisher]:
    target: RedisTarget = options["target"]
    publisher: Publisher | ClusterPublisher
    command = command_for(target, options["maxlen"], sharded=cluster)
    settings = {
        "window": options["window"],
        "retries": options["retries"],
        "timeout": options["timeout"],
    }
    if cluster:
        publisher = ClusterPublisher(target, reactor, command, **settings)
    else:
        factory = RedisClientFactory(ClientProtocol, target, reactor)
        publisher = Publisher(factory, reactor, command, **settings)

    def connected(_: None) -> Deferred[None]:
        lines = LineSourceProtocol(
            publisher,
            options["max-line-bytes"],
            "stdin",
            lambda reason: publisher.end(),
        )
        publisher.producer = PipeReader(stdin, lines, reactor)
        return publisher.done()

    d = publisher.start()
    d.addCallback(connected)
    return d.addCallback(lambda _: publisher)


@provider(ILogObserver)
def _to_stderr(event: dict[str, Any]) -> None:
    sys.stderr.write(f"{PROGRAM}: {formatEvent(event)}\n")


def report(outcome: list[Any], stats: bool) -> int:
    """Say how it ended on stderr; the exit status."""
    if not outcome:
        sys.stderr.write(f"{PROGRAM}: interrupted; lines may not have been sent\n")
        return EXIT_REFUSED
    result = outcome[0]
    if isinstance(result, Failure):
        sys.stderr.write(f"{PROGRAM}: {result.getErrorMessage()}\n")
        if result.check(RedisUnavailable):
            return EXIT_UNAVAILABLE
        if not result.check(PublishFailed):
            sys.stderr.write(result.getTraceback())
        return EXIT_REFUSED
    if stats:
        sys.stderr.write(
            f"{PROGRAM}: published {result.published} lines, at most "
            f"{result.peak_in_flight} in flight, {result.reconnects} reconnections\n"
        )
    return EXIT_OK


def main(argv: list[str]) -> int:
    """Run ``nanostream publish ARGV``; the exit status."""
    from nanostream.cli.main import main as nanostream

    return nanostream(["publish", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
