"""The token verifier: signature and time checks, ``alg`` confusion, identity."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth import tokens
from nanostream.auth.reasons import (
    EXPIRED,
    INVALID,
    NO_EXPIRATION,
    NO_TOKEN,
    NOT_YET_VALID,
    TOO_LONG,
)
from nanostream.auth.tokens import AcceptedToken, TokenRejected, TokenVerifier

SECRET = b"unit-test-secret-long-enough-for-hs512-without-warnings-0123456789"
NOW = 1_700_000_000.0
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64(data: bytes) -> str:
    """Unpadded base64url, as JWS segments are spelled."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint(claims: dict[str, Any], **kwargs: Any) -> str:
    """A token as a well-behaved issuer makes it (HS256 with SECRET by default)."""
    kwargs.setdefault("key", SECRET)
    kwargs.setdefault("algorithm", "HS256")
    return jwt.encode(claims, **kwargs)


def handmade(
    header: dict[str, Any] | bytes,
    payload: dict[str, Any] | bytes,
    key: bytes = SECRET,
    digest: Any = hashlib.sha256,
) -> str:
    """A token built segment by segment, for shapes PyJWT refuses to make."""
    if isinstance(header, dict):
        header = json.dumps(header).encode()
    if isinstance(payload, dict):
        payload = json.dumps(payload).encode()
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = hmac.new(key, signing_input.encode("ascii"), digest).digest()
    return f"{signing_input}.{b64(signature)}"


HS256 = {"alg": "HS256", "typ": "JWT"}
GOOD = {"exp": NOW + 60}


class VerifierTestCase(SynchronousTestCase):
    """Helpers shared by the verifier tests."""

    def verifier(self, **kwargs: Any) -> TokenVerifier:
        return TokenVerifier(SECRET, **kwargs)

    def accept(self, token: str, **kwargs: Any) -> AcceptedToken:
        return self.verifier(**kwargs).verify(token, NOW)

    def assertRejected(self, token: str, reason: str, **kwargs: Any) -> None:
        verifier = self.verifier(**kwargs)
        e = self.assertRaises(TokenRejected, verifier.verify, token, NOW)
        self.assertEqual(e.reason, reason)
        self.assertEqual(str(e), reason)


class AcceptanceTests(VerifierTestCase):
    def test_valid_token(self) -> None:
        """A fresh HS256 token with the server's key is accepted with its claims."""
        accepted = self.accept(mint({"exp": NOW + 60, "sub": "alice"}))
        self.assertEqual(accepted.claims, {"exp": NOW + 60, "sub": "alice"})
        self.assertEqual(accepted.expires_at, NOW + 60)

    def test_expires_at_includes_leeway(self) -> None:
        """The ledger must remember a token until exp plus the leeway."""
        accepted = self.accept(mint({"exp": NOW + 60}), leeway=7)
        self.assertEqual(accepted.expires_at, NOW + 67)


class PresenceTests(VerifierTestCase):
    def test_empty_token(self) -> None:
        """An empty token is reported as missing, not as invalid."""
        self.assertRejected("", NO_TOKEN)


class SignatureTests(VerifierTestCase):
    def test_wrong_secret(self) -> None:
        """A token signed with another key is invalid."""
        self.assertRejected(mint(GOOD, key=b"x" * 48), INVALID)

    def test_tampered_payload(self) -> None:
        """A payload swapped under a valid signature is invalid."""
        header, _, signature = mint(GOOD).split(".")
        forged = b64(json.dumps({"exp": NOW + 60, "admin": True}).encode())
        self.assertRejected(f"{header}.{forged}.{signature}", INVALID)

    def test_flipped_signature_byte(self) -> None:
        """A signature that differs in one byte is invalid."""
        token = mint(GOOD)
        signing_input, signature = token.rsplit(".", 1)
        raw = bytearray(base64.urlsafe_b64decode(signature + "="))
        raw[0] ^= 1
        self.assertRejected(f"{signing_input}.{b64(bytes(raw))}", INVALID)

    def test_empty_signature(self) -> None:
        """A token whose signature segment is empty is invalid."""
        signing_input = mint(GOOD).rsplit(".", 1)[0]
        self.assertRejected(signing_input + ".", INVALID)


