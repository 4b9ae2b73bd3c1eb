"""Lines from a Redis pub/sub channel: how a fleet of nodes shares one feed.

Each message on the channel is one line, sent on as it is (the UTF-8 /
binary rule and ``--max-line-bytes`` apply; an empty message is skipped).
The messages parsed from one read of the socket go to the broadcaster as one
batch, as the other sources do.

Pub/sub keeps nothing: what is published while this node is not subscribed
never reaches it.  So a lost connection is logged with the moment it was
lost, reconnected with backoff, resubscribed, and the recovery logged with
the gap's start and end, for the operator to know which lines were missed.
The broadcaster is told too (``source_gap``), once per resubscription and
before any line from it, so that no client goes on silently missing lines.
"""

from __future__ import annotations

import datetime
from typing import Any

import txredisapi
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger

from nanostream.redis.backoff import Backoff
from nanostream.redis.client import RedisClientFactory, RedisConnection, ReportsLoss
from nanostream.redis.url import RedisTarget
from nanostream.sources import GapSink, SourceStatus

_log = Logger()


class SubscriberProtocol(ReportsLoss, txredisapi.SubscriberProtocol):
    """txredisapi's subscriber, handing on whole reads rather than single messages."""

    source: RedisSource | None = None

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        if self.source is not None:
            self.source.message_received(message)

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        super().dataReceived(data, unpause)
        # Without hiredis, txredisapi's parser pauses after each bulk reply
        # and continues on a later turn; the read is done once it is not.
        if not self.paused and self.source is not None:
            self.source.flush()


def moment(seconds: float) -> str:
    """A gap's bound as logged: UTC, to the millisecond."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds")


class RedisSource(Service):
    """Subscribes to one channel and keeps subscribed while running."""

    def __init__(
        self,
        sink: GapSink,
        max_line_bytes: int,
        target: RedisTarget,
        reactor: Any,
        status: SourceStatus | None = None,
        backoff: Backoff | None = None,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        assert target.channel is not None
        self.status = SourceStatus() if status is None else status
        self._sink = sink
        self._max_line_bytes = max_line_bytes
        self._target = target
        self._channel = target.channel
        self._clock = reactor
        self._batch: list[bytes] = []
        self._gap_started: float | None = None
        #: Times the subscription was lost and taken up again: lines were missed.
        self.source_gaps = 0
        # Channels are not scoped by database, so no SELECT is needed.
        factory = RedisClientFactory(
            SubscriberProtocol, target, reactor, select_db=False, endpoint=endpoint
        )
        self._connection = RedisConnection(factory, reactor, self, backoff=backoff)

    # -- the service ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        _log.info(
            "source: Redis channel {channel} at {redis}",
            channel=self._channel,
            redis=self._target.masked(),
        )
        self.status.down(f"connecting to Redis at {self._target.masked()}")
        self._connection.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.flush()
        return self._connection.stopService()

    # -- lines ----------------------------------------------------------------

    def message_received(self, message: bytes) -> None:
        if not message:
            return
        if len(message) > self._max_line_bytes:
            self.status.lines_discarded += 1
            _log.warn(
                "discarded a line of {length} bytes from Redis channel "
                "{channel}: longer than {limit}",
                length=len(message),
                limit=self._max_line_bytes,
                channel=self._channel,
            )
            return
        self._batch.append(message)

    def flush(self) -> None:
        """Hand what the last read brought to the broadcaster, as one batch."""
        if self._batch:
            batch, self._batch = self._batch, []
            self._sink.broadcast(batch)

    # -- the connection (nanostream.redis.client.Handler) -----------------------

    def prepare(self, protocol: SubscriberProtocol) -> Deferred[Any]:
        protocol.source = self
        return protocol.subscribe(self._channel)

    def up(self, protocol: SubscriberProtocol) -> None:
        self.status.up(f"subscribed to Redis channel {self._channel}")
        started, self._gap_started = self._gap_started, None
        if started is None:
            _log.info(
                "subscribed to Redis channel {channel} at {redis}",
                channel=self._channel,
                redis=self._target.masked(),
            )
            return
        self.source_gaps += 1
        # Before any line of the new subscription reaches the broadcaster.
        self._sink.source_gap()
        ended = self._clock.seconds()
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

    def down(self, reason: str, delay: float) -> None:
        self.flush()
        self._gap_started = self._clock.seconds()
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

    def retrying(self, reason: str, delay: float, attempts: int) -> None:
        self.status.down(f"cannot reach Redis: {reason}")
        _log.warn(
            "Redis source cannot subscribe at {redis}: {reason}; "
            "attempt {attempts} failed, next in {delay} s",
            redis=self._target.masked(),
            channel=self._channel,
            reason=reason,
            attempts=attempts,
            delay=round(delay, 2),
        )
