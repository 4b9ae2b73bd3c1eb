"""The query of a WebSocket request: where the token and the resume position travel."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

#: Characters ``urlsplit`` strips from a URL before it splits it.
_STRIPPED = frozenset("\t\r\n")


def query_values(uri: str) -> dict[str, list[str]]:
    """Every value of every query parameter, empty ones included.

    Autobahn's ``request.params`` drops empty values, so ``?t=&t=TOKEN``
    would pass for one token where exactly one is required.  The result is
    ``parse_qs(urlsplit(uri).query, keep_blank_values=True)``, found
    without building the rest of the split (a handshake parses one).
    """
    if not _STRIPPED.isdisjoint(uri):
        return parse_qs(urlsplit(uri).query, keep_blank_values=True)
    query = uri.partition("#")[0].partition("?")[2]
    values: dict[str, list[str]] = {}
    for field in query.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        name = unquote(name.replace("+", " "))
        value = unquote(value.replace("+", " "))
        found = values.get(name)
        if found is None:
            values[name] = [value]
        else:
            found.append(value)
    return values
