"""The attack corpus: every hostile handshake we know of and how it is answered.

Each case is one handshake over ``iosim`` against the server assembled as
``makeService`` assembles it (TokenVerifier, MemoryLedger and Admission on
a Clock, the real Autobahn protocol): the HTTP status line the client gets,
exactly one nanostream log event with the reason phrase, the peer and no
token in it, and afterwards a fresh valid client that still connects and
receives a line.

Decisions the corpus pins down:

* Only HS256 with the server's secret is ever accepted.  ``kid``, ``jku``,
  ``jwk``, ``x5u`` and ``x5c`` are ignored: never fetched, never opened,
  never used as a key (a tripwire on Python's audit events proves that no
  file, socket, URL or process is touched during those handshakes).
* ``crit`` is refused whatever it names: no extension is understood.
* A key given twice is refused in the header as in the payload: PyJWT
  would keep the last, another parser the first.
* Every spelling of a used token that still verifies (percent-escapes,
  padding, skipped characters, the standard base64 alphabet, extra query
  parameters) is the same token: "token already used".
* A request line or headers over ``--max-handshake-bytes`` (16 KiB) are
  refused with 414 or 431 before the rest is read.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from test_limits import REQUEST_HEADERS, LimitsTestCase, request
from test_websocket import NOW, SECRET, rendered

from nanostream.auth import reasons
from nanostream.auth.query import query_values
from nanostream.auth.tokens import TokenRejected, TokenVerifier

ATTACKER_KEY = b"an attacker's own HMAC key, as long as a good one: 0123456789abcdef"
ALLOWED = ("https://app.example.com", "https://*.example.org")
GOOD_ORIGIN = "https://app.example.com"


def b64(data: bytes) -> str:
    """Unpadded base64url, as JWS segments are spelled."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def as_json(value: dict[str, Any] | bytes) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def signed(
    header: dict[str, Any] | bytes,
    payload: dict[str, Any] | bytes,
    key: bytes = SECRET,
) -> str:
    """A token built segment by segment and signed with HMAC-SHA256."""
    signing_input = f"{b64(as_json(header))}.{b64(as_json(payload))}"
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256)
    return f"{signing_input}.{b64(signature.digest())}"


def unsigned(alg: str) -> str:
    """A token whose header names ``alg`` and whose signature is empty."""
    return f"{b64(as_json({'alg': alg, 'typ': 'JWT'}))}.{b64(as_json(claims()))}."


def claims(**overrides: Any) -> dict[str, Any]:
    """Claims valid for a minute at NOW; an override of None leaves one out."""
    values: dict[str, Any] = {"exp": NOW + 60, "jti": "corpus"}
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


def hs256(header: dict[str, Any] | None = None, **overrides: Any) -> str:
    """A token signed correctly with the server's secret."""
    return signed({"alg": "HS256", "typ": "JWT", **(header or {})}, claims(**overrides))


@functools.cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def without_segment(token: str, index: int) -> str:
    """``token`` with one of its three segments emptied."""
    segments = token.split(".")
    segments[index] = ""
    return ".".join(segments)


def with_url_safe_signature(name: str) -> str:
    """A valid token whose signature has a ``-`` or ``_`` to spell otherwise."""
    for attempt in range(1000):
        token = hs256(jti=f"{name}-{attempt}")
        if set(token.rsplit(".", 1)[1]) & {"-", "_"}:
            return token
    raise AssertionError("no signature with - or _ in 1000 tries")


def rsa_public_pem() -> bytes:
    return (
        rsa_key()
        .public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )


def rsa_public_jwk() -> dict[str, Any]:
    return json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key().public_key()))


def rs256(header: dict[str, Any] | None = None) -> str:
    """A token signed by the attacker's own RSA key."""
    return jwt.encode(claims(), rsa_key(), algorithm="RS256", headers=header)


def percent_encoded(text: str, form: str = "%{:02X}") -> str:
    """Every byte of ``text`` as a percent-escape."""
    return "".join(form.format(byte) for byte in text.encode("utf-8"))


