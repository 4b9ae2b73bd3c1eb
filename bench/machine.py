"""Describe the machine and the software versions a result was measured with.

A benchmark figure means little without the hardware and versions behind
it, so every report carries them.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

_BENCH_PACKAGES = ("picows", "uvloop", "websockets", "PyJWT")
_PROJECT_PACKAGES = ("nanostream", "Twisted", "autobahn", "PyJWT")


def _run(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _versions(python: str, names: tuple[str, ...]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m\n"
        f"for n in {names!r}:\n"
        "    try: print(n, m.version(n))\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    out = _run([python, "-c", code]) or ""
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _node_package(node_modules: Path, name: str) -> str | None:
    import json

    try:
        return json.loads((node_modules / name / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def describe(
    peer_python: str, project_python: str | None, node_dir: Path
) -> dict[str, Any]:
    """Hardware, kernel, interpreters and the versions of what was measured."""
    packages: dict[str, str] = {}
    packages.update(
        {f"bench:{k}": v for k, v in _versions(peer_python, _BENCH_PACKAGES).items()}
    )
    if project_python:
        packages.update(_versions(project_python, _PROJECT_PACKAGES))
    for name in ("ws", "jsonwebtoken"):
        version = _node_package(node_dir / "node_modules", name)
        if version:
            packages[f"node:{name}"] = version
    node = shutil.which("node")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "project_python": project_python,
        "node": _run([node, "--version"]) if node else None,
        "packages": packages,
    }
