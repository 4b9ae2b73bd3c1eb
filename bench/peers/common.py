"""The nanostream contract, shared by the Python peer servers.

The peers exist to be compared with nanostream, so they must do the same
work per line and per handshake: the same token checks (HS256 only, ``exp``
required, single use, the used set pruned once a token expires), with the
key prepared once as nanostream prepares it; the same line rules (``\\n``
ends a line, a trailing ``\\r`` is stripped, empty lines are skipped, a final
line without ``\\n`` still counts); the same text/binary choice; and the same
source reads (1 MiB at a time from a pipe widened to 1 MiB, each read
handed on as one batch of lines). Only the WebSocket library differs.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import heapq
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import jwt
from jwt.algorithms import HMACAlgorithm

#: As nanostream reads its stdin source: up to 1 MiB per read.
READ_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def parse_args(description: str, batched: bool = False) -> argparse.Namespace:
    """Parse the command line every peer shares (``--batched`` if it has one)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--secret-file", required=True)
    if batched:
        parser.add_argument(
            "--batched",
            action="store_true",
            help="frame each read's lines once into one buffer, one write per client",
        )
    return parser.parse_args()


def read_secret(path: str) -> bytes:
    """Return the key in a secret file; its trailing newline is not part of it."""
    with open(path, "rb") as f:
        data = f.read()
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    if not data:
        sys.exit(f"empty secret file: {path}")
    return data


class _PreparedHS256(HMACAlgorithm):
    """HS256 for one secret, its key prepared once (as nanostream does):
    PyJWT otherwise probes the key for PEM, SSH and DER forms per token."""

    def __init__(self, secret: bytes) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._key = super().prepare_key(secret)

    def prepare_key(self, key: str | bytes) -> bytes:
        return self._key

    def check_key_length(self, key: bytes) -> str | None:
        return None


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TokenGate:
    """Admit a request target whose ``t`` token is valid and never seen before."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time):
        self._secret = secret
        self._clock = clock
        self._jws = jwt.PyJWS(algorithms=[])
        self._jws.register_algorithm("HS256", _PreparedHS256(secret))
        self._used: set[str] = set()
        self._expiry: list[tuple[float, str]] = []

    def admit_target(self, target: str) -> bool:
        """Check the token in a request target such as ``/?t=TOKEN``."""
        values = parse_qs(urlsplit(target).query).get("t", [])
        return len(values) == 1 and bool(values[0]) and self.admit(values[0])

    def admit(self, token: str) -> bool:
        """Check ``token`` and, if it passes, consume it."""
        try:
            decoded = self._jws.decode_complete(
                token, self._secret, algorithms=["HS256"]
            )
            claims = json.loads(decoded["payload"])
        except (jwt.InvalidTokenError, ValueError, RecursionError):
            return False
        if not isinstance(claims, dict):
            return False
        exp, nbf = claims.get("exp"), claims.get("nbf")
        now = self._clock()
        if not _number(exp) or exp <= now:
            return False
        if nbf is not None and (not _number(nbf) or nbf > now):
            return False
        self._prune(now)
        # The signature identifies the token whatever its wire encoding.
        key = token.rsplit(".", 1)[-1]
        if key in self._used:
            return False
        self._used.add(key)
        heapq.heappush(self._expiry, (exp, key))
        return True

    def _prune(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            self._used.discard(heapq.heappop(self._expiry)[1])


class LineSplitter:
    """Cut a byte stream into lines following the nanostream rules."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield the complete lines that ``data`` finishes."""
        data = self._rest + data if self._rest else data
        *lines, self._rest = data.split(b"\n")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if line:
                yield line

    def finish(self) -> Iterator[bytes]:
        """Yield a final line that had no newline, at end of input."""
        rest, self._rest = self._rest, b""
        if rest.endswith(b"\r"):
            rest = rest[:-1]
        if rest:
            yield rest


def is_text(line: bytes) -> bool:
    """A line goes out as a text message when it is UTF-8 (ASCII checked first)."""
    if line.isascii():
        return True
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def frames(lines: list[bytes]) -> bytes:
    """The unmasked frames of ``lines``, one message each, in one buffer."""
    parts = []
    for line in lines:
        op = 0x81 if is_text(line) else 0x82
        n = len(line)
        if n < 126:
            parts.append(bytes((op, n)))
        elif n < 65536:
            parts.append(bytes((op, 126)) + n.to_bytes(2, "big"))
        else:
            parts.append(bytes((op, 127)) + n.to_bytes(8, "big"))
        parts.append(line)
    return b"".join(parts)


class PipeLines:
    """Read stdin as nanostream does and hand each read's lines on as a batch.

    ``on_batch`` gets the list of lines one read completed (never empty);
    ``done`` resolves at end of input, after the final batch.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_batch: Callable[[list[bytes]], None],
        done: asyncio.Future[None],
        fd: int = 0,
    ) -> None:
        self._loop, self._on_batch, self._done, self._fd = loop, on_batch, done, fd
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._lines = LineSplitter()
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, READ_SIZE)
        except OSError:
            pass
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            size = os.readv(self._fd, (self._buffer,))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            size = 0
        if size:
            lines = list(self._lines.feed(self._view[:size].tobytes()))
        else:
            self._loop.remove_reader(self._fd)
            lines = list(self._lines.finish())
        if lines:
            self._on_batch(lines)
        if not size and not self._done.done():
            self._done.set_result(None)


def ready(host: str, port: int) -> None:
    """Announce readiness the way nanostream does, on stderr."""
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
