"""A real Redis for the tests that need one, or a skip that says why.

:func:`shared_redis` finds one in this order: the URL in
``NANOSTREAM_TEST_REDIS``; 127.0.0.1:6379 if it answers PING; a private
``redis-server`` started on a free port in a temporary directory.  Tests
that stop and restart Redis always use :func:`private_redis`, never a server
others share.  Without any Redis the test is skipped with the reason, which
pytest prints in its summary (``-rs``); it never passes silently.

:class:`RedisClient` is a blocking RESP client of a few lines: enough to
PING, read TTLs and INFO, publish and subscribe from test code without a
second Redis library.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

from nanostream.redis.url import RedisTarget, parse_redis_url

ENV_VAR = "NANOSTREAM_TEST_REDIS"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
REPLY_TIMEOUT = 10.0


class RedisError(Exception):
    """An error reply."""


class RedisClient:
    """A blocking RESP2 connection for test code."""

    def __init__(self, target: RedisTarget, timeout: float = REPLY_TIMEOUT) -> None:
        self.target = target
        self._sock = socket.create_connection((target.host, target.port), timeout)
        self._buffer = b""
        if target.password is not None:
            if target.username is not None:
                self.call("AUTH", target.username, target.password)
            else:
                self.call("AUTH", target.password)
        if target.db:
            self.call("SELECT", target.db)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RedisClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, *args: Any) -> None:
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        data = b"*%d\r\n" % len(parts) + b"".join(
            b"$%d\r\n%s\r\n" % (len(p), p) for p in parts
        )
        self._sock.sendall(data)

    def call(self, *args: Any) -> Any:
        self.send(*args)
        return self.reply()

    def reply(self, timeout: float | None = None) -> Any:
        if timeout is not None:
            self._sock.settimeout(timeout)
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            return None if length < 0 else self._exactly(length + 2)[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise RedisError(f"unexpected reply {kind!r}")

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._fill()
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._fill()
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        self._buffer += chunk

    def info(self, section: str) -> dict[str, str]:
        text = self.call("INFO", section).decode()
        fields = {}
        for line in text.splitlines():
            name, colon, value = line.partition(":")
            if colon:
                fields[name] = value
        return fields


def answers(target: RedisTarget, timeout: float = 1.0) -> bool:
    """Whether a Redis at ``target`` answers PING now."""
    try:
        with RedisClient(target, timeout) as client:
            return client.call("PING") == b"PONG"
    except (OSError, RedisError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private ``redis-server`` on loopback, which tests may stop and restart."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        options: Sequence[str] = (),
        password: str | None = None,
    ) -> None:
        """
        :param options: more ``redis-server`` options (TLS, say).
        :param password: required of clients (``requirepass``).
        """
        self.directory = directory
        self.port = free_port() if port is None else port
        self.options = list(options)
        if password is not None:
            self.options += ["--requirepass", password]
        self.target = RedisTarget("127.0.0.1", self.port, 0, password=password)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and wait until it answers PING."""
        binary = shutil.which("redis-server")
        assert binary is not None
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *self.options,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answers():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"redis-server exited with {self.process.returncode}:\n"
                    + (self.directory / "redis.log").read_text()
                )
            if time.monotonic() > deadline:
                raise AssertionError("redis-server did not answer PING in time")
            time.sleep(0.05)

    def answers(self) -> bool:
        if "--tls-port" not in self.options:
            return answers(self.target, 0.5)
        tls_port = int(self.options[self.options.index("--tls-port") + 1])
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", tls_port)) == 0

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


def private_redis(
    case: SynchronousTestCase,
    options: Sequence[str] = (),
    password: str | None = None,
) -> RedisServer:
    """A started redis-server of this test's own, stopped in cleanup; or skip."""
    if shutil.which("redis-server") is None:
        raise SkipTest(
            "this test stops and restarts Redis and needs its own: "
            "redis-server is not installed (apt-get install redis-server)"
        )
    directory = Path(tempfile.mkdtemp(prefix="nanostream-redis-"))
    case.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    server = RedisServer(directory, options=options, password=password)
    case.addCleanup(server.stop)
    server.start()
    return server


def shared_redis(case: SynchronousTestCase) -> str:
    """The URL of a Redis to test against (see the module docstring), or skip."""
    url = os.environ.get(ENV_VAR)
    if url:
        target = parse_redis_url(url, channel=False)
        if not answers(target):
            raise AssertionError(f"{ENV_VAR} names a Redis that does not answer")
        return url
    if answers(parse_redis_url(DEFAULT_URL, channel=False)):
        return DEFAULT_URL
    if shutil.which("redis-server") is not None:
        return private_redis(case).url
    raise SkipTest(
        f"no Redis: set {ENV_VAR}, run one on 127.0.0.1:6379, or install redis-server"
    )


def unique(name: str) -> str:
    """A channel or key prefix no other test run uses at the same time."""
    return f"nanostream-test:{name}:{os.getpid()}:{time.monotonic_ns()}"
