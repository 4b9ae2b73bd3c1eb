"""Nodes on a Redis stream, a publisher appending to it, and clients counting lines.

Every line the tests publish is its own sequence number (``1``, ``2``, ...),
so a client's lines prove by themselves what was lost, repeated or
reordered.  Nodes are real ``twistd -n nanostream`` processes reading
``--source redis://...?stream=KEY`` from a private ``redis-server``; the
publisher is the real ``nanostream publish``; clients speak
``nanostream.v1``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisClient, RedisServer, private_redis
from twisted.trial.unittest import SynchronousTestCase
from websockets.sync.client import ClientConnection

from .harness import (
    EVENT_TIMEOUT,
    LISTEN_LOOPBACK,
    STOP_TIMEOUT,
    Address,
    Nanostream,
    ServiceTestCase,
    new_secret,
    split_id,
    stop_process,
)

#: Bound for waits that span a whole feed or a reconnection with backoff.
FEED_TIMEOUT = 60.0

#: A persistent Redis: every write is in the append-only file before the
#: reply, so a stop and restart keeps the whole stream.
PERSISTENT = ["--appendonly", "yes", "--appendfsync", "always"]

#: Feeds ``count`` numbered lines to the publisher's stdin, ``batch`` at a
#: time with ``pause`` seconds after each: a process of its own, so that its
#: pace does not depend on the test's threads.
FEED = """
import sys, time
count, batch, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
out = sys.stdout.buffer
for first in range(1, count + 1, batch):
    last = min(first + batch, count + 1)
    out.write(b"".join(b"%d\\n" % n for n in range(first, last)))
    out.flush()
    time.sleep(pause)
"""


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + FEED_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def stream_entries(redis: RedisClient, key: str) -> list[tuple[str, int]]:
    """The stream's entries, oldest first, as (id, line number)."""
    found = []
    start = "-"
    while True:
        batch = redis.call("XRANGE", key, start, "+", "COUNT", 5000)
        for entry_id, fields in batch:
            found.append((entry_id.decode(), int(fields[1])))
        if len(batch) < 5000:
            return found
        start = "(" + batch[-1][0].decode()


class Publisher:
    """``feed | nanostream publish URL?stream=KEY``, stopped in cleanup."""

    def __init__(
        self,
        case: SynchronousTestCase,
        directory: Path,
        url: str,
        count: int,
        batch: int = 20,
        pause: float = 0.01,
    ) -> None:
        self.count = count
        self.feed = subprocess.Popen(
            [sys.executable, "-c", FEED, str(count), str(batch), str(pause)],
            stdout=subprocess.PIPE,
        )
        # The installed package, as in production: not the source tree.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nanostream", "publish", url, "--window", "50"],
            cwd=directory,
            stdin=self.feed.stdout,
            stderr=subprocess.PIPE,
        )
        assert self.feed.stdout is not None
        self.feed.stdout.close()
        case.addCleanup(stop_process, self.feed, STOP_TIMEOUT)
        case.addCleanup(stop_process, self.process, STOP_TIMEOUT)

    def finish(self) -> str:
        """Await the end of input and the exit (status 0); the stderr."""
        self.feed.wait(FEED_TIMEOUT)
        self.process.wait(FEED_TIMEOUT)
        assert self.process.stderr is not None
        err = self.process.stderr.read().decode("utf-8", "replace")
        self.process.stderr.close()
        if self.process.returncode != 0:
            raise AssertionError(f"publish exited {self.process.returncode}: {err}")
        return err


