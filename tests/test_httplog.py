"""The access log never shows a token (nanostream.ops.access_log)."""

from __future__ import annotations

import io

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from nanostream.ops.access_log import redact_uri, redacting_site

TOKEN = "abc.def.ghi"


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: object) -> bytes:
        return b"hello"


def access_log(
    target: bytes, headers: bytes = b"", *, behind_proxy: bool = False
) -> str:
    """Serve one request through a redacting Site and return its access log."""
    root = Hello()
    site = redacting_site(root, reactor=Clock(), behind_proxy=behind_proxy)
    site.startFactory()
    log = io.StringIO()
    site.logFile = log
    channel = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1234))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 1234))
    channel.makeConnection(transport)
    channel.dataReceived(
        b"GET " + target + b" HTTP/1.1\r\nHost: example\r\n" + headers + b"\r\n"
    )
    channel.connectionLost(None)
    logged = log.getvalue()
    site.stopFactory()
    return logged


class RedactingSiteTests(SynchronousTestCase):
    def test_token_parameter_redacted(self) -> None:
        """The value of ``t`` is replaced and the other parameters are kept."""
        line = access_log(b"/?t=" + TOKEN.encode() + b"&x=1")
        self.assertIn('"GET /?t=REDACTED&x=1 HTTP/1.1" 200', line)
        self.assertNotIn(TOKEN, line)

    def test_percent_encoded_name_redacted(self) -> None:
        """A ``t`` spelled ``%74`` is still recognised as the token."""
        line = access_log(b"/?x=1&%74=" + TOKEN.encode())
        self.assertIn("/?x=1&%74=REDACTED ", line)
        self.assertNotIn(TOKEN, line)

    def test_repeated_token_parameter_redacted(self) -> None:
        """Every ``t`` is redacted, not just the first."""
        line = access_log(b"/?t=first.token.x&t=" + TOKEN.encode())
        self.assertIn("/?t=REDACTED&t=REDACTED ", line)
        self.assertNotIn("first.token.x", line)
        self.assertNotIn(TOKEN, line)

    def test_referer_redacted(self) -> None:
        """A token in the Referer header is redacted too."""
        line = access_log(
            b"/", b"Referer: http://example/page?t=" + TOKEN.encode() + b"\r\n"
        )
        self.assertIn('"http://example/page?t=REDACTED"', line)
        self.assertNotIn(TOKEN, line)

    def test_behind_proxy_logs_forwarded_address(self) -> None:
        """The proxied variant logs X-Forwarded-For and still redacts."""
        line = access_log(
            b"/?t=" + TOKEN.encode(),
            b"X-Forwarded-For: 198.51.100.4\r\n",
            behind_proxy=True,
        )
        self.assertTrue(line.startswith('"198.51.100.4"'), line)
        self.assertNotIn(TOKEN, line)


class RedactURITests(SynchronousTestCase):
    def test_credential_names(self) -> None:
        """Parameters named like a credential are redacted, whatever their case."""
        self.assertEqual(
            redact_uri(b"/?access_token=a&JWT=b&api_key=c&page=2"),
            b"/?access_token=REDACTED&JWT=REDACTED&api_key=REDACTED&page=2",
        )

    def test_other_parameters_untouched(self) -> None:
        """A URI without credentials comes back byte for byte."""
        uri = b"/feed?topic=t&tt=1&x=%74"
        self.assertEqual(redact_uri(uri), uri)

    def test_semicolon_separator(self) -> None:
        """A token after ``;`` is redacted as well."""
        self.assertEqual(redact_uri(b"/?x=1;t=abc"), b"/?x=1;t=REDACTED")

    def test_empty_and_valueless(self) -> None:
        """An empty ``t`` or one without ``=`` has nothing to hide and is kept."""
        self.assertEqual(redact_uri(b"/?t=&t"), b"/?t=&t")
