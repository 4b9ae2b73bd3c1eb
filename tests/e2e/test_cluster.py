"""Real ``twistd -n nanostream`` nodes against a real Redis Cluster of three masters.

Each node is given a URL naming one member (not always the master of the
key it uses), so that it must learn the slot map and follow ``MOVED``.  The
cluster comes from :mod:`redis_cluster` and is the test's own.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from redis.cluster import RedisCluster
from redis.exceptions import RedisError
from redis_cluster import Cluster, private_cluster
from redis_server import unique
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .harness import (
    START_TIMEOUT,
    Nanostream,
    ServiceTestCase,
    new_secret,
    receive,
    split_id,
)

PUBLISH_TIMEOUT = 60.0


def cluster_client(cluster: Cluster) -> Any:
    """The test's own client of ``cluster``, for writing and checking."""
    node = cluster.nodes[0]
    return RedisCluster(host="127.0.0.1", port=node.port, protocol=2)


class ClusterTestCase(ServiceTestCase):
    masters = 3
    replicas = 0

    def setUp(self) -> None:
        super().setUp()
        self.cluster = private_cluster(self, self.masters, self.replicas)
        self.redis = cluster_client(self.cluster)
        self.addCleanup(self.redis.close)
        self.secret = new_secret()
        (self.directory / "secret").write_text(self.secret + "\n")
        self.key = unique("stream")
        self.channel = unique("channel")
        self.prefix = unique("used") + ":"

    def other_member(self, key: str) -> int:
        """A node that does not serve ``key``: a node given it must follow MOVED."""
        owner = self.cluster.master_of(key)
        return next(i for i, n in enumerate(self.cluster.nodes) if n is not owner)

    def node(
        self, source: str, *, ledger: str | None = None, member: int | None = None
    ) -> Nanostream:
        """A node with the given ``--source`` query (``?stream=`` or ``?channel=``)."""
        index = self.other_member(self.key) if member is None else member
        args = [
            "--secret-file", "secret",
            "--listen", "tcp:0:interface=127.0.0.1",
            "--source", self.cluster.url(index, source),
            "--handshake-timeout", "60",
        ]  # fmt: skip
        if ledger is not None:
            args += ["--ledger", self.cluster.url(index), "--ledger-prefix", ledger]
        node = Nanostream(
            self.directory, args, secret=self.secret, listeners=1, endpoint_source=False
        )
        self.addCleanup(node.assert_clean_log)
        self.addCleanup(self._show_log, node)
        self.addCleanup(node.stop)
        return node

    def stream_node(self, **kwargs: Any) -> Nanostream:
        node = self.node(f"?stream={self.key}", **kwargs)
        node.log.wait_for("reading Redis stream", timeout=START_TIMEOUT)
        return node

    def xadd(self, *lines: str) -> list[str]:
        return [self.redis.xadd(self.key, {"line": line}).decode() for line in lines]

    def publish(self, query: str, *lines: str, member: int = 0) -> None:
        done = subprocess.run(
            [
                sys.executable, "-m", "nanostream.cli.publish",
                self.cluster.url(member, query),
            ],
            input="".join(line + "\n" for line in lines).encode(),
            capture_output=True,
            timeout=PUBLISH_TIMEOUT,
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr)


class ClusterStreamTests(ClusterTestCase):
    def test_lines_across_nodes_and_resume(self) -> None:
        """Two nodes on a Cluster stream send its entry ids; a third resumes from it."""
        a = self.stream_node()
        b = self.stream_node(member=2)
        clients = [node.connect_v1(node.mint()) for node in (a, b)]
        ids = self.xadd("one", "two", "three")
        for client in clients:
            got = [split_id(m) for m in receive(client, 3)]
            self.assertEqual(got, list(zip(ids, ["one", "two", "three"], strict=True)))
        # A node started after the lines has none in its history: the
        # resume comes from the stream itself.
        c = self.stream_node(member=1)
        resumed = c.connect_v1(c.mint(), since=ids[0])
        self.assertEqual(
            receive(resumed, 3), [f"{ids[1]} two", f"{ids[2]} three", "!live"]
        )
        [later] = self.xadd("four")
        self.assertEqual(receive(resumed, 1), [f"{later} four"])


class ClusterPublishTests(ClusterTestCase):
    def test_publish_to_a_stream(self) -> None:
        """``nanostream publish`` given any member appends to the Cluster's stream."""
        a = self.stream_node()
        client = a.connect(a.mint())
        self.publish(
            f"?stream={self.key}", "α", "β", member=self.other_member(self.key)
        )
        self.assertEqual(receive(client, 2), ["α", "β"])
        self.assertEqual(self.redis.xlen(self.key), 2)

    def test_publish_to_a_sharded_channel(self) -> None:
        """On a Cluster a channel is published with SPUBLISH, to its shard."""
        pubsub = self.redis.pubsub()
        self.addCleanup(pubsub.close)
        pubsub.ssubscribe(self.channel)
        self.publish(f"?channel={self.channel}", "one", "two", member=2)
        got = []
        deadline = time.monotonic() + START_TIMEOUT
        while len(got) < 2 and time.monotonic() < deadline:
            message = pubsub.get_sharded_message(
                ignore_subscribe_messages=True, timeout=1.0
            )
            if message is not None:
                got.append(message["data"])
        self.assertEqual(got, [b"one", b"two"])


