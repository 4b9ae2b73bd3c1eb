"""The ``--demo`` page in a real browser: Debian's Chromium driven by Playwright.

Nothing is installed at run time: Playwright's Python package drives the
system's ``/usr/bin/chromium`` (``.ci/run`` installs it with apt).  Without
it, or without Playwright, every test here is skipped with the reason.

Each test keeps a screenshot of the page under
``$TMPDIR/nanostream-test-artifacts/<test>/``, which outlives the test's own
temporary folder so it can be looked at after a run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest

from .example_app import ExampleApp
from .harness import EVENT_TIMEOUT, Nanostream, ServiceTestCase, receive

CHROMIUM = "/usr/bin/chromium"

#: What this machine's closed network and a root user need; see
#: /work/.library/env/machines/python-svc.md.  Playwright adds --headless,
#: --no-sandbox and a fresh profile directory itself.
CHROMIUM_FLAGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

ARTIFACTS = Path(tempfile.gettempdir()) / "nanostream-test-artifacts"

WAIT_MS = EVENT_TIMEOUT * 1000

_CONFIG = re.compile(
    r'<script id="nanostream-config" type="application/json">(.*?)</script>', re.S
)


def _playwright() -> Any:
    """Playwright's sync API, or a skip that says what is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        raise SkipTest(
            f"{CHROMIUM} is not installed: apt-get install chromium "
            "(.ci/run does) to run the browser tests"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SkipTest(
            "the playwright Python package is missing: pip install -e '.[test]'"
        ) from None
    return sync_playwright


