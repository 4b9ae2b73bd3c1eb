"""Follow a nanostream feed and resume after every drop, missing nothing.

The client speaks the ``nanostream.v1`` subprotocol: each line arrives as
``<id> <line>``, and it remembers the id of the last line it handled.  When
the connection drops it waits (1 s, doubling up to 30 s, with jitter), gets
a fresh token (each token opens one connection) and reconnects with
``&since=<last id>``.  The server then replays every line after that id and
sends ``!live``, or, when it no longer holds them all, first says
``!gap <since> <oldest>``.  A gap is the moment to reload whatever state you
build from the feed from your own source of truth.

Lines go to stdout, one per line as the server sent them (a line that is
not UTF-8 is written as its bytes); what happens to the connection goes to
stderr.  On SIGINT or SIGTERM it prints the last id it handled, so a
restarted client can pass it as ``--since`` and miss nothing either.

Requirements: ``pip install websockets`` (13 or newer), and PyJWT
(``pip install pyjwt``) only to mint tokens with ``--secret-file``.  Get
tokens from your app (``--token-url``, an endpoint answering
``{"token": "..."}`` like the ``--demo`` page's ``/token``), mint them from
the shared secret (``--secret-file``, for a backend that holds it), or use
none (``--no-auth``)::

    python examples/resume_client.py ws://127.0.0.1:8080/ \\
        --token-url http://127.0.0.1:8080/token

docs/resume.rst explains ids, the notices and gaps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import signal
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import BinaryIO, TextIO
from urllib.parse import urlencode

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

SUBPROTOCOL = Subprotocol("nanostream.v1")

#: Seconds between attempts: the first, the most, and the random spread
#: that keeps a fleet of clients from reconnecting in step.
FIRST_DELAY = 1.0
MAX_DELAY = 30.0
JITTER = 0.25

#: Seconds a minted token lives: long enough to connect with it.
TOKEN_TTL = 60

TokenSource = Callable[[], Awaitable["str | None"]]


class ResumeRefused(Exception):
    """The server refused the resume position (HTTP 400): retrying cannot help."""


class Follower:
    """Follows one feed; override the ``on_*`` methods to use the lines."""

    def __init__(
        self,
        url: str,
        token: TokenSource,
        since: str | None = None,
        out: BinaryIO = sys.stdout.buffer,
        err: TextIO = sys.stderr,
    ) -> None:
        self.url = url
        self.token = token
        #: The id of the last line handled: where the next connection resumes.
        self.since = since
        self.out = out
        self.err = err
        #: Whether the last connection opened (then the backoff starts over).
        self.opened = False

    # -- what to do with the feed ---------------------------------------------

    def on_line(self, line: bytes, line_id: str) -> None:
        """One line, in order, exactly once (unless a gap says otherwise)."""
        self.out.write(line + b"\n")
        self.out.flush()

    def on_live(self) -> None:
        """Every line missed while away has been handled; live lines follow."""
        self.say(f"caught up after {self.since}")

    def on_gap(self, after: str, before: str) -> None:
        """Lines after ``after`` and before ``before`` were not delivered.

        ``before`` is ``-`` when the server holds no line at all.  Reload
        whatever you built from the feed from your own source of truth.
        """
        self.say(f"missed lines after {after} (next held: {before})")

    def on_unknown_position(self) -> None:
        """The connection dropped before any line: nothing to resume after."""
        self.say("reconnected without a position: lines may have been missed")

    def say(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    # -- the connection --------------------------------------------------------

    def handle(self, message: str | bytes) -> None:
        """One ``nanostream.v1`` message: a notice, or ``<id> <line>``."""
        if isinstance(message, str):
            if message.startswith("!"):
                words = message.split(" ")
                if words[0] == "!live":
                    self.on_live()
                elif words[0] == "!gap" and len(words) == 3:
                    self.on_gap(words[1], words[2])
                return  # notices this client does not know are ignored
            line_id, _, text = message.partition(" ")
            line = text.encode("utf-8")
        else:
            raw_id, _, line = message.partition(b" ")
            line_id = raw_id.decode("ascii")
        self.on_line(line, line_id)
        self.since = line_id

    def _uri(self, token: str | None) -> str:
        query = {}
        if token is not None:
            query["t"] = token
        if self.since is not None:
            query["since"] = self.since
        return self.url + ("?" + urlencode(query) if query else "")

    async def follow_once(self, first: bool) -> None:
        """One connection, until it ends."""
        uri = self._uri(await self.token())
        async with connect(uri, subprotocols=[SUBPROTOCOL], max_size=None) as ws:
            if ws.subprotocol != SUBPROTOCOL:
                raise SystemExit("the server did not select nanostream.v1")
            self.opened = True
            where = "" if self.since is None else f", resuming after {self.since}"
            self.say(f"connected{where}")
            if self.since is None and not first:
                self.on_unknown_position()
            async for message in ws:
                self.handle(message)

    async def run(self) -> None:
        """Follow for ever, reconnecting after each drop."""
        delay = FIRST_DELAY
        first = True
        while True:
            self.opened = False
            try:
                await self.follow_once(first)
                why = "the server closed the connection"
            except InvalidStatus as e:
                status = e.response.status_code
                if status == 400:
                    raise ResumeRefused(f"bad resume position {self.since!r}") from None
                why = f"refused with HTTP {status}"
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as e:
                # Name the error only: its text may hold the URI, and the
                # URI holds the token.
                why = f"connection lost ({type(e).__name__})"
            except (ValueError, KeyError) as e:
                why = f"no token from the app ({type(e).__name__})"
            first = False
            if self.opened:
                delay = FIRST_DELAY
            wait = delay * random.uniform(1 - JITTER, 1 + JITTER)
            self.say(f"{why}; reconnecting in {wait:.1f} s")
            await asyncio.sleep(wait)
            delay = min(delay * 2, MAX_DELAY)


def token_from_url(url: str) -> TokenSource:
    """Tokens from the app: ``GET url`` answering ``{"token": "..."}``."""

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            token: str = json.load(response)["token"]
        return token

    async def token() -> str | None:
        return await asyncio.to_thread(fetch)

    return token


def token_from_secret(path: str) -> TokenSource:
    """Tokens minted here with the shared secret (HS256, a random ``jti``)."""
    import jwt  # PyJWT, needed only here

    with open(path, encoding="utf-8") as f:
        secret = f.read().strip()

    async def token() -> str | None:
        claims = {"exp": int(time.time()) + TOKEN_TTL, "jti": secrets.token_hex(16)}
        return jwt.encode(claims, secret, algorithm="HS256")

    return token


async def no_token() -> str | None:
    return None


async def main(follower: Follower) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        await follower.run()
    except asyncio.CancelledError:
        follower.say(f"stopped; last id {follower.since or '-'}")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the feed, ws://HOST:PORT/ or wss://...")
    tokens = parser.add_mutually_exclusive_group(required=True)
    tokens.add_argument("--token-url", help='GET it for {"token": ...} per connection')
    tokens.add_argument("--secret-file", help="mint tokens with this secret")
    tokens.add_argument("--no-auth", action="store_true", help="send no token")
    parser.add_argument("--since", help="start after this id (from an earlier run)")
    return parser.parse_args(argv)


def run(argv: list[str]) -> int:
    args = parse(argv)
    if args.token_url:
        token = token_from_url(args.token_url)
    elif args.secret_file:
        token = token_from_secret(args.secret_file)
    else:
        token = no_token
    follower = Follower(args.url, token, since=args.since)
    try:
        asyncio.run(main(follower))
    except ResumeRefused as e:
        print(f"refused: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
