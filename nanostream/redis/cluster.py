"""Redis Cluster: telling a Cluster member from a single Redis, and clients for both.

A ``redis://`` URL may name a single Redis or any member of a Redis Cluster;
nothing in the URL says which.  The server does: ``INFO cluster`` answers
``cluster_enabled:1`` on a Cluster member.  It is asked once, when the
first connection is made, and the answer picks the client: redis-py's
``RedisCluster`` (which learns the slot map from the member named, routes
each key to its master, follows ``MOVED``/``ASK`` and relearns the map after
a failover), or a plain ``Redis``.  See docs/decisions.rst, "Redis Cluster".

A Cluster has only database 0: a URL naming another is refused when the
server turns out to be a Cluster member.  Everything here blocks; callers
run it in threads of their own.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from nanostream.redis.url import RedisTarget

#: Seconds to connect before giving up.
CONNECT_TIMEOUT = 5.0
#: A reply slower than this means the node is gone.
REPLY_TIMEOUT = 10.0
#: Attempts RedisCluster makes at one command, relearning the slot map
#: between them, before the caller sees the error and backs off itself.
CLUSTER_ATTEMPTS = 3


class NotClusterDatabase(redis.RedisError):
    """A URL names a database other than 0 of a Redis Cluster."""


def single_client(
    target: RedisTarget, reply_timeout: float = REPLY_TIMEOUT, db: int | None = None
) -> Any:
    """A redis-py client for one Redis, that leaves retrying to its caller."""
    return redis.Redis(
        host=target.host,
        port=target.port,
        db=target.db if db is None else db,
        username=target.username if target.password is not None else None,
        password=target.password,
        ssl=target.tls,
        ssl_ca_certs=target.ca,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=reply_timeout,
        # One attempt per call: the caller logs each loss and backs off itself.
        retry=Retry(NoBackoff(), 0),
        protocol=2,
    )


def cluster_client(target: RedisTarget, reply_timeout: float = REPLY_TIMEOUT) -> Any:
    """A RedisCluster that starts from the member ``target`` names."""
    return RedisCluster(
        host=target.host,
        port=target.port,
        username=target.username if target.password is not None else None,
        password=target.password,
        ssl=target.tls,
        ssl_ca_certs=target.ca,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=reply_timeout,
        # A few quick attempts ride over a MOVED storm or a refreshed slot
        # map; a failover that takes longer is the caller's backoff's job.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), CLUSTER_ATTEMPTS),
        protocol=2,
    )


def is_cluster(target: RedisTarget, timeout: float = CONNECT_TIMEOUT) -> bool:
    """Whether ``target`` is a Redis Cluster member (asks it: blocks)."""
    # Database 0: a Cluster member refuses to SELECT any other.
    probe = single_client(target, timeout, db=0)
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    finally:
        probe.close()


def connect(target: RedisTarget, reply_timeout: float = REPLY_TIMEOUT) -> Any:
    """The client ``target`` calls for: a RedisCluster for a Cluster member."""
    if not is_cluster(target):
        return single_client(target, reply_timeout)
    if target.db:
        raise NotClusterDatabase(
            "this Redis is a Cluster member, and a Redis Cluster has only "
            "database 0: use /0 in the URL"
        )
    return cluster_client(target, reply_timeout)


def disconnect(client: Any) -> None:
    """Close every connection of ``client``, from any thread.

    A call blocked on one of them (a blocking ``XREAD``) fails at once.
    """
    if isinstance(client, AnyClient):
        client = client.made
        if client is None:
            return
    if isinstance(client, RedisCluster):
        client.disconnect_connection_pools()
    else:
        client.connection_pool.disconnect()


class AnyClient:
    """A redis-py client for a URL, made on first use by :func:`connect`.

    Stands in for the client it makes: every attribute is the made
    client's.  Until one is made, using it connects (and may raise, to be
    tried again later).
    """

    def __init__(self, target: RedisTarget, reply_timeout: float = REPLY_TIMEOUT):
        self._target = target
        self._reply_timeout = reply_timeout
        self._lock = threading.Lock()
        self.made: Any = None

    def __getattr__(self, name: str) -> Any:
        client = self.made
        if client is None:
            with self._lock:
                if self.made is None:
                    self.made = connect(self._target, self._reply_timeout)
                client = self.made
        return getattr(client, name)
