"""The epoll reactor's per-event dispatch in one Python frame, not five.

Twisted hands every ready descriptor to ``log.callWithLogger``, which asks
the descriptor for its log prefix and pushes it as the legacy log context
through three more calls (``log.callWithContext``, the threaded tracker,
the tracker) before ``_doReadOrWrite`` runs.  To a thousand clients that
read slowly, each writable event is one ``sendmsg`` and those frames around
it: about a tenth of the server's CPU.  :class:`LeanDispatch` polls the same
way and pushes the same context inline: the same ``system`` for anything
logged through the legacy API while a descriptor is handled, the same
logging of an error, the same ``_doReadOrWrite``.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.application.service import Service
from twisted.internet.epollreactor import EPollReactor
from twisted.python import context, log
from twisted.python.context import ContextTracker, ThreadedContextTracker
from twisted.python.log import ILogContext

BUGGY_PREFIX = "(buggy logPrefix method)"


def lean_poll(reactor: EPollReactor, tracker: ContextTracker) -> Any:
    """``reactor.doPoll`` with the context push of ``callWithLogger`` inline.

    ``tracker`` is the context stack of the reactor's thread.
    """
    poll = reactor._poller.poll
    selectables = reactor._selectables
    read_or_write = reactor._doReadOrWrite
    contexts = tracker.contexts
    err = log.err

    def do_poll(timeout: float | None) -> None:
        try:
            ready = poll(-1 if timeout is None else timeout, len(selectables))
        except OSError as error:
            if error.errno == errno.EINTR:
                return
            raise
        if not ready:
            return
        outer = tracker.getContext(ILogContext)
        for fd, event in ready:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                prefix = selectable.logPrefix()
            except KeyboardInterrupt:
                raise
            except BaseException:
                prefix = BUGGY_PREFIX
                err(system=prefix)
            inner = outer.copy()
            inner["system"] = prefix
            contexts.append({ILogContext: inner})
            try:
                read_or_write(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                err(system=prefix)
            finally:
                contexts.pop()

    return do_poll


def applies_to(reactor: object) -> bool:
    """Only Twisted's own epoll loop, with Twisted's own context and logging."""
    return (
        isinstance(reactor, EPollReactor)
        and type(reactor).doPoll is EPollReactor.doPoll
        and "doIteration" not in vars(reactor)
        and type(context.theContextTracker) is ThreadedContextTracker
        and log.callWithLogger.__module__ == "twisted.python.log"
    )


class LeanDispatch(Service):
    """Dispatches the reactor's events through :func:`lean_poll` while running.

    Any other reactor, or one whose loop was already changed, is left alone.
    The context stack is the one of the thread that starts the service,
    which is the reactor's.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.installed = False

    def startService(self) -> None:
        super().startService()
        if applies_to(self._reactor):
            tracker = context.theContextTracker
            assert isinstance(tracker, ThreadedContextTracker)
            self._reactor.doIteration = lean_poll(
                self._reactor, tracker.currentContext()
            )
            self.installed = True

    def stopService(self) -> None:
        if self.installed:
            del self._reactor.doIteration
            self.installed = False
        return super().stopService()  # type: ignore[no-any-return]