class AlgorithmConfusionTests(VerifierTestCase):
    def test_none_spellings(self) -> None:
        """An unsigned token is invalid however ``none`` is spelled."""
        for alg in ("none", "None", "NONE", "nOnE"):
            signing_input = handmade({"alg": alg}, GOOD).rsplit(".", 1)[0]
            with self.subTest(alg=alg):
                self.assertRejected(signing_input + ".", INVALID)

    def test_none_by_pyjwt(self) -> None:
        """An unsigned token as PyJWT itself makes it is invalid."""
        self.assertRejected(mint(GOOD, key=None, algorithm="none"), INVALID)

    def test_none_with_hmac_signature(self) -> None:
        """Claiming ``none`` while carrying a correct HMAC is still invalid."""
        self.assertRejected(handmade({"alg": "none"}, GOOD), INVALID)

    def test_other_hmac_algorithms(self) -> None:
        """HS384 and HS512 with the right key are invalid: only HS256 is allowed."""
        for alg in ("HS384", "HS512"):
            with self.subTest(alg=alg):
                self.assertRejected(mint(GOOD, algorithm=alg), INVALID)

    def test_rs256_header_with_hmac_signature(self) -> None:
        """An RS256 header over an HMAC made with the secret is invalid."""
        self.assertRejected(handmade({"alg": "RS256", "typ": "JWT"}, GOOD), INVALID)

    def test_lower_case_hs256(self) -> None:
        """Algorithm names are exact: ``hs256`` is not ``HS256``."""
        self.assertRejected(handmade({"alg": "hs256"}, GOOD), INVALID)

    def test_missing_alg(self) -> None:
        """A header without ``alg`` is invalid even with a correct HMAC."""
        self.assertRejected(handmade({"typ": "JWT"}, GOOD), INVALID)

    def test_crit_header(self) -> None:
        """A token requiring an extension the server does not know is invalid."""
        self.assertRejected(handmade({**HS256, "crit": ["exp"]}, GOOD), INVALID)

    def test_crit_b64_header(self) -> None:
        """Even the ``b64`` extension PyJWT knows is refused as critical."""
        header = {**HS256, "b64": False, "crit": ["b64"]}
        self.assertRejected(handmade(header, GOOD), INVALID)

    def test_control(self) -> None:
        """The handmade builder makes acceptable tokens when nothing is wrong."""
        self.assertEqual(self.accept(handmade(HS256, GOOD)).expires_at, NOW + 60)


class ShapeTests(VerifierTestCase):
    def test_duplicate_claim(self) -> None:
        """A payload naming ``exp`` twice is ambiguous and so invalid."""
        payload = f'{{"exp": {NOW + 60}, "exp": {NOW + 99999}}}'.encode()
        self.assertRejected(handmade(HS256, payload), INVALID)

    def test_duplicate_header_key(self) -> None:
        """A header naming ``alg`` twice is as ambiguous as a doubled claim."""
        for header in (
            b'{"alg": "none", "alg": "HS256"}',
            b'{"alg": "HS256", "typ": "JWT", "typ": "JOSE"}',
        ):
            with self.subTest(header=header):
                self.assertRejected(handmade(header, GOOD), INVALID)

    def test_duplicate_header_key_after_many_headers(self) -> None:
        """Remembering checked headers never lets an ambiguous one through.

        An issuer that varies its header (a ``kid`` per token) fills the
        memory of checked headers; every other header is still checked.
        """
        for kid in range(200):
            header = b'{"alg": "HS256", "kid": "%d"}' % kid
            self.accept(handmade(header, GOOD))
            self.accept(handmade(header, {**GOOD, "n": 1}))
        self.assertLessEqual(len(tokens._CHECKED_HEADERS), tokens._CHECKED_HEADERS_MAX)
        self.assertRejected(
            handmade(b'{"alg": "HS256", "kid": "1", "kid": "2"}', GOOD), INVALID
        )

    def test_deeply_nested_claims(self) -> None:
        """Claims nested deeper than the parser goes are invalid, not a crash."""
        depth = 100_000
        payload = b'{"exp": %d, "x": %s%s}' % (NOW + 60, b"[" * depth, b"]" * depth)
        self.assertRejected(handmade(HS256, payload), INVALID)

    def test_array_payload(self) -> None:
        """A payload that is a JSON array, not an object, is invalid."""
        self.assertRejected(handmade(HS256, b"[1, 2, 3]"), INVALID)

    def test_string_payload(self) -> None:
        """A payload that is a JSON string is invalid."""
        self.assertRejected(handmade(HS256, b'"exp"'), INVALID)

    def test_payload_not_json(self) -> None:
        """A signed payload that is not JSON is invalid."""
        self.assertRejected(handmade(HS256, b"exp=1"), INVALID)

    def test_payload_not_utf8(self) -> None:
        """A signed payload that is not UTF-8 is invalid."""
        self.assertRejected(handmade(HS256, b'{"exp": 1\xff}'), INVALID)

    def test_header_not_json(self) -> None:
        """A header segment that is not JSON is invalid."""
        self.assertRejected(handmade(b"HS256", GOOD), INVALID)

    def test_malformed_segments(self) -> None:
        """Strings that are not three base64url segments are invalid."""
        good = mint(GOOD)
        for token in (
            "abc",
            "a.b",
            "..",
            "a.b.c.d",
            good + ".x",
            good.replace(".", "", 1),
            "!!!." + good.split(".", 1)[1],
            " " + good,
            good + "\n",
            "é" + good,
        ):
            with self.subTest(token=token):
                self.assertRejected(token, INVALID)


