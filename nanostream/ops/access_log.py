"""Access logs that never carry a token (docs/operating.rst).

``twisted.web`` writes one access-log line per request, with the full
request URI and the ``Referer``.  Clients put their token in the ``t`` query
parameter, so those lines would leak it.  The formatter here rewrites the
value of ``t``, and of any parameter whose name says it holds a credential,
to ``REDACTED`` before the usual combined-format line is built.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IReactorTime
from twisted.web.http import combinedLogFormatter, proxiedLogFormatter
from twisted.web.iweb import IAccessLogFormatter, IRequest
from twisted.web.resource import IResource
from twisted.web.server import Site
from zope.interface import provider

REDACTED = b"REDACTED"

#: Parameter names (after percent-decoding, any case) whose values are
#: credentials besides the token's own ``t``.
_CREDENTIAL_NAME = re.compile(rb"token|jwt|secret|passw|api[-_]?key", re.IGNORECASE)

#: Query separators: ``&``, and ``;`` which some parsers also accept.  Splitting
#: on more than the server does can only redact more, never less.
_SEPARATOR = re.compile(rb"([&;])")


def _is_credential(raw_name: bytes) -> bool:
    name = unquote_to_bytes(raw_name.replace(b"+", b" ")).strip().lower()
    return name == b"t" or _CREDENTIAL_NAME.search(name) is not None


def redact_uri(uri: bytes) -> bytes:
    """``uri`` with the value of every credential parameter replaced.

    Every other byte is kept as it was, so the line still shows what the
    client asked for.
    """
    path, question, query = uri.partition(b"?")
    if not question:
        return uri
    parts = _SEPARATOR.split(query)
    for i in range(0, len(parts), 2):
        name, equals, value = parts[i].partition(b"=")
        if equals and value and _is_credential(name):
            parts[i] = name + b"=" + REDACTED
    return path + b"?" + b"".join(parts)


class _RedactedRequest:
    """A request as the formatter sees it: the URI and Referer redacted."""

    def __init__(self, request: IRequest) -> None:
        self._request = request
        self.uri = redact_uri(request.uri)

    def getHeader(self, name: bytes) -> bytes | None:
        value = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            return redact_uri(value)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def redacting(formatter: IAccessLogFormatter) -> IAccessLogFormatter:
    """Wrap an access-log formatter so it only ever sees redacted URIs."""

    @provider(IAccessLogFormatter)
    def format(timestamp: str, request: IRequest) -> str:
        return formatter(timestamp, _RedactedRequest(request))

    return format


#: The combined log format, with credentials redacted.
redactedCombinedLogFormatter = redacting(combinedLogFormatter)

#: The same, taking the client address from ``X-Forwarded-For``.
redactedProxiedLogFormatter = redacting(proxiedLogFormatter)


def redacting_site(
    resource: IResource,
    *,
    reactor: IReactorTime | None = None,
    behind_proxy: bool = False,
    site_class: type[Site] = Site,
    **site_options: Any,
) -> Site:
    """A ``Site`` whose access log redacts tokens.

    :param behind_proxy: log the client address from ``X-Forwarded-For``.
    :param site_class: ``Site`` or a subclass of it.
    :param site_options: passed on to :class:`~twisted.web.server.Site`
        (``logPath``, ``timeout``).
    """
    formatter = (
        redactedProxiedLogFormatter if behind_proxy else redactedCombinedLogFormatter
    )
    return site_class(resource, logFormatter=formatter, reactor=reactor, **site_options)