@dataclass(frozen=True)
class Attack:
    """One hostile handshake and the answer it must get."""

    name: str
    query: Callable[[], str]
    """The query string after ``?``, built when the case runs."""

    status: int
    reason: str | None = None
    """The logged reason phrase; None for a handshake that must succeed."""


def token(name: str, make: Callable[[], str], reason: str | None) -> Attack:
    """A case that sends one token as ``?t=``."""
    status = 101 if reason is None else reasons.STATUS[reason]
    return Attack(name, lambda: "t=" + make(), status, reason)


INVALID = reasons.INVALID

#: Tokens that must be refused (or, with reason None, accepted) on first use.
TOKEN_ATTACKS = [
    # alg confusion
    token("alg none", lambda: unsigned("none"), INVALID),
    token("alg None", lambda: unsigned("None"), INVALID),
    token("alg NONE", lambda: unsigned("NONE"), INVALID),
    token(
        "alg none with a correct HMAC",
        lambda: signed({"alg": "none"}, claims()),
        INVALID,
    ),
    token(
        "HS384 with the secret",
        lambda: jwt.encode(claims(), SECRET, algorithm="HS384"),
        INVALID,
    ),
    token(
        "HS512 with the secret",
        lambda: jwt.encode(claims(), SECRET, algorithm="HS512"),
        INVALID,
    ),
    token("RS256 by another key", rs256, INVALID),
    token(
        "ES256 by another key",
        lambda: jwt.encode(claims(), ec_key(), algorithm="ES256"),
        INVALID,
    ),
    token(
        "RS256 header over an HMAC made with the secret",
        lambda: signed({"alg": "RS256", "typ": "JWT"}, claims()),
        INVALID,
    ),
    token(
        "HS256 keyed with an RSA public key",
        lambda: signed({"alg": "HS256"}, claims(), key=rsa_public_pem()),
        INVALID,
    ),
    token(
        "alg hs256 in lower case", lambda: signed({"alg": "hs256"}, claims()), INVALID
    ),
    token("no alg", lambda: signed({"typ": "JWT"}, claims()), INVALID),
    # key-finding headers: ignored, never a key
    token(
        "jwk header with the attacker's RSA key",
        lambda: rs256({"jwk": rsa_public_jwk()}),
        INVALID,
    ),
    token(
        "jwk header with the attacker's HMAC key",
        lambda: signed(
            {"alg": "HS256", "jwk": {"kty": "oct", "k": b64(ATTACKER_KEY)}},
            claims(),
            key=ATTACKER_KEY,
        ),
        INVALID,
    ),
    token(
        "jku header naming the attacker's key set",
        lambda: rs256({"jku": "http://127.0.0.1:9/jwks.json"}),
        INVALID,
    ),
    token(
        "x5u header naming the attacker's certificate",
        lambda: rs256({"x5u": "http://127.0.0.1:9/cert.pem"}),
        INVALID,
    ),
    token(
        "kid pointing at /dev/null, signed with an empty key",
        lambda: signed(
            {"alg": "HS256", "kid": "../../../../../../dev/null"}, claims(), key=b""
        ),
        INVALID,
    ),
    token(
        "kid with an injected key",
        lambda: signed(
            {"alg": "HS256", "kid": "x' UNION SELECT 'k"}, claims(), key=b"k"
        ),
        INVALID,
    ),
    token(
        "kid, jku, jwk, x5u and x5c beside a good HS256 signature",
        lambda: hs256(
            {
                "kid": "../../../../etc/passwd",
                "jku": "http://127.0.0.1:9/jwks.json",
                "jwk": {"kty": "oct", "k": b64(ATTACKER_KEY)},
                "x5u": "http://127.0.0.1:9/cert.pem",
                "x5c": [b64(b"not a certificate")],
            },
            jti="key-headers",
        ),
        None,
    ),
    # crit
    token("crit naming exp", lambda: hs256({"crit": ["exp"]}), INVALID),
    token(
        "crit naming an unknown extension",
        lambda: hs256({"crit": ["x-unknown"], "x-unknown": True}),
        INVALID,
    ),
    token("crit empty", lambda: hs256({"crit": []}), INVALID),
    # duplicate keys
    token(
        "exp twice in the payload",
        lambda: signed(
            {"alg": "HS256"}, b'{"exp": %d, "exp": %d}' % (NOW + 60, NOW + 99999)
        ),
        INVALID,
    ),
    token(
        "alg twice in the header",
        lambda: signed(b'{"alg": "none", "alg": "HS256"}', claims()),
        INVALID,
    ),
    # claims
    token("exp as a string", lambda: hs256(exp=str(NOW + 60)), INVALID),
    token("exp as a float", lambda: hs256(exp=NOW + 60.5, jti="float"), None),
    token("exp as a bool", lambda: hs256(exp=True), INVALID),
    token("exp null", lambda: signed({"alg": "HS256"}, b'{"exp": null}'), INVALID),
    token("exp a huge integer", lambda: hs256(exp=10**400), reasons.TOO_LONG),
    token(
        "exp beyond a float",
        lambda: signed({"alg": "HS256"}, b'{"exp": 1e400}'),
        reasons.TOO_LONG,
    ),
    token("exp negative", lambda: hs256(exp=-1), reasons.EXPIRED),
    token("exp NaN", lambda: signed({"alg": "HS256"}, b'{"exp": NaN}'), INVALID),
    token("no exp", lambda: hs256(exp=None), reasons.NO_EXPIRATION),
    token("nbf in the future", lambda: hs256(nbf=NOW + 30), reasons.NOT_YET_VALID),
    token("iat in the future", lambda: hs256(iat=NOW + 30), reasons.NOT_YET_VALID),
    token("nbf as a string", lambda: hs256(nbf="0"), INVALID),
    # payload shape
    token("payload not JSON", lambda: signed({"alg": "HS256"}, b"exp=1"), INVALID),
    token(
        "payload a JSON array",
        lambda: signed({"alg": "HS256"}, b"[%d]" % (NOW + 60)),
        INVALID,
    ),
    token("payload a JSON string", lambda: signed({"alg": "HS256"}, b'"x"'), INVALID),
    token(
        "payload not UTF-8",
        lambda: signed({"alg": "HS256"}, b'{"exp": 1\xff}'),
        INVALID,
    ),
    # segments and characters
    token("one segment", lambda: hs256().split(".")[0], INVALID),
    token("two segments", lambda: hs256().rsplit(".", 1)[0], INVALID),
    token("four segments", lambda: hs256() + "." + b64(b"more"), INVALID),
    token("five segments (JWE shape)", lambda: "a.b.c.d.e", INVALID),
    token("all segments empty", lambda: "..", INVALID),
    token("empty header", lambda: without_segment(hs256(), 0), INVALID),
    token("empty payload", lambda: without_segment(hs256(), 1), INVALID),
    token("empty signature", lambda: without_segment(hs256(), 2), INVALID),
    token(
        "non-base64url characters", lambda: "!!!." + hs256().split(".", 1)[1], INVALID
    ),
    token(
        "padded header segment",
        lambda: hs256().replace(".", "%3D.", 1),
        INVALID,
    ),
    token("leading space", lambda: "%20" + hs256(), INVALID),
    # sizes
    token("8 KiB token, valid", lambda: hs256(pad="x" * 6000, jti="8k"), None),
    token("8 KiB of garbage", lambda: "a" * 8192, INVALID),
    token(
        "64 KiB token",
        lambda: hs256(pad="x" * 48 * 1024),
        reasons.REQUEST_LINE_TOO_LONG,
    ),
    token("1 MiB token", lambda: "a" * 1024 * 1024, reasons.REQUEST_LINE_TOO_LONG),
]

