"""Checkpoints under ``workdir/checkpoints`` with orbax, for auto-resume.

Each checkpoint step directory holds two items:

``state``
  the :class:`~seqjax.train.state.TrainState` (params, optimiser state, step).
``meta``
  JSON: ``{"step": int, "data_iterator": <DataIterator.get_state()>, "rng": [key data]}``
  — what, together with the state, makes a resumed run identical to an
  uninterrupted one.

Orbax writes each step into a temporary directory and renames it when complete,
so a run killed mid-save leaves no half checkpoint that a restore could pick.
"""

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores (state, meta) pairs, keeping the newest ``keep`` steps.

    A context manager: leaving the ``with`` block waits for pending saves and
    releases the manager (:meth:`close`).

    Attributes:
      directory: ``workdir/checkpoints``.
      manager: the orbax ``CheckpointManager``.
    """

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 2, async_save: bool = True):
        self.directory = Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            # A killed run can leave orbax temporary directories behind.
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

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
        restored = self.manager.restore(
            int(step), args=ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore())
        )
        return restored["state"], restored["meta"]

    def restore_latest(self, abstract_state: Any | None = None) -> tuple[int, Any, dict] | None:
        """``(step, state, meta)`` of the newest checkpoint, or None when there is none."""
        step = self.latest_step()
        if step is None:
            return None
        state, meta = self.restore(step, abstract_state)
        return step, state, meta

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


def abstract_like(tree: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` leaves with the given shardings (restore target).

    Args:
      tree: arrays or ``ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``).
      shardings: a matching pytree of shardings.

    Returns:
      The abstract tree.
    """
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


__all__ = ["Checkpointer", "abstract_like"]
