"""``--metrics`` on the real service: scrape, liveness and readiness over HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .harness import (
    EVENT_TIMEOUT,
    LISTEN_LOOPBACK,
    Address,
    Nanostream,
    ServiceTestCase,
    receive,
)

#: No proxy from the environment may stand between the test and loopback.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(address: Address, path: str) -> tuple[int, str]:
    """GET ``path`` from a tcp listener: status and body, errors included."""
    url = f"http://{address.host}:{address.port}{path}"
    try:
        with _opener.open(url, timeout=EVENT_TIMEOUT) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8")


def metrics_address(service: Nanostream) -> Address:
    """Where the service says its metrics listener is bound."""
    match = service.log.wait_for(r"metrics listening on (\S+)$")
    return Address.parse(match[1])


def samples(text: str) -> dict[tuple[str, tuple[str, ...]], float]:
    """Every sample of a scrape by name and label values."""
    return {
        (sample.name, tuple(sample.labels.values())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class MetricsTests(ServiceTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.service = self.start(
            source=LISTEN_LOOPBACK, options=["--metrics", LISTEN_LOOPBACK]
        )
        self.monitor = metrics_address(self.service)

    def test_readiness_follows_the_producer(self) -> None:
        """/readyz is 503 with the reason until a producer connects, then 200."""
        service = self.service
        self.assertEqual(http_get(self.monitor, "/healthz"), (200, "ok\n"))
        status, body = http_get(self.monitor, "/readyz")
        self.assertEqual(status, 503)
        self.assertIn("no producer connected", body)
        mark = service.log.mark()
        with service.produce():
            service.log.wait_for(r"producer connected", after=mark)
            self.assertEqual(http_get(self.monitor, "/readyz"), (200, "ready\n"))
            mark = service.log.mark()
        service.log.wait_for(r"producer disconnected", after=mark)
        self.assertEqual(http_get(self.monitor, "/readyz")[0], 503)
        self.assertEqual(http_get(self.monitor, "/healthz"), (200, "ok\n"))

    def test_scrape_counts_what_happened(self) -> None:
        """A connect, a refusal and three lines show in the next scrape."""
        service = self.service
        client = service.connect(service.mint())
        self.assertEqual(service.refuse().status, 401)
        with service.produce() as producer:
            producer.sendall(b"one\ntwo\nthree\n")
            self.assertEqual(receive(client, 3), ["one", "two", "three"])
            # A token in the scrape's own URL must not reach the access log.
            token = service.mint()
            service.sent_tokens.append(token)
            status, text = http_get(self.monitor, f"/metrics?t={token}")
        self.assertEqual(status, 200)
        found = samples(text)
        self.assertEqual(found[("nanostream_clients", ())], 1)
        self.assertEqual(found[("nanostream_handshakes_accepted_total", ())], 1)
        rejected = "nanostream_handshakes_rejected_total"
        self.assertEqual(found[(rejected, ("no token supplied",))], 1)
        self.assertEqual(found[(rejected, ("token has expired",))], 0)
        self.assertEqual(found[("nanostream_lines_received_total", ())], 3)
        self.assertEqual(found[("nanostream_messages_delivered_total", ())], 3)
        self.assertGreater(found[("nanostream_bytes_delivered_total", ())], 0)
        self.assertEqual(found[("nanostream_source_connected", ())], 1)
        self.assertLess(found[("nanostream_seconds_since_last_line", ())], 60)
        # Scrapes are not access-logged below debug; any other request is,
        # and its token is redacted there.
        self.assertEqual(http_get(self.monitor, f"/scrape?t={token}")[0], 404)
        service.log.wait_for(r"GET /scrape\?t=REDACTED ")
