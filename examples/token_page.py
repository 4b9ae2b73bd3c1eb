"""An application server that gives every visitor a fresh nanostream token.

nanostream only checks tokens; minting them is the job of the operator's own
web app, which shares the secret.  This is that app at its smallest: each
``GET /`` renders an HTML page with a newly minted single-use token between
``<script>`` tags, and the page connects straight to nanostream with it.
When the connection drops the page reloads itself, which is the simplest
way to get a new token: every page load mints one.

Requirements: Twisted and PyJWT (``pip install twisted pyjwt``).  Run it
next to nanostream, sharing the secret file::

    producer | twistd -n nanostream --secret-file secret \\
        --listen tcp:8080:interface=127.0.0.1
    python examples/token_page.py --secret-file secret \\
        --stream ws://127.0.0.1:8080/ --listen tcp:8000:interface=127.0.0.1

and open http://127.0.0.1:8000/.  Behind TLS, give ``--stream wss://...``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from typing import Any

import jwt
from twisted.internet import endpoints, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

_log = Logger()

#: Seconds a token stays valid: enough to load the page and connect.
#: nanostream refuses tokens living longer than its --max-token-ttl.
TOKEN_TTL = 60

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Live feed</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 2rem; }
  #lines { font-family: ui-monospace, monospace; white-space: pre-wrap; }
</style>
</head>
<body>
<h1>Live feed <small id="state">connecting</small></h1>
<ol id="lines"></ol>
<script>
  // Minted by the server for this page load only: it opens one connection.
  const token = __TOKEN__;
  const stream = __STREAM__;

  const state = document.getElementById("state");
  const lines = document.getElementById("lines");
  const socket = new WebSocket(stream + "?t=" + encodeURIComponent(token));
  socket.onopen = () => { state.textContent = "live"; };
  socket.onmessage = (event) => {
    const item = document.createElement("li");
    item.textContent = typeof event.data === "string" ? event.data : "(binary)";
    lines.append(item);
    while (lines.children.length > 100) lines.firstElementChild.remove();
  };
  socket.onclose = () => {
    // The token is spent; a reload fetches the page, and a new token, again.
    state.textContent = "disconnected, reconnecting";
    setTimeout(() => location.reload(), 3000);
  };
</script>
</body>
</html>
"""


def mint(secret: bytes, now: float, ttl: float = TOKEN_TTL) -> str:
    """A token nanostream accepts once, until ``ttl`` seconds from ``now``.

    The random ``jti`` keeps two tokens minted in the same second apart.
    """
    claims = {"exp": int(now + ttl), "jti": secrets.token_urlsafe(16)}
    return jwt.encode(claims, secret, algorithm="HS256")


def in_script(value: Any) -> str:
    """``value`` as JSON that cannot close the ``<script>`` element."""
    text = json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class TokenPage(Resource):
    """``GET /``: the page, with a token of its own."""

    isLeaf = True

    def __init__(
        self, secret: bytes, stream: str, clock: IReactorTime, ttl: float = TOKEN_TTL
    ) -> None:
        super().__init__()
        self._secret = secret
        self._stream = stream
        self._clock = clock
        self._ttl = ttl

    def render_GET(self, request: IRequest) -> bytes:
        token = mint(self._secret, self._clock.seconds(), self._ttl)
        # A cached page would carry a spent token.
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        page = PAGE.replace("__TOKEN__", in_script(token)).replace(
            "__STREAM__", in_script(self._stream)
        )
        return page.encode("utf-8")


def read_secret(path: str | None) -> bytes:
    """The secret from a file (one trailing newline dropped) or the environment."""
    if path is None:
        value = os.environ.get("NANOSTREAM_SECRET")
        if not value:
            raise SystemExit("give --secret-file or set NANOSTREAM_SECRET")
        return value.encode("utf-8")
    with open(path, "rb") as f:
        secret = f.read()
    return secret[:-1] if secret.endswith(b"\n") else secret


def main(reactor: Any, *argv: str) -> Deferred[None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--secret-file", help="the secret nanostream checks with")
    parser.add_argument("--stream", default="ws://127.0.0.1:8080/")
    parser.add_argument("--listen", default="tcp:8000:interface=127.0.0.1")
    parser.add_argument("--ttl", type=float, default=TOKEN_TTL)
    args = parser.parse_args(argv)

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    secret = read_secret(args.secret_file)
    site = Site(TokenPage(secret, args.stream, reactor, args.ttl))
    endpoint = endpoints.serverFromString(reactor, args.listen)

    def listening(port: IListeningPort) -> Deferred[None]:
        address = port.getHost()
        _log.info(
            "token page listening on http://{host}:{port}/",
            host=address.host,
            port=address.port,
        )
        return Deferred()  # serve until the process is stopped

    return endpoint.listen(site).addCallback(listening)


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
