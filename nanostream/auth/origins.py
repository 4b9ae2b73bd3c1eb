"""Which ``Origin`` header values may open a connection (``--origin``).

A pattern is matched against the *whole* Origin value, with ``*`` standing
for any run of characters that cannot leave the host name: letters, digits,
``-`` and ``.``.  So ``https://*.example.com`` admits
``https://live.example.com`` but neither ``https://evil.com/?.example.com``
nor ``https://example.com.evil.net``.  Matching ignores ASCII case, as
browsers send scheme and host in lower case anyway; only ASCII case, so that
no Unicode letter (the Kelvin sign, a long s) folds into an allowed name.
A lone ``*`` admits any Origin value, but still requires the header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WILDCARD = "[a-z0-9.-]*"


def _compile(pattern: str) -> str:
    if pattern == "*":
        return ".+"
    return _WILDCARD.join(re.escape(part) for part in pattern.split("*"))


class OriginPolicy:
    """An allow-list of Origin patterns; an empty list allows any origin."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        listed = tuple(patterns)
        self._regex = (
            re.compile(
                "|".join(f"(?:{_compile(p)})" for p in listed),
                re.IGNORECASE | re.ASCII,
            )
            if listed
            else None
        )

    def allows(self, origin: str | None) -> bool:
        """True if a handshake carrying this Origin (or none) may proceed.

        With an allow-list set, a request without an Origin header is
        refused: browsers always send one, so its absence means a client we
        cannot place.
        """
        if self._regex is None:
            return True
        if not origin:
            return False
        return self._regex.fullmatch(origin) is not None
