"""Feeding nanostream through Redis: a stream (XADD) or a pub/sub channel.

The producer speaks RESP over a plain socket, one command and its reply at a
time: at a few hundred lines a second a round trip costs nothing, it needs
no package in either venv, and the send time stamped into each line is taken
just before its command is written, so latency runs from XADD or PUBLISH to
the client's receipt.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import feed

HOST, PORT = "127.0.0.1", 6379

#: XADD trims the stream to about this many entries.
STREAM_MAXLEN = 100_000


class RedisError(Exception):
    """Redis answered with an error, or not at all."""


def _encode(*args: bytes | str | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Resp:
    """One blocking connection to Redis."""

    def __init__(self, host: str = HOST, port: int = PORT, timeout: float = 5.0):
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self._sock.makefile("rb")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> Resp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, *args: bytes | str | int) -> Any:
        """Send one command and return its reply."""
        self._sock.sendall(_encode(*args))
        return self._reply()

    def _reply(self) -> Any:
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise RedisError("connection closed")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body
        if kind == b"-":
            raise RedisError(body.decode(errors="replace"))
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            if size < 0:
                return None
            data = self._file.read(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(body)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise RedisError(f"unexpected reply {line[:20]!r}")


def reachable(host: str = HOST, port: int = PORT) -> str | None:
    """None when a Redis answers PING at host:port, else why not."""
    try:
        with Resp(host, port, timeout=2.0) as redis:
            if redis.command("PING") != b"PONG":
                return "no PONG"
    except (OSError, RedisError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def send_line(redis: Resp, kind: str, name: str, line: bytes) -> None:
    """One line into the stream (``kind`` "stream") or onto the channel."""
    if kind == "stream":
        redis.command("XADD", name, "MAXLEN", "~", STREAM_MAXLEN, "*", "line", line)
    else:
        redis.command("PUBLISH", name, line)


class Producer(threading.Thread):
    """Writes ``count`` lines at ``rate`` lines/s, on an absolute schedule."""

    def __init__(self, kind: str, name: str, count: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.kind, self.name, self.count, self.rate = kind, name, count, rate
        self.written = 0
        self.error: str | None = None
        self._stop_flag = threading.Event()

    def run(self) -> None:
        clock = time.monotonic_ns
        interval = 1e9 / self.rate
        try:
            with Resp() as redis:
                start = clock()
                for seq in range(self.count):
                    if self._stop_flag.is_set():
                        return
                    delay = (start + seq * interval - clock()) / 1e9
                    if delay > 0:
                        time.sleep(delay)
                    line = feed.make_line(seq, clock()).rstrip(b"\n")
                    send_line(redis, self.kind, self.name, line)
                    self.written = seq + 1
        except (OSError, RedisError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self._stop_flag.set()
