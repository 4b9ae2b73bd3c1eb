"""The used-token ledger on a Redis Cluster, and the ledger a ``redis://`` URL gets.

On a Cluster the ledger is the same atomic ``SET key 1 NX PXAT expiry`` as
on a single Redis (:mod:`nanostream.auth.redis_ledger`), sent by redis-py's
``RedisCluster`` to the master of the key's slot, from a small thread pool.
The tokens of one reactor turn go together, one thread hop and one
pipeline (split by master) for all of them: a hop costs more CPU than the
command, and handshakes arriving together share it.
A token's key is ``prefix{hex(identity)}``: the hash tag puts every key of
one token in one slot, while different tokens spread over all the masters
(so the prefix holds no braces: a hash tag in it would put every token in
one slot; ``--ledger-prefix`` refuses them).

Fail closed, as on a single Redis: until the slot map is learnt, when the
master does not answer within the timeout, or answers an error (a failover
under way), the handshake is refused.  A master lost to a failover is
found again by RedisCluster, which relearns the slot map.

:class:`RedisURLLedger` is what ``--ledger redis://...`` builds: it asks the
server whether it is a Cluster member, then runs one ledger or the other.
"""

from __future__ import annotations

import math
from typing import Any

from redis.exceptions import RedisError
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from nanostream.auth.ledger import ILedger
from nanostream.auth.redis_ledger import (
    DEFAULT_PREFIX,
    DEFAULT_TIMEOUT,
    LedgerUnavailable,
    RedisLedger,
)
from nanostream.redis.backoff import Backoff
from nanostream.redis.cluster import cluster_client
from nanostream.redis.mode import ClusterProbe, Run
from nanostream.redis.url import RedisTarget

_log = Logger()

#: Threads sending ledger commands: handshakes waiting on Redis at once.
THREADS = 8
#: The slowest reply a thread waits for; the handshake gives up sooner.
REPLY_TIMEOUT = 2.0


def cluster_key(prefix: bytes, token_id: bytes) -> bytes:
    """``prefix{hex}``: one slot per token, picked by the token alone."""
    return prefix + b"{" + token_id.hex().encode("ascii") + b"}"


def set_all(client: Any, keys: list[tuple[bytes, int]]) -> list[Any]:
    """``SET key 1 NX PXAT expiry`` for each, pipelined (blocks).

    For each key: True when this call created it, None when it existed, or
    the error that kept it from being asked (its master down, say); the
    other keys' answers stand.
    """
    try:
        if len(keys) == 1:
            [(key, expiry)] = keys
            return [client.set(key, b"1", nx=True, pxat=expiry)]
        pipe = client.pipeline(transaction=False)
        for key, expiry in keys:
            pipe.set(key, b"1", nx=True, pxat=expiry)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies
    except (RedisError, OSError) as e:
        return [e] * len(keys)


