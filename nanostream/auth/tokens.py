"""Checks a connection token's signature and times, knowing nothing of WebSockets.

The verifier is pure: it takes the token string and the current time and
either returns what the ledger needs (an identity and an expiry) or raises
:class:`TokenRejected` with one of the fixed reason phrases.  Single use is
not checked here; that is the ledger's job (:mod:`nanostream.auth.ledger`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import HMACAlgorithm
from jwt.exceptions import InvalidTokenError
from jwt.utils import base64url_decode

from nanostream.auth.reasons import (
    EXPIRED,
    INVALID,
    NO_EXPIRATION,
    NO_TOKEN,
    NOT_YET_VALID,
    TOO_LONG,
)

#: HMAC keys shorter than this are legal but weak; the service warns once at
#: start instead of letting PyJWT warn on every handshake.
RECOMMENDED_SECRET_BYTES = 32


class _PreparedHS256(HMACAlgorithm):
    """HS256 for one secret, checked once at start rather than per token.

    PyJWT prepares the key on every decode, probing whether it could be an
    asymmetric key in PEM, SSH or DER form; for a fixed secret that was a
    quarter of a handshake's token checking.
    """

    def __init__(self, secret: bytes) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._key = super().prepare_key(secret)

    def prepare_key(self, key: str | bytes) -> bytes:
        return self._key

    def check_key_length(self, key: bytes) -> str | None:
        return None


class TokenRejected(Exception):
    """A token failed a check; ``reason`` is one of the fixed phrases."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AcceptedToken:
    """What survives verification: enough to consume the token once."""

    token_id: bytes
    """Identity of the token, the same however it was re-encoded on the wire."""

    expires_at: float
    """When the token can no longer be accepted (``exp`` plus leeway)."""

    claims: dict[str, Any]


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object hook: a key given twice makes the token ambiguous."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _reject_constant(name: str) -> float:
    """JSON hook: NaN and Infinity are not JSON and never a valid claim."""
    raise ValueError(f"non-standard number {name}")


def _parse_claims(payload: bytes) -> dict[str, Any]:
    claims = json.loads(
        payload,
        object_pairs_hook=_reject_duplicates,
        parse_constant=_reject_constant,
    )
    if not isinstance(claims, dict):
        raise ValueError("claims are not a JSON object")
    return claims


#: Header segments that passed :func:`_check_header`.  One issuer signs every
#: token with the same header, so the strict parse runs once, not per token.
_CHECKED_HEADERS: set[str] = set()

#: Enough for every issuer an operator runs.  Headers that vary per token
#: (a ``kid`` each) are still checked every time, just not remembered; only
#: headers signed with the secret are ever remembered.
_CHECKED_HEADERS_MAX = 64


def _check_header(token: str) -> None:
    """Parse the signed header again, strictly, as the claims are parsed.

    PyJWT keeps the last of two equal keys; another parser may keep the
    first, so ``{"alg": "HS256", "alg": "none"}`` would mean two things.
    Only headers of tokens whose signature verified get here.
    """
    segment = token.split(".", 1)[0]
    if segment in _CHECKED_HEADERS:
        return
    json.loads(
        base64url_decode(segment),
        object_pairs_hook=_reject_duplicates,
        parse_constant=_reject_constant,
    )
    if len(_CHECKED_HEADERS) < _CHECKED_HEADERS_MAX:
        _CHECKED_HEADERS.add(segment)


def _number(value: Any) -> float | None:
    """A finite JSON number as a float, or None (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
    return number if not math.isnan(number) else None


def token_identity(signing_input: bytes, signature: bytes) -> bytes:
    """Hash the signed bytes and the *decoded* signature.

    A signed header and payload cannot be re-encoded without breaking the
    signature, but the signature segment itself can (padding, non-canonical
    trailing bits, characters base64 decoding skips).  Hashing its decoded
    bytes makes every such spelling of one token the same identity.
    """
    return hashlib.sha256(signing_input + b"." + signature).digest()


class TokenVerifier:
    """Checks HS256 tokens signed with one secret: the signature (no other
    ``alg``), then ``exp`` present, not expired, ``nbf``/``iat`` not ahead,
    and ``exp`` no further ahead than ``max_ttl``, each with the leeway.
    """

    def __init__(
        self, secret: bytes, *, leeway: float = 0.0, max_ttl: float = 3600.0
    ) -> None:
        self._secret = secret
        self._leeway = leeway
        self._max_ttl = max_ttl
        self._jws = jwt.PyJWS(algorithms=[])
        self._jws.register_algorithm("HS256", _PreparedHS256(secret))

    def verify(self, token: str, now: float) -> AcceptedToken:
        """Return the accepted token, or raise :class:`TokenRejected`."""
        if not token:
            raise TokenRejected(NO_TOKEN)
        try:
            decoded = self._jws.decode_complete(
                token, self._secret, algorithms=["HS256"]
            )
            if "crit" in decoded["header"]:
                # No JWS extension is understood here, so none may be required.
                raise InvalidTokenError("critical header")
            _check_header(token)
            claims = _parse_claims(decoded["payload"])
        except (InvalidTokenError, ValueError, TypeError, RecursionError) as e:
            # RecursionError: claims nested deeper than the parser goes.
            raise TokenRejected(INVALID) from e

        leeway = self._leeway
        if "exp" not in claims:
            raise TokenRejected(NO_EXPIRATION)
        exp = _number(claims["exp"])
        if exp is None:
            raise TokenRejected(INVALID)
        if exp + leeway <= now:
            raise TokenRejected(EXPIRED)
        for name in ("nbf", "iat"):
            if name in claims:
                moment = _number(claims[name])
                if moment is None:
                    raise TokenRejected(INVALID)
                if moment - leeway > now:
                    raise TokenRejected(NOT_YET_VALID)
        if exp - now > self._max_ttl + leeway:
            raise TokenRejected(TOO_LONG)

        signing_input = token.encode("utf-8").rsplit(b".", 1)[0]
        return AcceptedToken(
            token_identity(signing_input, decoded["signature"]),
            exp + leeway,
            claims,
        )
