"""The ``--demo`` page resumes in a real browser after its connection is cut.

The browser reaches the service through a :class:`~.cutting.CuttingProxy`,
which resets the page's TCP connections mid-feed.  The page keeps only its
latest lines on screen, so a recorder installed before the page's own script
notes every line it ever adds to the list (and every gap mark), and which
WebSocket URLs and tokens it used.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from .cutting import CuttingProxy, feed, numbered
from .harness import (
    EVENT_TIMEOUT,
    LISTEN_LOOPBACK,
    STOP_TIMEOUT,
    Nanostream,
    receive,
    stop_process,
)
from .test_browser import BrowserTestCase

#: Notes what the page shows and how it connects; runs before the page's script.
RECORDER = """
window.shown = [];
window.sockets = [];
window.tokens = [];
new MutationObserver((records) => {
  for (const record of records) {
    for (const node of record.addedNodes) {
      if (node.nodeName === "LI" && node.parentNode && node.parentNode.id === "lines") {
        window.shown.push(node.classList.contains("gap") ? "!gap" : node.textContent);
      }
    }
  }
}).observe(document, { childList: true, subtree: true });
const PageSocket = window.WebSocket;
window.WebSocket = class extends PageSocket {
  constructor(url, protocols) {
    super(url, protocols);
    window.sockets.push(String(url));
  }
};
const pageFetch = window.fetch;
window.fetch = async (...args) => {
  const response = await pageFetch(...args);
  response.clone().json().then((body) => window.tokens.push(body.token));
  return response;
};
"""

#: The continuous feed: paced so that what a page misses while it is away
#: (its 1 s backoff, then a token and a handshake) stays well inside the 200
#: lines it keeps on screen, which is all it renders of one burst.
FEED_LINES = 500
FEED_RATE = 50.0

#: Lines shown before each cut.
CUTS = (120, 300)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "resume.rst"

#: Runs the documented client against the proxy at PORT.
RUN_DOCUMENTED = """
CODE
window.shown = [];
window.gaps = [];
window.live = 0;
followFeed({
  url: "ws://127.0.0.1:PORT/",
  tokenUrl: "/token",
  onLine: (line, id) => window.shown.push(typeof line === "string" ? line : "binary"),
  onGap: (after, before) => window.gaps.push([after, before]),
  onLive: () => { window.live += 1; },
});
"""


def documented_client() -> str:
    """The ``followFeed`` function of docs/resume.rst, without its usage."""
    text = DOCS.read_text("utf-8")
    block = text.split(".. code-block:: javascript\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    code = textwrap.dedent("\n".join(lines))
    return code.split("\nfollowFeed({", 1)[0]


class BrowserResumeTests(BrowserTestCase):
    """Cut off mid-feed, the page shows every line once, or says it missed some."""

    def open_through(self, service: Nanostream) -> tuple[Any, CuttingProxy]:
        """The demo page, loaded through a proxy and connected."""
        proxy = CuttingProxy(service.websocket)
        self.addCleanup(proxy.close)
        page = self.new_page()
        page.add_init_script(RECORDER)
        page.goto(proxy.url())
        self.await_state(page, "live")
        self.remember_token(service, page)
        self.addCleanup(self.check_tokens, service, page)
        return page, proxy

    def check_tokens(self, service: Nanostream, page: Any) -> None:
        """Tokens from /token join the log check and never show on the page."""
        tokens = [t for t in page.evaluate("window.tokens") if t]
        service.sent_tokens.extend(tokens)
        text = page.inner_text("body")
        for token in [*tokens, *service.sent_tokens]:
            for part in token.split("."):
                self.assertNotIn(part, text)

    def shown(self, page: Any, count: int) -> list[str]:
        """Everything the page added to its list, once it added ``count`` items."""
        # Reconnecting waits out the page's backoff (1 s, doubling): on a
        # loaded machine a second cut can take longer than one event timeout.
        page.wait_for_function(
            "n => window.shown.length >= n", arg=count, timeout=3 * EVENT_TIMEOUT * 1000
        )
        shown: list[str] = page.evaluate("window.shown")
        return shown

    def await_resume(self, page: Any, opens: int, resume: str) -> None:
        """Wait until the page's ``opens``-th connection shows ``resume``."""
        page.wait_for_function(
            "([opens, resume]) => {"
            " const state = document.getElementById('state');"
            " const status = document.getElementById('resume');"
            " return state.dataset.opens === String(opens)"
            " && status.dataset.resume === resume; }",
            arg=[opens, resume],
        )

    def test_every_line_once_across_cuts(self) -> None:
        """Its connection cut twice mid-feed, the page resumes each time with
        a fresh token and since=, shows every line once and in order, and
        says caught up."""
        service = self.start(source=LISTEN_LOOPBACK, options=["--demo"])
        page, proxy = self.open_through(service)
        producer = feed(service.source, FEED_LINES, FEED_RATE)
        self.addCleanup(stop_process, producer, STOP_TIMEOUT)
        for opens, count in enumerate(CUTS, start=1):
            self.shown(page, count)
            self.assertGreater(proxy.cut(), 0)
            self.assertIsNone(producer.poll(), "the feed ended before the cut")
            self.await_resume(page, opens + 1, "caught-up")
        self.assertEqual(self.shown(page, FEED_LINES), numbered(1, FEED_LINES))
        self.assertEqual(producer.wait(STOP_TIMEOUT), 0)
        self.assertEqual(page.inner_text("#resume"), "caught up")
        self.assertEqual(page.get_attribute("#resume", "data-gaps"), "0")
        self.assertEqual(page.inner_text("#count"), str(FEED_LINES))
        # The first connection had no line to start after; each resume did.
        sockets = page.evaluate("window.sockets")
        self.assertEqual(len(sockets), 3)
        self.assertNotIn("since=", sockets[0])
        for url in sockets[1:]:
            self.assertRegex(url, r"\?t=[^&]+&since=[0-9]+-[0-9]+$")
        self.assertEqual(len(set(page.evaluate("window.tokens"))), 2)
        self.screenshot(page, "caught-up")

    def test_missed_lines_past_the_history(self) -> None:
        """Kept away while more lines than the history holds are read, the page
        shows missed lines, a mark where they are missing, then the held ones."""
        service = self.start(options=["--demo", "--history-lines", "20"])
        witness = service.connect(service.mint())
        page, proxy = self.open_through(service)
        service.write("".join(f"{line}\n" for line in numbered(1, 10)).encode())
        self.assertEqual(self.shown(page, 10), numbered(1, 10))
        proxy.hold()
        proxy.cut()
        service.write("".join(f"{line}\n" for line in numbered(11, 100)).encode())
        self.assertEqual(receive(witness, 100)[-1], "line 100")
        self.await_state(page, "disconnected")
        proxy.release()
        self.await_resume(page, 2, "missed-lines")
        service.write(b"line 101\n")
        self.assertEqual(
            self.shown(page, 32), [*numbered(1, 10), "!gap", *numbered(81, 101)]
        )
        self.assertEqual(page.inner_text("#resume"), "missed lines")
        self.assertEqual(page.get_attribute("#resume", "data-gaps"), "1")
        self.screenshot(page, "missed-lines")

    def test_cut_before_the_first_line(self) -> None:
        """A page cut off before any line has no position: it reconnects
        without since and says lines may have been missed."""
        service = self.start(options=["--demo"])
        page, proxy = self.open_through(service)
        proxy.cut()
        self.await_resume(page, 2, "unknown")
        self.assertEqual(page.inner_text("#resume"), "may have missed lines")
        service.write(b"after the cut\n\xff\xfe bin\n")
        self.assertEqual(
            self.shown(page, 3),
            ["!gap", "after the cut", "binary, 6 bytes: ff fe 20 62 69 6e"],
        )
        sockets = page.evaluate("window.sockets")
        self.assertEqual([("since=" in url) for url in sockets], [False, False])

    def test_documented_client(self) -> None:
        """The browser client printed in docs/resume.rst, cut twice mid-feed,
        hands every line over once, in order, and reports each resume live."""
        service = self.start(source=LISTEN_LOOPBACK, options=["--demo"])
        proxy = CuttingProxy(service.websocket)
        self.addCleanup(proxy.close)
        script = RUN_DOCUMENTED.replace("CODE", documented_client())
        script = script.replace("PORT", str(proxy.port))
        page = self.new_page()
        # Any document of the demo's origin without a content security
        # policy will do (the demo page's own allows only its script).
        page.goto(proxy.url("/token"))
        mark = service.log.mark()
        page.add_script_tag(content=script)
        # The page follows from its first line: the feed starts once it is
        # connected, or it would start after the first lines.
        service.log.wait_for(r"client connected", after=mark)
        lines = 2000
        producer = feed(service.source, lines, 400.0)
        self.addCleanup(stop_process, producer, STOP_TIMEOUT)
        for resumes, count in enumerate((500, 1200), start=1):
            self.shown(page, count)
            self.assertGreater(proxy.cut(), 0)
            self.assertIsNone(producer.poll(), "the feed ended before the cut")
            page.wait_for_function("n => window.live >= n", arg=resumes)
        self.assertEqual(self.shown(page, lines), numbered(1, lines))
        self.assertEqual(page.evaluate("window.gaps"), [])
        self.assertEqual(page.evaluate("window.live"), 2)
