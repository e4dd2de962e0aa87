"""Sequence mixers: thin Flax linen modules over ``seqjax.ops``, one file per family.

Every mixer maps ``x: (batch, length, d_model)`` to the same shape with
``__call__(x, *, segment_ids=None, deterministic=True)``. Causal mixers also
have ``init_cache(batch_size, max_length=None)`` and ``step(x_t, cache)``;
mixers whose output is linear in a projection of ``x`` expose
``mixing_matrix(x)``; all expose ``state_size(...)`` (bytes of recurrent state
or KV cache per sequence at inference). See ``docs/mixers.md``.

Use :func:`get` and :func:`names`; importing this package registers every family.
"""

from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.registry import get, names, register

# Importing a family registers its mixers.
from seqjax.mixers import (  # noqa: E402,F401  isort: skip
    aaren, attention, hydra, linear, lru, lssl, mamba, mamba2, ngram, recurrent, retention, s4, s5, xlstm,
)

__all__ = ["Mixer", "Projection", "get", "names", "register"]
