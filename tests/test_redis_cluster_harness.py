"""The test harness's Redis Cluster is a real, working cluster."""

from __future__ import annotations

from redis_cluster import private_cluster
from redis_server import RedisError
from twisted.trial.unittest import SynchronousTestCase


class ClusterHarnessTests(SynchronousTestCase):
    def test_three_masters_share_the_slots(self) -> None:
        """Every node is ok, and a key written on one master is MOVED from another."""
        cluster = private_cluster(self)
        master = cluster.master_of("harness-key")
        master.call("SET", "harness-key", "1")
        other = next(n for n in cluster.masters if n is not master)
        with self.assertRaises(RedisError) as raised:
            other.call("GET", "harness-key")
        self.assertIn("MOVED", str(raised.exception))
        self.assertIn(str(master.port), str(raised.exception))

    def test_replica_takes_over_a_killed_master(self) -> None:
        """With replicas, killing a master promotes its replica to serve its slots."""
        cluster = private_cluster(self, masters=3, replicas=1)
        master = cluster.master_of("failover-key")
        replica = cluster.kill_master(master)
        self.assertIs(cluster.master_of("failover-key"), replica)
