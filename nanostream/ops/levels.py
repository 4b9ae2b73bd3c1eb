"""``--log-level``: events below it are dropped before anything formats them.

The filter wraps the observers ``twistd`` or ``twist`` begin logging to
(text, ``--logger nanostream.ops.logs.json_observer`` or any other), so it
holds for every event of the process, Twisted's and Autobahn's included.
Both runners call ``makeService`` first and begin logging after it; that is
when :func:`apply_log_level` runs.  An event refused by the filter reaches
no observer, so none of them spends a cycle turning it into text.  A text
observer also gets the cheaper formatter of :mod:`nanostream.ops.fastlog`
for the lines written per connection.

Autobahn logs through txaio, whose loggers turn a disabled level into a
no-op, but it computes some arguments of its debug lines before the call
(coloured names of methods and values, per connection): those functions
become plain ones whenever debug is off.  See docs/operating.rst.
"""

from __future__ import annotations

import pprint
from collections.abc import Callable, Iterable
from typing import Any

import txaio
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogBeginner,
    LogEvent,
    LogLevel,
    PredicateResult,
    globalLogBeginner,
)
from twisted.python import usage
from zope.interface import implementer

from nanostream.ops.fastlog import speed_up

#: The levels ``--log-level`` takes, lowest first, as ``twist`` spells them.
CHOICES = ("debug", "info", "warn", "error")
DEFAULT = "info"

_ORDER = list(LogLevel.iterconstants())

#: txaio's name of each level.
_TXAIO = {
    LogLevel.debug: "debug",
    LogLevel.info: "info",
    LogLevel.warn: "warn",
    LogLevel.error: "error",
    LogLevel.critical: "critical",
}


def level_option(text: str) -> str:
    """The ``--log-level`` converter: one of :data:`CHOICES`."""
    if text not in CHOICES:
        raise usage.UsageError(
            f"--log-level takes one of {', '.join(CHOICES)}, not {text!r}"
        )
    return text


@implementer(ILogFilterPredicate)
class AtLeast:
    """Lets through events at ``level`` or above; the level may change later.

    An event without a level (none of Twisted's own) is let through.
    """

    def __init__(self, level: LogLevel = LogLevel.info) -> None:
        self.level = level

    @property
    def level(self) -> LogLevel:
        return self._level

    @level.setter
    def level(self, level: LogLevel) -> None:
        self._level = level
        self._dropped = frozenset(_ORDER[: _ORDER.index(level)])

    def __call__(self, event: LogEvent) -> PredicateResult:
        if event.get("log_level") in self._dropped:
            return PredicateResult.no
        return PredicateResult.maybe

    def passes(self, level: LogLevel) -> bool:
        """Whether an event at ``level`` would be let through."""
        return level not in self._dropped


class LevelGate:
    """The one filter of a process, put in front of whatever it logs to."""

    def __init__(self, beginner: LogBeginner) -> None:
        self.predicate = AtLeast()
        self._beginner = beginner
        self._installed = False

    def set(self, level: LogLevel) -> None:
        """Filter at ``level`` from now on, and wrap the observers to come."""
        self.predicate.level = level
        if self._installed:
            return
        self._installed = True
        begin: Callable[..., None] = self._beginner.beginLoggingTo
        predicate = self.predicate

        def beginLoggingTo(
            observers: Iterable[ILogObserver], *args: Any, **kwargs: Any
        ) -> None:
            observers = list(observers)
            for observer in observers:
                speed_up(observer)
            filtered = [FilteringLogObserver(o, [predicate]) for o in observers]
            begin(filtered, *args, **kwargs)

        # The runner calls this after makeService; an instance attribute
        # wins over the method for twistd and twist alike.
        setattr(self._beginner, "beginLoggingTo", beginLoggingTo)  # noqa: B010


_gate = LevelGate(globalLogBeginner)


def logged(level: LogLevel) -> bool:
    """Whether the process logs events at ``level``.

    For lines written per connection: emitting an event that the filter then
    drops still costs about a tenth of what writing it does (building the
    event, the publisher, the filter), so those skip it altogether.
    """
    return _gate.predicate.passes(level)


def apply_log_level(name: str, gate: LevelGate | None = None) -> None:
    """Filter the process's log at the level ``name``, Autobahn's included."""
    level = LogLevel.levelWithName(name)
    (gate or _gate).set(level)
    txaio.set_global_log_level(_TXAIO[level])  # type: ignore[attr-defined]
    quiet_autobahn_debug(level > LogLevel.debug)


def _plain(value: Any, *args: Any, **kwargs: Any) -> Any:
    """Stands in for Autobahn's highlighters: the value, as it is."""
    return value


def quiet_autobahn_debug(quiet: bool) -> None:
    """Make Autobahn's debug-only argument formatting free, or restore it.

    Every use of ``hltype`` and ``hlval`` in these modules is an argument of
    a log call, nearly all ``log.debug`` (checked in tests/test_levels.py);
    a plain value only loses its colours.  The protocol module also
    pretty-prints its (empty) option list for a debug line on every
    connection; ``repr`` gives the same text on one line, a fiftieth of the
    cost.
    """
    import autobahn.util
    from autobahn.twisted import websocket as adapter
    from autobahn.websocket import protocol

    for module in (adapter, protocol):
        for name in ("hltype", "hlval"):
            original = getattr(autobahn.util, name)
            setattr(module, name, _plain if quiet else original)
    setattr(protocol, "pformat", repr if quiet else pprint.pformat)  # noqa: B010
