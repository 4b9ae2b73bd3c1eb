"""The nanostream contract, shared by the Python peer servers.

The peers exist to be compared with nanostream, so they must do the same
work per line and per handshake: the same token checks (HS256 only, ``exp``
required, single use, the used set pruned once a token expires), the same
line rules (``\\n`` ends a line, a trailing ``\\r`` is stripped, empty lines are
skipped, a final line without ``\\n`` still counts) and the same text/binary
choice. Only the WebSocket library differs.
"""

from __future__ import annotations

import argparse
import heapq
import sys
import time
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import jwt


def parse_args(description: str) -> argparse.Namespace:
    """Parse the command line every peer shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--secret-file", required=True)
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


class TokenGate:
    """Admit a request target whose ``t`` token is valid and never seen before."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time):
        self._secret = secret
        self._clock = clock
        self._used: set[str] = set()
        self._expiry: list[tuple[float, str]] = []

    def admit_target(self, target: str) -> bool:
        """Check the token in a request target such as ``/?t=TOKEN``."""
        values = parse_qs(urlsplit(target).query).get("t", [])
        return len(values) == 1 and bool(values[0]) and self.admit(values[0])

    def admit(self, token: str) -> bool:
        """Check ``token`` and, if it passes, consume it."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                options={"require": ["exp"]},
            )
        except jwt.InvalidTokenError:
            return False
        exp = claims["exp"]
        if not isinstance(exp, (int, float)):
            return False
        self._prune()
        # The signature identifies the token whatever its wire encoding.
        key = token.rsplit(".", 1)[-1]
        if key in self._used:
            return False
        self._used.add(key)
        heapq.heappush(self._expiry, (exp, key))
        return True

    def _prune(self) -> None:
        now = self._clock()
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


def as_text(line: bytes) -> str | None:
    """Return ``line`` decoded if it is UTF-8 (sent as text), else None."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def ready(host: str, port: int) -> None:
    """Announce readiness the way nanostream does, on stderr."""
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
