"""``nanostream token`` and ``nanostream check``: tokens as the server sees them.

The secret is read exactly as the service reads it
(:mod:`nanostream.auth.secret`), and no output, error included, ever shows it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from twisted.python import usage

from nanostream.auth.mint import RESERVED, mint
from nanostream.auth.secret import ENV_VAR, SecretError, load_secret
from nanostream.auth.tokens import TokenRejected, TokenVerifier
from nanostream.cli.options import EXIT_OK, EXIT_REFUSED, Subcommand
from nanostream.numbers import number_option

DEFAULT_TTL = 60
#: A token is a ticket for one connection, minted just before it is used:
#: no sane flow needs one that lives longer than a day.
MAX_TTL = 24 * 60 * 60

_SECRET_OPTIONS = [
    [
        "secret-file",
        None,
        None,
        "File holding the HS256 key; a trailing newline is ignored.",
    ],
    ["secret", None, None, "The key itself (visible in ps)."],
]

_SECRET_HELP = (
    f"The secret is given by exactly one of --secret-file, --secret and the "
    f"environment variable {ENV_VAR}."
)


def parse_claim(text: str) -> tuple[str, Any]:
    """``NAME=VALUE``; the value as JSON when it parses, else as a string."""
    name, equals, raw = text.partition("=")
    if not equals or not name:
        raise usage.UsageError(f"--claim takes NAME=VALUE, not {text!r}")
    if name in RESERVED:
        raise usage.UsageError(f"--claim {name}: {name} is set with --ttl")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


class _WithSecret(Subcommand):
    def key(self, environ: Mapping[str, str]) -> bytes:
        given = (self["secret"], self["secret-file"], environ.get(ENV_VAR))
        if all(value is None for value in given):
            raise usage.UsageError(
                f"a secret is required: give --secret-file, --secret or {ENV_VAR}"
            )
        try:
            return load_secret(self["secret"], self["secret-file"], environ)
        except SecretError as e:
            raise usage.UsageError(str(e)) from None


class TokenOptions(_WithSecret):
    """``nanostream token``: print a fresh single-use token."""

    synopsis = "Usage: nanostream token [--secret-file PATH] [--ttl S] [--claim N=V]"
    longdesc = (
        "Print a fresh single-use token signed with the secret, the way an "
        "application server should mint one. " + _SECRET_HELP
    )
    optParameters = [
        *_SECRET_OPTIONS,
        [
            "ttl",
            None,
            DEFAULT_TTL,
            f"Lifetime in seconds, at most {MAX_TTL}; the server refuses tokens "
            "longer than its --max-token-ttl.",
            number_option(int, "--ttl", 0, above=True, maximum=MAX_TTL),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["claims"] = []

    def opt_claim(self, text: str) -> None:
        """An extra claim NAME=VALUE, repeatable; VALUE is JSON if it parses."""
        self["claims"].append(parse_claim(text))

    def run(self, environ: Mapping[str, str]) -> int:
        key = self.key(environ)
        token = mint(key, self["ttl"], int(time.time()), self["claims"])
        sys.stdout.write(token + "\n")
        return EXIT_OK


class CheckOptions(_WithSecret):
    """``nanostream check TOKEN``: would the server accept it?"""

    synopsis = "Usage: nanostream check TOKEN [--secret-file PATH] [options]"
    longdesc = (
        "Check a token against the server's rules: signature, exp, nbf and "
        "lifetime. Prints 'ok' (exit 0) or the reason phrase the server would "
        "log (exit 1). Whether the token was already used is known only to "
        "the server, so a used token still checks ok here. TOKEN - reads the "
        "token from stdin, keeping it out of ps. " + _SECRET_HELP
    )
    optParameters = [
        *_SECRET_OPTIONS,
        [
            "leeway",
            None,
            0.0,
            "Clock skew allowed on exp and nbf, as the server's.",
            number_option(float, "--leeway", 0),
        ],
        [
            "max-token-ttl",
            None,
            3600.0,
            "Longest lifetime accepted, as the server's.",
            number_option(float, "--max-token-ttl", 0, above=True),
        ],
    ]

    def parseArgs(self, *tokens: str) -> None:
        if len(tokens) != 1:
            raise usage.UsageError("check takes one TOKEN, or - to read it from stdin")
        self["token"] = tokens[0]

    def run(self, environ: Mapping[str, str]) -> int:
        key = self.key(environ)
        token = self["token"]
        if token == "-":
            token = sys.stdin.readline().strip()
        verifier = TokenVerifier(
            key, leeway=self["leeway"], max_ttl=self["max-token-ttl"]
        )
        try:
            verifier.verify(token, time.time())
        except TokenRejected as e:
            sys.stdout.write(e.reason + "\n")
            return EXIT_REFUSED
        sys.stdout.write("ok\n")
        return EXIT_OK