class BrowserTestCase(ServiceTestCase):
    """A Chromium for each test, and helpers to drive the demo page."""

    def setUp(self) -> None:
        sync_playwright = _playwright()
        super().setUp()
        self.artifacts = ARTIFACTS / self.id().rsplit(".", 2)[-1]
        shutil.rmtree(self.artifacts, ignore_errors=True)
        self.artifacts.mkdir(parents=True)
        playwright = sync_playwright().start()
        self.addCleanup(playwright.stop)
        self.browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            timeout=WAIT_MS * 3,
        )
        self.addCleanup(self.browser.close)

    # -- helpers --------------------------------------------------------------

    def page_url(self, service: Nanostream) -> str:
        address = service.websocket
        return f"http://{address.host}:{address.port}/"

    def new_page(self) -> Any:
        page = self.browser.new_page(viewport={"width": 1000, "height": 700})
        page.set_default_timeout(WAIT_MS)
        self.addCleanup(page.close)
        return page

    def open_page(self, service: Nanostream) -> Any:
        """The demo page, loaded and connected."""
        page = self.new_page()
        page.goto(self.page_url(service))
        self.await_state(page, "live")
        self.remember_token(service, page)
        return page

    def remember_token(self, service: Nanostream, page: Any) -> str:
        """The page's token; the harness then checks it never reaches the log."""
        config = json.loads(page.locator("#nanostream-config").text_content())
        token: str = config["token"]
        if token is not None:
            service.sent_tokens.append(token)
        return token

    def await_state(self, page: Any, state: str) -> None:
        page.wait_for_selector(f'#state[data-state="{state}"]')

    def await_lines(self, page: Any, count: int) -> list[str]:
        """The page's lines once it shows ``count`` of them (gap marks left out)."""
        page.wait_for_function(
            "n => document.querySelectorAll('#lines li:not(.gap)').length >= n",
            arg=count,
        )
        lines: list[str] = page.locator("#lines li:not(.gap)").all_inner_texts()
        return lines

    def screenshot(self, page: Any, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.assertGreater(path.stat().st_size, 0)
        return path


class BrowserTests(BrowserTestCase):
    """The demo page shows the feed, reconnects, and is refused a used token."""

    # -- tests ------------------------------------------------------------------

    def test_lines_appear_in_order(self) -> None:
        """Lines written to stdin show on the page, in order, with a rate."""
        service = self.start(options=["--demo"])
        page = self.open_page(service)
        lines = [f"line {i:02}: block {i * 7919:x}" for i in range(1, 41)]
        lines.append("unicode survives: \u00fcber \u2713 \u03a9")
        service.write("".join(line + "\n" for line in lines).encode())
        self.assertEqual(self.await_lines(page, len(lines)), lines)
        page.wait_for_function(
            "() => parseFloat(document.getElementById('rate').textContent) > 0"
        )
        self.assertEqual(page.inner_text("#count"), str(len(lines)))
        self.screenshot(page, "live")

    def test_reload_resumes_with_new_token(self) -> None:
        """After a reload the page connects with a new token and the stream resumes."""
        service = self.start(options=["--demo"])
        page = self.open_page(service)
        first_token = self.remember_token(service, page)
        service.write(b"before the reload\n")
        self.assertEqual(self.await_lines(page, 1), ["before the reload"])

        mark = service.log.mark()
        page.reload()
        self.await_state(page, "live")
        second_token = self.remember_token(service, page)
        self.assertNotEqual(second_token, first_token)
        # The reloaded page starts after the newest line: nothing to catch up.
        page.wait_for_selector('#resume[data-resume="caught-up"]')
        service.log.wait_for(r"client connected", after=mark)

        service.write(b"after the reload 1\nafter the reload 2\n")
        self.assertEqual(
            self.await_lines(page, 2), ["after the reload 1", "after the reload 2"]
        )
        self.assertNotIn("rejected handshake", service.log.text())
        self.screenshot(page, "reloaded")

    def test_reconnects_with_token_from_the_server(self) -> None:
        """When the server goes away and comes back, the page fetches a new
        token from /token and resumes without a reload, keeping its lines."""
        first = self.start(options=["--demo"])
        page = self.open_page(first)
        first.write(b"from the first run\n")
        self.assertEqual(self.await_lines(page, 1), ["from the first run"])
        port = first.websocket.port

        first.stop()
        self.await_state(page, "disconnected")
        self.assertIn("1001", page.inner_text("#note"))

        second = Nanostream(
            self.directory,
            [
                *("--secret-file", "secret", "--demo"),
                *("--listen", f"tcp:{port}:interface=127.0.0.1"),
            ],
            secret=first.secret,
            listeners=1,
            endpoint_source=False,
        )
        self.addCleanup(second.assert_clean_log)
        self.addCleanup(second.stop)
        # The page backs off 1, 2, 4... seconds between attempts.
        page.wait_for_selector('#state[data-state="live"]', timeout=WAIT_MS * 3)
        second.log.wait_for(r'"GET /token HTTP/1.1" 200')
        self.assertEqual(page.get_attribute("#state", "data-opens"), "2")

        # The new run does not hold the first run's lines: a gap, marked.
        page.wait_for_selector('#resume[data-resume="missed-lines"]')
        self.assertEqual(page.locator("#lines li.gap").count(), 1)
        second.write(b"from the second run\n")
        self.assertEqual(
            self.await_lines(page, 2), ["from the first run", "from the second run"]
        )
        self.screenshot(page, "reconnected")

    def test_used_token_is_refused(self) -> None:
        """A page whose token another client already used shows the refusal."""
        service = self.start(options=["--demo"])
        with urllib.request.urlopen(
            self.page_url(service), timeout=EVENT_TIMEOUT
        ) as response:
            html = response.read().decode("utf-8")
        match = _CONFIG.search(html)
        assert match is not None, html
        token = json.loads(match.group(1))["token"]
        client = service.connect(token)

        page = self.new_page()
        page.set_content(html)
        page.wait_for_function(
            "() => Number(document.getElementById('state').dataset.refusals) >= 1"
        )
        self.assertEqual(page.get_attribute("#state", "data-state"), "refused")
        self.assertEqual(page.get_attribute("#state", "data-opens"), "0")
        service.log.wait_for(r"rejected handshake from .*: token already used")

        service.write(b"for the first holder only\n")
        self.assertEqual(receive(client, 1), ["for the first holder only"])
        self.assertEqual(page.locator("#lines li").count(), 0)
        self.screenshot(page, "refused")

    def test_no_auth_page_connects_bare(self) -> None:
        """With --no-auth the page connects without a token and shows lines."""
        service = self.start(auth=False, options=["--demo"])
        page = self.open_page(service)
        self.assertIsNone(self.remember_token(service, page))
        service.write(b"open to all\n")
        self.assertEqual(self.await_lines(page, 1), ["open to all"])

    def test_example_app_page(self) -> None:
        """A page from examples/token_page.py, on another origin, shows the feed."""
        service = self.start()
        app = ExampleApp(service)
        self.addCleanup(app.stop)
        page = self.new_page()
        page.goto(app.url)
        page.wait_for_function(
            "() => document.getElementById('state').textContent === 'live'"
        )
        match = re.search(r'const token = "([^"]+)";', page.content())
        assert match is not None
        service.sent_tokens.append(match.group(1))
        service.write(b"first\nsecond\n")
        self.assertEqual(self.await_lines(page, 2), ["first", "second"])
        self.screenshot(page, "example-app")
