"""Checkpoints under ``workdir/checkpoints`` with orbax, for auto-resume.

Each checkpoint step directory holds two items:

``state``
  the :class:`~seqjax.train.state.TrainState` (params, optimiser state, step).
``meta``
  JSON: ``{"step": int, "data_iterator": <DataIterator.get_state()>, "rng": [key data]}``
  — what, together with the state, makes a resumed run identical to an
  uninterrupted one.

Orbax writes each step into ``<step>.orbax-checkpoint-tmp-<time>`` and renames
it to ``<step>`` only when every item is on disk (on a local or network file
system; on GCS it writes ``commit_success.txt`` last instead), and lists only
such finalised steps: a run killed mid-save leaves no half checkpoint that a
restore could pick, and the temporary folder is deleted when the next run opens
the folder.

A finalised checkpoint can still be damaged afterwards (a full disk, a copy
cut short, a hand edit). :meth:`Checkpointer.restore_latest` then reports it
in one line, moves it to ``checkpoints/corrupt/<step>`` (where orbax does not
look) and tries the next older one; :class:`CheckpointError` when none
restores.
"""

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

# Where damaged checkpoints are moved, inside ``checkpoints/``: not a step
# number, so orbax neither lists nor deletes it.
CORRUPT_DIR = "corrupt"

# tensorstore's status codes in a failed read, in words.
_STATUS = {"NOT_FOUND": "a file is missing", "DATA_LOSS": "a file is damaged", "OUT_OF_RANGE": "a file is truncated",
           "INVALID_ARGUMENT": "a file is damaged", "FAILED_PRECONDITION": "a file is damaged"}


class CheckpointError(RuntimeError):
    """Checkpoints exist but none restores (the damaged ones were moved to ``checkpoints/corrupt``)."""


