"""Which code a run ran: the git commit of a checkout, and whether the checkout differed from it.

Standard library only, on purpose: ``setup.py`` loads this file by its path
(before seqjax's dependencies exist) to embed the commit into a built
package as ``seqjax/_build_commit.py``, and :mod:`seqjax.train.results`
reads the same answers at run time. One rule for "dirty" serves both.
"""

import subprocess
from pathlib import Path

# The module a non-editable build writes beside seqjax/__init__.py (setup.py's build_py).
BUILD_MODULE = "_build_commit.py"


def run_git(cwd: Path, *args: str) -> str | None:
    """``git *args`` run in ``cwd``: its stdout, or None (no git, not a repository, an error).

    Args:
      cwd: a folder inside the repository.
      *args: git's arguments.

    Returns:
      stdout, or None.
    """
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def commit(cwd: Path) -> str | None:
    """``git rev-parse HEAD`` of the repository holding ``cwd``, or None."""
    out = run_git(cwd, "rev-parse", "HEAD")
    return (out.strip() or None) if out is not None else None


def dirty(cwd: Path) -> bool | None:
    """Whether the checkout holding ``cwd`` differs from ``HEAD`` in code (None: no git).

    Dirty means a tracked file outside ``docs/`` changed, or an untracked
    ``.py`` file outside it exists (a module a run may import that no commit
    holds). ``docs/`` holds kept results and reports, which runs write and
    never read; other untracked files (run folders, data) are not code.
    """
    out = run_git(cwd, "status", "--porcelain", "--untracked-files=all", "--", ":(top,exclude)docs")
    if out is None:
        return None
    # "?? path" is untracked (git quotes unusual paths); every other line is a tracked change.
    return any(not line.startswith("??") or line.rstrip('"').endswith(".py") for line in out.splitlines())


def build_module_text(cwd: Path) -> str | None:
    """The text of ``_build_commit.py`` for a build from the checkout holding ``cwd`` (None: no git)."""
    sha = commit(cwd)
    if sha is None:
        return None
    return ('"""Written by setup.py when this package was built: the commit it was built from."""\n\n'
            f"COMMIT = {sha!r}\nDIRTY = {dirty(cwd)!r}\n")


__all__ = ["BUILD_MODULE", "build_module_text", "commit", "dirty", "run_git"]
