"""grain input pipeline: shuffled, host-sharded, padded numpy batches with resumable state.

:func:`make_loader` wraps a random-access source (a tfds
``as_data_source`` split, or any object with ``__len__``/``__getitem__``
returning dicts of numpy arrays) in a ``grain.python.DataLoader``:

1. ``IndexSampler`` shuffles record indices with ``seed`` (a fresh
   permutation per epoch, deterministic), repeats ``num_epochs`` times
   (``None`` = forever) and keeps this host's shard of the records
   (``ShardOptions(index, count, drop_remainder=True)``: each host reads a
   disjoint, equal-sized contiguous slice of the record indices).
2. :class:`PadFeatures` pads (or cuts) variable-length features to a fixed
   length so batches have static shapes (one XLA compile).
3. ``grain.Batch`` stacks ``batch_size`` examples (remainder dropped, so
   batches are always full; with repetition they span epoch boundaries).

The returned :class:`Loader` is a ``seqjax.tasks.base.DataIterator``:
``get_state()`` is a JSON-able dict (grain's own state, decoded) and after
``set_state(state)`` the loader yields exactly the batches that followed.
``batch_size`` is per host.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import grain.python as grain
import numpy as np

from seqjax.errors import ConfigError


class PadFeatures(grain.MapTransform):
    """Pads axis 0 of selected features to fixed lengths; drops unlisted features.

    Features longer than their length are cut (a prompt longer than the model
    input is truncated).

    Attributes:
      lengths: feature name → (length, pad value).
      keep: names of features to keep unpadded (must already be fixed-shape).
    """

    def __init__(self, lengths: Mapping[str, tuple[int, int]], keep: Sequence[str] = ()):
        self.lengths = dict(lengths)
        self.keep = tuple(keep)

    def map(self, element):
        out = {}
        for name, (length, value) in self.lengths.items():
            x = np.asarray(element[name])
            x = x[:length]
            pad = [(0, length - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
            out[name] = np.pad(x, pad, constant_values=value)
        for name in self.keep:
            out[name] = np.asarray(element[name])
        return out


class Loader:
    """An infinite (or ``num_epochs``-long) iterator of padded batches with saveable position.

    Attributes:
      data_loader: the underlying ``grain.python.DataLoader``.
    """

    def __init__(self, data_loader: grain.DataLoader):
        self.data_loader = data_loader
        self._it = iter(data_loader)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        """JSON-able position in the stream (grain's state without the source's repr)."""
        state = json.loads(self._it.get_state().decode())
        # The source's repr holds a memory address: not reproducible, and
        # grain does not check it on restore.
        state.pop("data_source", None)
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Resumes right after the batch at which ``state`` was taken."""
        state = dict(state)
        state.setdefault("data_source", repr(self.data_loader._data_source))  # noqa: SLF001
        self._it.set_state(json.dumps(state).encode())


def _default_shard() -> tuple[int, int]:
    import jax  # only here: the pipeline itself is numpy + grain

    return jax.process_index(), jax.process_count()


def make_loader(source, *, batch_size: int, seed: int, shuffle: bool = True, pad_to: int | None,
                pad_id: int = 0, num_epochs: int | None = None, shard: tuple[int, int] | None = None,
                worker_count: int = 0, features: Sequence[str] = ("inputs", "targets"),
                extra_pad: Mapping[str, tuple[int, int]] | None = None, keep: Sequence[str] = (),
                read_threads: int = 2, prefetch: int = 64) -> Loader:
    """A grain loader of padded batches over ``source``.

    Args:
      source: random-access source of dicts of numpy arrays.
      batch_size: examples per batch on this host.
      seed: shuffle seed.
      shuffle: shuffle record order (each epoch a new permutation).
      pad_to: length that ``features`` are padded/cut to.
      pad_id: padding value of ``features``.
      num_epochs: passes over the data; None = forever.
      shard: ``(index, count)`` of this host; default
        ``(jax.process_index(), jax.process_count())``.
      worker_count: grain worker processes (0 = in-process; deterministic
        either way).
      features: variable-length 1-D features padded to ``pad_to``.
      extra_pad: other features to pad on axis 0: name → (length, value),
        e.g. ``{"transitions": (12, -1)}``.
      keep: fixed-shape features passed through unpadded. Any feature not
        named in ``features``, ``extra_pad`` or ``keep`` is dropped.
      read_threads: grain reader threads per process (grain's default 16
        costs seconds of thread start-up per iterator; records here are small).
      prefetch: grain's read-ahead buffer in records.

    Returns:
      A :class:`Loader`.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be an int >= 1")
    if not isinstance(pad_to, int) or pad_to < 1:
        raise ConfigError(f"pad_to={pad_to!r} must be an int >= 1")
    index, count = shard if shard is not None else _default_shard()
    if not (0 <= index < count):
        raise ConfigError(f"shard={(index, count)!r} is not allowed; allowed: (index, count) with 0 <= index < count")
    n = len(source)
    if n // count < batch_size and num_epochs is not None:
        raise ConfigError(f"batch_size={batch_size} is larger than this host's {n // count} records; "
                          f"allowed: <= {n // count} or num_epochs=None")
    if n // count < 1:
        raise ConfigError(f"shard={(index, count)!r} leaves no records of {n}; allowed: fewer hosts than records")
    lengths = {name: (pad_to, pad_id) for name in features}
    lengths.update(extra_pad or {})
    sampler = grain.IndexSampler(
        num_records=n,
        shard_options=grain.ShardOptions(shard_index=int(index), shard_count=int(count), drop_remainder=True),
        shuffle=shuffle,
        num_epochs=num_epochs,
        seed=int(seed),
    )
    loader = grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[PadFeatures(lengths, keep), grain.Batch(batch_size, drop_remainder=True)],
        worker_count=worker_count,
        read_options=grain.ReadOptions(num_threads=int(read_threads), prefetch_buffer_size=int(prefetch)),
    )
    return Loader(loader)


__all__ = ["Loader", "PadFeatures", "make_loader"]