#: Attacks on the ``t`` parameter itself rather than the token in it.
PARAMETER_ATTACKS = [
    Attack("no t", lambda: "", 401, reasons.NO_TOKEN),
    Attack("t empty", lambda: "t=", 401, reasons.NO_TOKEN),
    Attack("t without =", lambda: "t", 401, reasons.NO_TOKEN),
    Attack("T in upper case", lambda: "T=" + hs256(), 401, reasons.NO_TOKEN),
    Attack("t[] as a name", lambda: "t[]=" + hs256(), 401, reasons.NO_TOKEN),
    Attack("t repeated, same value", lambda: f"t={hs256()}&t={hs256()}", 401, INVALID),
    Attack(
        "t repeated, two valid tokens",
        lambda: f"t={hs256(jti='a')}&t={hs256(jti='b')}",
        401,
        INVALID,
    ),
    Attack("t empty, then a valid t", lambda: "t=&t=" + hs256(), 401, INVALID),
    Attack("a valid t, then t bare", lambda: f"t={hs256()}&t", 401, INVALID),
    Attack(
        "t with a percent-encoded name",
        lambda: "%74=" + hs256(jti="name-escaped"),
        101,
    ),
    Attack(
        "t fully percent-encoded",
        lambda: "t=" + percent_encoded(hs256(jti="escaped")),
        101,
    ),
    Attack(
        "t double-percent-encoded",
        lambda: "t=" + percent_encoded(percent_encoded(hs256())),
        401,
        INVALID,
    ),
    Attack("t with an invalid escape", lambda: "t=%ZZ" + hs256(), 401, INVALID),
    Attack("t with an escaped NUL", lambda: "t=%00" + hs256(), 401, INVALID),
]

