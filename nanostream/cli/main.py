"""The ``nanostream`` command: tokens for operators and app developers, and
lines into Redis for a fleet.

``nanostream token`` mints a token the way an application server should;
``nanostream check TOKEN`` says whether this server's rules accept one
(:mod:`nanostream.cli.tokens`); ``nanostream publish URL`` writes stdin's
lines to a Redis channel or stream (:mod:`nanostream.cli.publish`).  One
parser reads the whole command line; each subcommand's module is imported
only when it runs, so minting a token does not load the Redis client.

A usage error is one line on stderr, prefixed with the command it concerns,
and exit status 64, as for the service.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from twisted.python import usage

from nanostream.cli.options import EXIT_OK, EXIT_USAGE, Subcommand, print_version

COMMANDS = ("token", "check", "publish")


def _token() -> Subcommand:
    from nanostream.cli.tokens import TokenOptions

    return TokenOptions()


def _check() -> Subcommand:
    from nanostream.cli.tokens import CheckOptions

    return CheckOptions()


def _publish() -> Subcommand:
    from nanostream.cli.publish import PublishOptions

    return PublishOptions()


class Options(usage.Options):
    """The whole ``nanostream`` command line."""

    synopsis = "Usage: nanostream COMMAND [options]  (nanostream COMMAND --help)"
    longdesc = (
        "Tools around a nanostream service: mint and check the tokens its "
        "clients connect with, and publish lines to Redis for a fleet of "
        "nodes reading one channel or stream."
    )
    subCommands = [
        ["token", None, _token, "Mint a token and print it."],
        ["check", None, _check, "Say whether the server would accept a token."],
        [
            "publish",
            None,
            _publish,
            "Write stdin's lines to a Redis channel (PUBLISH) or stream (XADD).",
        ],
    ]

    def opt_version(self) -> None:
        """Print nanostream's version and exit."""
        print_version()

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        argv = list(sys.argv[1:] if options is None else options)
        command = next((word for word in argv if not word.startswith("-")), None)
        if command is not None and command not in COMMANDS:
            raise usage.UsageError(
                f"unknown command {command!r}: give {', '.join(COMMANDS[:-1])} "
                f"or {COMMANDS[-1]}"
            )
        super().parseOptions(argv)

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError(
                "give a command: token, check or publish (nanostream --help)"
            )


def main(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> int:
    """Run one subcommand; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    options = Options()
    try:
        options.parseOptions(argv)
        command: Subcommand = options.subOptions
        return command.run(environ)
    except usage.UsageError as e:
        program = " ".join(filter(None, ["nanostream", options.subCommand]))
        sys.stderr.write(f"{program}: {e}\n")
        return EXIT_USAGE
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else EXIT_OK
