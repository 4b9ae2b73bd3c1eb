"""Minting tokens: what ``nanostream token`` prints and the demo page embeds.

One function, so that both make tokens the way an application server
should: HS256, an ``exp`` the verifier requires, an ``iat``, and a random
``jti`` so that two tokens minted in the same instant differ and each can
be used once.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import jwt

#: Claims :func:`mint` sets itself; ``exp`` comes from the lifetime.
RESERVED = frozenset({"exp"})


def mint(
    key: bytes,
    ttl: float,
    now: float,
    claims: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
) -> str:
    """A token valid for ``ttl`` seconds from ``now``.

    ``iat`` and ``exp`` are ``now`` and ``now + ttl`` as given: whole
    seconds when both are whole, so a caller wanting integer claims passes
    integers.  ``claims`` may set ``iat``, ``jti`` or anything else, never
    ``exp``.
    """
    payload: dict[str, Any] = {"iat": now, "jti": secrets.token_urlsafe(16)}
    payload.update(claims)
    if "exp" in payload:
        raise ValueError("exp is set from the lifetime")
    payload["exp"] = now + ttl
    return jwt.encode(payload, key, algorithm="HS256")