class ClusterLedgerTests(ClusterTestCase):
    def ledger_node(self, member: int) -> Nanostream:
        node = self.node(f"?stream={self.key}", ledger=self.prefix, member=member)
        node.log.wait_for("ledger connected to Redis Cluster", timeout=START_TIMEOUT)
        return node

    def test_token_used_on_one_node_refused_on_another(self) -> None:
        """Tokens used on a node given one member are refused by one given another."""
        a, b = self.ledger_node(0), self.ledger_node(1)
        tokens = [a.mint() for _ in range(8)]
        for token in tokens:
            a.connect(token)
        for token in tokens:
            mark = b.log.mark()
            self.assertEqual(b.refuse(token).status, 401)
            b.log.wait_for(r"token already used", after=mark)
        b.connect(b.mint())
        # The keys are spread over the masters, each in its token's slot.
        owners = {
            self.cluster.master_of(key.decode()).port
            for key in self.redis.scan_iter(match=f"{self.prefix}*", target_nodes="all")
        }
        self.assertGreater(len(owners), 1)


class ClusterChannelTests(ClusterTestCase):
    def test_sharded_channel_across_nodes(self) -> None:
        """Nodes given different members read a sharded channel; publish feeds both."""
        nodes = [self.node(f"?channel={self.channel}", member=m) for m in (0, 1)]
        for node in nodes:
            node.log.wait_for(r"subscribed to Redis channel .* \(sharded\)")
        clients = [node.connect(node.mint()) for node in nodes]
        self.publish(f"?channel={self.channel}", "one", "é two", "three", member=2)
        for client in clients:
            self.assertEqual(receive(client, 3), ["one", "é two", "three"])


class ClusterFailoverTests(ClusterTestCase):
    replicas = 1

    def refused(self, node: Nanostream, token: str) -> int:
        """The status of a refused handshake once the ledger answers (not 503)."""
        deadline = time.monotonic() + START_TIMEOUT
        status = node.refuse(token).status
        while status == 503 and time.monotonic() < deadline:
            time.sleep(0.1)
            status = node.refuse(token).status
        return status

    def admitted(self, node: Nanostream) -> None:
        """A fresh token is admitted once the ledger answers again."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                node.connect(node.mint())
                return
            except InvalidStatus as e:
                if e.response.status_code != 503 or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def xadd_retrying(self, line: str) -> str:
        """XADD from the test's client, riding over the failover."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                [entry] = self.xadd(line)
                return entry
            except RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def test_master_killed(self) -> None:
        """The stream's master dies: lines go on from where they were; reuse refused."""
        master = self.cluster.master_of(self.key)
        # Node b is given the doomed master itself, node a a replica.
        a = self.node(f"?stream={self.key}", ledger=self.prefix, member=3)
        b = self.node(
            f"?stream={self.key}",
            ledger=self.prefix,
            member=self.cluster.nodes.index(master),
        )
        for node in (a, b):
            node.log.wait_for("reading Redis stream", timeout=START_TIMEOUT)
            node.log.wait_for("ledger connected to Redis Cluster")
        used = [a.mint() for _ in range(6)]
        for token in used:
            a.connect(token)
        clients = [node.connect_v1(node.mint()) for node in (a, b)]
        before = self.xadd("one", "two")
        for client in clients:
            self.assertEqual(
                receive(client, 2), [f"{before[0]} one", f"{before[1]} two"]
            )
        self.cluster.wait_replicated()

        self.cluster.kill_master(master)
        after = [self.xadd_retrying(line) for line in ("three", "four")]
        for client in clients:
            # Exactly the next lines: no gap, nothing repeated.
            self.assertEqual(
                receive(client, 2), [f"{after[0]} three", f"{after[1]} four"]
            )
        for node in (a, b):
            for token in used:
                self.assertEqual(self.refused(node, token), 401)
            self.admitted(node)
        resumed = b.connect_v1(b.mint(), since=before[0])
        self.assertEqual(
            receive(resumed, 4),
            [f"{before[1]} two", f"{after[0]} three", f"{after[1]} four", "!live"],
        )

    def test_sharded_channel_master_killed(self) -> None:
        """The channel's master dies: the node subscribes anew, tells the gap."""
        master = self.cluster.master_of(self.channel)
        node = self.node(
            f"?channel={self.channel}", member=self.cluster.nodes.index(master)
        )
        node.log.wait_for(r"subscribed to Redis channel .* \(sharded\)")
        client = node.connect(node.mint())
        self.publish(f"?channel={self.channel}", "before")
        self.assertEqual(receive(client, 1), ["before"])
        mark = node.log.mark()
        replica = self.cluster.kill_master(master)
        node.log.wait_for("Redis source recovered", after=mark, timeout=START_TIMEOUT)
        # A raw client that may have missed lines is closed, not kept.
        with self.assertRaises(ConnectionClosed):
            client.recv(timeout=START_TIMEOUT)
        client = node.connect(node.mint())
        member = self.cluster.nodes.index(replica)
        self.publish(f"?channel={self.channel}", "after", member=member)
        self.assertEqual(receive(client, 1), ["after"])
