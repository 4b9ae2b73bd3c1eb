"""What every ``nanostream`` subcommand shares: exit statuses and parsing.

The statuses follow sysexits.h where one fits, as the service does.
"""

from __future__ import annotations

import getopt
import os
import sys
from abc import ABCMeta, abstractmethod
from collections.abc import Mapping, Sequence

from twisted.python import usage

#: All went well: the token was printed, checked ok, or every line published.
EXIT_OK = 0
#: ``check`` says no, or lines were not published.
EXIT_REFUSED = 1
#: A usage error: one line on stderr, no help text.
EXIT_USAGE = os.EX_USAGE
#: Redis could not be reached at start.
EXIT_UNAVAILABLE = os.EX_UNAVAILABLE


def print_version() -> None:
    """``--version``, at any level of the command: print it and exit."""
    from nanostream import __version__

    sys.stdout.write(f"nanostream {__version__}\n")
    raise SystemExit(EXIT_OK)


class Subcommand(usage.Options, metaclass=ABCMeta):
    """Options of one subcommand, given in any order around its arguments.

    ``twisted.python.usage`` stops at the first argument, as POSIX getopt
    does; people write ``nanostream check TOKEN --secret-file PATH``, so the
    options are gathered first, as GNU getopt does, and ``--`` still ends them.
    """

    #: The whole synopsis line: the parent's is not prefixed to it.
    synopsis = ""

    def getSynopsis(self) -> str:
        return self.synopsis

    def opt_version(self) -> None:
        """Print nanostream's version and exit."""
        print_version()

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        argv = list(sys.argv[1:] if options is None else options)
        try:
            found, arguments = getopt.gnu_getopt(argv, self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from None
        ordered: list[str] = []
        for name, value in found:
            if name.startswith("--"):
                takes = name[2:] + "=" in self.longOpt
                ordered.append(f"{name}={value}" if takes else name)
            else:
                takes = name[1:] + ":" in self.shortOpt
                ordered.extend([name, value] if takes else [name])
        super().parseOptions([*ordered, "--", *arguments])

    @abstractmethod
    def run(self, environ: Mapping[str, str]) -> int:
        """Do what the options say; the exit status."""
