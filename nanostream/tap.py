"""``twistd nanostream`` / ``twist nanostream``: options and service assembly.

Single-value options are ``optParameters`` rows converted by a ``coerce``;
``opt_*`` methods are left to the repeatable ones.  ``postOptions`` checks
options against each other, each mistake one ``UsageError`` line.
``makeService`` only puts in order what :mod:`nanostream.assembly` builds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from jwt.exceptions import InvalidKeyError
from twisted.application.service import IService, MultiService
from twisted.internet import endpoints
from twisted.python import usage

from nanostream.assembly import (
    STDIO,
    gate,
    line_source,
    listen_services,
    monitor,
    startup_warnings,
    upkeep,
)
from nanostream.auth.secret import ENV_VAR, SecretError, load_secret
from nanostream.auth.tokens import TokenVerifier
from nanostream.broadcast import DEFAULT_MAX_BUFFER_BYTES
from nanostream.clients import BroadcastService
from nanostream.numbers import number_option
from nanostream.ops.levels import CHOICES, DEFAULT, apply_log_level, level_option
from nanostream.ops.memory import StartupFreezer
from nanostream.ops.shutdown import StopOnTerm
from nanostream.redis.url import RedisURLError, resolve
from nanostream.resume.history import DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_LINES
from nanostream.sources import SourceStatus
from nanostream.sources.splitter import DEFAULT_MAX_LINE_BYTES
from nanostream.websocket import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_HANDSHAKE_BYTES

DEFAULT_LISTEN = "tcp:8080"
REDIS_SCHEMES = ("redis://", "rediss://")


def _non_empty(option: str) -> Callable[[str], str]:
    """A converter refusing the empty string, naming the option."""

    def convert(text: str) -> str:
        if not text:
            raise usage.UsageError(f"{option} must not be empty")
        return text

    return convert


def _ledger_prefix(text: str) -> str:
    """Not empty, and without braces: a Cluster key's hash tag is its token's."""
    text = _non_empty("--ledger-prefix")(text)
    if "{" in text or "}" in text:
        raise usage.UsageError(
            "--ledger-prefix must not hold { or }: on a Redis Cluster each "
            "token's key carries a hash tag of its own"
        )
    return text


def _number(
    kind: Callable[[str], Any],
    name: str,
    default: float,
    minimum: float,
    *,
    doc: str,
    above: bool = False,
) -> list[Any]:
    """An ``optParameters`` row for a number of at least (or above) ``minimum``."""
    convert = number_option(kind, f"--{name}", minimum, above=above)
    return [name, None, default, doc, convert]


class ServiceOptions(usage.Options):
    """Options of the nanostream service, raising ``UsageError``."""

    synopsis = "[options]"
    longdesc = (
        "Broadcast every line from a source (stdin by default) as one "
        "WebSocket message to every client holding a valid single-use token."
    )

    # One row per option, as usage.Options reads them: name, short, default, help
    # and the converter.  Defaults are shown by --help.
    # fmt: off
    optFlags = [
        ["no-auth", None, "Run without tokens: anyone who can connect may listen"],
        ["demo", None, "Also serve a live demo page at / that mints its own tokens "
         "(loopback listeners only)"],
        ["demo-anywhere", None, "Allow --demo on listeners other hosts can reach"],
    ]
    optParameters = [
        ["secret", None, None,
         "The HS256 key itself (visible in `ps`: prefer --secret-file)"],
        ["secret-file", None, None,
         "File holding the HS256 key; a trailing newline is ignored"],
        ["source", None, STDIO, "stdio, a server endpoint producers write lines to, "
         "redis://HOST:PORT/DB?stream=KEY (a Redis stream, resumable on any node) "
         "or ?channel=NAME (pub/sub); rediss:// for TLS"],
        ["ledger", None, None, "Keep used tokens in a file, so that a restart "
         "forgets none: PATH; or in Redis, shared by a fleet: redis://HOST:PORT/DB"],
        ["ledger-prefix", None, "nanostream:used:", "Key prefix of the Redis ledger",
         _ledger_prefix],
        _number(float, "ledger-timeout", 0.5, 0, above=True, doc="Seconds to wait "
                "for the Redis ledger before refusing with 503"),
        ["redis-password-file", None, None,
         "File holding the Redis password for --source and --ledger URLs"],
        _number(float, "ping-interval", 30.0, 0,
                doc="Seconds between WebSocket pings, 0 for none"),
        _number(float, "ping-timeout", 30.0, 0, above=True,
                doc="Seconds to wait for a pong before dropping a client"),
        _number(float, "leeway", 0.0, 0,
                doc="Seconds of clock skew allowed on exp and nbf"),
        _number(float, "max-token-ttl", 3600.0, 0, above=True,
                doc="Refuse tokens whose exp lies more seconds ahead"),
        _number(int, "max-line-bytes", DEFAULT_MAX_LINE_BYTES, 1,
                doc="Discard longer lines, with a warning"),
        _number(int, "max-buffer-bytes", DEFAULT_MAX_BUFFER_BYTES, 1,
                doc="Drop a client with more unsent bytes than this"),
        _number(float, "handshake-timeout", DEFAULT_HANDSHAKE_TIMEOUT, 0,
                doc="Seconds a connection may take to complete its WebSocket "
                "handshake, 0 for no limit"),
        _number(int, "max-handshake-bytes", DEFAULT_MAX_HANDSHAKE_BYTES, 1024,
                doc="Refuse a handshake whose request line and headers are "
                "larger (414 or 431)"),
        _number(int, "max-clients", 0, 0, doc="Refuse handshakes (503) while this "
                "many clients are open, 0 for no limit"),
        _number(int, "history-lines", DEFAULT_HISTORY_LINES, 0,
                doc="Lines kept for clients that resume, 0 for none"),
        _number(int, "history-bytes", DEFAULT_HISTORY_BYTES, 0,
                doc="Bytes of lines kept for clients that resume"),
        ["metrics", None, None, "Endpoint serving Prometheus /metrics, /healthz and "
         "/readyz [default: off]"],
        ["log-level", None, DEFAULT, f"Log events at this level and above: "
         f"{', '.join(CHOICES)}; warn drops per-connection lines", level_option],
    ]
    # fmt: on

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self["listen"] = []
        self["origin"] = []

    def opt_listen(self, description: str) -> None:
        """Endpoint to accept WebSocket clients on (repeatable) [default: tcp:8080]"""
        self["listen"].append(description)

    def opt_origin(self, pattern: str) -> None:
        """Allowed Origin value, "*" as wildcard (repeatable) [default: any]"""
        self["origin"].append(pattern)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        self["key"] = self._key()
        for description in self["listen"]:
            _check_endpoint("--listen", description)
        self._check_source()
        if self["metrics"] is not None:
            _check_endpoint("--metrics", self["metrics"])
        self._check_ledger()
        self._check_demo()

    def _key(self) -> bytes | None:
        if self["no-auth"]:
            given = [
                f"--{name}"
                for name in ("secret", "secret-file")
                if self[name] is not None
            ]
            if ENV_VAR in self.environ:
                given.append(ENV_VAR)
            if given:
                raise usage.UsageError(f"--no-auth and {given[0]} contradict")
            return None
        try:
            key = load_secret(self["secret"], self["secret-file"], self.environ)
        except SecretError as e:
            raise usage.UsageError(str(e)) from None
        try:
            TokenVerifier(key)
        except InvalidKeyError:
            raise usage.UsageError(
                "the secret looks like a public key or certificate; "
                "HS256 needs a random shared secret"
            ) from None
        return key

    def _check_source(self) -> None:
        source = self["source"]
        if source == STDIO:
            if not self.foreground:
                raise usage.UsageError(
                    "--source stdio needs the foreground (twistd -n): a daemon has "
                    "no stdin; use an endpoint source such as "
                    "--source unix:/run/nanostream/in.sock"
                )
            return
        if source.startswith(REDIS_SCHEMES):
            self["redis-source"] = self._redis(
                "--source", source, channel=True, stream=True
            )
            return
        _check_endpoint("--source", source)

    def _check_ledger(self) -> None:
        url = self["ledger"]
        redis_ledger = url is not None and url.startswith(REDIS_SCHEMES)
        password_file = self["redis-password-file"] is not None
        if password_file and not (redis_ledger or self.get("redis-source")):
            raise usage.UsageError(
                "--redis-password-file needs a redis:// --source or --ledger"
            )
        if url is None:
            return
        if self["no-auth"]:
            raise usage.UsageError("--ledger and --no-auth contradict: no tokens")
        if redis_ledger:
            self["redis-ledger"] = self._redis("--ledger", url, channel=False)
        else:
            self["file-ledger"] = _ledger_file(url)

    def _redis(
        self, option: str, url: str, *, channel: bool, stream: bool = False
    ) -> Any:
        try:
            return resolve(
                url,
                channel=channel,
                stream=stream,
                password_file=self["redis-password-file"],
            )
        except RedisURLError as e:
            raise usage.UsageError(f"{option}: {e}") from None

    def _check_demo(self) -> None:
        """The demo page gives a token to anyone who loads it: loopback only."""
        if not self["demo"]:
            if self["demo-anywhere"]:
                raise usage.UsageError("--demo-anywhere only makes sense with --demo")
            return
        if self["demo-anywhere"]:
            return
        from nanostream.demo.loopback import is_loopback_endpoint

        for description in self["listen"]:
            if not is_loopback_endpoint(description):
                raise usage.UsageError(
                    f"--demo hands a token to anyone who loads its page, and "
                    f"--listen {description!r} is not on a loopback interface; "
                    "use interface=127.0.0.1 or a unix: socket, or add --demo-anywhere"
                )

    @property
    def foreground(self) -> bool:
        """Under ``twistd`` only ``-n`` keeps stdin; ``twist`` never forks."""
        parent = getattr(self, "parent", None)
        try:
            return parent is None or bool(parent["nodaemon"])
        except KeyError:
            return True


class Options(ServiceOptions):
    """What ``twistd``/``twist`` see: a mistake is one line on stderr and exit 64.

    Both runners would otherwise print the whole help text around the error,
    burying the one line that matters.
    """

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write(f"nanostream: {e}\n")
            raise SystemExit(os.EX_USAGE) from None


def _check_endpoint(option: str, description: str) -> None:
    """Parse an endpoint string now, so a typo is a usage error, not a crash."""
    from twisted.internet import reactor

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as e:  # parsers raise anything from ValueError to SSLError
        detail = str(e) or type(e).__name__
        if description.startswith("systemd:") and isinstance(e, IndexError):
            detail = "systemd passed no socket at that index (LISTEN_FDS)"
        raise usage.UsageError(
            f"{option} {description!r} is not a usable endpoint: {detail}"
        ) from None


def _ledger_file(path: str) -> str:
    """The absolute path of a usable ledger file; a usage error if there is none."""
    from nanostream.auth.ledger_file import LedgerFileError, check

    if not path:
        raise usage.UsageError("--ledger must not be empty")
    try:
        return check(path)
    except LedgerFileError as e:
        raise usage.UsageError(f"--ledger {path}: {e}") from None


def makeService(options: ServiceOptions, reactor: Any = None) -> MultiService:
    """Assemble the listeners, the source and the client lifecycle.

    Services start in the order listed and stop in reverse.

    :param reactor: the global reactor unless a test hands in a fake one.
    """
    if reactor is None:
        from twisted.internet import reactor

    # Before the runner begins logging, so that its observers get the filter.
    apply_log_level(options["log-level"])
    server = gate(options, reactor)
    trimmer, upkeep_services = upkeep(server, reactor)
    listening = listen_services(options, server, reactor)
    status = SourceStatus()
    services = [
        StopOnTerm(reactor),
        BroadcastService(
            server.broadcaster, server.tracker, reactor, startup_warnings(options)
        ),
        *upkeep_services,
        *(service for _, service in listening),
        *([server.ledger] if IService.providedBy(server.ledger) else []),
        line_source(options, server.broadcaster, status, reactor),
        *monitor(options, server, listening, status, trimmer, reactor),
        # Last, so that it starts once everything else has been built and started.
        StartupFreezer(),
    ]
    top = MultiService()
    for service in services:
        service.setServiceParent(top)
    return top