class Checkpointer:
    """Saves and restores (state, meta) pairs, keeping the newest ``keep`` steps.

    A context manager: leaving the ``with`` block waits for pending saves and
    releases the manager (:meth:`close`).

    Attributes:
      directory: ``workdir/checkpoints``.
      manager: the orbax ``CheckpointManager``.
    """

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 2, async_save: bool = True,
                 read_only: bool = False):
        """Opens (or, unless ``read_only``, creates) ``workdir/checkpoints``.

        Args:
          workdir: the run folder.
          keep: newest checkpoints kept.
          async_save: whether saves return before the files are written.
          read_only: open another run's checkpoints to read them
            (``train.init_from``): nothing is created, cleaned up or saved
            there, since that run may still be writing to it.
        """
        self.directory = Path(workdir).absolute() / "checkpoints"
        with _quiet_orbax():  # read_only: orbax logs the save options it turns off
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=not read_only,
                # A killed run can leave orbax temporary directories behind.
                cleanup_tmp_directories=not read_only,
                enable_async_checkpointing=async_save,
                read_only=read_only,
                save_root_metadata=not read_only,
            )
        # Handlers named up front let item_metadata read a step's shapes without restoring it.
        items = dict(item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
                     ) if read_only else dict(item_names=("state", "meta"))
        # Opening reads each step's _CHECKPOINT_METADATA; orbax logs a missing or damaged one, which it does not need.
        with _quiet_orbax():
            self.manager = ocp.CheckpointManager(self.directory, options=options, **items)
            # orbax removes leftover temporary folders in a background thread and
            # waits for it only at the first save; a run that stops before one
            # (a folder whose checkpoints do not restore: exit 2) then races
            # interpreter shutdown and prints a traceback under its one-line
            # error. Waiting here costs one listing of the folder.
            cleanup = getattr(self.manager, "_cleanup_tmp_directory_future", None)
            if cleanup is not None:
                cleanup.result()
                self.manager._cleanup_tmp_directory_future = None

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all complete checkpoints, ascending."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> bool:
        """Saves ``state`` and the JSON ``meta`` as checkpoint ``step`` (no-op if it exists).

        Args:
          step: the number of updates in ``state``.
          state: the train state (device arrays; copied to host before this returns).
          meta: JSON-serialisable data (iterator state, rng, step).

        Returns:
          Whether a save was started.
        """
        if step in self.manager.all_steps():
            return False
        return self.manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def state_metadata(self, step: int) -> Any:
        """The saved state's tree of checkpoint ``step`` with orbax ``ArrayMetadata`` leaves (shape, dtype).

        Reads only metadata files, no array data. Needs ``read_only=True``
        (the handlers that read metadata are named only then).

        Raises:
          Any orbax/IO error of a missing or damaged metadata file.
        """
        with _quiet_orbax():
            tree = self.manager.item_metadata(int(step))["state"]
        if tree is None:
            raise ValueError("the state's metadata is missing")
        return getattr(tree, "tree", tree)

    def restore(self, step: int, abstract_state: Any | None = None) -> tuple[Any, dict]:
        """Restores checkpoint ``step``.

        Args:
          step: a saved step.
          abstract_state: the state's structure with ``ShapeDtypeStruct`` leaves
            carrying shardings (restores straight into that layout); None
            restores plain host arrays in nested dicts/lists.

        Returns:
          ``(state, meta)``.
        """
        if abstract_state is None:
            state_args = ocp.args.StandardRestore()
        else:
            state_args = ocp.args.StandardRestore(abstract_state)
        try:
            restored = self.manager.restore(
                int(step), args=ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore())
            )
        except ValueError as error:
            # A checkpoint saved before the train state had ``model_state`` (its
            # fields: step, params, opt_state) restores into a state whose
            # model_state is empty: restore the three fields and keep the empty one.
            legacy = _legacy_target(abstract_state)
            if legacy is None or "model_state" not in str(error):
                raise
            restored = self.manager.restore(
                int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(legacy),
                                                   meta=ocp.args.JsonRestore())
            )
            restored = {"state": abstract_state.replace(**restored["state"]), "meta": restored["meta"]}
        return restored["state"], restored["meta"]

    def restore_latest(self, abstract_state: Any | None = None, *, check_meta: Callable[[dict], None] | None = None,
                       report: Callable[[str], None] | None = None,
                       move: bool = True) -> tuple[int, Any, dict] | None:
        """``(step, state, meta)`` of the newest checkpoint that restores, or None when there is none.

        A checkpoint that fails to restore (or whose meta ``check_meta``
        rejects) is reported in one line, moved to ``checkpoints/corrupt/``
        and the next older one is tried. orbax's log lines and the stray
        errors of its cancelled reads are kept off the terminal meanwhile.

        Args:
          abstract_state: see :meth:`restore`.
          check_meta: raises (any exception) when a restored meta lacks what
            the caller needs.
          report: receives the one-line report of each damaged checkpoint.
          move: whether this process moves damaged checkpoints aside (on
            several processes sharing the folder: process 0 only).

        Returns:
          The newest restorable checkpoint, or None when the folder holds none
          (no step, and nothing in ``checkpoints/corrupt``).

        Raises:
          CheckpointError: checkpoints exist (or were moved aside earlier) but
            none restores.
        """
        moved = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                with _quiet_orbax():
                    state, meta = self.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - any failure means this checkpoint cannot be used
                reason = failure_reason(e)
                _drop_unawaited_warnings()
            else:
                try:
                    if check_meta is not None:
                        check_meta(meta)
                    return step, state, meta
                except Exception as e:  # noqa: BLE001 - as above
                    reason = f"its meta is unusable: {failure_reason(e)}"
            where = self.move_aside(step) if move else self.directory / str(step)
            moved.append(step)
            if report is not None:
                report(f"warning: checkpoint {step} in {self.directory} does not restore ({reason}); "
                       f"moved to {where}, trying the next older one")
        corrupt = self.directory / CORRUPT_DIR
        if moved or (corrupt.is_dir() and any(corrupt.iterdir())):
            what = f"steps {', '.join(map(str, moved))} moved to {corrupt}" if moved else f"damaged ones are in {corrupt}"
            raise CheckpointError(f"no checkpoint in {self.directory} restores ({what}); delete {corrupt} to start the "
                                  "run over, or pass another --workdir")
        return None

    def move_aside(self, step: int) -> Path:
        """Moves checkpoint ``step`` to ``checkpoints/corrupt/<step>`` (``<step>-1``, ... if taken).

        Returns:
          Its new path.
        """
        target = self.directory / CORRUPT_DIR / str(step)
        n = 0
        while target.exists():
            n += 1
            target = target.with_name(f"{step}-{n}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.directory / str(step)), str(target))
        self.manager.reload()
        return target

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        # Also on an error: a save already started (the divergence checkpoint,
        # say) is finished before the error leaves run().
        self.close()


def _legacy_target(abstract_state: Any) -> dict | None:
    """The restore target of a checkpoint without ``model_state``, or None when that cannot fit.

    Only a :class:`~seqjax.train.state.TrainState` whose ``model_state`` holds no
    arrays (a model with no collections besides its parameters) can come from
    such a checkpoint.
    """
    from seqjax.train.state import TrainState

    if not isinstance(abstract_state, TrainState) or jax.tree.leaves(abstract_state.model_state):
        return None
    return {"step": abstract_state.step, "params": abstract_state.params, "opt_state": abstract_state.opt_state}


def failure_reason(error: BaseException) -> str:
    """A short phrase for why a checkpoint did not restore (not orbax's traceback).

    Args:
      error: what the restore raised.

    Returns:
      E.g. ``"array data: a file is missing (NOT_FOUND)"``, ``"missing file
      meta/metadata"``, ``"a metadata file is not valid JSON"``, ``"its
      state folder is missing"``.
    """
    chain, e = [], error
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)) for e in chain):
        return "a metadata file is not valid JSON"
    missing = re.search(r"File (\S+) not found", text)
    if missing or any(isinstance(e, FileNotFoundError) for e in chain):
        name = missing.group(1) if missing else next(e.filename for e in chain if isinstance(e, FileNotFoundError))
        parts = Path(str(name)).parts
        return f"missing file {'/'.join(parts[-2:])}"
    status = re.search(r"\b(" + "|".join(_STATUS) + r")\b", text)
    if status:
        return f"array data: {_STATUS[status.group(1)]} ({status.group(1)})"
    if "reading array" in text:
        return "array data: a file is damaged"
    item = re.search(r'Item "(\w+)" was not found', text)
    if item:
        return f"its {item.group(1)} folder is missing"
    if isinstance(error, KeyError):
        return f"no key {error}"
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:120]}"


