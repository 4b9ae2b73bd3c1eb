"""The WebSocket server and its gate, built in one call.

:func:`make_server` wires what every handshake and every line pass through:
the admission gate (verifier, used-token ledger, origin policy, room for one
more client), the broadcaster and the client tracker, and the Autobahn
factory that joins them.  ``makeService`` adds listeners, a source and the
operations services around it; tests build it on a ``Clock``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nanostream.auth.admission import Admission
from nanostream.auth.ledger import ILedger, MemoryLedger
from nanostream.auth.origins import OriginPolicy
from nanostream.auth.tokens import TokenVerifier
from nanostream.broadcast import DEFAULT_MAX_BUFFER_BYTES, Broadcaster
from nanostream.clients import ClientTracker
from nanostream.resume.history import History
from nanostream.websocket import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_HANDSHAKE_BYTES,
    NanostreamServerFactory,
)


@dataclass(frozen=True)
class Server:
    """The factory to listen with, and the parts others report on or feed."""

    factory: NanostreamServerFactory
    broadcaster: Broadcaster
    tracker: ClientTracker
    admission: Admission
    #: The used-token ledger; None without tokens.
    ledger: ILedger | None

    def letting_in(self) -> bool:
        """Whether a wave of clients is being let in: handshakes wait for
        their turn, or replays are catching clients up.

        Upkeep that holds the reactor for milliseconds (a full collection, a
        memory release) waits for the wave to pass.
        """
        return bool(self.factory.handshake_pacer.waiting or self.broadcaster.replaying)


def make_server(
    key: bytes | None = None,
    *,
    reactor: Any = None,
    origins: Iterable[str] = (),
    leeway: float = 0.0,
    max_token_ttl: float = 3600.0,
    verifier: TokenVerifier | None = None,
    ledger: ILedger | None = None,
    max_clients: int = 0,
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
    ping_interval: float = 30.0,
    ping_timeout: float = 30.0,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    max_handshake_bytes: int = DEFAULT_MAX_HANDSHAKE_BYTES,
    history: History | None = None,
) -> Server:
    """A WebSocket server admitting holders of HS256 tokens signed with ``key``.

    Without ``key`` (and without ``verifier``) anyone who can connect may
    listen.  Each keyword matches the command-line option of the same name.

    :param reactor: supplies time to the gate and the factory's timers; the
        global reactor unless a test hands in a ``Clock``.
    :param verifier: checks tokens instead of one built from ``key``,
        ``leeway`` and ``max_token_ttl``.
    :param ledger: remembers used tokens; by default one in this process's
        memory.  Only meaningful with tokens.
    :param history: the lines kept for resuming clients; by default the
        standard bounds.
    """
    if reactor is None:
        from twisted.internet import reactor
    if verifier is None and key is not None:
        verifier = TokenVerifier(key, leeway=leeway, max_ttl=max_token_ttl)
    if verifier is None:
        if ledger is not None:
            raise ValueError("a ledger needs tokens to consume: give a key")
    elif ledger is None:
        ledger = MemoryLedger(reactor)
    tracker = ClientTracker(max_clients)
    broadcaster = Broadcaster(max_buffer_bytes, reactor, history)
    admission = Admission(
        reactor, verifier, ledger, OriginPolicy(origins), full=tracker.full
    )
    factory = NanostreamServerFactory(
        admission,
        broadcaster,
        tracker,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        handshake_timeout=handshake_timeout,
        max_handshake_bytes=max_handshake_bytes,
        reactor=reactor,
    )
    return Server(factory, broadcaster, tracker, admission, ledger)
