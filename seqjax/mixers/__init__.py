"""Sequence mixers: Flax linen modules on the :class:`Mixer` base, one file per family.

Every mixer maps ``x: (batch, length, d_model)`` to the same shape with
``__call__(x, *, segment_ids=None, deterministic=True)``. Causal mixers also
have ``init_cache(batch_size, max_length=None)`` and ``step(x_t, cache)``;
mixers whose output is linear in a projection of ``x`` expose
``mixing_matrix(x)``; all expose ``state_size(...)`` (bytes of recurrent state
or KV cache per sequence at inference). See ``docs/mixers.md`` and, for the
base class and how to add a mixer, ``docs/architecture.md``.

Use :func:`get` and :func:`names`. Importing this package imports every module
of it, so a new family file registers its mixers (``@register("name")``)
without being listed anywhere.
"""

import importlib
import pkgutil

from seqjax.mixers.base import Mixer, Projection
from seqjax.mixers.registry import get, names, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Mixer", "Projection", "get", "names", "register"]
