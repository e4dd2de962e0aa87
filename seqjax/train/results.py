"""``results.json``: the record a run leaves, and whether a folder holds a finished run.

:func:`seqjax.train.loop.finish` writes ``"status": "finished"`` (and
``"finished": true``) with the final metrics;
:func:`write_diverged` writes ``"status": "diverged"``
(``"finished": false``, no metrics). Both share :func:`run_record`.
"""

import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax

import seqjax
from seqjax import host_allocator
from seqjax.train import provenance
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
      ``device_kind``, ``num_devices``, ``mesh``, ``num_processes`` and
      ``host_allocator`` (whether this process set glibc's malloc, see
      :mod:`seqjax.host_allocator`); and
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
        # The CPU step times depend on it (seqjax.host_allocator: 1.3-1.45x on LRA steps).
        "host_allocator": host_allocator.state(),
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


def _package_dir() -> Path:
    return Path(seqjax.__file__).parent


def _built() -> tuple[str, bool | None] | None:
    """The commit and dirtiness that ``setup.py`` embedded in a built (non-editable) install, or None."""
    try:
        from seqjax import _build_commit  # written only into built packages, never into the checkout
    except ImportError:
        return None
    return _build_commit.COMMIT, _build_commit.DIRTY


@functools.cache
def git_hash() -> str | None:
    """The commit of the seqjax code that runs, or None.

    A built install (``pip install .`` or ``pip install git+…``) answers with
    the commit it was built from (``seqjax/_build_commit.py``), since no
    repository sits beside an installed package; a checkout (an editable
    install) answers with ``git rev-parse HEAD``. Read once per process:
    :func:`seqjax.train.run` reads it when it starts, so a run records the
    commit it imported, not one made while it trained.
    """
    built = _built()
    return built[0] if built else provenance.commit(_package_dir())


@functools.cache
def git_dirty() -> bool | None:
    """Whether the code differed from :func:`git_hash`'s commit (None: unknown).

    The rule is :func:`seqjax.train.provenance.dirty` (tracked changes, or
    untracked ``.py`` files, outside ``docs/``), read from the checkout when
    first asked, or as it was at build time for a built install.
    """
    built = _built()
    return built[1] if built else provenance.dirty(_package_dir())


def write_diverged(setup: Any, start: Any, diverged: Any) -> None:
    """Writes ``results.json`` of a diverged run: ``"status": "diverged"``, ``"finished": false``, no metrics.

    Reports skip it (they read finished runs); rerunning the same command
    restores the kept checkpoint and diverges again, unless
    ``train.divergence_factor`` (a field that may change between runs) is raised.

    Args:
      setup: the run's :class:`~seqjax.train.loop.Setup`.
      start: where this process started (:class:`~seqjax.train.loop.Start`; its earlier wall time counts).
      diverged: the :class:`~seqjax.train.guards.TrainingDiverged` raised by the train loop.
    """
    if not setup.primary:
        return
    results = {
        "metrics": {},
        "train": {"loss": None, "steps": setup.config.train.steps, "completed_steps": diverged.step},
        "diverged": {"step": diverged.step, "cause": diverged.cause, "message": str(diverged)},
        **run_record(setup.config, setup.sizes, setup.preset, start.elapsed_s + time.time() - setup.t_start,
                     workdir=setup.workdir),
        "status": "diverged",
        "finished": False,
    }
    write_json_atomic(setup.workdir / "results.json", results)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` through a temporary file and a rename (never half a file)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


__all__ = ["INIT_FROM_FILE", "run_record", "finished_results", "git_dirty", "git_hash", "write_diverged",
           "write_json_atomic"]