class ExpirationClaimTests(VerifierTestCase):
    def test_no_exp(self) -> None:
        """A valid token without ``exp`` has no expiration."""
        self.assertRejected(mint({"sub": "alice"}), NO_EXPIRATION)

    def test_non_numeric_exp(self) -> None:
        """An ``exp`` that is not a JSON number is invalid."""
        for value in (str(NOW + 60), True, False, None, [NOW + 60], {"t": 1}):
            with self.subTest(exp=value):
                self.assertRejected(mint({"exp": value}), INVALID)

    def test_nan_and_infinity_exp(self) -> None:
        """NaN and Infinity are not JSON, so an ``exp`` spelled so is invalid."""
        for spelling in (b"NaN", b"Infinity", b"-Infinity"):
            with self.subTest(exp=spelling):
                self.assertRejected(
                    handmade(HS256, b'{"exp": ' + spelling + b"}"), INVALID
                )

    def test_huge_exp(self) -> None:
        """An ``exp`` too large for a float is far too long-lived, not eternal."""
        self.assertRejected(handmade(HS256, b'{"exp": 1e400}'), TOO_LONG)
        self.assertRejected(handmade(HS256, {"exp": 10**400}), TOO_LONG)

    def test_huge_negative_exp(self) -> None:
        """An ``exp`` too negative for a float has long expired."""
        self.assertRejected(handmade(HS256, b'{"exp": -1e400}'), EXPIRED)

    def test_float_exp(self) -> None:
        """A fractional ``exp`` is a number like any other."""
        self.assertEqual(self.accept(mint({"exp": NOW + 0.25})).expires_at, NOW + 0.25)

    def test_order_invalid_before_no_exp(self) -> None:
        """A badly signed token without ``exp`` is reported invalid first."""
        self.assertRejected(mint({"sub": "a"}, key=b"y" * 48), INVALID)


class ExpiryTests(VerifierTestCase):
    def test_expired(self) -> None:
        """A token whose ``exp`` has passed is expired."""
        self.assertRejected(mint({"exp": NOW - 1}), EXPIRED)

    def test_exp_equal_to_now(self) -> None:
        """At exactly ``exp`` the token is already expired (``exp > now``)."""
        self.assertRejected(mint({"exp": NOW}), EXPIRED)

    def test_just_before_exp(self) -> None:
        """A moment before ``exp`` the token is still accepted."""
        self.assertEqual(
            self.accept(mint({"exp": NOW + 0.001})).claims["exp"], NOW + 0.001
        )

    def test_leeway_rescues_recent_expiry(self) -> None:
        """Within the leeway an expired ``exp`` is still accepted."""
        accepted = self.accept(mint({"exp": NOW - 5}), leeway=10)
        self.assertEqual(accepted.expires_at, NOW + 5)

    def test_leeway_boundary(self) -> None:
        """At exactly ``exp`` plus leeway the token is expired."""
        self.assertRejected(mint({"exp": NOW - 10}), EXPIRED, leeway=10)

    def test_expired_beyond_leeway(self) -> None:
        """Past the leeway the token is expired."""
        self.assertRejected(mint({"exp": NOW - 11}), EXPIRED, leeway=10)

    def test_expired_reported_before_not_yet_valid(self) -> None:
        """The expiry check runs before the ``nbf`` check, as in the brief."""
        self.assertRejected(mint({"exp": NOW - 1, "nbf": NOW + 100}), EXPIRED)


class NotBeforeTests(VerifierTestCase):
    def test_nbf_in_future(self) -> None:
        """A token whose ``nbf`` lies ahead is not yet valid."""
        self.assertRejected(mint({"exp": NOW + 60, "nbf": NOW + 1}), NOT_YET_VALID)

    def test_nbf_equal_to_now(self) -> None:
        """At exactly ``nbf`` the token is valid."""
        self.accept(mint({"exp": NOW + 60, "nbf": NOW}))

    def test_nbf_within_leeway(self) -> None:
        """The leeway allows an ``nbf`` that is that far ahead."""
        self.accept(mint({"exp": NOW + 60, "nbf": NOW + 10}), leeway=10)

    def test_nbf_beyond_leeway(self) -> None:
        """An ``nbf`` further ahead than the leeway is not yet valid."""
        self.assertRejected(
            mint({"exp": NOW + 60, "nbf": NOW + 10.5}), NOT_YET_VALID, leeway=10
        )

    def test_iat_in_future(self) -> None:
        """A token claiming to be issued in the future is not yet valid."""
        self.assertRejected(mint({"exp": NOW + 60, "iat": NOW + 5}), NOT_YET_VALID)

    def test_iat_in_past(self) -> None:
        """A token issued in the past is fine."""
        self.accept(mint({"exp": NOW + 60, "iat": NOW - 5}))

    def test_iat_within_leeway(self) -> None:
        """The leeway also covers a slightly early ``iat``."""
        self.accept(mint({"exp": NOW + 60, "iat": NOW + 5}), leeway=5)

    def test_non_numeric_nbf_and_iat(self) -> None:
        """An ``nbf`` or ``iat`` that is not a number is invalid."""
        for name in ("nbf", "iat"):
            for value in ("0", True, None):
                with self.subTest(claim=name, value=value):
                    self.assertRejected(mint({"exp": NOW + 60, name: value}), INVALID)


