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
- :class:`ReactorTimer`: Autobahn's timeouts on the reactor the factory was
  given, to the fraction of a second, instead of txaio's global batched timer.
"""

from __future__ import annotations

from typing import Any

from autobahn.websocket.protocol import (
    TrafficStats,
    WebSocketProtocol,
    WebSocketServerProtocol,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime

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
