"""Where nanostream bends Autobahn to use less memory and CPU per connection.

Each workaround keeps Autobahn's behaviour and drops only work or state the
server side never reads; the figures behind them are in docs/performance.rst
(memory per idle connection, handshakes per CPU-second).

- :func:`shed_handshake_state`: an open connection forgets its handshake
  (request, response, negotiation), about 2 KiB per idle client.
- :data:`SHARED_TRAFFIC_STATS`: one statistics object for every
  connection; Autobahn updates it on every read and nobody reads it
  (about 1 KiB per client).
- :func:`bind_options`: the factory's options become class attributes of a
  protocol subclass, so Autobahn has nothing to copy onto each connection
  (it copied some forty options and pretty-printed them for a debug line:
  a fifth of a handshake's CPU).
- :class:`HandshakeBounds`: the opening handshake is bounded in bytes, and
  every refusal Autobahn makes itself gets a fixed phrase and a log event
  like ours, never a status line quoting the request (and its token).
- :class:`ReactorTimer`: Autobahn's timeouts on the reactor the factory was
  given, to the fraction of a second, instead of txaio's global batched timer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autobahn.websocket.protocol import (
    TrafficStats,
    WebSocketProtocol,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from nanostream.auth import reasons

_log = Logger()

_CONNECTING = WebSocketProtocol.STATE_CONNECTING
_CLOSED = WebSocketProtocol.STATE_CLOSED

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

#: One statistics object for every connection.
SHARED_TRAFFIC_STATS = TrafficStats()


def shed_handshake_state(protocol: WebSocketProtocol) -> None:
    """Shrink an open connection to what it still needs.

    The leftovers go, and the instance dictionary is rebuilt at its new,
    smaller size.
    """
    state = protocol.__dict__
    for name in _HANDSHAKE_LEFTOVERS:
        state.pop(name, None)
    # Only synchronous or chopped sends queue anything, and we make neither:
    # an immutable empty queue costs nothing and fails loudly if that changes.
    if not state.get("send_queue"):
        state["send_queue"] = ()
    state["trafficStats"] = SHARED_TRAFFIC_STATS
    protocol.__dict__ = dict(state)


def _as_class_attribute(value: Any) -> Any:
    """A callable option must not turn into a method on the class."""
    return staticmethod(value) if callable(value) else value


def bind_options(base: type[WebSocketServerProtocol], factory: Any) -> type[Any]:
    """A subclass of ``base`` carrying ``factory``'s protocol options.

    With every option a class attribute and ``CONFIG_ATTRS`` empty, Autobahn
    copies nothing onto each new connection.
    """
    attributes = {
        name: _as_class_attribute(getattr(factory, name)) for name in base.CONFIG_ATTRS
    }
    return type(base.__name__, (base,), {"CONFIG_ATTRS": (), **attributes})


class ReactorTimer:
    """Autobahn's timer interface on the reactor the factory was given.

    Autobahn schedules its handshake, close and ping timeouts through
    ``txaio``'s batched timer, which always uses the global reactor and
    rounds every deadline down to a whole second (a 0.5 s timeout may fire
    at once).  This one calls ``callLater`` on the given reactor.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor

    def call_later(
        self, delay: float, func: Any, *args: Any, **kwargs: Any
    ) -> IDelayedCall:
        return self._reactor.callLater(delay, func, *args, **kwargs)


if TYPE_CHECKING:
    from autobahn.twisted.websocket import WebSocketServerProtocol as _Protocol
else:
    _Protocol = object


class HandshakeBounds(_Protocol):
    """Mixed into the server protocol, before Autobahn's class.

    Needs ``factory.max_handshake_bytes``, ``factory.handshake_pacer`` (a
    :class:`~nanostream.auth.pacing.HandshakePacer`) and ``factory.admission``
    (whose ``refuse`` logs and counts a refusal).
    """

    factory: Any

    def dataReceived(self, data: bytes) -> None:
        """Refuse an opening handshake that outgrows its bound, unread.

        Until a request's blank line arrives Autobahn keeps every byte and
        searches it all again on each read; the bound keeps that small.  Once
        closed, Autobahn would still keep what arrives, unread: it goes.
        """
        state = self.state
        if state == _CLOSED:
            return
        if state == _CONNECTING:
            oversized = len(self.data) + len(data) > self.factory.max_handshake_bytes
            if oversized and self._refused_as_oversized(self.data + data):
                return
            if "http_request_data" in self.__dict__:
                # The request is being decided (the ledger answers later).
                # Autobahn would parse what follows as another request and
                # start a second handshake; it waits for the answer instead.
                self.data += data
                return
            if not self.factory.handshake_pacer.take(self):
                # Not this turn: the bytes wait, counted against the bound.
                self.data += data
                return
        # Straight to Autobahn's framework-independent reader: the Twisted
        # adapter's dataReceived only adds a debug line whose arguments it
        # formats on every read, logged or not.
        self._dataReceived(data)

    def handshake_turn(self) -> None:
        """The pacer's turn came: read what was kept meanwhile."""
        if self.state == _CONNECTING:
            self.consumeData()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.handshake_pacer.forget(self)
        super().connectionLost(reason)

    def _refused_as_oversized(self, buffered: bytes) -> bool:
        """Refuse or drop a connection whose handshake is too large; whether it was."""
        if "http_request_data" in self.__dict__:
            # The request was complete and is being decided; the client must
            # wait for the answer before it sends anything else.
            _log.info(
                "dropping {peer}: {size} bytes sent before the handshake completed",
                peer=self.peer,
                size=len(buffered),
            )
            self.data = b""
            self.dropConnection(abort=True)
            return True
        limit = self.factory.max_handshake_bytes
        if buffered.find(b"\r\n\r\n", 0, limit) >= 0:
            # The request ends in time; what follows it is Autobahn's to judge.
            return False
        self.data = b""
        reason = (
            reasons.HEADERS_TOO_LARGE
            if buffered.find(b"\r\n", 0, limit) >= 0
            else reasons.REQUEST_LINE_TOO_LONG
        )
        refused = self.factory.admission.refuse(reason, self.peer, None)
        self.failHandshake(refused.reason, refused.status)
        return True

    def failHandshake(
        self, reason: str, code: int = 400, responseHeaders: Any = None
    ) -> None:
        """Answer Autobahn's own refusals with a fixed phrase, logged like ours.

        Autobahn names what was wrong in the status line, often quoting the
        request, whose request line holds the token.  The client gets the
        fixed phrase instead, and the operator one event as for every refusal.
        """
        if (
            reason not in reasons.STATUS
            and code != ConnectionDeny.INTERNAL_SERVER_ERROR
            and self.state != _CLOSED
        ):
            headers = self.__dict__.get("http_headers") or {}
            refused = self.factory.admission.refuse(
                reasons.MALFORMED, self.peer, headers.get("origin"), status=code
            )
            reason = refused.reason
        # The request is answered: nothing of it need stay until the close.
        self.data = b""
        super().failHandshake(reason, code, responseHeaders)
