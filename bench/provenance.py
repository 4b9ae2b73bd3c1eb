"""Which code a result measured: the commit, whether the tree was dirty, and
whether the nanostream that ran is the tree's.

A figure is only worth comparing with another when both say what they
measured. The servers run the *installed* nanostream (twistd imports it from
its venv), which a non-editable install leaves behind the tree as soon as a
file changes, so the installed package is compared with the tree file by file.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

# Written by the benchmarks themselves: not a change to the measured code.
_OWN_OUTPUT = ("bench/results/",)


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _digests(package: Path) -> dict[str, str]:
    return {
        str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(package.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def installed_package(python: str) -> Path | None:
    """Where ``python`` imports nanostream from, None if it cannot."""
    code = "import nanostream, os; print(os.path.dirname(nanostream.__file__))"
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(done.stdout.strip()) if done.returncode == 0 else None


def describe(repo: Path, project_python: str | None) -> dict[str, Any]:
    """The commit, the tree's uncommitted changes, and the installed copy's match."""
    head = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain")
    changes = [
        line
        for line in (status or "").splitlines()
        if not line[3:].startswith(_OWN_OUTPUT)
    ]
    info: dict[str, Any] = {
        "commit": head.strip() if head else None,
        "branch": (_git(repo, "rev-parse", "--abbrev-ref", "HEAD") or "").strip()
        or None,
        "dirty": bool(changes) if status is not None else None,
        "changes": changes[:20],
        "installed": None,
        "installed_matches_tree": None,
    }
    installed = installed_package(project_python) if project_python else None
    if installed is not None:
        info["installed"] = str(installed)
        tree = repo / "nanostream"
        info["installed_matches_tree"] = installed.resolve() == tree.resolve() or (
            _digests(installed) == _digests(tree)
        )
    return info


def current() -> dict[str, Any]:
    """:func:`describe` for this checkout and the twistd the benchmarks find."""
    import servers

    twistd = servers.find_twistd(None)
    python = str(Path(twistd).parent / "python") if twistd else None
    return describe(servers.REPO, python)


def summary_line(info: dict[str, Any]) -> str:
    """One sentence for a Markdown report."""
    commit = (info.get("commit") or "unknown")[:12]
    dirty = info.get("dirty")
    state = {True: "dirty tree", False: "clean tree", None: "tree state unknown"}[dirty]
    text = f"Measured commit {commit} ({info.get('branch')}, {state}"
    if dirty:
        text += f": {len(info.get('changes') or [])} changed paths"
    text += ")"
    match = info.get("installed_matches_tree")
    if match is True:
        text += "; the nanostream that ran is the tree's."
    elif match is False:
        text += (
            "; WARNING: the installed nanostream that ran differs from the tree"
            " (reinstall it)."
        )
    else:
        text += "; the installed nanostream could not be compared with the tree."
    return text