@dataclass
class Reader:
    """A ``nanostream.v1`` client's messages: lines by id and number, notices."""

    client: ClientConnection
    lines: list[tuple[str, int]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    #: How many lines came before ``!live``; None before it.
    live_at: int | None = None

    @property
    def last_id(self) -> str:
        return self.lines[-1][0]

    @property
    def last_number(self) -> int:
        return self.lines[-1][1] if self.lines else 0

    def take(self) -> None:
        """Read one message and file it."""
        message = self.client.recv(timeout=FEED_TIMEOUT)
        if isinstance(message, str) and message.startswith("!"):
            self.notices.append(message)
            if message == "!live":
                self.live_at = len(self.lines)
            return
        line_id, line = split_id(message)
        assert isinstance(line, str), f"a binary line {line!r}"
        self.lines.append((line_id, int(line)))

    def until(self, number: int) -> None:
        """Read until the line numbered ``number`` or a later one arrived."""
        while self.last_number < number:
            self.take()

    def until_notice(self, prefix: str) -> str:
        while not (self.notices and self.notices[-1].startswith(prefix)):
            self.take()
        return self.notices[-1]


def assert_exact(
    case: SynchronousTestCase,
    got: Sequence[tuple[str, int]],
    entries: Sequence[tuple[str, int]],
) -> None:
    """``got`` is the stream's entries, every one once, in order; and the
    stream holds every published line (one resent after a lost connection
    may be there twice, as two entries)."""
    case.assertEqual(len(got), len(entries), "as many lines as stream entries")
    for index, (seen, entry) in enumerate(zip(got, entries, strict=True)):
        if seen != entry:
            raise AssertionError(
                f"line {index}: got {seen}, the stream holds {entry}; around it: "
                f"{got[max(0, index - 3) : index + 3]}"
            )
    numbers = [n for _, n in entries]
    case.assertEqual(list(dict.fromkeys(numbers)), list(range(1, max(numbers) + 1)))


def assert_sequence(case: SynchronousTestCase, got: Sequence[tuple[str, int]]) -> None:
    """Lines 1..N, each once, in order, with increasing ids."""
    numbers = [n for _, n in got]
    if numbers != list(range(1, len(numbers) + 1)):
        wrong = next(i for i, n in enumerate(numbers) if n != i + 1)
        raise AssertionError(
            f"line {wrong} is {numbers[wrong]}; around it: "
            f"{got[max(0, wrong - 3) : wrong + 3]}"
        )
    keys = [tuple(map(int, i.split("-"))) for i, _ in got]
    case.assertEqual(keys, sorted(set(keys)), "ids increase")


def metrics_address(node: Nanostream) -> Address:
    match = node.log.wait_for(r"metrics listening on (\S+)$")
    return Address.parse(match[1])


def metric(address: Address, name: str) -> float:
    """One unlabelled sample of the node's ``/metrics``."""
    url = f"http://{address.host}:{address.port}/metrics"
    with urllib.request.urlopen(url, timeout=EVENT_TIMEOUT) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"no {name} in /metrics")


#: A Redis user whose access a test takes away and gives back (ACL SETUSER).
RESTRICTED_USER = "nanostream-node"


class StreamTestCase(ServiceTestCase):
    """Nodes sharing one secret, reading one stream of a private Redis."""

    key = "nanostream-e2e-stream"
    password = "node-password-for-tests"
    #: ``ACL SETUSER`` rules: the restricted user may do everything.
    all_access = ("on", f">{password}", "~*", "&*", "+@all")

    def setUp(self) -> None:
        super().setUp()
        self.secret = new_secret()
        (self.directory / "secret").write_text(self.secret + "\n")

    def redis(self, *, persistent: bool = False) -> RedisServer:
        return private_redis(self, options=PERSISTENT if persistent else ())

    def source(self, server: RedisServer, userinfo: str = "") -> str:
        return f"redis://{userinfo}127.0.0.1:{server.port}/0?stream={self.key}"

    def node(
        self, source: str, options: Sequence[str] = (), name: str = "node"
    ) -> Nanostream:
        """A node reading ``source``, once it has taken its start position."""
        directory = self.directory / name
        directory.mkdir(exist_ok=True)
        args = [
            *("--secret-file", str(self.directory / "secret")),
            *("--listen", LISTEN_LOOPBACK),
            *("--source", source),
            *("--handshake-timeout", "60"),
            *options,
        ]
        node = Nanostream(
            directory, args, secret=self.secret, listeners=1, endpoint_source=False
        )
        self.addCleanup(node.assert_clean_log)
        self.addCleanup(self._show_log, node)
        self.addCleanup(node.stop)
        node.log.wait_for(r"reading Redis stream \S+ at \S+ after", timeout=30)
        return node

    def publish(
        self, server: RedisServer, count: int, batch: int = 20, pause: float = 0.01
    ) -> Publisher:
        """``nanostream publish`` appending lines 1..count, paced."""
        url = f"{server.url}?stream={self.key}"
        return Publisher(self, self.directory, url, count, batch, pause)

    def reader(
        self, node: Nanostream, since: str | None = None, token: str | None = None
    ) -> Reader:
        """A ``nanostream.v1`` client of ``node``, with a fresh token by default."""
        token = node.mint() if token is None else token
        return Reader(node.connect_v1(token, since=since, max_queue=None))


#: A source gap notice: ``!gap <last> <next>``.
GAP = re.compile(r"^!gap (\d+-\d+) (\d+-\d+)$")
