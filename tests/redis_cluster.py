"""A real Redis Cluster on loopback for the tests that need one.

:func:`private_cluster` starts ``masters`` ``redis-server`` processes in
cluster mode (and ``replicas`` replicas of each), joins them with
``CLUSTER MEET``, gives each master an even share of the 16384 slots with
``CLUSTER ADDSLOTSRANGE``, sets up the replicas with ``CLUSTER REPLICATE``
and waits until every node reports ``cluster_state:ok`` and agrees on the
topology.  No ``redis-cli --cluster``: the harness needs only redis-server.

Each node talks to the others on its bus port, its port + 10000, so ports
are chosen below 55536 with both the port and its bus port free.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from unittest import SkipTest

from redis_server import RedisClient, RedisError, RedisServer
from twisted.trial.unittest import SynchronousTestCase

SLOTS = 16384
BUS_OFFSET = 10000
READY_TIMEOUT = 30.0
#: How long a master may be unreachable before its replica takes over, in ms.
NODE_TIMEOUT_MS = 1000


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose bus port (port + 10000) is free too."""
    for _ in range(1000):
        port = random.randint(20000, 65535 - BUS_OFFSET)
        if _bindable(port) and _bindable(port + BUS_OFFSET):
            return port
    raise AssertionError("no free port pair for a cluster node")


class ClusterNode(RedisServer):
    """One ``redis-server --cluster-enabled yes`` in a directory of its own."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        super().__init__(
            directory,
            port=cluster_port(),
            options=[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(directory / "nodes.conf"),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                # A replica that lost its master for a while still takes over.
                "--cluster-replica-validity-factor",
                "0",
            ],
        )

    def call(self, *args: object) -> object:
        with RedisClient(self.target) as client:
            return client.call(*args)

    def node_id(self) -> str:
        reply = self.call("CLUSTER", "MYID")
        assert isinstance(reply, bytes)
        return reply.decode()

    def kill(self) -> None:
        """SIGKILL: the node vanishes without a word to its peers."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)


class Cluster:
    """Masters and their replicas, formed into one cluster."""

    def __init__(self, directory: Path, masters: int, replicas: int) -> None:
        self.masters = [ClusterNode(directory / f"m{i}") for i in range(masters)]
        self.replicas = [
            [ClusterNode(directory / f"m{i}r{j}") for j in range(replicas)]
            for i in range(masters)
        ]

    @property
    def nodes(self) -> list[ClusterNode]:
        return self.masters + [r for group in self.replicas for r in group]

    def url(self, node: int = 0, query: str = "") -> str:
        """A URL naming one member, as an operator would give it."""
        return f"redis://127.0.0.1:{self.nodes[node].port}/0{query}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.call("CLUSTER", "MEET", "127.0.0.1", first.port)
        share = SLOTS // len(self.masters)
        for i, master in enumerate(self.masters):
            last = SLOTS - 1 if i == len(self.masters) - 1 else (i + 1) * share - 1
            master.call("CLUSTER", "ADDSLOTSRANGE", i * share, last)
        self._wait(lambda: all(self._knows_all(n) for n in self.nodes))
        for master, group in zip(self.masters, self.replicas, strict=True):
            master_id = master.node_id()
            for replica in group:
                replica.call("CLUSTER", "REPLICATE", master_id)
        self.wait_ok()

    def _knows_all(self, node: ClusterNode) -> bool:
        reply = node.call("CLUSTER", "NODES")
        assert isinstance(reply, bytes)
        lines = [line for line in reply.decode().splitlines() if line]
        return len(lines) == len(self.nodes) and "handshake" not in reply.decode()

    def wait_ok(self, nodes: list[ClusterNode] | None = None) -> None:
        """Until every running node says the cluster is ok and in sync."""
        members = [n for n in (nodes or self.nodes) if n.process is not None]

        def ok() -> bool:
            for node in members:
                info = _info(node)
                if info.get("cluster_state") != "ok":
                    return False
                if info.get("cluster_slots_ok") != str(SLOTS):
                    return False
            epochs = {_info(n).get("cluster_current_epoch") for n in members}
            return len(epochs) == 1

        self._wait(ok)

    def _wait(self, condition: object) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                if condition():  # type: ignore[operator]
                    return
            except (OSError, RedisError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the Redis Cluster did not become ready in time")
            time.sleep(0.05)

    def master_of(self, key: str) -> ClusterNode:
        """The node that serves ``key`` now, as a running node sees it."""
        live = [n for n in self.nodes if n.process is not None]
        slot = live[0].call("CLUSTER", "KEYSLOT", key)
        assert isinstance(slot, int)
        ranges = live[0].call("CLUSTER", "SLOTS")
        assert isinstance(ranges, list)
        for low, high, master, *_ in ranges:
            if low <= slot <= high:
                return next(n for n in self.nodes if n.port == master[1])
        raise AssertionError(f"no master serves slot {slot}")

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        return self.replicas[self.masters.index(master)][0]

    def wait_replicated(self) -> None:
        """Until every replica has applied everything its master has written."""

        def caught_up() -> bool:
            for master, group in zip(self.masters, self.replicas, strict=True):
                if master.process is None:
                    continue
                with RedisClient(master.target) as client:
                    written = int(client.info("replication")["master_repl_offset"])
                for replica in group:
                    with RedisClient(replica.target) as client:
                        info = client.info("replication")
                    if int(info.get("slave_repl_offset", -1)) < written:
                        return False
            return True

        self._wait(caught_up)

    def kill_master(self, master: ClusterNode) -> ClusterNode:
        """SIGKILL ``master``; wait until its replica serves its slots; the replica."""
        replica = self.replica_of(master)
        master.kill()

        def promoted() -> bool:
            role = replica.call("ROLE")
            assert isinstance(role, list)
            return role[0] == b"master"

        self._wait(promoted)
        self.wait_ok()
        return replica

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _info(node: ClusterNode) -> dict[str, str]:
    """``CLUSTER INFO`` as fields (``INFO cluster`` says only whether enabled)."""
    reply = node.call("CLUSTER", "INFO")
    assert isinstance(reply, bytes)
    fields = {}
    for line in reply.decode().splitlines():
        name, colon, value = line.partition(":")
        if colon:
            fields[name] = value
    return fields


def private_cluster(
    case: SynchronousTestCase, masters: int = 3, replicas: int = 0
) -> Cluster:
    """A started cluster of this test's own, stopped in cleanup; or skip."""
    if shutil.which("redis-server") is None:
        raise SkipTest(
            "this test needs a Redis Cluster of its own: redis-server is not "
            "installed (apt-get install redis-server)"
        )
    directory = Path(tempfile.mkdtemp(prefix="nanostream-cluster-"))
    case.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    cluster = Cluster(directory, masters, replicas)
    case.addCleanup(cluster.stop)
    cluster.start()
    return cluster
