"""Structured logs: one JSON object per event, for ``twistd --logger``.

::

    twistd -n --logger nanostream.ops.logs.json_observer nanostream ...
    twistd --logger nanostream.ops.logs.json_observer \\
        --logfile /var/log/nanostream.json \\
        nanostream --source unix:/run/nanostream/in.sock ...

Every event keeps its fields as JSON members (a refused handshake has
``reason``, ``peer``, ``origin`` and ``status``), with ``log_format`` holding
the message template.  Events are separated by newlines only (JSON Lines),
not by twisted's default ``\\x1e`` record separator, so ``jq``, Loki or
Vector read the output as it is.

twistd calls a ``--logger`` factory with no arguments and ignores its own
``--logfile`` once ``--logger`` is given, so :func:`json_observer` reads
twistd's command line itself and writes where twistd's own log would have
gone: ``--logfile PATH`` (``-`` for stdout), else stdout in the foreground
and ``twistd.log`` as a daemon.
"""

from __future__ import annotations

import getopt
import sys
from collections.abc import Sequence
from typing import IO, Any

from twisted.logger import FileLogObserver, jsonFileLogObserver
from twisted.python.logfile import LogFile

#: Where a daemon without --logfile logs, as twistd does.
DEFAULT_DAEMON_LOGFILE = "twistd.log"


def twistd_log_destination(argv: Sequence[str]) -> str | None:
    """twistd's ``--logfile`` by twistd's own rules; None for stdout."""
    from twisted.scripts.twistd import ServerOptions

    options = ServerOptions()
    try:
        # The same getopt call usage.Options makes; it stops at the
        # subcommand (nanostream), whose options are not twistd's.
        pairs, _ = getopt.getopt(list(argv), options.shortOpt, options.longOpt)
    except getopt.GetoptError:
        return None
    logfile = None
    foreground = False
    for name, value in pairs:
        if name in ("-l", "--logfile"):
            logfile = value
        elif name in ("-n", "--nodaemon"):
            foreground = True
    if logfile == "-":
        return None
    if not logfile:
        return None if foreground else DEFAULT_DAEMON_LOGFILE
    return logfile


def open_twistd_log(argv: Sequence[str]) -> IO[Any]:
    """The file twistd's own log would go to for ``argv``: stdout or a LogFile.

    A log file is created if missing and rotated at 1 MB, like twistd's.
    """
    destination = twistd_log_destination(argv)
    if destination is None:
        return sys.stdout
    return LogFile.fromFullPath(destination)


def json_observer(argv: Sequence[str] | None = None) -> FileLogObserver:
    """A twistd ``--logger`` factory: JSON Lines to stdout or twistd's --logfile.

    :param argv: twistd's arguments; ``sys.argv[1:]`` when twistd calls it.
    """
    out = open_twistd_log(sys.argv[1:] if argv is None else argv)
    return jsonFileLogObserver(out, recordSeparator="")
