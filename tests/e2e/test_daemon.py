"""``twistd`` without ``-n``: a real daemon with a pidfile, a logfile and a
Unix-socket source, stopped with ``kill $(cat pidfile)`` (docs/running.rst).

The daemon is not our child once it has forked, so its exit is awaited on a
pidfd (Linux), and the log's rotation, which no event announces, by looking
at the directory until a bounded deadline.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase
from websockets.sync.client import ClientConnection, connect

from .harness import (
    EVENT_TIMEOUT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    TWISTD,
    Address,
    close_code,
    mint,
    new_secret,
    receive,
)

_LISTENING = re.compile(r"(websocket|source) listening on (\S+)$", re.M)


def await_exit(pid: int, timeout: float) -> None:
    """Block until process ``pid`` (not necessarily our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not readable:
        raise AssertionError(f"process {pid} still runs after {timeout}s")


def await_condition(check: Callable[[], bool], what: str) -> None:
    """For file-system changes no event reports: look until EVENT_TIMEOUT."""
    deadline = time.monotonic() + EVENT_TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill_if_running(pid: int) -> None:
    """Cleanup: SIGKILL a daemon a failed test left behind, and await it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    await_exit(pid, STOP_TIMEOUT)


class DaemonTests(SynchronousTestCase):
    """The service as a classic Unix daemon."""

    def setUp(self) -> None:
        if not hasattr(os, "pidfd_open"):
            raise SkipTest("needs os.pidfd_open (Linux) to await a daemon's exit")
        # AF_UNIX paths are short: keep the directory near the root of /tmp.
        self.directory = Path(tempfile.mkdtemp(prefix="ns-daemon-"))
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.secret = new_secret()
        (self.directory / "secret").write_text(self.secret + "\n")
        self.pidfile = self.directory / "nanostream.pid"
        self.logfile = self.directory / "nanostream.log"
        self.source = self.directory / "in.sock"
        self.clients: list[ClientConnection] = []
        self.addCleanup(self.close_clients)

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()

    def daemonize(self) -> int:
        """Run ``twistd --pidfile P --logfile L nanostream ...``; the daemon's pid.

        twistd's parent exits once the daemon has started its services, so
        by then the pidfile and the start-up lines are written.
        """
        env = {k: v for k, v in os.environ.items() if k != "NANOSTREAM_SECRET"}
        done = subprocess.run(
            [
                TWISTD,
                *("--pidfile", str(self.pidfile)),
                *("--logfile", str(self.logfile)),
                "nanostream",
                *("--secret-file", str(self.directory / "secret")),
                *("--listen", "tcp:0:interface=127.0.0.1"),
                *("--source", f"unix:{self.source}"),
            ],
            cwd=self.directory,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=START_TIMEOUT,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        pid = int(self.pidfile.read_text())
        self.addCleanup(kill_if_running, pid)
        return pid

    def listening(self, log: Path | None = None) -> dict[str, Address]:
        """Where the daemon said it listens, in ``log`` (the logfile by default)."""
        found = _LISTENING.findall((log or self.logfile).read_text())
        return {what: Address.parse(address) for what, address in found}

    def connect(self, address: Address) -> ClientConnection:
        client = connect(
            f"ws://{address.host}:{address.port}/?t={mint(self.secret)}",
            open_timeout=EVENT_TIMEOUT,
            close_timeout=EVENT_TIMEOUT,
            ping_interval=None,
            proxy=None,
            legacy=True,
        )
        self.clients.append(client)
        return client

    def produce(self, data: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as producer:
            producer.settimeout(EVENT_TIMEOUT)
            producer.connect(str(self.source))
            producer.sendall(data)

    def test_daemon_serves_and_stops_by_pidfile(self) -> None:
        """Daemonized, it listens, relays a producer's lines from its Unix
        socket, and on ``kill $(cat pidfile)`` closes clients and removes the
        pidfile."""
        pid = self.daemonize()
        self.assertNotEqual(pid, os.getpid())
        os.kill(pid, 0)  # running
        listening = self.listening()
        self.assertEqual(listening["source"], Address("unix", path=str(self.source)))

        client = self.connect(listening["websocket"])
        self.produce(b"first line\nsecond line\n")
        self.assertEqual(receive(client, 2), ["first line", "second line"])
        self.produce(b"from a second producer\n")
        self.assertEqual(receive(client, 1), ["from a second producer"])

        subprocess.run(
            ["sh", "-c", f'kill "$(cat {self.pidfile})"'], check=True, timeout=5
        )
        self.assertEqual(close_code(client), 1001)
        await_exit(pid, STOP_TIMEOUT)
        self.assertFalse(self.pidfile.exists())
        log = self.logfile.read_text()
        self.assertIn("stopping: closing 1 clients", log)
        self.assertNotIn(self.secret, log)
        self.assertNotIn("Traceback", log)

    def test_sigusr1_rotates_the_log(self) -> None:
        """SIGUSR1 makes twistd move its log to ``.1`` and start a fresh one."""
        pid = self.daemonize()
        rotated = self.logfile.with_name(self.logfile.name + ".1")
        os.kill(pid, signal.SIGUSR1)
        await_condition(rotated.exists, f"{rotated.name} to appear")
        self.assertIn("websocket listening on", rotated.read_text())

        client = self.connect(self.listening(rotated)["websocket"])
        self.produce(b"after rotation\n")
        self.assertEqual(receive(client, 1), ["after rotation"])
        fresh = self.logfile.read_text()
        self.assertIn("client connected", fresh)
        self.assertNotIn("websocket listening on", fresh)
        os.kill(pid, signal.SIGTERM)
        await_exit(pid, STOP_TIMEOUT)
