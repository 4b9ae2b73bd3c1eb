"""The ``--metrics`` site: ``/metrics``, ``/healthz`` and ``/readyz``.

Served by a :func:`~nanostream.ops.access_log.redacting_site`, so its access log
follows the same rule as every other: no token in any line.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from nanostream.auth.admission import Admission
from nanostream.auth.ledger import ILedger
from nanostream.broadcast import Broadcaster
from nanostream.clients import ClientTracker
from nanostream.ops.access_log import redacting_site
from nanostream.ops.health import Liveness, Readiness, ReadinessPage
from nanostream.ops.memory import MemoryTrimmer
from nanostream.ops.metrics import ServiceCollector, service_registry
from nanostream.sources import SourceStatus


class _Root(Resource):
    """Only the three pages exist; anything else is a plain 404."""

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        return notFound()


def monitor_resource(registry: CollectorRegistry, readiness: Readiness) -> Resource:
    """``/metrics`` from ``registry``, ``/healthz``, ``/readyz``."""
    # Imported here: it binds the global reactor when imported.
    from prometheus_client.twisted import MetricsResource

    root = _Root()
    root.putChild(b"metrics", MetricsResource(registry))
    root.putChild(b"healthz", Liveness())
    root.putChild(b"readyz", ReadinessPage(readiness))
    return root


def monitor_site(
    *,
    broadcaster: Broadcaster,
    tracker: ClientTracker,
    admission: Admission,
    source: SourceStatus,
    listeners: Sequence[tuple[str, StreamServerEndpointService]],
    reactor: IReactorTime,
    ledger: ILedger | None = None,
    trimmer: MemoryTrimmer | None = None,
) -> Site:
    """The HTTP site an operator's Prometheus and balancer talk to."""
    collector = ServiceCollector(
        broadcaster=broadcaster,
        tracker=tracker,
        admission=admission,
        source=source,
        clock=reactor,
        ledger=ledger,
        trimmer=trimmer,
    )
    resource = monitor_resource(
        service_registry(collector), Readiness(source, listeners, ledger)
    )
    return redacting_site(resource, reactor=reactor)
