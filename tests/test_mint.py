"""The one token minter: claims, lifetime, uniqueness."""

from __future__ import annotations

import jwt
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth import reasons
from nanostream.auth.mint import mint
from nanostream.auth.tokens import TokenRejected, TokenVerifier

KEY = b"mint-test-key-0123456789abcdef-0123456789abcdef"
NOW = 1_700_000_000


def claims_of(token: str) -> dict[str, object]:
    return jwt.decode(token, KEY, algorithms=["HS256"], options={"verify_exp": False})


class MintTests(SynchronousTestCase):
    def test_lifetime_and_claims(self) -> None:
        """exp is now + ttl, iat is now, and extra claims are carried."""
        claims = claims_of(mint(KEY, 60, NOW, [("sub", "alice"), ("n", 2)]))
        self.assertEqual(
            (claims["iat"], claims["exp"], claims["sub"], claims["n"]),
            (NOW, NOW + 60, "alice", 2),
        )

    def test_whole_seconds_stay_whole(self) -> None:
        """Integer now and ttl give integer iat and exp."""
        claims = claims_of(mint(KEY, 60, NOW))
        self.assertIsInstance(claims["exp"], int)
        self.assertIsInstance(claims["iat"], int)

    def test_accepted_until_it_expires(self) -> None:
        """The server's verifier accepts it until exactly now + ttl."""
        token = mint(KEY, 30.0, NOW + 0.5)
        verifier = TokenVerifier(KEY, max_ttl=30)
        self.assertEqual(verifier.verify(token, NOW + 30.4).expires_at, NOW + 30.5)
        e = self.assertRaises(TokenRejected, verifier.verify, token, NOW + 30.5)
        self.assertEqual(e.reason, reasons.EXPIRED)

    def test_unique(self) -> None:
        """Two tokens minted in the same instant differ by their jti."""
        first, second = mint(KEY, 60, NOW), mint(KEY, 60, NOW)
        self.assertNotEqual(claims_of(first)["jti"], claims_of(second)["jti"])

    def test_exp_is_not_a_claim(self) -> None:
        """exp comes from the lifetime only."""
        self.assertRaises(ValueError, mint, KEY, 60, NOW, {"exp": NOW + 9999})