#: Origin values refused by ``--origin`` ALLOWED: prefixes, suffixes and
#: look-alikes of the allowed patterns, and ways out of the wildcard.
REFUSED_ORIGINS = [
    "null",
    "https://app.example.co",
    "https://app.example",
    "https://app.example.com.evil.net",
    "https://app.example.comx",
    "https://app.example.com.",
    "https://app.example.com:443",
    "https://app.example.com/",
    "https://app.example.com/x",
    "http://app.example.com",
    "wss://app.example.com",
    "xhttps://app.example.com",
    "https://appXexample.com",
    "https://app-example.com",
    "https://app.example.com@evil.net",
    "https://evil.net#app.example.com",
    "https://evil.net?app.example.com",
    "https://app.example.com, https://evil.net",
    "https://\u0430pp.example.com",
    "https://example.org",
    "https://xexample.org",
    "https://evil.net/.example.org",
    "https://evil.net?.example.org",
    "https://evil.net#.example.org",
    "https://evil.net@x.example.org",
    "https://evil.net\\.example.org",
    "https://evil.net%2F.example.org",
    "https://x_y.example.org",
    "https://x.example.org.evil.net",
    "https://x.example.org:8443",
    "https://x.example.org/path",
    "http://x.example.org",
]

#: Origin values Autobahn cannot parse: refused before --origin is asked.
MALFORMED_ORIGINS = [
    "https://evil.net:.example.org",
    "https://x.example.org:port",
]

ADMITTED_ORIGINS = [
    "https://app.example.com",
    "HTTPS://APP.EXAMPLE.COM",
    "https://x.example.org",
    "https://a.b-c.example.org",
]


