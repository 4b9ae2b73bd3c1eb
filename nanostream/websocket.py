"""Autobahn glue: a listen-only WebSocket client behind the admission gate.

The protocol asks :class:`~nanostream.auth.admission.Admission` in ``onConnect``,
registers with the :class:`~nanostream.broadcast.Broadcaster` in ``onOpen``
and leaves it when the connection closes.  Lines never pass through
Autobahn's per-message send path: the broadcaster hands pre-framed bytes
to each client's sink, which writes them to the socket or the transport.
Whatever a client sends is read and discarded.
"""

from __future__ import annotations

from typing import Any, cast

import txaio
from autobahn.twisted.websocket import (
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from nanostream.auth.admission import Admission, Refused
from nanostream.auth.pacing import HandshakePacer
from nanostream.autobahn_overrides import (
    HandshakeBounds,
    ReactorTimer,
    bind_options,
    shed_handshake_state,
)
from nanostream.broadcast import Broadcaster
from nanostream.clients import ClientTracker
from nanostream.opening import LeanOpening
from nanostream.ops.levels import logged
from nanostream.sinks import ClientSink, sink_for, write_now

_log = Logger()

#: ``ConnectionDeny`` names no constant for 401.
UNAUTHORIZED = 401

#: The largest message a client may send; clients only listen, so anything
#: beyond control frames and small pleasantries is closed with 1009.
MAX_CLIENT_MESSAGE_BYTES = 16 * 1024

GOING_AWAY = 1001

#: The close code for a raw client when the source lost lines: it cannot be
#: told in-band, and must not stay connected silently missing them.
SOURCE_LOST_LINES = 1011

#: The subprotocol whose clients get ids, notices and resume.
SUBPROTOCOL = "nanostream.v1"

#: Seconds a connection may take to complete its opening handshake
#: (``--handshake-timeout``); a slow or silent client is dropped after it.
DEFAULT_HANDSHAKE_TIMEOUT = 5.0

#: The largest opening handshake, request line and headers together
#: (``--max-handshake-bytes``).  Browsers send well under 8 KiB, cookies
#: included; Autobahn itself would buffer without end until a blank line.
DEFAULT_MAX_HANDSHAKE_BYTES = 16 * 1024

_CONNECTING = WebSocketProtocol.STATE_CONNECTING
_CLOSED = WebSocketProtocol.STATE_CLOSED


def _internal_error() -> ConnectionDeny:
    """A 500 refusal; without a reason Autobahn's status line would say "None"."""
    return ConnectionDeny(ConnectionDeny.INTERNAL_SERVER_ERROR, "Internal Server Error")


# Autobahn's Twisted adapter and its generic protocol annotate ``peer`` apart.
class NanostreamServerProtocol(LeanOpening, HandshakeBounds, WebSocketServerProtocol):  # type: ignore[misc]
    """One listening client."""

    # Autobahn's own per-connection chatter (handshake failures, drops) would
    # duplicate our events; it keeps only errors.
    # (txaio binds make_logger once a framework is chosen, at import.)
    log = txaio.make_logger(level="error")  # type: ignore[attr-defined]

    factory: NanostreamServerFactory
    _sink: ClientSink | None = None
    #: Set on ``nanostream.v1`` clients only, so raw ones carry nothing more.
    _with_ids = False
    _since: bytes | None = None
    #: Set on the class by the factory's options (see bind_options).
    openHandshakeTimeout: float

    def onConnect(self, request: ConnectionRequest) -> Any:
        """Admit or refuse; at once when the ledger answers at once.

        Returns the subprotocol to select, or a Deferred firing with it.
        """
        try:
            query = self._lean_query()
            with_ids = SUBPROTOCOL in request.protocols
            since = query.get("since", ())
            decision = self.factory.admission.decide(
                request.peer,
                request.origin or None,
                query.get("t", []),
                since=since,
                with_ids=with_ids,
            )
        except Refused as refused:
            raise ConnectionDeny(refused.status, refused.reason) from None
        except Exception:
            _log.failure("admission failed", peer=request.peer)
            raise _internal_error() from None
        if with_ids:
            self._with_ids = True
            if since:
                self._since = since[0].encode("ascii")
        if isinstance(decision, Deferred):
            # Counted under --max-clients until the answer: open (in the same
            # call as the answer) or refused.
            tracker = self.factory.tracker
            tracker.reserve()
            decision.addBoth(_released, tracker)
            decision.addCallbacks(self._admitted, self._deny)
            return decision
        # Autobahn takes a returned string for the selected subprotocol.
        return SUBPROTOCOL if with_ids else None

    def _admitted(self, _: object) -> str | None:
        """Open only a connection that is still there.

        A ledger that answers later (Redis) may answer after the client left
        or the handshake timed out; Autobahn would still call ``onOpen``, and
        the gone client would then count as open for ever.
        """
        if self.state == _CLOSED:
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "Gone")
        return SUBPROTOCOL if self._with_ids else None

    def _deny(self, failure: Failure) -> None:
        if failure.check(Refused):
            refused = failure.value
            raise ConnectionDeny(refused.status, refused.reason)
        _log.failure("admission failed", failure, peer=self.peer)
        raise _internal_error()

    def onOpenHandshakeTimeout(self) -> None:
        """A client that does not finish its handshake in time is dropped."""
        if self.state == _CONNECTING:
            self.factory.tracker.handshakes_timed_out += 1
            _log.info(
                "dropping {peer}: no complete handshake in {timeout} seconds",
                peer=self.peer,
                timeout=self.openHandshakeTimeout,
            )
        super().onOpenHandshakeTimeout()

    def onOpen(self) -> None:
        shed_handshake_state(self)
        sink = sink_for(self.transport, self)
        sink.attach(cast(IConsumer, self.transport))
        # Counted only once attached, so onClose never uncounts a client
        # that failed to open.
        self.factory.tracker.opened()
        self._sink = sink
        broadcaster = self.factory.broadcaster
        since = self._since
        if since is None:
            broadcaster.add(sink, with_ids=self._with_ids)
        else:
            del self._since
            broadcaster.resume(sink, since)
        if logged(LogLevel.info):
            _log.info(
                "client connected: {peer} ({clients} clients)",
                peer=self.peer,
                clients=len(broadcaster),
            )

    def sendData(
        self, data: bytes, sync: bool = False, chopsize: int | None = None
    ) -> None:
        """Once open, Autobahn's own frames queue with the broadcast bytes.

        The sink may write straight to the socket, so every write of an open
        connection must pass through it to keep the byte stream in order.
        Before that, the handshake's response goes straight to a plain
        socket when the kernel takes it (see :func:`write_now`).
        """
        sink = self._sink
        if sink is not None:
            sink.send(data)
        elif sync or chopsize or self.send_queue or not write_now(self.transport, data):
            super().sendData(data, sync, chopsize)

    def sendCloseFrame(
        self,
        code: int | None = None,
        reasonUtf8: bytes | None = None,
        isReply: bool = False,
    ) -> None:
        """No data frame may follow our close frame: leave the fan-out first."""
        if self._sink is not None:
            self.factory.broadcaster.remove(self._sink)
        super().sendCloseFrame(code, reasonUtf8, isReply)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Clients only listen: what they send is dropped here."""

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        sink = self._sink
        if sink is None:
            return
        self._sink = None
        self.factory.broadcaster.remove(sink)
        tracker = self.factory.tracker
        tracker.closed()
        # The tracker, not the broadcaster: at shutdown every client has left
        # the fan-out before its connection closes.
        if logged(LogLevel.info):
            _log.info(
                "client disconnected: {peer} ({clients} clients)",
                peer=self.peer,
                code=code,
                clients=tracker.open,
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        sink = self._sink
        super().connectionLost(reason)
        if sink is not None:
            # The sink and the transport refer to each other until now.
            sink.detach()
        # Autobahn resolves is_closed with the protocol itself, a reference
        # cycle: every closed connection would keep its memory until one of
        # the garbage collector's rare full passes.  Nothing reads it now.
        self.__dict__.pop("is_closed", None)

    def dropSlowConsumer(self, unsent: int) -> None:
        """Called by the broadcaster: this client cannot keep up."""
        _log.warn(
            "dropping slow consumer {peer}: {unsent} bytes unsent",
            peer=self.peer,
            unsent=unsent,
        )
        self.wasClean = False
        self.wasNotCleanReason = "slow consumer"
        self.dropConnection(abort=True)

    def closeForGap(self) -> None:
        """Close a raw client: the source lost lines it cannot be told of."""
        self.sendCloseFrame(SOURCE_LOST_LINES, b"the source lost lines")

    def goAway(self) -> None:
        """Close this client because the service is stopping (1001)."""
        # sendClose() only admits the codes an application may choose;
        # 1001 is the server's own, so go one level down.
        self.sendCloseFrame(GOING_AWAY, b"server shutting down")


def _released(result: object, tracker: ClientTracker) -> object:
    """Give back the place a handshake held while its ledger decided."""
    tracker.release()
    return result


class NanostreamServerFactory(WebSocketServerFactory):
    """Builds :class:`NanostreamServerProtocol` s sharing one gate and fan-out."""

    protocol = NanostreamServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        admission: Admission,
        broadcaster: Broadcaster,
        tracker: ClientTracker,
        *,
        ping_interval: float = 30.0,
        ping_timeout: float = 30.0,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_handshake_bytes: int = DEFAULT_MAX_HANDSHAKE_BYTES,
        reactor: Any = None,
    ) -> None:
        """
        :param handshake_timeout: seconds from TCP connect to a completed
            opening handshake, 0 for no limit.
        :param max_handshake_bytes: bound on the request line and headers.
        """
        super().__init__(server="nanostream", reactor=reactor)
        # Autobahn reads its timer from this attribute of the factory.
        self._batched_timer = ReactorTimer(self.reactor)
        self.admission = admission
        self.broadcaster = broadcaster
        self.tracker = tracker
        self.max_handshake_bytes = max_handshake_bytes
        self.handshake_pacer = HandshakePacer(
            self.reactor, between=broadcaster.read_ahead
        )
        self.noisy = False
        self.setProtocolOptions(
            webStatus=False,
            # Autobahn's default drops the TCP connection on a protocol error,
            # so an oversized client message would close with 1006, not 1009.
            failByDrop=False,
            maxFramePayloadSize=MAX_CLIENT_MESSAGE_BYTES,
            maxMessagePayloadSize=MAX_CLIENT_MESSAGE_BYTES,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout,
            openHandshakeTimeout=handshake_timeout,
            # Autobahn would answer "Origin: null" (file: pages, sandboxed
            # frames) with a bare 400 before onConnect; --origin decides instead.
            allowNullOrigin=True,
            # Answer a client's close with its own code, as RFC 6455 §5.5.1
            # says is typical, rather than always 1000.
            echoCloseCodeReason=True,
        )

    def setProtocolOptions(self, **options: Any) -> None:  # type: ignore[override]
        """Set Autobahn options, then bind them to a protocol class of ours.

        Autobahn copies every option from the factory onto each connection as
        it is made (and pretty-prints the list for a debug line, even when
        debug logging is off): a fifth of a handshake's CPU and most of an
        idle connection's memory.  A protocol class carrying the options as
        class attributes, with nothing left to copy, does neither.
        """
        # Autobahn resets allowNullOrigin to False whenever a call omits it.
        options.setdefault("allowNullOrigin", True)
        super().setProtocolOptions(**options)
        self.protocol = bind_options(NanostreamServerProtocol, self)
