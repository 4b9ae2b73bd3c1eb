"""Lines from a sharded pub/sub channel of a Redis Cluster (``SSUBSCRIBE``).

On a Redis Cluster, ``?channel=NAME`` is a sharded channel (Redis 7): its
messages go to the shard that owns the channel's slot, rather than to every
node, so a Cluster's pub/sub scales with its shards.  The publisher sends
with ``SPUBLISH`` (``nanostream publish`` does so on a Cluster).

redis-py's ``RedisCluster`` finds the shard, and reads block, so they run in
a thread of this source's own: each read waits up to a second for a
message, then takes what else has arrived, and hands it on as one batch.

Pub/sub keeps nothing, so a lost subscription is a source gap, as with the
single-Redis source (:mod:`nanostream.sources.redis_channel`): logged with
the moment it began and ended, and told to the broadcaster before any line
of the new subscription.  The server may also end the subscription itself
(``SUNSUBSCRIBE``, when the channel's slot moves to another master, as in a
failover) and a client library may subscribe again on its own after a lost
connection; both are taken as a loss, so no gap goes unreported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from nanostream.redis.backoff import Backoff
from nanostream.redis.cluster import cluster_client
from nanostream.redis.url import RedisTarget
from nanostream.sources import GapSink, SourceStatus
from nanostream.sources.redis_channel import moment

_log = Logger()

Run = Callable[..., "Deferred[Any]"]

#: Seconds one read waits for the first message; also bounds how long a
#: stopping source waits for its reader thread.
WAIT = 1.0
#: Messages handed on per batch at most.
BATCH = 1000


class Unsubscribed(RedisError):
    """The server ended the subscription (the channel's slot moved)."""


def subscribe(client: Any, channel: str, refresh: bool) -> Any:
    """A pubsub subscribed to ``channel``, confirmed (blocks)."""
    if refresh:
        client.nodes_manager.initialize()
    pubsub = client.pubsub()
    pubsub.ssubscribe(channel)
    confirmed = pubsub.get_sharded_message(timeout=5.0)
    if confirmed is None or confirmed["type"] != "ssubscribe":
        pubsub.close()
        raise RedisError("no confirmation of SSUBSCRIBE")
    return pubsub


def read(
    pubsub: Any, wait: float = WAIT, most: int = BATCH
) -> tuple[list[bytes], Exception | None]:
    """The messages that arrive within ``wait`` seconds, and the error that ended them.

    The messages read before an error are kept.  A subscription the server
    ended or the library renewed behind our back is the error
    :class:`Unsubscribed`: lines may have been missed.
    """
    messages: list[bytes] = []
    try:
        message = pubsub.get_sharded_message(timeout=wait)
        while message is not None:
            if message["type"] != "smessage":
                raise Unsubscribed(f"the subscription was renewed ({message['type']})")
            messages.append(message["data"])
            if len(messages) >= most:
                break
            message = pubsub.get_sharded_message(timeout=0.0)
    except (RedisError, OSError) as e:
        return messages, e
    return messages, None


class ShardedChannelSource(Service):
    """Subscribes to one sharded channel and keeps subscribed while running."""

    def __init__(
        self,
        sink: GapSink,
        max_line_bytes: int,
        target: RedisTarget,
        reactor: Any,
        status: SourceStatus | None = None,
        backoff: Backoff | None = None,
        connect: Callable[[], Any] | None = None,
        run: Run | None = None,
    ) -> None:
        assert target.channel is not None
        self.status = SourceStatus() if status is None else status
        self.source_gaps = 0
        self._sink = sink
        self._max_line_bytes = max_line_bytes
        self._target = target
        self._channel = target.channel
        self._reactor = reactor
        self._backoff = Backoff() if backoff is None else backoff
        self._connect = connect or (lambda: cluster_client(target))
        self._pool: ThreadPool | None = None
        if run is None:
            pool = ThreadPool(minthreads=0, maxthreads=1, name="redis-sharded")
            self._pool = pool
            self._run: Run = lambda f, *a: deferToThreadPool(reactor, pool, f, *a)
        else:
            self._run = run
        self._client: Any = None
        self._pubsub: Any = None
        self._gap_started: float | None = None
        self._busy: Deferred[Any] = succeed(None)
        self._retry: Any = None

    # -- the service ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        _log.info(
            "source: Redis Cluster sharded channel {channel} at {redis}",
            channel=self._channel,
            redis=self._target.masked(),
        )
        self.status.down(f"connecting to Redis at {self._target.masked()}")
        if self._pool is not None:
            self._pool.start()
        self._subscribe()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        done: Deferred[None] = Deferred()

        def stopped(_: object) -> None:
            self._drop()
            if self._client is not None:
                self._client.close()
            if self._pool is not None:
                self._pool.stop()
            done.callback(None)

        self._busy.addBoth(stopped)
        return done

    # -- subscribing and reading --------------------------------------------------

    def _call(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d = self._run(f, *args)
        self._busy = d
        return d

    def _subscribe(self) -> None:
        self._retry = None
        d = self._call(self._subscribed_pubsub)
        d.addCallbacks(self._up, self._failed)

    def _subscribed_pubsub(self) -> Any:
        """In the thread: the client (made once), then a fresh subscription."""
        refresh = self._client is not None
        if self._client is None:
            self._client = self._connect()
        return subscribe(self._client, self._channel, refresh)

    def _up(self, pubsub: Any) -> None:
        if not self.running:
            pubsub.close()
            return
        self._pubsub = pubsub
        self._backoff.reset()
        self.status.up(f"subscribed to Redis channel {self._channel}")
        started, self._gap_started = self._gap_started, None
        if started is None:
            _log.info(
                "subscribed to Redis channel {channel} (sharded) at {redis}",
                channel=self._channel,
                redis=self._target.masked(),
            )
        else:
            self._report_gap(started)
        self._read()

    def _report_gap(self, started: float) -> None:
        self.source_gaps += 1
        # Before any line of the new subscription reaches the broadcaster.
        self._sink.source_gap()
        ended = self._reactor.seconds()
        _log.warn(
            "Redis source recovered: subscribed to {channel} again; lines "
            "published from {gap_start} to {gap_end} ({gap_seconds} s) were "
            "not received",
            channel=self._channel,
            redis=self._target.masked(),
            gap_start=moment(started),
            gap_end=moment(ended),
            gap_seconds=round(ended - started, 3),
        )

    def _read(self) -> None:
        d = self._call(read, self._pubsub)
        d.addCallbacks(self._got, self._failed)

    def _got(self, result: tuple[list[bytes], Exception | None]) -> None:
        if not self.running:
            return
        messages, error = result
        lines = [m for m in messages if m and self._fits(m)]
        if lines:
            self._sink.broadcast(lines)
        if error is not None:
            self._failed(Failure(error))
        else:
            self._read()

    def _fits(self, message: bytes) -> bool:
        if len(message) <= self._max_line_bytes:
            return True
        self.status.lines_discarded += 1
        _log.warn(
            "discarded a line of {length} bytes from Redis channel "
            "{channel}: longer than {limit}",
            length=len(message),
            limit=self._max_line_bytes,
            channel=self._channel,
        )
        return False

    def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                pubsub.close()

    def _failed(self, failure: Failure) -> None:
        if not self.running:
            return
        if not failure.check(RedisError, OSError):
            _log.failure("Redis sharded channel source failed", failure)
        reason = failure.getErrorMessage() or failure.type.__name__
        delay = self._backoff.next_delay()
        self._retry = self._reactor.callLater(delay, self._subscribe)
        if self._pubsub is not None:
            self._drop()
            self._gap_started = self._reactor.seconds()
            self.status.down(f"lost Redis: {reason}")
            _log.warn(
                "Redis source lost its connection to {redis}: {reason}; lines "
                "published from {gap_start} on are not received until it "
                "resubscribes; reconnecting in {delay} s",
                redis=self._target.masked(),
                channel=self._channel,
                reason=reason,
                gap_start=moment(self._gap_started),
                delay=round(delay, 2),
            )
        else:
            self.status.down(f"cannot reach Redis: {reason}")
            _log.warn(
                "Redis source cannot subscribe at {redis}: {reason}; "
                "attempt {attempts} failed, next in {delay} s",
                redis=self._target.masked(),
                channel=self._channel,
                reason=reason,
                attempts=self._backoff.attempts,
                delay=round(delay, 2),
            )
