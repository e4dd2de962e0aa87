"""``results.json``: the record a run leaves, and whether a folder holds a finished run.

:func:`seqjax.train.loop.finish` writes ``"status": "finished"`` (and
``"finished": true``) with the final metrics;
:func:`seqjax.train.loop.write_diverged` writes ``"status": "diverged"``
(``"finished": false``, no metrics). Both share :func:`run_record`.
"""

import functools
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import jax

import seqjax
from seqjax.train.writers import jsonable


# What a run started from another run's parameters copied (seqjax.train.init_from writes it).
INIT_FROM_FILE = "init_from.json"


def run_record(config, sizes: dict[str, int], preset: str, wall_time_s: float, workdir: Path | None = None) -> dict:
    """The fields every ``results.json`` holds besides the outcome.

    Args:
      config: the full config.
      sizes: the mesh axis sizes.
      preset: ``config.mesh.preset``.
      wall_time_s: the run's wall time, earlier processes included.
      workdir: the run folder; its ``init_from.json``, when there, becomes ``init_from``.

    Returns:
      ``config``, ``seqjax_version``, ``git_hash``, ``git_dirty``, ``wall_time_s``,
      ``device_kind``, ``num_devices``, ``mesh`` and ``num_processes``; and
      ``init_from`` (source, step, matched / new / dropped paths) for a run
      started from another run's parameters.
    """
    extra = {}
    if workdir is not None and (Path(workdir) / INIT_FROM_FILE).exists():
        extra["init_from"] = json.loads((Path(workdir) / INIT_FROM_FILE).read_text())
    return {
        **extra,
        "config": jsonable(config.to_dict()),
        "seqjax_version": seqjax.__version__,
        "git_hash": git_hash(),
        "git_dirty": git_dirty(),
        "wall_time_s": wall_time_s,
        "device_kind": jax.devices()[0].device_kind,
        "num_devices": math.prod(sizes.values()),
        "mesh": {**sizes, "preset": preset},
        "num_processes": jax.process_count(),
    }


def finished_results(workdir: Path, steps: int) -> dict | None:
    """The contents of ``workdir/results.json`` if it holds a finished run of ``steps`` steps.

    Args:
      workdir: the run's directory (need not exist).
      steps: ``config.train.steps``.

    Returns:
      The results, or None (no file, unfinished, or another number of steps).
    """
    path = workdir / "results.json"
    if not path.exists():
        return None
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):  # unreadable: the run is not known to be finished, so it resumes
        return None
    if previous.get("finished") and previous.get("train", {}).get("steps") == steps:
        return previous
    return None


def _git(*args: str) -> str | None:
    """``git *args`` in the repository that holds the seqjax package: its stdout, or None."""
    try:
        out = subprocess.run(["git", *args], cwd=Path(seqjax.__file__).parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.cache
def git_hash() -> str | None:
    """``git rev-parse HEAD`` of the repository that holds the seqjax package, or None.

    Read once per process: :func:`seqjax.train.run` reads it when it starts,
    so a run records the commit it imported, not one made while it trained.
    """
    out = _git("rev-parse", "HEAD")
    return (out.strip() or None) if out is not None else None


@functools.cache
def git_dirty() -> bool | None:
    """Whether the code differed from ``HEAD`` when first asked (None: no git).

    Dirty means a tracked file outside ``docs/`` changed, or an untracked
    ``.py`` file outside it exists (a module the run may import that no commit
    holds). ``docs/`` holds kept results and reports, which runs write and
    never read; other untracked files (run folders, data) are not code.
    """
    out = _git("status", "--porcelain", "--untracked-files=all", "--", ":(top,exclude)docs")
    if out is None:
        return None
    # "?? path" is untracked (git quotes unusual paths); every other line is a tracked change.
    return any(not line.startswith("??") or line.rstrip('"').endswith(".py") for line in out.splitlines())


def write_json_atomic(path: Path, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` through a temporary file and a rename (never half a file)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


__all__ = ["INIT_FROM_FILE", "run_record", "finished_results", "git_dirty", "git_hash", "write_json_atomic"]