def reencodings(token: str) -> dict[str, str]:
    """Query strings that carry ``token`` spelled otherwise.

    Some do not verify (they are then invalid); every one that does must be
    recognised as the same token.
    """
    head, signature = token.rsplit(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    non_canonical = signature[:-1] + alphabet[last | 0b01]
    standard = signature.replace("-", "%2B").replace("_", "%2F")
    middle = len(signature) // 2

    def with_signature(text: str) -> str:
        return "t=" + head + "." + text

    return {
        "plain": "t=" + token,
        "every byte percent-encoded": "t=" + percent_encoded(token),
        "lower-case escapes": "t=" + percent_encoded(token, "%{:02x}"),
        "dots escaped": "t=" + token.replace(".", "%2E"),
        "name escaped": "%74=" + token,
        "another parameter after": f"t={token}&x=1",
        "another parameter before": f"x=1&t={token}",
        "signature padded": with_signature(signature + "="),
        "signature padded, escaped": with_signature(signature + "%3D"),
        "signature over-padded": with_signature(signature + "%3D%3D%3D"),
        "non-canonical last character": with_signature(non_canonical),
        "standard base64 alphabet": with_signature(standard),
        "skipped characters": with_signature(
            signature[:middle] + "!*~" + signature[middle:]
        ),
        "embedded space": with_signature(
            signature[:middle] + "%20" + signature[middle:]
        ),
        "embedded plus": with_signature(signature[:middle] + "+" + signature[middle:]),
        "embedded newline": with_signature(
            signature[:middle] + "%0A" + signature[middle:]
        ),
        "embedded tab": with_signature(signature[:middle] + "%09" + signature[middle:]),
        "embedded NUL": with_signature(signature[:middle] + "%00" + signature[middle:]),
        "embedded non-ASCII": with_signature(
            signature[:middle] + "%C3%A9" + signature[middle:]
        ),
        "trailing semicolon": with_signature(signature + ";x=1"),
        "junk after padding": with_signature(signature + "%3Djunk"),
        "one character dropped": with_signature(signature[:-1]),
        "one character added": with_signature(signature + "A"),
    }


#: Spellings every PyJWT accepts, so the server must know them for the same.
ALWAYS_VERIFY = {
    "plain",
    "every byte percent-encoded",
    "lower-case escapes",
    "dots escaped",
    "name escaped",
    "another parameter after",
    "another parameter before",
    "signature padded",
    "signature padded, escaped",
}


def verifies(query: str) -> bool:
    """Whether the server's verifier would accept the one ``t`` in ``query``."""
    values = query_values("/?" + query).get("t", [])
    if len(values) != 1:
        return False
    try:
        TokenVerifier(SECRET).verify(values[0], NOW)
    except TokenRejected:
        return False
    return True


class Tripwire:
    """Records every file, socket, URL and process access (PEP 578 audit events).

    The hook, once added, stays for the life of the process; it records
    only while a Tripwire is entered.
    """

    WATCHED = ("open", "os.", "socket.", "urllib.", "http.", "subprocess.", "ctypes.")
    _recording: ClassVar[list[str] | None] = None
    _installed: ClassVar[bool] = False

    def __enter__(self) -> list[str]:
        if not Tripwire._installed:
            sys.addaudithook(_audit)
            Tripwire._installed = True
        events: list[str] = []
        Tripwire._recording = events
        return events

    def __exit__(self, *exc_info: object) -> None:
        Tripwire._recording = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    recording = Tripwire._recording
    if recording is not None and event.startswith(Tripwire.WATCHED):
        recording.append(f"{event} {args!r:.200}")


class AttackCorpusTestCase(LimitsTestCase):
    """Runs attacks and checks that the server keeps serving after each."""

    def setUp(self) -> None:
        super().setUp()
        self.fresh = iter(range(1_000_000))

    def good_token(self) -> str:
        return hs256(jti=f"good-{next(self.fresh)}")

    def assertAnswered(
        self, attack: Attack, *, origin: str | None = GOOD_ORIGIN
    ) -> None:
        """The attack gets its status and reason; a valid client then still hears."""
        before = len(self.events)
        query = attack.query()
        connection = self.connect(query, origin=origin)
        client = connection.client
        events = self.events[before:]
        if attack.reason is None:
            self.assertTrue(client.opened, client.status_line)
            self.assertEqual(client.status_line, "HTTP/1.1 101 Switching Protocols")
        else:
            self.assertEqual(
                client.status_line, f"HTTP/1.1 {attack.status} {attack.reason}"
            )
            self.assertFalse(client.opened)
            self.assertTrue(client.closed)
            self.assertEqual(connection.server.data, b"")
            refusals = [e for e in events if e.get("reason") == attack.reason]
            self.assertEqual(len(refusals), 1, [rendered(e) for e in events])
            [event] = refusals
            self.assertTrue(event["log_namespace"].startswith("nanostream."))
            self.assertEqual(event["peer"], connection.peer)
            self.assertEqual(event["status"], attack.status)
        self.assertEqual([e for e in events if "log_failure" in e], [])
        secret_parts = [part for part in query.split(".") if len(part) >= 16]
        for event in events:
            text = rendered(event)
            for part in secret_parts:
                self.assertNotIn(part, text)
        self.assertStillServing(attack.name)

    def assertStillServing(self, after: str) -> None:
        """A new client with a fresh token connects and receives the next line."""
        listener = self.connect("t=" + self.good_token(), origin=GOOD_ORIGIN)
        self.assertTrue(listener.client.opened, f"refused after {after!r}")
        line = f"after {after}".encode()
        self.factory.broadcaster.broadcast([line])
        listener.flush()
        self.assertEqual(listener.client.messages[-1:], [(line, False)])


class TokenAttackTests(AttackCorpusTestCase):
    """Hostile tokens: alg confusion, key headers, claims, shapes and sizes."""

    def test_token_attacks(self) -> None:
        """Each hostile token gets its status and reason; others still connect."""
        self.limited()
        for attack in TOKEN_ATTACKS:
            with self.subTest(attack.name):
                self.assertAnswered(attack)

    def test_parameter_attacks(self) -> None:
        """Missing, repeated and oddly encoded ``t`` parameters are answered right."""
        self.limited()
        for attack in PARAMETER_ATTACKS:
            with self.subTest(attack.name):
                self.assertAnswered(attack)

    def test_key_headers_touch_nothing(self) -> None:
        """Handshakes with kid, jku, jwk, x5u and x5c open no file, socket or URL."""
        self.limited()
        # A first handshake imports whatever the path imports lazily.
        self.assertStillServing("warm-up")
        cases = [
            a
            for a in TOKEN_ATTACKS
            if any(h in a.name for h in ("kid", "jku", "jwk", "x5u"))
        ]
        self.assertEqual(len(cases), 7)
        for attack in cases:
            query = attack.query()
            with Tripwire() as touched:
                self.connect(query, origin=GOOD_ORIGIN)
            with self.subTest(attack.name):
                self.assertEqual(touched, [])

    def test_tripwire_trips(self) -> None:
        """The tripwire does record a file being opened, so silence means something."""
        with Tripwire() as touched, open(__file__, "rb"):
            pass
        self.assertTrue(any(event.startswith("open ") for event in touched))


class ReusedTokenTests(AttackCorpusTestCase):
    """A used token stays used however it is spelled on the wire."""

    def test_every_spelling_of_a_used_token(self) -> None:
        """Each re-spelling that verifies is 'already used'; the rest are invalid."""
        self.limited()
        token = with_url_safe_signature("reused")
        self.assertTrue(self.connect("t=" + token, origin=GOOD_ORIGIN).client.opened)
        spellings = reencodings(token)
        verifying = [name for name, query in spellings.items() if verifies(query)]
        # These verify with any PyJWT; older ones also decode the signature
        # leniently (skipped characters, the standard alphabet, spare bits).
        self.assertLessEqual(ALWAYS_VERIFY, set(verifying))
        for name, query in spellings.items():
            reason = reasons.ALREADY_USED if name in verifying else INVALID
            with self.subTest(name):
                self.assertAnswered(Attack(name, lambda q=query: q, 401, reason))

    def test_first_use_respelled_consumes_the_token(self) -> None:
        """A token first used in another spelling cannot then be used plainly."""
        self.limited()
        token = hs256(jti="respelled-first")
        spellings = reencodings(token)
        first = self.connect(spellings["signature padded, escaped"], origin=GOOD_ORIGIN)
        self.assertTrue(first.client.opened)
        self.assertAnswered(
            Attack(
                "plain after respelled", lambda: "t=" + token, 401, reasons.ALREADY_USED
            )
        )


class OriginAttackTests(AttackCorpusTestCase):
    """--origin admits exactly its patterns, never a look-alike."""

    def test_missing_origin_with_allow_list(self) -> None:
        """A request with no Origin header is refused once --origin is set."""
        self.limited(origins=ALLOWED)
        attack = Attack(
            "no Origin header",
            lambda: "t=" + self.good_token(),
            403,
            reasons.ORIGIN_NOT_ALLOWED,
        )
        self.assertAnswered(attack, origin=None)

    def test_look_alike_origins(self) -> None:
        """Prefixes, suffixes and look-alikes of the patterns are refused with 403."""
        self.limited(origins=ALLOWED)
        for origin in REFUSED_ORIGINS:
            attack = Attack(
                origin,
                lambda: "t=" + self.good_token(),
                403,
                reasons.ORIGIN_NOT_ALLOWED,
            )
            with self.subTest(origin=origin):
                self.assertAnswered(attack, origin=origin)

    def test_malformed_origins(self) -> None:
        """An Origin that is no URL at all is a malformed request (400)."""
        self.limited(origins=ALLOWED)
        for origin in MALFORMED_ORIGINS:
            attack = Attack(
                origin, lambda: "t=" + self.good_token(), 400, reasons.MALFORMED
            )
            with self.subTest(origin=origin):
                self.assertAnswered(attack, origin=origin)

    def test_allowed_origins(self) -> None:
        """The patterns themselves still admit what they name."""
        self.limited(origins=ALLOWED)
        for origin in ADMITTED_ORIGINS:
            attack = Attack(origin, lambda: "t=" + self.good_token(), 101)
            with self.subTest(origin=origin):
                self.assertAnswered(attack, origin=origin)

    def test_two_origin_headers(self) -> None:
        """Two Origin headers, each allowed, are a malformed request (400)."""
        self.limited(origins=ALLOWED)
        server, transport = self.raw()
        origins = (
            b"Origin: https://app.example.com\r\nOrigin: https://x.example.org\r\n"
        )
        server.dataReceived(request("/?t=" + self.good_token(), origins))
        self.assertEqual(
            transport.value().split(b"\r\n", 1)[0],
            b"HTTP/1.1 400 " + reasons.MALFORMED.encode(),
        )
        [event] = self.mentioning(reasons.MALFORMED)
        self.assertEqual(event["peer"], server.peer)
        self.assertStillServing("two Origin headers")


class MalformedRequestTests(AttackCorpusTestCase):
    """Requests Autobahn itself refuses get a fixed phrase, never their own text."""

    def test_malformed_requests(self) -> None:
        """Each is refused with Autobahn's status, the fixed phrase and one event."""
        self.limited()
        token = self.good_token()
        headers = REQUEST_HEADERS
        cases = {
            "a fourth word in the request line": (
                b"GET /?t=%s HTTP/1.1 x\r\n%s\r\n" % (token.encode(), headers),
                400,
            ),
            "a fragment": (
                b"GET /?t=%s#%s HTTP/1.1\r\n%s\r\n"
                % (token.encode(), token.encode(), headers),
                400,
            ),
            "POST": (
                b"POST /?t=%s HTTP/1.1\r\n%s\r\n" % (token.encode(), headers),
                405,
            ),
            "HTTP/1.0": (
                b"GET /?t=%s HTTP/1.0\r\n%s\r\n" % (token.encode(), headers),
                505,
            ),
            "no Upgrade header": (
                b"GET /?t=%s HTTP/1.1\r\n%s\r\n"
                % (token.encode(), headers.replace(b"Upgrade: websocket\r\n", b"")),
                426,
            ),
            "unknown WebSocket version": (
                b"GET /?t=%s HTTP/1.1\r\n%s\r\n"
                % (token.encode(), headers.replace(b"Version: 13", b"Version: 99")),
                400,
            ),
            "no request line": (b"\r\n\r\n", 400),
        }
        for name, (data, status) in cases.items():
            with self.subTest(name):
                before = len(self.events)
                server, transport = self.raw()
                server.dataReceived(data)
                answer = transport.value()
                self.assertEqual(
                    answer.split(b"\r\n", 1)[0],
                    b"HTTP/1.1 %d %s" % (status, reasons.MALFORMED.encode()),
                )
                self.assertNotIn(token.rsplit(".", 1)[1].encode(), answer)
                self.assertFalse(transport.connected)
                [event] = [
                    e
                    for e in self.events[before:]
                    if e.get("reason") == reasons.MALFORMED
                ]
                self.assertEqual(event["status"], status)
                self.assertEqual(event["peer"], server.peer)
                self.assertStillServing(name)
        # The token was never consumed by any of them.
        self.assertTrue(self.connect("t=" + token, origin=GOOD_ORIGIN).client.opened)
