"""The ``--metrics`` site: ``/metrics``, ``/healthz`` and ``/readyz``.

Served by a :func:`~nanostream.ops.access_log.redacting_site`, so its access log
follows the same rule as every other: no token in any line.  Probes come
every few seconds from every balancer and scraper: an answered probe is
access-logged only at ``--log-level debug``, a failed one always, at warn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from autobahn.twisted.util import peer2str
from prometheus_client import CollectorRegistry
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http import Request
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

_log = Logger()

#: The paths balancers, supervisors and Prometheus ask again and again.
PROBES = frozenset((b"/metrics", b"/healthz", b"/readyz"))
OK = 200


class MonitorSite(Site):
    """Access-logs a probe only when it failed, or when asked to."""

    #: Whether answered probes get their access line (``--log-level debug``).
    probes_logged = False

    def log(self, request: Request) -> None:
        if request.path not in PROBES:
            super().log(request)
            return
        if request.code != OK:
            _log.warn(
                "probe {path} answered {code} to {peer}",
                path=request.path.decode("ascii", "replace"),
                code=request.code,
                peer=peer2str(request.transport) if request.transport else None,
            )
        if self.probes_logged:
            super().log(request)


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
    log_probes: bool = False,
) -> MonitorSite:
    """The HTTP site an operator's Prometheus and balancer talk to.

    :param log_probes: access-log answered probes too (``--log-level debug``).
    """
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
    site = cast(
        MonitorSite,
        redacting_site(resource, reactor=reactor, site_class=MonitorSite),
    )
    site.probes_logged = log_probes
    return site
