"""The ``--demo`` site: a live page, fresh page tokens, and the feed, on one port.

``GET /`` renders a page that carries a freshly minted single-use token in a
``<script>`` element, the flow nano-stream-ws documents for an operator's own
web app, and the id of the newest line a resume can start after, so that
the page misses nothing read between its rendering and its connection.
``GET /token`` mints another token, so a page whose connection dropped
resumes (``nanostream.v1``, ``?since=``) without a reload, keeping the lines
it already shows and showing the ones it missed.  Any request with
``Upgrade: websocket`` leaves twisted.web and becomes a client, through
every check the plain listener applies.  docs/resume.rst describes the page.
"""

from __future__ import annotations

import json
import re
import secrets
from importlib.resources import files
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from nanostream.auth.mint import mint
from nanostream.broadcast import Broadcaster
from nanostream.demo.upgrade import WebSocketUpgrade, wants_websocket
from nanostream.ops.access_log import redacting_site
from nanostream.resume.ids import format_key
from nanostream.websocket import NanostreamServerFactory

#: Lifetime of a page token: long enough to load the page and connect,
#: short enough that a token copied out of the page is soon worthless.
DEFAULT_TOKEN_TTL = 30.0

#: How many lines the page keeps on screen.
LINES_KEPT = 200

#: A Host header we are willing to echo into the page (name or address, port).
_HOST = re.compile(rb"^[A-Za-z0-9.\-]+(:[0-9]+)?$|^\[[0-9A-Fa-f:.]+\](:[0-9]+)?$")

_TEMPLATE = files("nanostream.demo").joinpath("index.html").read_text("utf-8")

_NO_STORE = b"no-store"


class PageTokens:
    """Mints the tokens the page connects with, using the service's own key.

    ``secret=None`` (``--no-auth``) mints nothing: the page connects bare.
    """

    def __init__(
        self, secret: bytes | None, clock: IReactorTime, ttl: float = DEFAULT_TOKEN_TTL
    ) -> None:
        self._secret = secret
        self._clock = clock
        self.ttl = ttl

    @property
    def auth(self) -> bool:
        return self._secret is not None

    def mint(self) -> str | None:
        """A token valid for ``ttl`` seconds from now, unique to this call.

        Two pages served in the same instant get different tokens (``jti``).
        """
        if self._secret is None:
            return None
        return mint(
            self._secret, self.ttl, self._clock.seconds(), {"sub": "nanostream-demo"}
        )


def resume_position(broadcaster: Broadcaster) -> str | None:
    """The id a page rendered now resumes after on its first connection.

    It is the newest line the node holds for resumes (in its history, or,
    with a stream source, read from the stream), so the page's first
    connection gets exactly the lines read since it was rendered.  None
    when there is none: nothing read yet, or nothing kept (a resume after
    that id could only report a gap).
    """
    newest = broadcaster.history.newest()
    if newest is None and broadcaster.archive is not None:
        newest = broadcaster.last_key
    return None if newest is None else format_key(newest).decode("ascii")


def script_json(value: Any) -> str:
    """JSON that cannot end the ``<script>`` element it is placed in."""
    text = json.dumps(value, separators=(",", ":"))
    for char, escape in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escape)
    return text


def _origin(request: IRequest) -> str | None:
    """``host[:port]`` as the browser addressed us, or None if unusable."""
    host = request.getHeader(b"host")
    if host is None:
        address = request.getHost()
        name = getattr(address, "host", None)
        if name is None:
            return None
        host = f"[{name}]" if ":" in name else name
        return f"{host}:{address.port}"
    if not _HOST.match(host):
        return None
    return host.decode("ascii")


def _no_store(request: IRequest, content_type: bytes) -> None:
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", _NO_STORE)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")


def _bad_host(request: IRequest) -> bytes:
    request.setResponseCode(400)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"bad Host header\n"


class DemoPage(Resource):
    """``GET /``: the page, with its own fresh token and resume position."""

    isLeaf = True

    def __init__(self, tokens: PageTokens, broadcaster: Broadcaster) -> None:
        super().__init__()
        self._tokens = tokens
        self._broadcaster = broadcaster

    def render_GET(self, request: IRequest) -> bytes:
        origin = _origin(request)
        if origin is None:
            return _bad_host(request)
        secure = request.isSecure()
        config = {
            "auth": self._tokens.auth,
            "token": self._tokens.mint(),
            "url": f"{'wss' if secure else 'ws'}://{origin}/",
            "tokenUrl": f"{'https' if secure else 'http'}://{origin}/token",
            "keep": LINES_KEPT,
            "since": resume_position(self._broadcaster),
        }
        nonce = secrets.token_urlsafe(16)
        _no_store(request, b"text/html; charset=utf-8")
        request.setHeader(
            b"content-security-policy",
            (
                f"default-src 'none'; script-src 'nonce-{nonce}'; "
                f"style-src 'nonce-{nonce}'; connect-src 'self'; img-src data:; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            ).encode("ascii"),
        )
        request.setHeader(b"x-frame-options", b"DENY")
        page = _TEMPLATE.replace("{{nonce}}", nonce).replace(
            "{{config}}", script_json(config)
        )
        return page.encode("utf-8")


class TokenEndpoint(Resource):
    """``GET /token``: a fresh page token for a page that has to reconnect.

    It hands out nothing the page itself does not: whoever can load ``/``
    gets a token anyway.  Other sites cannot read it (no CORS headers).
    """

    isLeaf = True

    def __init__(self, tokens: PageTokens) -> None:
        super().__init__()
        self._tokens = tokens

    def render_GET(self, request: IRequest) -> bytes:
        _no_store(request, b"application/json")
        return json.dumps({"token": self._tokens.mint()}).encode("ascii")


class DemoRoot(Resource):
    """Sends WebSocket handshakes to the feed and everything else to the page."""

    def __init__(self, factory: NanostreamServerFactory, tokens: PageTokens) -> None:
        super().__init__()
        self._websocket = WebSocketUpgrade(factory)
        self.putChild(b"", DemoPage(tokens, factory.broadcaster))
        self.putChild(b"token", TokenEndpoint(tokens))

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        if wants_websocket(request):
            # Whatever the path: the plain listener ignores it too.
            return self._websocket
        return super().getChildWithDefault(name, request)

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        return notFound()


def demo_site(
    factory: NanostreamServerFactory,
    tokens: PageTokens,
    reactor: IReactorTime,
    timeout: float | None = None,
) -> Site:
    """The factory a ``--demo`` listener uses in place of the WebSocket one.

    :param timeout: drop a connection idle this long before its request is
        complete (twisted.web's own default is 12 hours); an upgraded
        connection is the WebSocket protocol's from then on.
    """
    site = redacting_site(DemoRoot(factory, tokens), reactor=reactor, timeout=timeout)
    site.noisy = False
    return site
