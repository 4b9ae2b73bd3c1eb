"""Before a Redis user starts: does its URL name a single Redis or a Cluster?

Services that keep a txredisapi connection (the ledger, the pub/sub source)
have a Cluster counterpart built on redis-py.  Which one runs is learnt
from the server once, when it first answers
(:func:`~nanostream.redis.cluster.is_cluster`, in a thread); until then the
service is down as it would be while connecting, and a server that does not
answer is asked again with backoff.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanostream.redis.backoff import Backoff
from nanostream.redis.cluster import is_cluster
from nanostream.redis.url import RedisTarget

_log = Logger()

Run = Callable[..., "Deferred[Any]"]


class ClusterProbe:
    """Asks until answered whether ``target`` is a Cluster member, then says so once."""

    def __init__(
        self,
        target: RedisTarget,
        reactor: Any,
        what: str,
        decided: Callable[[bool], None],
        *,
        backoff: Backoff | None = None,
        probe: Callable[[RedisTarget], bool] = is_cluster,
        run: Run | None = None,
    ) -> None:
        """
        :param what: names the asker in log lines ("ledger", "Redis source").
        :param run: runs a blocking call, firing in the reactor thread.
        """
        self._target = target
        self._reactor = reactor
        self._what = what
        self._decided = decided
        self._backoff = Backoff() if backoff is None else backoff
        self._probe = probe
        self._run = run or (
            lambda f, *a: deferToThreadPool(reactor, reactor.getThreadPool(), f, *a)
        )
        self._active = False
        self._retry: Any = None

    def start(self) -> None:
        self._active = True
        self._ask()

    def stop(self) -> None:
        self._active = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _ask(self) -> None:
        self._retry = None
        d = self._run(self._probe, self._target)
        d.addCallbacks(self._answered, self._failed)

    def _answered(self, cluster: bool) -> None:
        if self._active:
            self._active = False
            self._decided(cluster)

    def _failed(self, failure: Failure) -> None:
        if not self._active:
            return
        reason = failure.getErrorMessage() or failure.type.__name__
        delay = self._backoff.next_delay()
        self._retry = self._reactor.callLater(delay, self._ask)
        _log.warn(
            "{what} cannot reach Redis at {redis}: {reason}; attempt "
            "{attempts} failed, next in {delay} s",
            what=self._what,
            redis=self._target.masked(),
            reason=reason,
            attempts=self._backoff.attempts,
            delay=round(delay, 2),
        )
