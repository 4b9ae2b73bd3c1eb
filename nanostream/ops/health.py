"""Liveness and readiness pages for load balancers and supervisors.

``/healthz`` answers 200 as long as the reactor can answer at all.
``/readyz`` answers 200 only while the source can deliver lines and every
WebSocket listener is bound: a node without a source would accept clients
and then show them nothing, so a balancer should send them elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.internet import StreamServerEndpointService
from twisted.web.resource import Resource
from twisted.web.server import Request

from nanostream.listening import AnnouncedEndpoint
from nanostream.sources import SourceStatus

SERVICE_UNAVAILABLE = 503


class Readiness:
    """Says what, if anything, keeps this node from serving clients."""

    def __init__(
        self,
        source: SourceStatus,
        listeners: Sequence[tuple[str, StreamServerEndpointService]],
        ledger: object = None,
    ) -> None:
        """
        :param listeners: each ``--listen`` description with its service.
        :param ledger: the used-token ledger; one with a ``connected``
            attribute (the Redis ledger) refuses every handshake while it is
            False, so the node is then not ready either.
        """
        self._source = source
        self._listeners = listeners
        self._ledger = ledger

    def problems(self) -> list[str]:
        """One line per problem; empty when ready."""
        found = []
        if not self._source.connected:
            found.append(f"source not connected: {self._source.detail}")
        if getattr(self._ledger, "connected", True) is False:
            found.append("ledger not connected to Redis: handshakes are refused")
        for description, service in self._listeners:
            endpoint = service.endpoint
            bound = isinstance(endpoint, AnnouncedEndpoint) and endpoint.address
            if not (service.running and bound):
                found.append(f"listener {description} is not up")
        return found


def _plain(request: Request, body: str) -> bytes:
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return body.encode("utf-8")


class Liveness(Resource):
    """``/healthz``: 200 ``ok`` while the process runs."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return _plain(request, "ok\n")


class ReadinessPage(Resource):
    """``/readyz``: 200 ``ready``, or 503 with one problem per line."""

    isLeaf = True

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self._readiness = readiness

    def render_GET(self, request: Request) -> bytes:
        problems = self._readiness.problems()
        if not problems:
            return _plain(request, "ready\n")
        request.setResponseCode(SERVICE_UNAVAILABLE)
        return _plain(request, "".join(f"{line}\n" for line in problems))
