"""The ``nanostream`` command: token tools for operators and app developers.

``nanostream token`` mints a token the way an application server should;
``nanostream check TOKEN`` says whether this server's rules accept one;
``nanostream publish`` writes lines to a Redis channel (:mod:`nanostream.cli.publish`).
The secret is read exactly as the service reads it (:mod:`nanostream.auth.secret`),
and no output, error included, ever shows it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import jwt

from nanostream.auth.secret import ENV_VAR, SecretError, load_secret
from nanostream.auth.tokens import TokenRejected, TokenVerifier

#: Exit statuses: 1 is "check says no", 2 any usage or setup error.
REFUSED = 1
USAGE = os.EX_USAGE  # 64, as the service and `nanostream publish` use

DEFAULT_TTL = 60
#: A token is a ticket for one connection, minted just before it is used:
#: no sane flow needs one that lives longer than a day.
MAX_TTL = 24 * 60 * 60

#: Claims the tool sets itself; ``exp`` only through ``--ttl``.
_RESERVED = frozenset({"exp"})


class UsageError(Exception):
    """A mistake on the command line; the message is the whole report."""


class _Parser(argparse.ArgumentParser):
    """Errors are one line on stderr and exit 64, not the usage text."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _seconds(*, positive: bool) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            relation = "above 0" if positive else "at least 0"
            raise argparse.ArgumentTypeError(f"must be {relation}")
        return value

    return convert


def _ttl(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not whole seconds: {text!r}") from None
    if not 0 < value <= MAX_TTL:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_TTL}")
    return value


def _claim(text: str) -> tuple[str, Any]:
    """``NAME=VALUE``; the value as JSON when it parses, else as a string."""
    name, equals, raw = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"not NAME=VALUE: {text!r}")
    if name in _RESERVED:
        raise argparse.ArgumentTypeError(f"{name} is set with --ttl")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


def _add_secret_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "secret", f"exactly one of these or the environment variable {ENV_VAR}"
    )
    group.add_argument(
        "--secret-file",
        metavar="PATH",
        help="file holding the HS256 key; a trailing newline is ignored",
    )
    group.add_argument("--secret", metavar="KEY", help="the key itself (visible in ps)")


def _parser() -> _Parser:
    parser = _Parser(
        prog="nanostream",
        description="Token tools for a nanostream server.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    token = commands.add_parser(
        "token",
        help="mint a token and print it",
        description="Print a fresh single-use token signed with the secret.",
    )
    _add_secret_options(token)
    token.add_argument(
        "--ttl",
        type=_ttl,
        default=DEFAULT_TTL,
        metavar="SECONDS",
        help=f"lifetime in seconds, at most {MAX_TTL}; the server refuses "
        f"tokens longer than its --max-token-ttl (default %(default)s)",
    )
    token.add_argument(
        "--claim",
        type=_claim,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra claim (repeatable); VALUE is JSON when it parses "
        "(42, true, [1,2]), else a string",
    )

    check = commands.add_parser(
        "check",
        help="say whether the server would accept a token",
        description="Check a token against the server's rules: signature, "
        "exp, nbf and lifetime. Prints 'ok' (exit 0) or the reason "
        "phrase the server would log (exit 1). Whether the token was "
        "already used is known only to the server, so a used token "
        "still checks ok here.",
    )
    check.add_argument("token", metavar="TOKEN", help="the token, or - for stdin")
    _add_secret_options(check)
    check.add_argument(
        "--leeway",
        type=_seconds(positive=False),
        default=0.0,
        metavar="SECONDS",
        help="clock skew allowed on exp and nbf, as the server's (default 0)",
    )
    check.add_argument(
        "--max-token-ttl",
        type=_seconds(positive=True),
        default=3600.0,
        metavar="SECONDS",
        help="longest lifetime accepted, as the server's (default 3600)",
    )

    commands.add_parser(
        "publish",
        help="write lines to a Redis channel (see nanostream publish --help)",
        add_help=False,
    )
    return parser


def _key(arguments: argparse.Namespace, environ: Mapping[str, str]) -> bytes:
    given = (arguments.secret, arguments.secret_file, environ.get(ENV_VAR))
    if all(value is None for value in given):
        raise UsageError(
            f"a secret is required: give --secret-file, --secret or {ENV_VAR}"
        )
    try:
        return load_secret(arguments.secret, arguments.secret_file, environ)
    except SecretError as e:
        raise UsageError(str(e)) from None


def mint(key: bytes, ttl: int, claims: Sequence[tuple[str, Any]], now: float) -> str:
    """A token valid for ``ttl`` seconds from ``now``, unique by its ``jti``."""
    issued = int(now)
    payload: dict[str, Any] = {"iat": issued, "jti": secrets.token_urlsafe(16)}
    payload.update(claims)
    payload["exp"] = issued + ttl
    return jwt.encode(payload, key, algorithm="HS256")


def _token(arguments: argparse.Namespace, environ: Mapping[str, str]) -> int:
    key = _key(arguments, environ)
    sys.stdout.write(mint(key, arguments.ttl, arguments.claim, time.time()) + "\n")
    return 0


def _check(arguments: argparse.Namespace, environ: Mapping[str, str]) -> int:
    key = _key(arguments, environ)
    token = arguments.token
    if token == "-":
        token = sys.stdin.readline().strip()
    verifier = TokenVerifier(
        key, leeway=arguments.leeway, max_ttl=arguments.max_token_ttl
    )
    try:
        verifier.verify(token, time.time())
    except TokenRejected as e:
        sys.stdout.write(e.reason + "\n")
        return REFUSED
    sys.stdout.write("ok\n")
    return 0


def _publish(argv: list[str]) -> int:
    try:
        publish = importlib.import_module("nanostream.cli.publish")
    except ModuleNotFoundError as e:
        if e.name != "nanostream.cli.publish":
            raise
        raise UsageError("publish is not available in this installation") from None
    return publish.main(argv)


def main(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> int:
    """Run one subcommand; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    try:
        if argv[:1] == ["publish"]:
            return _publish(argv[1:])
        arguments = _parser().parse_args(argv)
        if arguments.command == "token":
            return _token(arguments, environ)
        return _check(arguments, environ)
    except UsageError as e:
        sys.stderr.write(f"nanostream: {e}\n")
        return USAGE