@implementer(ILedger)
class ClusterLedger(Service):
    """Consumes tokens in a Redis Cluster."""

    size = 0

    def __init__(
        self,
        target: RedisTarget,
        reactor: Any,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        backoff: Backoff | None = None,
        connect: Any = None,
        run: Run | None = None,
    ) -> None:
        """
        :param connect: makes the client (blocks); tests hand in a fake.
        :param run: runs a blocking call, firing in the reactor thread.
        """
        self._target = target
        self._clock = reactor
        self._prefix = prefix.encode("utf-8")
        self._timeout = timeout
        self._backoff = Backoff() if backoff is None else backoff
        self._connect = connect or (lambda: cluster_client(target, REPLY_TIMEOUT))
        self._pool: ThreadPool | None = None
        if run is None:
            pool = ThreadPool(minthreads=0, maxthreads=THREADS, name="redis-ledger")
            self._pool = pool
            self._run: Run = lambda f, *a: deferToThreadPool(reactor, pool, f, *a)
        else:
            self._run = run
        self._client: Any = None
        self._retry: Any = None
        self._batch: list[tuple[bytes, int, Deferred[bool]]] = []
        self._flush: Any = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    def consume(self, token_id: bytes, expires_at: float) -> Deferred[bool]:
        client = self._client
        if client is None:
            return fail(LedgerUnavailable("not connected to Redis"))
        key = cluster_key(self._prefix, token_id)
        d: Deferred[bool] = Deferred()
        self._batch.append((key, math.ceil(expires_at * 1000), d))
        if self._flush is None:
            self._flush = self._clock.callLater(0, self._send, client)
        d.addTimeout(self._timeout, self._clock)
        d.addErrback(self._unanswered)
        return d

    def _send(self, client: Any) -> None:
        """One thread hop and one pipeline for every token of a reactor turn."""
        batch, self._batch, self._flush = self._batch, [], None
        d = self._run(set_all, client, [(key, expiry) for key, expiry, _ in batch])

        def answered(replies: list[Any]) -> None:
            for (_, _, waiting), reply in zip(batch, replies, strict=True):
                if waiting.called:
                    continue
                if isinstance(reply, Exception):
                    waiting.errback(LedgerUnavailable(str(reply) or "Redis error"))
                else:
                    waiting.callback(bool(reply))

        def failed(failure: Failure) -> None:
            for _, _, waiting in batch:
                if not waiting.called:
                    waiting.errback(failure)

        d.addCallbacks(answered, failed)

    def _unanswered(self, failure: Failure) -> Failure:
        if failure.check(TimeoutError, CancelledError):
            return Failure(
                LedgerUnavailable(f"no answer from Redis within {self._timeout:g} s")
            )
        reason = failure.getErrorMessage() or failure.type.__name__
        return Failure(LedgerUnavailable(reason))

    # -- the service ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self._pool is not None:
            self._pool.start()
        self._start()

    def _start(self) -> None:
        self._retry = None
        d = self._run(self._connect)
        d.addCallbacks(self._up, self._unreachable)

    def _up(self, client: Any) -> None:
        if not self.running:
            client.close()
            return
        self._client = client
        self._backoff.reset()
        _log.info(
            "ledger connected to Redis Cluster at {redis}",
            redis=self._target.masked(),
        )

    def _unreachable(self, failure: Failure) -> None:
        if not self.running:
            return
        delay = self._backoff.next_delay()
        self._retry = self._clock.callLater(delay, self._start)
        _log.warn(
            "ledger cannot reach Redis Cluster at {redis}: {reason}; attempt "
            "{attempts} failed, next in {delay} s",
            redis=self._target.masked(),
            reason=failure.getErrorMessage() or failure.type.__name__,
            attempts=self._backoff.attempts,
            delay=round(delay, 2),
        )

    def stopService(self) -> None:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        batch, self._batch, self._flush = self._batch, [], None
        for _, _, waiting in batch:
            waiting.errback(LedgerUnavailable("the ledger is stopping"))
        client, self._client = self._client, None
        if client is not None:
            client.close()
        if self._pool is not None:
            self._pool.stop()


@implementer(ILedger)
class RedisURLLedger(Service):
    """The ledger of a ``redis://`` URL: single Redis or Cluster, as the server says."""

    size = 0

    def __init__(
        self,
        target: RedisTarget,
        reactor: Any,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        probe: ClusterProbe | None = None,
    ) -> None:
        self._target = target
        self._reactor = reactor
        self._prefix = prefix
        self._timeout = timeout
        self._probe = probe or ClusterProbe(target, reactor, "ledger", self._decided)
        self.chosen: RedisLedger | ClusterLedger | None = None

    @property
    def connected(self) -> bool:
        return self.chosen is not None and self.chosen.connected

    def consume(self, token_id: bytes, expires_at: float) -> Deferred[bool]:
        if self.chosen is None:
            return fail(LedgerUnavailable("not connected to Redis"))
        return self.chosen.consume(token_id, expires_at)

    def startService(self) -> None:
        super().startService()
        self._probe.start()

    def _decided(self, cluster: bool) -> None:
        kind = ClusterLedger if cluster else RedisLedger
        chosen = kind(
            self._target, self._reactor, prefix=self._prefix, timeout=self._timeout
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
