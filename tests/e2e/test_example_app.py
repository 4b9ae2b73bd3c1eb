"""``examples/token_page.py`` against the real service: its tokens open a feed."""

from __future__ import annotations

import re
import urllib.request

from .example_app import ExampleApp
from .harness import EVENT_TIMEOUT, ServiceTestCase, receive


class ExampleAppTests(ServiceTestCase):
    """The example web app mints what nanostream accepts, once."""

    def test_page_token_opens_the_feed_once(self) -> None:
        """A token from the example's page opens one connection, and only one."""
        service = self.start()
        app = ExampleApp(service)
        self.addCleanup(app.stop)
        with urllib.request.urlopen(app.url, timeout=EVENT_TIMEOUT) as response:
            self.assertEqual(response.headers["Cache-Control"], "no-store")
            html = response.read().decode("utf-8")
        match = re.search(r'const token = "([^"]+)";', html)
        assert match is not None, html
        token = match.group(1)
        self.assertIn(f'const stream = "{service.url()}";', html)

        client = service.connect(token)
        service.write(b"hello from the source\n")
        self.assertEqual(receive(client, 1), ["hello from the source"])
        self.assertEqual(service.refuse(token).status, 401)