@contextlib.contextmanager
def _quiet_orbax():
    """Keeps orbax's (absl) log lines about a damaged checkpoint off the terminal, and its stray errors after."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.CRITICAL)
    _drop_stray_errors()
    try:
        yield
    finally:
        absl_logger.setLevel(level)


def _drop_stray_errors() -> None:
    """Installs (once) filters for the errors a failed restore leaves behind in orbax's threads.

    When one array of a restore fails, orbax stops waiting and closes its
    event loop. The other arrays' reads then complete in tensorstore's threads
    and try to wake that loop, each printing a traceback (through
    ``sys.unraisablehook``, ``RuntimeError('Event loop is closed')``), and
    the reads that failed too are tasks and futures whose exception nobody
    retrieves: asyncio logs each ("... exception was never retrieved" and a traceback)
    whenever the task is garbage-collected, possibly after the run's own
    one-line error. Both are dropped; any other error goes through.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_seqjax_drops_closed_loop", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        previous(unraisable)

    hook._seqjax_drops_closed_loop = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_drop_orbax_unretrieved)


def _drop_unawaited_warnings() -> None:
    """After a failed restore: no "coroutine ... was never awaited" warnings at exit.

    orbax leaves the coroutines of the reads it stopped waiting for; Python
    warns about each when it collects them, often at interpreter exit, after
    the run's own one-line message. Installed only once a restore failed, so
    a run that never meets a damaged checkpoint keeps the warning for its own code.
    """
    warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)


_UNRETRIEVED = ("Task exception was never retrieved", "Future exception was never retrieved")


def _drop_orbax_unretrieved(record: logging.LogRecord) -> bool:
    """False (drop) for asyncio's "never retrieved" report of a read that orbax or tensorstore raised.

    The exception comes either with frames in orbax (a task) or without frames
    (a future that tensorstore completed): its message then names the
    tensorstore spec.
    """
    if not record.getMessage().startswith(_UNRETRIEVED) or not record.exc_info:
        return True
    error, tb = record.exc_info[1], record.exc_info[2]
    if "tensorstore_spec" in str(error):
        return False
    while tb is not None:
        if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
            return False
        tb = tb.tb_next
    return True


def abstract_like(tree: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` leaves with the given shardings (restore target).

    Args:
      tree: arrays or ``ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``).
      shardings: a matching pytree of shardings.

    Returns:
      The abstract tree.
    """
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


__all__ = ["Checkpointer", "CheckpointError", "CORRUPT_DIR", "abstract_like", "failure_reason"]