class LifetimeTests(VerifierTestCase):
    def test_default_max_ttl(self) -> None:
        """By default a token may live at most an hour from now."""
        self.accept(mint({"exp": NOW + 3600}))
        self.assertRejected(mint({"exp": NOW + 3601}), TOO_LONG)

    def test_max_ttl_boundary(self) -> None:
        """An ``exp`` exactly max-token-ttl ahead is accepted, a bit more is not."""
        self.accept(mint({"exp": NOW + 60}), max_ttl=60)
        self.assertRejected(mint({"exp": NOW + 60.5}), TOO_LONG, max_ttl=60)

    def test_max_ttl_with_leeway(self) -> None:
        """The leeway widens the allowed lifetime by the same amount."""
        self.accept(mint({"exp": NOW + 65}), max_ttl=60, leeway=5)
        self.assertRejected(mint({"exp": NOW + 66}), TOO_LONG, max_ttl=60, leeway=5)

    def test_too_long_reported_after_not_yet_valid(self) -> None:
        """The lifetime check comes last of steps 2 to 5."""
        self.assertRejected(
            mint({"exp": NOW + 99999, "nbf": NOW + 10}), NOT_YET_VALID, max_ttl=60
        )


def _reencodings(token: str) -> dict[str, str]:
    """Other spellings of the signature segment that decode to the same bytes."""
    signing_input, signature = token.rsplit(".", 1)
    # 32 bytes are 43 characters; the last one carries 2 spare low bits.
    last = _ALPHABET.index(signature[-1])
    assert last & 0b11 == 0
    non_canonical = signature[:-1] + _ALPHABET[last | 0b01]
    return {
        "padded": f"{signing_input}.{signature}=",
        "non-canonical last character": f"{signing_input}.{non_canonical}",
        "skipped characters": f"{signing_input}.{signature[:10]}!*{signature[10:]}",
        "embedded whitespace": f"{signing_input}.{signature[:10]} {signature[10:]}",
    }


class IdentityTests(VerifierTestCase):
    def test_same_token_same_id(self) -> None:
        """Verifying one token twice gives one identity."""
        token = mint(GOOD)
        self.assertEqual(self.accept(token).token_id, self.accept(token).token_id)

    def test_padded_signature_same_id(self) -> None:
        """A signature segment with ``=`` padding is the same token."""
        token = mint(GOOD)
        padded = _reencodings(token)["padded"]
        self.assertNotEqual(padded, token)
        self.assertEqual(self.accept(padded).token_id, self.accept(token).token_id)

    def test_reencodings_never_a_new_identity(self) -> None:
        """Each re-spelling of the signature is refused or is the same token."""
        token = mint(GOOD)
        original = self.accept(token).token_id
        for name, respelled in _reencodings(token).items():
            self.assertEqual(
                base64.urlsafe_b64decode(respelled.rsplit(".", 1)[1] + "=="),
                base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "="),
            )
            with self.subTest(name):
                try:
                    accepted = self.accept(respelled)
                except TokenRejected as e:
                    self.assertEqual(e.reason, INVALID)
                else:
                    self.assertEqual(accepted.token_id, original)

    def test_different_tokens_different_ids(self) -> None:
        """Two tokens that differ only in one claim are two identities."""
        first = self.accept(mint({"exp": NOW + 60, "jti": "a"}))
        second = self.accept(mint({"exp": NOW + 60, "jti": "b"}))
        self.assertNotEqual(first.token_id, second.token_id)

    def test_different_header_spelling_different_ids(self) -> None:
        """Two separately signed spellings of the same claims are two tokens."""
        first = self.accept(handmade({"alg": "HS256", "typ": "JWT"}, GOOD))
        second = self.accept(handmade({"typ": "JWT", "alg": "HS256"}, GOOD))
        self.assertNotEqual(first.token_id, second.token_id)

    def test_id_is_not_the_token(self) -> None:
        """The identity is a fixed-size digest that does not carry the token."""
        token = mint(GOOD)
        token_id = self.accept(token).token_id
        self.assertEqual(len(token_id), 32)
        self.assertNotIn(token.rsplit(".", 1)[1].encode(), token_id)
