"""Mint HS256 tokens for benchmark clients.

The load generator needs a fresh token for every connection, thousands of
times per run, so minting is done with the standard library (one HMAC and
two base64 encodings) rather than a JWT library: it stays cheap and keeps
the load generator runnable in any venv. Every token carries a unique
``jti`` because servers treat tokens as single-use: two tokens minted in the
same second with the same claims would otherwise be byte-identical.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import time
from pathlib import Path

_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
_counter = itertools.count()
_nonce = os.urandom(6).hex()


def read_secret(path: str | Path) -> bytes:
    """Return the key in a secret file; its trailing newline is not part of it."""
    data = Path(path).read_bytes()
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    return data


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def sign(secret: bytes, claims: dict[str, object]) -> str:
    """Return a compact HS256 JWS of ``claims``."""
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = _HEADER + b"." + payload
    mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + _b64(mac)).decode("ascii")


def mint(secret: bytes, ttl: int = 60) -> str:
    """Return a fresh, unique token that expires ``ttl`` seconds from now."""
    claims = {"exp": int(time.time()) + ttl, "jti": f"{_nonce}-{next(_counter)}"}
    return sign(secret, claims)


def mint_without_exp(secret: bytes) -> str:
    """Return a correctly signed token that lacks the required ``exp`` claim."""
    return sign(secret, {"jti": f"{_nonce}-{next(_counter)}"})
