"""The common opening handshake read in one pass; anything else, Autobahn's way.

Autobahn reads a request line by line in Python, checks each header with
its own expressions, splits the URI twice over, formats debug arguments
that nobody logs and passes ``onConnect``'s answer through a Deferred:
about a fifth of a handshake's CPU.  :class:`LeanOpening` takes only a
request that is plainly well formed (``GET /path?query HTTP/1.1``, printable
ASCII, no header twice, version 13, a valid key) and produces from it the
same state, the same :class:`ConnectionRequest` and the same answer as
Autobahn would.  Whatever it does not take (another version, a header sent
twice, an absolute URI, a bad key, a proxy header, a port to check) goes
to Autobahn's own ``processHandshake``, which accepts or refuses it as
before: the lean path decides nothing on its own.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from autobahn.websocket.protocol import _url_to_origin
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanostream.auth.query import query_values

_log = Logger()

#: The request line and headers of a plainly well-formed request: the
#: origin-form URI and every header value printable ASCII, names tokens.
_REQUEST = re.compile(
    r"GET (/[!-~]*) HTTP/1\.1\r\n"
    r"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ \t]*[ -~\t]*\r\n)*)\r\n"
)
#: The base64 of 16 bytes, as RFC 6455 asks of Sec-WebSocket-Key.
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")
_MATCH_ALL = ["^.*$"]
_INTERNAL_ERROR = "Internal Server Error"

if TYPE_CHECKING:
    from autobahn.twisted.websocket import WebSocketServerProtocol as _Protocol
else:
    _Protocol = object


def _has_token(value: str, token: str) -> bool:
    """Whether a comma-separated header names ``token``, in any case."""
    return any(part.strip().lower() == token for part in value.split(","))


class LeanOpening(_Protocol):
    """Mixed into the server protocol, before Autobahn's class."""

    # Autobahn's options, bound to the protocol class by the factory.
    maxConnections: int
    trustXForwardedFor: int
    versions: list[int]
    allowedOriginsPatterns: list[re.Pattern[str]]
    allowNullOrigin: bool

    def processHandshake(self) -> None:
        data = self.data
        end = data.find(b"\r\n\r\n")
        if end < 0 or not self._lean_handshake(data, end + 4):
            super().processHandshake()

    def _lean_handshake(self, data: bytes, size: int) -> bool:
        """Open or refuse ``data[:size]``; False leaves the request to Autobahn."""
        text = data[:size].decode("iso-8859-1")
        match = _REQUEST.fullmatch(text)
        if match is None or self.maxConnections or self.trustXForwardedFor:
            return False
        uri = match[1]
        lines = match[2].split("\r\n")
        lines.pop()
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip(" \t")
        if len(headers) != len(lines):
            return False
        path = uri.partition("?")[0]
        host = headers.get("host")
        if (
            "#" in uri
            or ";" in path
            or path.startswith("//")
            or host is None
            or self.factory.externalPort
        ):
            return False
        if ":" in host and not host.endswith("]"):
            host, _, port = host.rpartition(":")
            if not port.isdigit() or not port.isascii():
                return False
        if not (
            _has_token(headers.get("upgrade", ""), "websocket")
            and _has_token(headers.get("connection", ""), "upgrade")
            and headers.get("sec-websocket-version") == "13"
            and 13 in self.versions
            and _KEY.fullmatch(headers.get("sec-websocket-key", ""))
        ):
            return False
        protocols = []
        offered = headers.get("sec-websocket-protocol")
        if offered is not None:
            protocols = [name.strip() for name in offered.split(",")]
            if len(set(protocols)) != len(protocols):
                return False
        origin = headers.get("origin")
        if origin is None:
            origin = ""
        elif not self._any_origin_allowed(origin):
            return False
        extensions = headers.get("sec-websocket-extensions")
        query = query_values(uri)
        self.http_request_data = data[:size]
        self.http_status_line = text[: text.index("\r\n")]
        self.http_headers = headers
        self.http_request_uri = uri
        self.http_request_path = path
        # What parse_qs would give: empty values dropped.
        self.http_request_params = {
            name: kept
            for name, values in query.items()
            if (kept := list(filter(None, values)))
        }
        self.http_request_host = host
        self.websocket_version = 13
        self.websocket_protocols = protocols
        self.websocket_origin = origin
        self.websocket_extensions = (
            [] if extensions is None else self._parseExtensionsHeader(extensions)
        )
        self.data = data[size:]
        self._wskey = headers["sec-websocket-key"]
        self._query = query
        request = ConnectionRequest(
            self.peer,
            headers,
            host,
            path,
            self.http_request_params,
            13,
            origin,
            protocols,
            self.websocket_extensions,
        )
        self._decided(request)
        return True

    def _any_origin_allowed(self, origin: str) -> bool:
        """Whether Autobahn's origin check would pass ``origin`` unseen.

        It does when every origin is allowed (the only policy the server
        sets; ``--origin`` is judged at admission) and the header parses,
        to ``null`` only where a null origin is allowed.
        """
        if [pattern.pattern for pattern in self.allowedOriginsPatterns] != _MATCH_ALL:
            return False
        try:
            parsed = _url_to_origin(origin)
        except ValueError:
            return False
        return parsed != "null" or bool(self.allowNullOrigin)

    def _decided(self, request: ConnectionRequest) -> None:
        """Answer with ``onConnect``'s verdict, at once or when it comes."""
        try:
            answer = self.onConnect(request)
        except ConnectionDeny as deny:
            self.failHandshake(deny.reason, deny.code)
            return
        except Exception:
            _log.failure("onConnect failed", peer=self.peer)
            self.failHandshake(_INTERNAL_ERROR, ConnectionDeny.INTERNAL_SERVER_ERROR)
            return
        if isinstance(answer, Deferred):
            answer.addCallbacks(self.succeedHandshake, self._refused_later)
        else:
            self.succeedHandshake(answer)

    def _refused_later(self, failure: Failure) -> None:
        deny = failure.value
        if isinstance(deny, ConnectionDeny):
            self.failHandshake(deny.reason, deny.code)
            return
        _log.failure("onConnect failed", failure, peer=self.peer)
        self.failHandshake(_INTERNAL_ERROR, ConnectionDeny.INTERNAL_SERVER_ERROR)

    def _lean_query(self) -> dict[str, list[str]]:
        """The query the lean path read, once; else read it from the URI."""
        query: dict[str, list[str]] | None = self.__dict__.pop("_query", None)
        return query_values(self.http_request_uri) if query is None else query
