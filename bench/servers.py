"""The servers under test: how to start each, and whether it can start here.

Every server gets the same command-line contract from the runner (a port on
127.0.0.1 and a secret file) and the same stdin. Heartbeats are off where a
server has them, and nanostream's slow-consumer limit is raised, because
the peers have neither: every server then does the same work. Those
options are a spec's ``bench_options``; the scenarios that measure a server
as it ships (``memory-malloc``) leave them out and set ``SHIPPED_ENV``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEERS = BENCH / "peers"

# Large enough that no client is ever dropped as a slow consumer in a run.
NANOSTREAM_BUFFER_BYTES = 256 * 2**20

#: The environment contrib/systemd/nanostream.service gives the service.
SHIPPED_ENV = {"PYTHONMALLOC": "malloc"}


@dataclass
class ServerSpec:
    """One server: its command line for a port and a secret file."""

    name: str
    command: Callable[[int, Path], list[str]]
    problem: str | None = None  # why it cannot run here, if it cannot
    env: dict[str, str] = field(default_factory=dict)
    # Added after ``command`` in every run but those of the shipped configuration.
    bench_options: list[str] = field(default_factory=list)


def peer_python() -> str:
    """The Python for the Python peers: bench/.venv's, else the current one."""
    venv = BENCH / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def find_twistd(explicit: str | None = None) -> str | None:
    """Locate the project's twistd: --twistd, the repo's .venv, then PATH."""
    if explicit:
        return explicit if Path(explicit).exists() else None
    for candidate in (
        REPO / ".venv" / "bin" / "twistd",
        Path(sys.executable).parent / "twistd",
    ):
        if candidate.exists():
            return str(candidate)
    return shutil.which("twistd")


def _imports(python: str, modules: str) -> str | None:
    """None if ``python`` can import ``modules``, else the error."""
    done = subprocess.run(
        [python, "-c", f"import {modules}"], capture_output=True, text=True, timeout=60
    )
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"cannot import {modules}"


def nanostream(twistd: str | None) -> ServerSpec:
    """nanostream under ``twistd -n``, with options matched to the peers."""
    if twistd is None:
        return ServerSpec("nanostream", lambda p, s: [], problem="twistd not found")
    try:
        done = subprocess.run(
            [twistd, "nanostream", "--help"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ServerSpec("nanostream", lambda p, s: [], problem=str(exc))
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["failed"]
        problem = f"{twistd} nanostream --help: {last[0]}"
        return ServerSpec("nanostream", lambda p, s: [], problem=problem)
    extra: list[str] = []
    if "--ping-interval" in done.stdout:
        extra += ["--ping-interval", "0"]
    if "--max-buffer-bytes" in done.stdout:
        extra += ["--max-buffer-bytes", str(NANOSTREAM_BUFFER_BYTES)]

    def command(port: int, secret: Path) -> list[str]:
        return [
            twistd,
            "-n",
            "--pidfile=",
            "nanostream",
            "--secret-file",
            str(secret),
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
        ]

    return ServerSpec(
        "nanostream", command, env={"PYTHONUNBUFFERED": "1"}, bench_options=extra
    )


def node() -> ServerSpec:
    """The Node.js peer (ws + jsonwebtoken)."""
    script = PEERS / "node" / "server.js"
    exe = shutil.which("node")
    problem = None
    if exe is None:
        problem = "node not found"
    elif not (PEERS / "node" / "node_modules" / "ws").exists():
        problem = "node modules missing: run bench/setup"

    def command(port: int, secret: Path) -> list[str]:
        return [
            exe or "node",
            str(script),
            "--port",
            str(port),
            "--secret-file",
            str(secret),
        ]

    return ServerSpec("node", command, problem=problem)


def python_peer(
    name: str, script: str, modules: str, options: tuple[str, ...] = ()
) -> ServerSpec:
    """A Python peer run by bench/.venv's Python, with its own ``options``."""
    python = peer_python()
    problem = _imports(python, modules)

    def command(port: int, secret: Path) -> list[str]:
        return [
            python,
            str(PEERS / script),
            "--port",
            str(port),
            "--secret-file",
            str(secret),
            *options,
        ]

    return ServerSpec(name, command, problem=problem, env={"PYTHONUNBUFFERED": "1"})


ALL = ("nanostream", "node", "websockets", "picows", "picows-batched")


def build(names: list[str], twistd: str | None) -> list[ServerSpec]:
    """The specs for ``names``, in that order."""
    makers = {
        "nanostream": lambda: nanostream(twistd),
        "node": node,
        "websockets": lambda: python_peer(
            "websockets", "websockets_server.py", "websockets, jwt"
        ),
        "picows": lambda: python_peer(
            "picows", "picows_server.py", "picows, uvloop, jwt"
        ),
        "picows-batched": lambda: python_peer(
            "picows-batched", "picows_server.py", "picows, uvloop, jwt", ("--batched",)
        ),
    }
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise SystemExit(
            f"unknown server(s): {', '.join(unknown)}; known: {', '.join(ALL)}"
        )
    return [makers[n]() for n in names]
