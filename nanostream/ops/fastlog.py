"""Per-connection log lines at a fraction of their cost, with the same text.

Twisted's text observer formats every event the general way: the time
through ``datetime`` and a time zone lookup, the message through
``string.Formatter``.  The lines written for every connection (a client
connected, a client left) have plain fields, so for them
:func:`speed_up` gives a text observer a formatter that fills a known
message template with ``str.format_map`` and reuses the time stamp of the
current second.  Every other event, and any event it cannot format the same
way, goes to the observer's own formatter.

Whether the output is the same is checked, not assumed: a formatter is only
replaced when it formats a sample event exactly as the fast path does and its
time stamps carry no fraction of a second.  See docs/operating.rst.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.logger import FileLogObserver, FilteringLogObserver, LogEvent, LogLevel

Formatter = Callable[[LogEvent], "str | None"]

#: Message templates written once per connection; plain ``{name}`` fields only.
PER_CONNECTION: set[str] = {
    "client connected: {peer} ({clients} clients)",
    "client disconnected: {peer} ({clients} clients)",
}

# Formatted once to find the time stamp alone.
_PROBE_SUFFIX = " [-] -\n"


class CachedClassicText:
    """The classic ``time [system] message`` text, known templates made cheap."""

    def __init__(self, original: Formatter, templates: Iterable[str]) -> None:
        self.original = original
        self.templates = frozenset(templates)
        # One attribute, so a thread that logs never pairs a second with
        # another second's stamp.
        self._cached: tuple[int, str] | None = None

    def stamp(self, when: float) -> str | None:
        """The time stamp ``original`` writes for ``when``, once per second."""
        second = int(when)
        cached = self._cached
        if cached is not None and cached[0] == second:
            return cached[1]
        text = self.original({"log_time": when, "log_format": "-", "log_system": "-"})
        if not text or not text.endswith(_PROBE_SUFFIX):
            return None
        stamp = text[: -len(_PROBE_SUFFIX)]
        self._cached = (second, stamp)
        return stamp

    def __call__(self, event: LogEvent) -> str | None:
        template = event.get("log_format")
        if template in self.templates and "log_failure" not in event:
            try:
                text = self.fast(event, template)
            except Exception:
                text = None
            if text is not None:
                return text
        return self.original(event)

    def fast(self, event: LogEvent, template: str) -> str | None:
        when = event.get("log_time")
        if when is None:
            return None
        stamp = self.stamp(when)
        if stamp is None:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = "{}#{}".format(
                event.get("log_namespace", "-"),
                "-" if level is None else level.name,
            )
        else:
            system = str(system)
        message = template.format_map(event).replace("\n", "\n\t")
        return f"{stamp} [{system}] {message}\n"


def _sample(when: float) -> LogEvent:
    return {
        "log_format": "client connected: {peer} ({clients} clients)",
        "log_namespace": "nanostream.websocket",
        "log_level": LogLevel.info,
        "log_time": when,
        "peer": "tcp:127.0.0.1:40000\nx",
        "clients": 3,
    }


def _text_observer(observer: Any) -> FileLogObserver | None:
    """The file observer, itself or behind the level filter of ``twist``."""
    if isinstance(observer, FilteringLogObserver):
        # ``twist`` wraps its text observer in a filter of its own; the one
        # private read here, and without it there is no fast path.
        observer = getattr(observer, "_observer", None)
    return observer if isinstance(observer, FileLogObserver) else None


def speed_up(observer: Any, templates: Iterable[str] = PER_CONNECTION) -> bool:
    """Give ``observer`` the fast formatter if the text stays the same.

    Returns whether it did.  A JSON observer, a formatter with sub-second
    time stamps or any other output format is left as it is.
    """
    target = _text_observer(observer)
    if target is None:
        return False
    original = target.formatEvent
    if isinstance(original, CachedClassicText):
        return True
    fast = CachedClassicText(original, templates)
    base = 1_700_000_000.0
    # The stamp of the whole second must serve for the rest of it.
    for when in (base, base + 0.5, base + 0.999):
        sample = _sample(when)
        expected = original(sample)
        if expected is None or fast.fast(sample, sample["log_format"]) != expected:
            return False
    fast._cached = None
    target.formatEvent = fast
    return True
