"""The parts ``makeService`` assembles, each built from the parsed options.

The gate (verifier, ledger, admission) comes with the WebSocket server from
:func:`~nanostream.server.make_server`; around it go the listeners, the line
source and the operations services (memory upkeep, the metrics listener).
Each builder returns services and leaves their order to ``makeService``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.protocol import Factory

from nanostream.auth.ledger import ILedger, MemoryLedger
from nanostream.auth.tokens import RECOMMENDED_SECRET_BYTES
from nanostream.broadcast import Broadcaster
from nanostream.listening import announced_service
from nanostream.ops.collection import TimedFullCollections
from nanostream.ops.dispatch import LeanDispatch
from nanostream.ops.memory import MemoryTrimmer, ledger_pruner, malloc_trim, releaser
from nanostream.resume.history import History
from nanostream.server import Server, make_server
from nanostream.sources import SourceStatus
from nanostream.sources.stdio import StdioSource
from nanostream.sources.stream import LineSourceFactory

#: Parsed options of ``twistd nanostream``, keyed by long option name.
Options = Mapping[str, Any]
#: Each ``--listen`` description with the service listening there.
Listeners = list[tuple[str, StreamServerEndpointService]]
#: How ``--source stdio`` is spelled.
STDIO = "stdio"


def startup_warnings(options: Options) -> list[str]:
    """What start-up should say about the key and the demo page."""
    key = options["key"]
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


def gate(options: Options, reactor: Any) -> Server:
    """The WebSocket server behind its gate, with the ledger the options name."""
    ledger: ILedger | None = None
    if options["key"] is not None and options.get("redis-ledger") is not None:
        from nanostream.auth.cluster_ledger import RedisURLLedger

        ledger = RedisURLLedger(
            options["redis-ledger"],
            reactor,
            prefix=options["ledger-prefix"],
            timeout=options["ledger-timeout"],
        )
    elif options["key"] is not None and options.get("file-ledger") is not None:
        from nanostream.auth.file_ledger import open_file_ledger

        ledger = open_file_ledger(options["file-ledger"], reactor)
    return make_server(
        options["key"],
        reactor=reactor,
        origins=options["origin"],
        leeway=options["leeway"],
        max_token_ttl=options["max-token-ttl"],
        ledger=ledger,
        max_clients=options["max-clients"],
        max_buffer_bytes=options["max-buffer-bytes"],
        ping_interval=options["ping-interval"],
        ping_timeout=options["ping-timeout"],
        handshake_timeout=options["handshake-timeout"],
        max_handshake_bytes=options["max-handshake-bytes"],
        history=History(options["history-lines"], options["history-bytes"]),
    )


def listen_services(options: Options, server: Server, reactor: Any) -> Listeners:
    """One listening service per ``--listen``, serving the demo page if asked."""
    listener: Factory[Any] = server.factory
    if options["demo"]:
        from nanostream.demo.page import DEFAULT_TOKEN_TTL, PageTokens, demo_site

        ttl = min(DEFAULT_TOKEN_TTL, options["max-token-ttl"])
        listener = demo_site(
            server.factory,
            PageTokens(options["key"], reactor, ttl),
            reactor,
            timeout=options["handshake-timeout"] or None,
        )
    return [
        (description, announced_service(description, listener, "websocket", reactor))
        for description in options["listen"]
    ]


def line_source(
    options: Options,
    broadcaster: Broadcaster,
    status: SourceStatus,
    reactor: Any,
) -> Service:
    """Where lines come from: stdin, a Redis channel or a listening endpoint."""
    source = options["source"]
    max_line = options["max-line-bytes"]
    if source == STDIO:
        return StdioSource(
            broadcaster,
            max_line,
            reactor.stop,
            reactor,
            status=status,
            ahead=broadcaster.read_ahead,
        )
    target = options.get("redis-source")
    if target is not None and target.stream is not None:
        from nanostream.sources.redis_stream import RedisStreamSource

        stream = RedisStreamSource(
            broadcaster, max_line, target, target.stream, reactor, status=status
        )
        # Resumes older than the history are served from the stream.
        broadcaster.archive = stream
        return stream
    if target is not None:
        from nanostream.sources.redis_pubsub import RedisChannelSource

        return RedisChannelSource(broadcaster, max_line, target, reactor, status=status)
    sources = LineSourceFactory(
        broadcaster, max_line, status, ahead=broadcaster.read_ahead
    )
    return announced_service(source, sources, "source", reactor)


def upkeep(server: Server, reactor: Any) -> tuple[MemoryTrimmer | None, list[Service]]:
    """The reactor's lean dispatch, timed full collections, the memory
    trimmer (where malloc can trim) and the ledger's pruner; collections
    and trimming wait while clients are let in."""
    busy = server.letting_in
    services: list[Service] = [
        LeanDispatch(reactor),
        TimedFullCollections(clock=reactor, busy=busy),
    ]
    trimmer = None
    release = releaser(malloc_trim())
    if release is not None:
        trimmer = MemoryTrimmer(
            server.tracker, server.ledger, release, reactor, busy=busy
        )
        services.append(trimmer)
    if isinstance(server.ledger, MemoryLedger):
        services.append(ledger_pruner(server.ledger, reactor))
    return trimmer, services


def monitor(
    options: Options,
    server: Server,
    listening: Listeners,
    status: SourceStatus,
    trimmer: MemoryTrimmer | None,
    reactor: Any,
) -> list[Service]:
    """The ``--metrics`` listener, if asked for."""
    if options["metrics"] is None:
        return []
    from nanostream.ops.site import monitor_site

    site: Factory[Any] = monitor_site(
        broadcaster=server.broadcaster,
        tracker=server.tracker,
        admission=server.admission,
        source=status,
        listeners=listening,
        reactor=reactor,
        ledger=server.ledger,
        trimmer=trimmer,
        log_probes=options["log-level"] == "debug",
    )
    return [announced_service(options["metrics"], site, "metrics", reactor)]
