"""The source of ``--source redis://...?channel=NAME``: single Redis or Cluster.

On a single Redis the channel is plain pub/sub
(:mod:`nanostream.sources.redis_channel`); on a Redis Cluster member it is
a sharded channel (:mod:`nanostream.sources.redis_sharded`).  Which one the
URL names is asked of the server when it first answers.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from nanostream.redis.mode import ClusterProbe
from nanostream.redis.url import RedisTarget
from nanostream.sources import GapSink, SourceStatus
from nanostream.sources.redis_channel import RedisSource
from nanostream.sources.redis_sharded import ShardedChannelSource


class RedisChannelSource(Service):
    """Runs the channel source the server calls for."""

    def __init__(
        self,
        sink: GapSink,
        max_line_bytes: int,
        target: RedisTarget,
        reactor: Any,
        status: SourceStatus | None = None,
        probe: ClusterProbe | None = None,
    ) -> None:
        self.status = SourceStatus() if status is None else status
        self._sink = sink
        self._max_line_bytes = max_line_bytes
        self._target = target
        self._reactor = reactor
        self._probe = probe or ClusterProbe(
            target, reactor, "Redis source", self._decided
        )
        self.chosen: RedisSource | ShardedChannelSource | None = None

    @property
    def source_gaps(self) -> int:
        return 0 if self.chosen is None else self.chosen.source_gaps

    def startService(self) -> None:
        super().startService()
        self.status.down(f"connecting to Redis at {self._target.masked()}")
        self._probe.start()

    def _decided(self, cluster: bool) -> None:
        kind = ShardedChannelSource if cluster else RedisSource
        chosen = kind(
            self._sink,
            self._max_line_bytes,
            self._target,
            self._reactor,
            status=self.status,
        )
        self.chosen = chosen
        chosen.startService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._probe.stop()
        chosen = self.chosen
        if chosen is not None and chosen.running:
            return chosen.stopService()
        return None
