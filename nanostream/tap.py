"""``twistd nanostream`` / ``twist nanostream``: options and service assembly.

Every option is converted in its ``opt_*`` method (whose docstring is the
``--help`` text) and checked against the others in ``postOptions``; each
mistake is one ``UsageError`` line.  ``makeService`` only assembles.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from jwt.exceptions import InvalidKeyError
from twisted.application.service import IService, MultiService
from twisted.internet import endpoints
from twisted.python import usage

from nanostream.auth.admission import Admission
from nanostream.auth.ledger import MemoryLedger
from nanostream.auth.origins import OriginPolicy
from nanostream.auth.secret import ENV_VAR, SecretError, load_secret
from nanostream.auth.tokens import RECOMMENDED_SECRET_BYTES, TokenVerifier
from nanostream.broadcast import DEFAULT_MAX_BUFFER_BYTES, Broadcaster
from nanostream.clients import BroadcastService, ClientTracker
from nanostream.listening import announced_service
from nanostream.numbers import number_option
from nanostream.ops.memory import (
    MemoryTrimmer,
    StartupFreezer,
    ledger_pruner,
    malloc_trim,
    releaser,
)
from nanostream.redis.url import RedisURLError, resolve
from nanostream.resume.history import (
    DEFAULT_HISTORY_BYTES,
    DEFAULT_HISTORY_LINES,
    History,
)
from nanostream.sources import SourceStatus
from nanostream.sources.splitter import DEFAULT_MAX_LINE_BYTES
from nanostream.sources.stdio import StdioSource
from nanostream.sources.stream import LineSourceFactory
from nanostream.websocket import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_HANDSHAKE_BYTES,
    NanostreamServerFactory,
)

DEFAULT_LISTEN = "tcp:8080"
STDIO = "stdio"
REDIS_SCHEMES = ("redis://", "rediss://")


class ServiceOptions(usage.Options):
    """Options of the nanostream service (BRIEF §2), raising ``UsageError``."""

    synopsis = "[options]"
    longdesc = (
        "Broadcast every line from a source (stdin by default) as one "
        "WebSocket message to every client holding a valid single-use token."
    )

    optFlags = [
        ["no-auth", None, "Run without tokens: anyone who can connect may listen."],
        [
            "demo",
            None,
            "Also serve a live demo page at / that mints its own tokens "
            "(loopback listeners only).",
        ],
        ["demo-anywhere", None, "Allow --demo on listeners other hosts can reach."],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self["listen"] = []
        self["origin"] = []
        self["secret"] = None
        self["secret-file"] = None
        self["source"] = STDIO
        self["ping-interval"] = 30.0
        self["ping-timeout"] = 30.0
        self["leeway"] = 0.0
        self["max-token-ttl"] = 3600.0
        self["max-line-bytes"] = DEFAULT_MAX_LINE_BYTES
        self["max-buffer-bytes"] = DEFAULT_MAX_BUFFER_BYTES
        self["handshake-timeout"] = DEFAULT_HANDSHAKE_TIMEOUT
        self["max-handshake-bytes"] = DEFAULT_MAX_HANDSHAKE_BYTES
        self["max-clients"] = 0
        self["history-lines"] = DEFAULT_HISTORY_LINES
        self["history-bytes"] = DEFAULT_HISTORY_BYTES
        self["metrics"] = None
        self["ledger"] = None
        self["ledger-prefix"] = "nanostream:used:"
        self["ledger-timeout"] = 0.5
        self["redis-password-file"] = None

    def opt_secret(self, value: str) -> None:
        """The HS256 key itself (visible in `ps`: prefer --secret-file)."""
        self["secret"] = value

    def opt_secret_file(self, path: str) -> None:
        """File holding the HS256 key; a trailing newline is ignored."""
        self["secret-file"] = path

    def opt_listen(self, description: str) -> None:
        """Endpoint to accept WebSocket clients on (repeatable) [default: tcp:8080]."""
        self["listen"].append(description)

    def opt_source(self, source: str) -> None:
        """stdio, a server endpoint producers write lines to, or
        redis://HOST:PORT/DB?channel=NAME (rediss:// for TLS) [default: stdio]."""
        self["source"] = source

    def opt_ledger(self, url: str) -> None:
        """Keep used tokens in Redis, shared by a fleet: redis://HOST:PORT/DB."""
        self["ledger"] = url

    def opt_ledger_prefix(self, prefix: str) -> None:
        """Key prefix of the Redis ledger [default: nanostream:used:]."""
        if not prefix:
            raise usage.UsageError("--ledger-prefix must not be empty")
        self["ledger-prefix"] = prefix

    def opt_ledger_timeout(self, value: str) -> None:
        """Seconds to wait for the Redis ledger before refusing with 503
        [default: 0.5]."""
        self["ledger-timeout"] = number_option(
            float, "--ledger-timeout", 0, above=True
        )(value)

    def opt_redis_password_file(self, path: str) -> None:
        """File holding the Redis password for --source and --ledger URLs."""
        self["redis-password-file"] = path

    def opt_origin(self, pattern: str) -> None:
        """Allowed Origin value, "*" as wildcard (repeatable) [default: any]."""
        self["origin"].append(pattern)

    def opt_ping_interval(self, value: str) -> None:
        """Seconds between WebSocket pings, 0 for none [default: 30]."""
        self["ping-interval"] = number_option(float, "--ping-interval", 0)(value)

    def opt_ping_timeout(self, value: str) -> None:
        """Seconds to wait for a pong before dropping a client [default: 30]."""
        self["ping-timeout"] = number_option(float, "--ping-timeout", 0, above=True)(
            value
        )

    def opt_leeway(self, value: str) -> None:
        """Seconds of clock skew allowed on exp and nbf [default: 0]."""
        self["leeway"] = number_option(float, "--leeway", 0)(value)

    def opt_max_token_ttl(self, value: str) -> None:
        """Refuse tokens whose exp lies more seconds ahead [default: 3600]."""
        self["max-token-ttl"] = number_option(float, "--max-token-ttl", 0, above=True)(
            value
        )

    def opt_max_line_bytes(self, value: str) -> None:
        """Discard longer lines, with a warning [default: 1048576]."""
        self["max-line-bytes"] = number_option(int, "--max-line-bytes", 1)(value)

    def opt_max_buffer_bytes(self, value: str) -> None:
        """Drop a client with more unsent bytes than this [default: 4194304]."""
        self["max-buffer-bytes"] = number_option(int, "--max-buffer-bytes", 1)(value)

    def opt_handshake_timeout(self, value: str) -> None:
        """Seconds a connection may take to complete its WebSocket handshake,
        0 for no limit [default: 5]."""
        self["handshake-timeout"] = number_option(float, "--handshake-timeout", 0)(
            value
        )

    def opt_max_handshake_bytes(self, value: str) -> None:
        """Refuse a handshake whose request line and headers are larger
        (414 or 431) [default: 16384]."""
        self["max-handshake-bytes"] = number_option(int, "--max-handshake-bytes", 1024)(
            value
        )

    def opt_max_clients(self, value: str) -> None:
        """Refuse handshakes (503) while this many clients are open,
        0 for no limit [default: 0]."""
        self["max-clients"] = number_option(int, "--max-clients", 0)(value)

    def opt_history_lines(self, value: str) -> None:
        """Lines kept for clients that resume, 0 for none [default: 10000]."""
        self["history-lines"] = number_option(int, "--history-lines", 0)(value)

    def opt_history_bytes(self, value: str) -> None:
        """Bytes of lines kept for clients that resume [default: 16777216]."""
        self["history-bytes"] = number_option(int, "--history-bytes", 0)(value)

    def opt_metrics(self, description: str) -> None:
        """Endpoint serving Prometheus /metrics, /healthz and /readyz [default: off]."""
        self["metrics"] = description

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
            self["redis-source"] = self._redis("--source", source, channel=True)
            return
        _check_endpoint("--source", source)

    def _check_ledger(self) -> None:
        url = self["ledger"]
        if url is None:
            if self["redis-password-file"] is not None and not self.get("redis-source"):
                raise usage.UsageError(
                    "--redis-password-file needs a redis:// --source or --ledger"
                )
            return
        if self["no-auth"]:
            raise usage.UsageError("--ledger and --no-auth contradict: no tokens")
        self["redis-ledger"] = self._redis("--ledger", url, channel=False)

    def _redis(self, option: str, url: str, *, channel: bool) -> Any:
        try:
            return resolve(
                url, channel=channel, password_file=self["redis-password-file"]
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
        if parent is None:
            return True
        try:
            return bool(parent["nodaemon"])
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


def _warnings(options: ServiceOptions, key: bytes | None) -> list[str]:
    warnings = []
    if key is None:
        warnings.append("running with --no-auth: anyone who can connect may listen")
    elif len(key) < RECOMMENDED_SECRET_BYTES:
        warnings.append(
            f"the secret is shorter than {RECOMMENDED_SECRET_BYTES} bytes; "
            "a longer random key resists guessing"
        )
    if options["demo"]:
        if options["demo-anywhere"]:
            warnings.append(
                "--demo with --demo-anywhere: the page at / gives a working token "
                "to anyone who can reach a listener; never do this in production"
            )
        else:
            warnings.append(
                "--demo: the page at / gives a working token to anyone who loads "
                "it; listeners are on loopback only"
            )
    return warnings


def makeService(options: ServiceOptions, reactor: Any = None) -> IService:
    """Assemble the listeners, the source and the client lifecycle.

    :param reactor: the global reactor unless a test hands in a fake one.
    """
    if reactor is None:
        from twisted.internet import reactor

    key = options["key"]
    history = History(options["history-lines"], options["history-bytes"])
    broadcaster = Broadcaster(options["max-buffer-bytes"], reactor, history)
    tracker = ClientTracker(options["max-clients"])
    verifier = (
        None
        if key is None
        else TokenVerifier(
            key, leeway=options["leeway"], max_ttl=options["max-token-ttl"]
        )
    )
    ledger = None
    if verifier is not None and options.get("redis-ledger") is not None:
        from nanostream.auth.redis_ledger import RedisLedger

        ledger = RedisLedger(
            options["redis-ledger"],
            reactor,
            prefix=options["ledger-prefix"],
            timeout=options["ledger-timeout"],
        )
    elif verifier is not None:
        ledger = MemoryLedger(reactor)
    admission = Admission(
        reactor, verifier, ledger, OriginPolicy(options["origin"]), full=tracker.full
    )
    factory = NanostreamServerFactory(
        admission,
        broadcaster,
        tracker,
        ping_interval=options["ping-interval"],
        ping_timeout=options["ping-timeout"],
        handshake_timeout=options["handshake-timeout"],
        max_handshake_bytes=options["max-handshake-bytes"],
        reactor=reactor,
    )

    top = MultiService()
    BroadcastService(
        broadcaster, tracker, reactor, _warnings(options, key)
    ).setServiceParent(top)
    release = releaser(malloc_trim())
    trimmer = None
    if release is not None:
        trimmer = MemoryTrimmer(tracker, ledger, release, reactor)
        trimmer.setServiceParent(top)
    if isinstance(ledger, MemoryLedger):
        ledger_pruner(ledger, reactor).setServiceParent(top)
    listener = factory
    if options["demo"]:
        from nanostream.demo.page import DEFAULT_TOKEN_TTL, PageTokens, demo_site

        ttl = min(DEFAULT_TOKEN_TTL, options["max-token-ttl"])
        listener = demo_site(
            factory,
            PageTokens(key, reactor, ttl),
            reactor,
            timeout=options["handshake-timeout"] or None,
        )
    listeners = []
    for description in options["listen"]:
        service = announced_service(description, listener, "websocket", reactor)
        service.setServiceParent(top)
        listeners.append((description, service))
    source = options["source"]
    max_line = options["max-line-bytes"]
    if IService.providedBy(ledger):
        ledger.setServiceParent(top)
    status = SourceStatus()
    if source == STDIO:
        StdioSource(
            broadcaster, max_line, reactor.stop, reactor, status=status
        ).setServiceParent(top)
    elif options.get("redis-source") is not None:
        from nanostream.sources.redis_channel import RedisSource

        RedisSource(
            broadcaster, max_line, options["redis-source"], reactor, status=status
        ).setServiceParent(top)
    else:
        sources = LineSourceFactory(broadcaster, max_line, status)
        announced_service(source, sources, "source", reactor).setServiceParent(top)
    if options["metrics"] is not None:
        from nanostream.ops.site import monitor_site

        site = monitor_site(
            broadcaster=broadcaster,
            tracker=tracker,
            admission=admission,
            source=status,
            listeners=listeners,
            reactor=reactor,
            ledger=ledger,
            trimmer=trimmer,
        )
        monitor = announced_service(options["metrics"], site, "metrics", reactor)
        monitor.setServiceParent(top)
    # Last, so that it starts once everything else has been built and started.
    StartupFreezer().setServiceParent(top)
    return top
