"""Every handshake refusal as a real client and the operator's log see it."""

from __future__ import annotations

import re
import time
from urllib.parse import quote

import jwt

from .harness import (
    SharedServiceTestCase,
    mint,
    new_secret,
    padded,
    percent_encoded,
    receive,
    unsigned,
)

ORIGIN = "https://app.example"


class RefusalCase(SharedServiceTestCase):
    """Asserts on refused handshakes against the class's shared service."""

    def assertRefused(
        self,
        reason: str,
        token: str | None = None,
        *,
        query: str | None = None,
        origin: str = ORIGIN,
        status: int = 401,
    ) -> None:
        """The handshake gets ``status`` and one log line names reason, peer, origin."""
        log = self.service.log
        mark = log.mark()
        refusal = self.service.refuse(token, query=query, origin=origin)
        self.assertEqual(refusal.status, status)
        index, found = log.find(r"rejected handshake", after=mark)
        line = found.string
        self.assertIn(f": {reason}", line)
        self.assertRegex(line, re.escape(refusal.peer) + r"\b")
        self.assertIn(f"origin {origin}", line)
        # One event per refusal: nothing else about this peer has followed.
        self.assertNotIn(refusal.peer, "\n".join(log.since(index + 1)))


class RefusalTests(RefusalCase):
    """Each bad handshake gets its HTTP status and one log line with its reason."""

    def test_no_token(self) -> None:
        """A handshake without ?t= is refused: no token supplied."""
        self.assertRefused("no token supplied")

    def test_empty_token(self) -> None:
        """An empty t parameter counts as no token."""
        self.assertRefused("no token supplied", query="?t=")

    def test_wrong_signature(self) -> None:
        """A token signed with another secret is refused as invalid."""
        self.assertRefused("invalid token", mint(new_secret()))

    def test_alg_none(self) -> None:
        """An unsigned alg=none token is refused as invalid."""
        self.assertRefused("invalid token", unsigned(exp=int(time.time()) + 300))

    def test_other_algorithm(self) -> None:
        """A token signed with the right secret but HS384 is refused as invalid."""
        assert self.service.secret is not None
        token = jwt.encode(
            {"exp": int(time.time()) + 300}, self.service.secret, algorithm="HS384"
        )
        self.assertRefused("invalid token", token)

    def test_no_expiration(self) -> None:
        """A well-signed token without exp is refused."""
        self.assertRefused("token has no expiration", self.service.mint(exp=None))

    def test_expired(self) -> None:
        """A token whose exp has passed is refused."""
        self.assertRefused("token has expired", self.service.mint(lifetime=-10))

    def test_not_yet_valid(self) -> None:
        """A token whose nbf lies in the future is refused."""
        token = self.service.mint(nbf=int(time.time()) + 120)
        self.assertRefused("token not yet valid", token)

    def test_lifetime_too_long(self) -> None:
        """A token valid for longer than --max-token-ttl (3600 s) is refused."""
        self.assertRefused("token lifetime too long", self.service.mint(lifetime=7200))

    def test_already_used(self) -> None:
        """A token admits one handshake only, even while its client is open."""
        token = self.service.mint()
        self.service.connect(token)
        self.assertRefused("token already used", token)

    def test_already_used_percent_encoded(self) -> None:
        """The same token spelled with %XX escapes in the query is still used."""
        token = self.service.mint()
        self.service.connect(token)
        self.assertRefused("token already used", query="?t=" + percent_encoded(token))

    def test_already_used_padded_signature(self) -> None:
        """The same token with its signature base64-padded is still used."""
        token = self.service.mint()
        self.service.connect(token)
        self.assertRefused("token already used", query="?t=" + quote(padded(token)))

    def test_re_encoded_first_use_consumes(self) -> None:
        """A token first used percent-encoded cannot be used again plainly."""
        token = self.service.mint()
        self.service.connect(query="?t=" + percent_encoded(token))
        self.assertRefused("token already used", token)

    def test_accepted_token_receives(self) -> None:
        """A fresh valid token is admitted and its client gets the lines."""
        client = self.service.connect(self.service.mint(), origin=ORIGIN)
        self.service.write(b"welcome\n")
        self.assertEqual(receive(client, 1), ["welcome"])


class OriginTests(RefusalCase):
    """--origin limits which pages may connect."""

    options = {"options": ["--origin", "https://*.example.com"]}

    def test_disallowed_origin_is_forbidden(self) -> None:
        """A valid token from an Origin outside the allow-list gets 403."""
        self.assertRefused(
            "origin not allowed",
            self.service.mint(),
            origin="https://example.com.evil.net",
            status=403,
        )

    def test_allowed_origin_is_admitted(self) -> None:
        """A valid token from a matching Origin connects and receives lines."""
        client = self.service.connect(
            self.service.mint(), origin="https://app.example.com"
        )
        self.service.write(b"hello\n")
        self.assertEqual(receive(client, 1), ["hello"])
