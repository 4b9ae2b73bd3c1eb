"""With ``NANOSTREAM_FORBID_SKIPS`` set (CI sets it), a skipped test fails.

Tests that need Redis, a browser or systemd's tools skip, saying why, where
those are missing.  On a developer's machine that is the right answer; in
CI, which installs all of them, a skip means the set-up broke and must not
pass silently, so each one becomes a failure naming the skip's reason.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

FORBID_SKIPS = "NANOSTREAM_FORBID_SKIPS"


def _forbid(report: Any) -> Any:
    """Turn a skipped report (not an expected failure) into a failed one."""
    if not os.environ.get(FORBID_SKIPS) or not report.skipped:
        return report
    if hasattr(report, "wasxfail"):
        return report
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped, which {FORBID_SKIPS} forbids: {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, Any]:
    return _forbid((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, Any, Any]:
    return _forbid((yield))
