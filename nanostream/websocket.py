"""Autobahn glue: a listen-only WebSocket client behind the admission gate.

The protocol asks :class:`~nanostream.admission.Admission` in ``onConnect``,
registers with the :class:`~nanostream.broadcast.Broadcaster` in ``onOpen``
and leaves it when the connection closes.  Lines never pass through
Autobahn's per-message send path: the broadcaster hands pre-framed bytes
to each client's sink, which writes them to the socket or the transport.
Whatever a client sends is read and discarded.
"""

from __future__ import annotations

import socket
from typing import Any

import txaio
from autobahn.twisted.websocket import (
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport, ISystemHandle
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanostream.admission import Admission, Refused
from nanostream.broadcast import Broadcaster, ClientSink, SocketSink
from nanostream.service import ClientTracker

_log = Logger()

#: ``ConnectionDeny`` names no constant for 401.
UNAUTHORIZED = 401

#: The largest message a client may send; clients only listen, so anything
#: beyond control frames and small pleasantries is closed with 1009.
MAX_CLIENT_MESSAGE_BYTES = 16 * 1024

GOING_AWAY = 1001


def _internal_error() -> ConnectionDeny:
    """A 500 refusal; without a reason Autobahn's status line would say "None"."""
    return ConnectionDeny(ConnectionDeny.INTERNAL_SERVER_ERROR, "Internal Server Error")


class NanostreamServerProtocol(WebSocketServerProtocol):
    """One listening client."""

    # Autobahn's own per-connection chatter (handshake failures, drops) would
    # duplicate our events; it keeps only errors.
    log = txaio.make_logger(level="error")

    factory: NanostreamServerFactory
    _sink: ClientSink | None = None

    def onConnect(self, request: ConnectionRequest) -> Deferred[Any]:
        try:
            d = self.factory.admission.admit(
                request.peer, request.origin or None, request.params.get("t", ())
            )
        except Exception:
            _log.failure("admission failed", peer=request.peer)
            raise _internal_error() from None
        d.addCallbacks(lambda _: None, self._deny)
        return d

    def _deny(self, failure: Failure) -> None:
        if failure.check(Refused):
            refused = failure.value
            raise ConnectionDeny(refused.status, refused.reason)
        _log.failure("admission failed", failure, peer=self.peer)
        raise _internal_error()

    def onOpen(self) -> None:
        _shed_handshake_state(self)
        sink = sink_for(self.transport, self)
        self._sink = sink
        self.transport.registerProducer(sink, sink.streaming)
        self.factory.tracker.opened()
        broadcaster = self.factory.broadcaster
        broadcaster.add(sink)
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
        """
        sink = self._sink
        if sink is None or sync or chopsize:
            super().sendData(data, sync, chopsize)
        else:
            sink.send(data)

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
        broadcaster = self.factory.broadcaster
        broadcaster.remove(sink)
        self.factory.tracker.closed()
        _log.info(
            "client disconnected: {peer} ({clients} clients)",
            peer=self.peer,
            code=code,
            clients=len(broadcaster),
        )

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

    def goAway(self) -> None:
        """Close this client because the service is stopping (1001)."""
        # sendClose() only admits the codes an application may choose;
        # 1001 is the server's own, so go one level down.
        self.sendCloseFrame(GOING_AWAY, b"server shutting down")


def sink_for(transport: Any, client: NanostreamServerProtocol) -> ClientSink:
    """The fast socket sink for plain TCP/UNIX connections, else the generic one.

    TLS connections must go through their transport, which encrypts.
    """
    if not ISSLTransport.providedBy(transport) and ISystemHandle.providedBy(transport):
        handle = transport.getHandle()
        if isinstance(handle, socket.socket):
            return SocketSink(transport.write, handle.send, client)
    return ClientSink(transport.write, client)


#: What Autobahn keeps after the opening handshake that the server side never
#: reads again: the request, the response and the negotiation results.
_HANDSHAKE_LEFTOVERS = (
    "http_request_data",
    "http_headers",
    "http_response_data",
    "http_status_line",
    "http_request_uri",
    "http_request_path",
    "http_request_params",
    "http_request_host",
    "websocket_protocols",
    "websocket_extensions",
    "websocket_origin",
)

#: One statistics object for every connection: Autobahn updates it on every
#: read, nobody reads it, and a private one costs about 1 KiB per client.
_SHARED_TRAFFIC_STATS = TrafficStats()


def _as_class_attribute(value: Any) -> Any:
    """A callable option must not turn into a method on the class."""
    return staticmethod(value) if callable(value) else value


def _shed_handshake_state(protocol: NanostreamServerProtocol) -> None:
    """Shrink an open connection to what it still needs (BRIEF §6 memory).

    Autobahn keeps the whole handshake on each connection; with thousands of
    idle listeners that is much of our memory.  The leftovers go, and the
    instance dictionary is rebuilt at its new, smaller size.
    """
    state = protocol.__dict__
    for name in _HANDSHAKE_LEFTOVERS:
        state.pop(name, None)
    # Only synchronous or chopped sends queue anything, and we make neither:
    # an immutable empty queue costs nothing and fails loudly if that changes.
    if not state.get("send_queue"):
        state["send_queue"] = ()
    state["trafficStats"] = _SHARED_TRAFFIC_STATS
    protocol.__dict__ = dict(state)


class NanostreamServerFactory(WebSocketServerFactory):
    """Builds :class:`NanostreamServerProtocol` s sharing one gate and fan-out."""

    protocol = NanostreamServerProtocol

    def __init__(
        self,
        admission: Admission,
        broadcaster: Broadcaster,
        tracker: ClientTracker,
        *,
        ping_interval: float = 30.0,
        ping_timeout: float = 30.0,
        reactor: Any = None,
    ) -> None:
        super().__init__(server="nanostream", reactor=reactor)
        self.admission = admission
        self.broadcaster = broadcaster
        self.tracker = tracker
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
            # Autobahn would answer "Origin: null" (file: pages, sandboxed
            # frames) with a bare 400 before onConnect; --origin decides instead.
            allowNullOrigin=True,
        )

    def setProtocolOptions(self, **options: Any) -> None:
        """Set Autobahn options, then bind them to a protocol class of ours.

        Autobahn copies every option from the factory onto each connection as
        it is made (and pretty-prints the list for a debug line, even when
        debug logging is off): a fifth of a handshake's CPU and most of an
        idle connection's memory.  A protocol class carrying the options as
        class attributes, with nothing left to copy, does neither.
        """
        super().setProtocolOptions(**options)
        names = NanostreamServerProtocol.CONFIG_ATTRS
        attributes = {name: _as_class_attribute(getattr(self, name)) for name in names}
        self.protocol = type(
            "NanostreamServerProtocol",
            (NanostreamServerProtocol,),
            {"CONFIG_ATTRS": (), **attributes},
        )
