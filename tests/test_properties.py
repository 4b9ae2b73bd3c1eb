"""Properties that must hold for any input, checked with Hypothesis.

The line splitter, the origin matcher, the token verifier with the
admission gate, and the used-token ledger, each against a model small
enough to trust.  Examples per property come from a settings profile:
``nanostream`` (the default, quick enough for every run) or
``nanostream-thorough`` (``NANOSTREAM_HYPOTHESIS=nanostream-thorough``).
"""

from __future__ import annotations

import os
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from test_attack_corpus import b64, signed
from test_lines import reference, split_all
from test_websocket import NOW, SECRET
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth import reasons
from nanostream.auth.admission import Admission, Refused
from nanostream.auth.ledger import MemoryLedger
from nanostream.auth.origins import OriginPolicy
from nanostream.auth.tokens import AcceptedToken, TokenRejected, TokenVerifier
from nanostream.sources.splitter import LineSplitter

settings.register_profile(
    "nanostream",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "nanostream-thorough",
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = settings.get_profile(os.environ.get("NANOSTREAM_HYPOTHESIS", "nanostream"))

BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
PEER = "tcp4:127.0.0.1:40000"


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given points (clamped, sorted, repeats allowed)."""
    points = sorted(min(cut, len(data)) for cut in cuts)
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


# -- the line splitter ----------------------------------------------------------

STREAMS = st.one_of(
    st.binary(max_size=400),
    st.lists(
        st.sampled_from(
            [
                b"a",
                b"bc",
                b"\r",
                b"\n",
                b"\r\n",
                b"\n\n",
                b"\xff\xfe",
                b"\x00",
                b"xyzxyz",
            ]
        ),
        max_size=80,
    ).map(b"".join),
)
CUTS = st.lists(st.integers(min_value=0, max_value=400), max_size=12)
LINE = st.binary(min_size=1, max_size=40).map(
    lambda line: line.replace(b"\n", b"n").replace(b"\r", b"r")
)


class LineSplitterProperties(SynchronousTestCase):
    """Lines do not depend on how the stream was cut into reads."""

    @PROFILE
    @given(stream=STREAMS, cuts=CUTS, limit=st.integers(min_value=1, max_value=16))
    def test_any_chunking_same_lines(
        self, stream: bytes, cuts: list[int], limit: int
    ) -> None:
        """Any chunking of any byte stream yields the lines of the whole stream."""
        whole, whole_overlong = split_all([stream], limit)
        lines, overlong = split_all(chunked(stream, cuts), limit)
        self.assertEqual(lines, whole)
        # The length reported is what was seen when the line was given up,
        # which depends on the reads; the count does not.
        self.assertEqual(len(overlong), len(whole_overlong))
        self.assertTrue(all(length > limit for length in overlong))
        self.assertEqual((lines, len(overlong)), reference(stream, limit))

    @PROFILE
    @given(
        lines=st.lists(LINE, max_size=20),
        endings=st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=20, max_size=20),
        final_newline=st.booleans(),
        cuts=CUTS,
        limit=st.integers(min_value=1, max_value=30),
    )
    def test_overlong_dropped_rest_intact(
        self,
        lines: list[bytes],
        endings: list[bytes],
        final_newline: bool,
        cuts: list[int],
        limit: int,
    ) -> None:
        """Lines over the limit are dropped and reported; the others arrive intact."""
        stream = b"".join(line + end for line, end in zip(lines, endings, strict=False))
        if lines and not final_newline:
            stream = stream[: -len(endings[len(lines) - 1])]
        got, overlong = split_all(chunked(stream, cuts), limit)
        self.assertEqual(got, [line for line in lines if len(line) <= limit])
        self.assertEqual(len(overlong), sum(len(line) > limit for line in lines))
        self.assertTrue(all(length > limit for length in overlong))

    @PROFILE
    @given(stream=STREAMS, cuts=CUTS, limit=st.integers(min_value=1, max_value=16))
    def test_feed_returns_only_what_is_finished(
        self, stream: bytes, cuts: list[int], limit: int
    ) -> None:
        """Before finish, only lines whose newline has arrived come out."""
        splitter = LineSplitter(limit)
        fed = b""
        out: list[bytes] = []
        for chunk in chunked(stream, cuts):
            fed += chunk
            out.extend(splitter.feed(chunk))
            complete = fed[: fed.rfind(b"\n") + 1]
            self.assertEqual(out, reference(complete, limit)[0])


# -- the origin matcher ---------------------------------------------------------

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
DOMAIN = st.lists(LABEL, min_size=1, max_size=3).map(".".join)
SCHEME = st.sampled_from(["https", "http", "wss", "app"])
PORT = st.one_of(
    st.just(""), st.integers(min_value=1, max_value=65535).map(":{}".format)
)
#: Text a wildcard might be fed: host characters, separators, letters whose
#: Unicode case folding lands in ASCII (Kelvin sign, long s, dotted I), and
#: anything.
FILLER = st.one_of(
    st.text(alphabet="abkisXYZ019.-/?@:#\\_%~ \u212a\u017f\u0130", max_size=20),
    st.text(max_size=12),
)
HOST_CHARACTERS = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
#: What a wildcard may cover: host characters, in either ASCII case.
HOST_FILLER = st.text(alphabet="abcdefghijklmnopqrstuvwxyzAXZ0123456789.-", max_size=20)
#: Characters that would take a wildcard out of the host name.
BREAKOUT = st.sampled_from(list("/?@:#\\ "))


def wildcard_admits(pattern_prefix: str, pattern_suffix: str, origin: str) -> bool:
    """The model: prefix, then host characters only, then the suffix, any case."""
    value = origin.lower() if origin.isascii() else origin
    if len(value) < len(pattern_prefix) + len(pattern_suffix):
        return False
    if not (value.startswith(pattern_prefix) and value.endswith(pattern_suffix)):
        return False
    middle = value[len(pattern_prefix) : len(value) - len(pattern_suffix)]
    return set(middle) <= HOST_CHARACTERS


class OriginProperties(SynchronousTestCase):
    """A pattern's wildcard stays inside the host name; nothing else matches."""

    @PROFILE
    @given(scheme=SCHEME, domain=DOMAIN, port=PORT, host=HOST_FILLER)
    def test_wildcard_covers_any_host_name(
        self, scheme: str, domain: str, port: str, host: str
    ) -> None:
        """Any run of host characters, in any ASCII case, fills the wildcard."""
        policy = OriginPolicy([f"{scheme}://*.{domain}{port}"])
        self.assertTrue(policy.allows(f"{scheme}://{host}.{domain}{port}"))

    @PROFILE
    @given(
        scheme=SCHEME,
        domain=DOMAIN,
        port=PORT,
        before=FILLER,
        breakout=BREAKOUT,
        after=FILLER,
    )
    def test_wildcard_never_leaves_the_host(
        self,
        scheme: str,
        domain: str,
        port: str,
        before: str,
        breakout: str,
        after: str,
    ) -> None:
        """Where the wildcard would cover '/', '?', '@', ':', '#', '\\' or a
        space, the value is refused, whatever surrounds it."""
        policy = OriginPolicy([f"{scheme}://*.{domain}{port}"])
        origin = f"{scheme}://{before}{breakout}{after}.{domain}{port}"
        self.assertFalse(policy.allows(origin), origin)

    @PROFILE
    @given(
        scheme=SCHEME,
        other=SCHEME,
        domain=DOMAIN,
        port=PORT,
        host=HOST_FILLER,
        extra=FILLER.filter(bool),
    )
    def test_admitted_means_same_scheme_and_suffix(
        self, scheme: str, other: str, domain: str, port: str, host: str, extra: str
    ) -> None:
        """A host name admitted under the pattern's scheme and suffix is refused
        under another scheme, or with anything after the suffix."""
        tail = f".{domain}{port}"
        policy = OriginPolicy([f"{scheme}://*{tail}"])
        self.assertTrue(policy.allows(f"{scheme}://{host}{tail}"))
        assume(other != scheme)
        self.assertFalse(policy.allows(f"{other}://{host}{tail}"))
        longer = f"{scheme}://{host}{tail}{extra}"
        # Unless what was added ends in the suffix again (``.a`` after ``.a``).
        assume(not longer.lower().endswith(tail))
        self.assertFalse(policy.allows(longer), longer)

    @PROFILE
    @given(
        scheme=SCHEME,
        domain=DOMAIN,
        port=PORT,
        filler=FILLER,
        suffix=st.one_of(DOMAIN, FILLER),
    )
    def test_wildcard_matches_the_model(
        self, scheme: str, domain: str, port: str, filler: str, suffix: str
    ) -> None:
        """The matcher agrees with the model on values near and far from the pattern."""
        prefix, tail = f"{scheme}://", f".{domain}{port}"
        policy = OriginPolicy([f"{prefix}*{tail}"])
        for origin in (
            f"{prefix}{filler}{tail}",
            f"{prefix}{filler}.{suffix}{port}",
            f"{prefix}{filler}{tail}{suffix}",
            f"{filler}{tail}",
        ):
            self.assertEqual(
                policy.allows(origin), wildcard_admits(prefix, tail, origin), origin
            )

    @PROFILE
    @given(scheme=SCHEME, domain=DOMAIN, port=PORT, origin=FILLER)
    def test_exact_pattern_admits_only_itself(
        self, scheme: str, domain: str, port: str, origin: str
    ) -> None:
        """A pattern without a wildcard admits exactly its value, in any ASCII case."""
        pattern = f"{scheme}://{domain}{port}"
        policy = OriginPolicy([pattern])
        for candidate in (origin, pattern + origin, origin + pattern, pattern.upper()):
            expected = candidate.isascii() and candidate.lower() == pattern
            self.assertEqual(policy.allows(candidate), expected, candidate)


# -- the verifier and the gate ---------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
CLAIM_NAMES = st.sampled_from(["exp", "nbf", "iat", "sub", "jti", "aud", "crit"])
CLAIMS = st.dictionaries(CLAIM_NAMES | st.text(max_size=4), JSON, max_size=6)
#: Claims that may well be valid, so that only the signature can save them.
PLAUSIBLE = st.fixed_dictionaries(
    {"exp": st.floats(min_value=NOW + 1, max_value=NOW + 3600)},
    optional={
        "iat": st.floats(min_value=NOW - 3600, max_value=NOW),
        "nbf": st.floats(min_value=NOW - 3600, max_value=NOW),
        "sub": st.text(max_size=12),
        "jti": st.text(max_size=12),
    },
)
ALGS = st.sampled_from(
    ["HS256", "none", "None", "HS384", "HS512", "RS256", "ES256", "hs256", ""]
)
HEADERS = st.fixed_dictionaries(
    {"alg": ALGS},
    optional={
        "typ": st.sampled_from(["JWT", "jwt", "JOSE"]),
        "kid": st.text(max_size=12),
        "jku": st.text(max_size=12),
    },
)
OTHER_KEYS = st.binary(max_size=80).filter(lambda key: key != SECRET)


def rejected(token: str) -> str | None:
    """The reason the verifier refuses ``token`` at NOW, or None if it accepts.

    Anything but TokenRejected escaping the verifier fails the test.
    """
    try:
        TokenVerifier(SECRET).verify(token, NOW)
    except TokenRejected as e:
        return e.reason
    return None


class VerifierProperties(SynchronousTestCase):
    """No token is accepted without an HS256 signature made with the secret."""

    @PROFILE
    @given(header=HEADERS, claims=CLAIMS | PLAUSIBLE, key=OTHER_KEYS)
    def test_other_key_never_accepted(
        self, header: dict[str, Any], claims: dict[str, Any], key: bytes
    ) -> None:
        """Whatever the header and claims, an HMAC with another key is refused."""
        self.assertEqual(rejected(signed(header, claims, key)), reasons.INVALID)

    @PROFILE
    @given(header=HEADERS, claims=PLAUSIBLE)
    def test_only_hs256_accepted(
        self, header: dict[str, Any], claims: dict[str, Any]
    ) -> None:
        """With the right key, a header naming anything but HS256 is refused."""
        reason = rejected(signed(header, claims))
        if header["alg"] == "HS256":
            self.assertIsNone(reason)
        else:
            self.assertEqual(reason, reasons.INVALID)

    @PROFILE
    @given(claims=PLAUSIBLE, signature=st.binary(max_size=64))
    def test_forged_signature_never_accepted(
        self, claims: dict[str, Any], signature: bytes
    ) -> None:
        """Any signature but the true HMAC is refused."""
        good = signed({"alg": "HS256"}, claims)
        head, true_signature = good.rsplit(".", 1)
        assume(b64(signature) != true_signature)
        self.assertEqual(rejected(f"{head}.{b64(signature)}"), reasons.INVALID)

    @PROFILE
    @given(
        claims=PLAUSIBLE,
        position=st.integers(min_value=0),
        replacement=st.sampled_from(BASE64URL + ".=!~ %"),
    )
    def test_one_changed_character(
        self, claims: dict[str, Any], position: int, replacement: str
    ) -> None:
        """A valid token with one character changed is refused or the same token."""
        good = signed({"alg": "HS256"}, claims)
        position %= len(good)
        changed = good[:position] + replacement + good[position + 1 :]
        assume(changed != good)
        verifier = TokenVerifier(SECRET)
        try:
            accepted = verifier.verify(changed, NOW)
        except TokenRejected as e:
            event("refused")
            self.assertEqual(e.reason, reasons.INVALID)
            return
        # Base64 decoding ignores a final character's spare bits.
        event("accepted as the same token")
        self.assertEqual(accepted.token_id, verifier.verify(good, NOW).token_id)

    @PROFILE
    @given(
        text=st.text(alphabet=BASE64URL + ".=", max_size=200)
        | st.text(max_size=200)
        | st.binary(max_size=200).map(lambda data: data.decode("latin-1"))
    )
    def test_any_text_is_refused_cleanly(self, text: str) -> None:
        """Any string is refused with a reason phrase; nothing else escapes."""
        reason = rejected(text)
        self.assertIn(reason, reasons.REASONS)

    @PROFILE
    @given(
        claims=PLAUSIBLE,
        spellings=st.lists(
            st.sampled_from(["plain", "padded"]), min_size=1, max_size=4
        ),
        waits=st.lists(st.floats(min_value=0, max_value=0.999), min_size=4, max_size=4),
    )
    def test_valid_token_accepted_exactly_once(
        self, claims: dict[str, Any], spellings: list[str], waits: list[float]
    ) -> None:
        """Through Admission and a MemoryLedger a valid token opens exactly once."""
        clock = Clock()
        clock.advance(NOW)
        gate = Admission(
            clock, TokenVerifier(SECRET), MemoryLedger(clock), OriginPolicy()
        )
        token = signed({"alg": "HS256", "typ": "JWT"}, claims)
        padding = "=" * (-len(token.rsplit(".", 1)[1]) % 4)
        forms = {"plain": token, "padded": token + padding}
        accepted = gate.decide(PEER, None, [forms[spellings[0]]])
        assert isinstance(accepted, AcceptedToken)
        self.assertEqual(accepted.claims, claims)
        for spelling, wait in zip(spellings, waits, strict=False):
            # Never up to exp: the token would then be expired, not used.  Near
            # 1.7e9 s a float step is 2.4e-7 s, so a tiny step can round onto exp.
            step = wait * max(0.0, claims["exp"] - clock.seconds())
            if clock.seconds() + step < claims["exp"]:
                clock.advance(step)
            with self.assertRaises(Refused) as refused:
                gate.decide(PEER, None, [forms[spelling]])
            self.assertEqual(refused.exception.reason, reasons.ALREADY_USED)


# -- the ledger -----------------------------------------------------------------

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("consume"),
            st.sampled_from([b"a", b"b", b"c", b"d"]),
            st.integers(min_value=-5, max_value=30),
        ),
        st.tuples(st.just("advance"), st.integers(min_value=0, max_value=12)),
    ),
    max_size=40,
)


class LedgerProperties(SynchronousTestCase):
    """The ledger remembers exactly the used tokens that have not expired."""

    @PROFILE
    @given(operations=OPERATIONS)
    def test_remembers_exactly_the_unexpired(self, operations: list[tuple]) -> None:
        """Never forgets an unexpired token; always forgets an expired one."""
        clock = Clock()
        clock.advance(1000)
        ledger = MemoryLedger(clock)
        model: dict[bytes, float] = {}
        for operation in operations:
            now = clock.seconds()
            if operation[0] == "advance":
                clock.advance(operation[1])
                continue
            _, token_id, lifetime = operation
            remembered = token_id in model and model[token_id] > now
            first = self.successResultOf(ledger.consume(token_id, now + lifetime))
            self.assertEqual(first, not remembered, (operation, now, model))
            if first:
                model[token_id] = now + lifetime
            ledger.prune()
            unexpired = {t for t, expires in model.items() if expires > now}
            self.assertEqual(ledger.size, len(unexpired))
