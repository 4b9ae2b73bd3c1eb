"""Two real ``twistd -n nanostream`` nodes fed by one Redis channel.

Both nodes share a secret, a ``--source redis://...?channel=`` and a
``--ledger redis://...``; lines go in through ``nanostream publish``.
Redis comes from :mod:`redis_server` (or the test is skipped, saying why);
the outage test stops and restarts a private redis-server.
"""

from __future__ import annotations

import subprocess
import sys

from redis_server import private_redis, shared_redis, unique
from websockets.exceptions import ConnectionClosed

from .harness import (
    LISTEN_LOOPBACK,
    START_TIMEOUT,
    Nanostream,
    ServiceTestCase,
    new_secret,
    receive,
)

PUBLISH_TIMEOUT = 60.0


class FleetTests(ServiceTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.secret = new_secret()
        (self.directory / "secret").write_text(self.secret + "\n")
        self.channel = unique("fleet")
        self.prefix = unique("used") + ":"

    def node(self, redis_url: str) -> Nanostream:
        """A node subscribed to the test's channel with the shared ledger."""
        args = [
            "--secret-file", "secret",
            "--listen", LISTEN_LOOPBACK,
            "--source", f"{redis_url}?channel={self.channel}",
            "--ledger", redis_url,
            "--ledger-prefix", self.prefix,
        ]  # fmt: skip
        node = Nanostream(
            self.directory,
            args,
            secret=self.secret,
            listeners=1,
            endpoint_source=False,
        )
        self.addCleanup(node.assert_clean_log)
        self.addCleanup(node.stop)
        node.log.wait_for("subscribed to Redis channel", timeout=START_TIMEOUT)
        node.log.wait_for("ledger connected to Redis", timeout=START_TIMEOUT)
        return node

    def publish(self, redis_url: str, *lines: str) -> None:
        done = subprocess.run(
            [
                sys.executable, "-m", "nanostream.cli.publish",
                f"{redis_url}?channel={self.channel}",
            ],
            input="".join(line + "\n" for line in lines).encode(),
            capture_output=True,
            timeout=PUBLISH_TIMEOUT,
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr)

    def test_lines_reach_clients_of_both_nodes(self) -> None:
        """One publisher feeds every client of every node, in order."""
        url = shared_redis(self)
        a, b = self.node(url), self.node(url)
        clients = [node.connect(node.mint()) for node in (a, a, b, b)]
        self.publish(url, "first", "é second", "third")
        for client in clients:
            self.assertEqual(receive(client, 3), ["first", "é second", "third"])

    def test_token_used_on_one_node_refused_on_another(self) -> None:
        """A token accepted by node A is refused by node B: single use fleet-wide."""
        url = shared_redis(self)
        a, b = self.node(url), self.node(url)
        token = a.mint()
        a.connect(token)
        mark = b.log.mark()
        self.assertEqual(b.refuse(token).status, 401)
        b.log.wait_for(r"token already used", after=mark)
        b.connect(b.mint())

    def test_redis_outage(self) -> None:
        """Redis stops mid-stream: 503s meanwhile, then lines flow, no token twice."""
        server = private_redis(self)
        a, b = self.node(server.url), self.node(server.url)
        clients = [a.connect(a.mint()), b.connect(b.mint())]
        self.publish(server.url, "before")
        for client in clients:
            self.assertEqual(receive(client, 1), ["before"])

        marks = [node.log.mark() for node in (a, b)]
        server.stop()
        for node, mark in zip((a, b), marks, strict=True):
            node.log.wait_for("Redis source lost its connection", after=mark)
            node.log.wait_for("ledger lost Redis", after=mark)
        during = a.mint()
        for node in (a, b):
            mark = node.log.mark()
            self.assertEqual(node.refuse(during).status, 503)
            node.log.wait_for(r"ledger unavailable", after=mark)

        server.start()
        for node, mark in zip((a, b), marks, strict=True):
            node.log.wait_for("Redis source recovered", after=mark)
            node.log.wait_for("ledger connected to Redis", after=mark)
        # Lines published meanwhile were missed: raw clients are closed rather
        # than kept silently missing them, and reconnect.
        for client in clients:
            with self.assertRaises(ConnectionClosed) as closed:
                client.recv(timeout=START_TIMEOUT)
            self.assertEqual(closed.exception.rcvd and closed.exception.rcvd.code, 1011)
        clients = [a.connect(a.mint()), b.connect(b.mint())]
        self.publish(server.url, "after")
        for client in clients:
            self.assertEqual(receive(client, 1), ["after"])

        a.connect(during)
        self.assertEqual(b.refuse(during).status, 401)
