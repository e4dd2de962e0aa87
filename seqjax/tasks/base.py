"""The contract between tasks and the trainer.

A task owns its data stream, its loss and its evaluation; the trainer
(``seqjax.train``) owns the model, the optimiser, checkpoints and logging.
The trainer only ever calls the methods below, so a new experiment family is
a new :class:`Task` and a config, never a change to the trainer.

Batches are dicts of arrays, batch first. ``batch["inputs"]`` is what the
model is applied to (``model.apply(params, batch["inputs"],
segment_ids=batch.get("segment_ids"), ...)``); every other key is for
:meth:`Task.loss` only.
"""

from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import jax

from seqjax.errors import ConfigError

Batch = dict[str, Any]
Metrics = dict[str, Any]


@runtime_checkable
class DataIterator(Protocol):
    """An infinite iterator of training batches whose position can be saved.

    ``get_state`` returns a JSON-serialisable value; after
    ``set_state(state)`` the iterator yields exactly the batches that followed
    when ``state`` was taken. This is what makes a resumed run end identical to
    an uninterrupted one.
    """

    def __iter__(self) -> Iterator[Batch]: ...

    def __next__(self) -> Batch: ...

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


@runtime_checkable
class Task(Protocol):
    """One experiment family's data, loss and metrics.

    Attributes:
      name: the task's registry name (``config.task.name``).
      max_length: the longest ``inputs`` length the task feeds the model (the
        trainer checks it against ``config.model.max_length``).
    """

    name: str
    max_length: int

    def train_iterator(self, seed: int, batch_size: int) -> DataIterator:
        """The training stream: deterministic given ``seed`` and ``batch_size``."""
        ...

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
        """Scalar training loss and a dict of scalar metrics; jittable.

        Args:
          outputs: the model's output on ``batch["inputs"]``.
          batch: the batch (targets, masks, ...).
        """
        ...

    def evaluate(self, predict: Callable[[Batch], jax.Array], seed: int) -> Metrics:
        """Final metrics, JSON-serialisable (host side; may call ``predict`` many times).

        Args:
          predict: ``batch -> outputs`` of the current model (jitted, deterministic).
          seed: seed of the evaluation data, where the task samples it.
        """
        ...


def host_shard(batch_size: int) -> tuple[int, tuple[int, int]]:
    """This host's share of a global batch: ``(per-host batch size, (process index, process count))``.

    Args:
      batch_size: the global batch size (``config.train.batch_size``).

    Returns:
      The per-host batch size and the ``shard`` argument of the grain loader.

    Raises:
      ConfigError: ``batch_size`` is not a multiple of the process count.
    """
    procs = jax.process_count()
    if batch_size % procs:
        raise ConfigError(f"config.train.batch_size={batch_size} is not allowed; allowed: multiples of "
                          f"the process count {procs}")
    return batch_size // procs, (jax.process_index(), procs)
