"""The contract between tasks and the trainer.

A task owns its data stream, its loss and its evaluation; the trainer
(``seqjax.train``) owns the model, the optimiser, checkpoints and logging.
The trainer only ever calls the methods below, so a new experiment family is
a new :class:`Task` and a config, never a change to the trainer.

Batches are dicts of arrays, batch first. ``batch["inputs"]`` is what the
model is applied to (``model.apply(params, batch["inputs"],
segment_ids=batch.get("segment_ids"), ...)``); every other key is for
:meth:`Task.loss` only.

Uneven splits: a global batch that does not divide over the devices that
split it (``config.mesh.data x fsdp``; LRA's batch 50 on 4 or 8 devices) is
padded by :class:`PaddedIterator` with copies of its first row that carry
``batch["weight"] = 0``. A task whose ``loss`` weighs rows by
:func:`row_weights` (class attribute ``weighted_rows = True``) then trains on
exactly the unpadded batch: the loss, its gradient and the metrics are those of
the real rows.
"""

import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

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

    Optional: ``weighted_rows = True`` declares that :meth:`loss` weighs rows by
    :func:`row_weights`, so batches may be padded with rows of weight 0; an int
    ``vocab_size`` declares that every token id fed or scored is below it (the
    trainer checks ``config.model.vocab_size`` against it,
    ``seqjax.train.config.check_vocab``).
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


class StepIterator:
    """A resumable training stream whose position is the step number (the iterator most tasks need).

    Step ``s`` yields ``make_batch(s, first, rows)``: this process's ``rows``
    rows of global batch ``s``, which are the global rows ``first .. first +
    rows - 1`` (:func:`host_shard`). A batch must depend only on ``(s, first,
    rows)`` and the task's seed, so that ``set_state`` resumes exactly.

    Attributes:
      make_batch: ``(step, first, rows) -> batch``.
      batch_size: global rows per step.
      rows: this process's rows per step.
      first: the global index of this process's first row.
      step: index of the next batch.
    """

    def __init__(self, make_batch: Callable[[int, int, int], Batch], batch_size: int):
        self.make_batch, self.batch_size, self.step = make_batch, int(batch_size), 0
        self.rows, (index, _) = host_shard(self.batch_size)
        self.first = index * self.rows

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        batch = self.make_batch(self.step, self.first, self.rows)
        self.step += 1
        return batch

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state) -> None:
        self.step = int(state["step"])


# --- uneven batch splits -----------------------------------------------------------------

WEIGHT = "weight"
"""Batch key of the per-row loss weight: 1 for real rows, 0 for padding rows."""


def row_weights(batch: Batch, rows: int) -> jax.Array:
    """``batch["weight"]`` as float32 ``(rows,)``, or ones when the batch has none.

    Args:
      batch: a training batch.
      rows: its number of rows.

    Returns:
      The weights a task's ``loss`` multiplies per-row losses by (normalising by
      their sum, so padding rows change nothing).
    """
    if batch.get(WEIGHT) is None:
        return jnp.ones((rows,), jnp.float32)
    return jnp.asarray(batch[WEIGHT], jnp.float32)


def padded_batch_size(batch_size: int, ways: int) -> int:
    """The smallest multiple of ``ways`` that is at least ``batch_size``."""
    return math.ceil(batch_size / ways) * ways


def pad_rows(batch: Batch, rows: int) -> Batch:
    """``batch`` with copies of its first row appended up to ``rows``, and ``weight``.

    Copies of a real row (not zeros) keep every model output finite: an
    all-padding row would pool over no tokens.

    Args:
      batch: dict of arrays with a common leading dimension ``b <= rows``.
      rows: the padded number of rows.

    Returns:
      A new dict: every array padded to ``rows`` rows, plus ``weight`` (float32,
      the input's weights or 1 for real rows, 0 for the copies).
    """
    arrays = {k: np.asarray(v) for k, v in batch.items()}
    b = len(next(iter(arrays.values())))
    if b > rows:
        raise ValueError(f"a batch of {b} rows cannot be padded to {rows}")
    weight = arrays.pop(WEIGHT, np.ones((b,), np.float32)).astype(np.float32)
    extra = rows - b
    out = {k: np.concatenate([v, np.repeat(v[:1], extra, axis=0)]) if extra else v for k, v in arrays.items()}
    out[WEIGHT] = np.concatenate([weight, np.zeros((extra,), np.float32)])
    return out


class PaddedIterator:
    """A task's training iterator whose batches are padded to a fixed number of rows.

    The position is the wrapped iterator's, so a padded run resumes like any other.

    Attributes:
      iterator: the wrapped :class:`DataIterator`.
      rows: rows of every batch (per process).
    """

    def __init__(self, iterator: DataIterator, rows: int):
        self.iterator, self.rows = iterator, int(rows)

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        return pad_rows(next(self.iterator), self.rows)

    def get_state(self) -> Any:
        return self.iterator.get_state()

    def set_state(self, state: Any) -> None:
        self.iterator.set_state(state)
