"""Parallelism: meshes, logical-axis rules, whole-model sequence parallelism, multi-host.

* :mod:`~seqjax.parallel.mesh` — ``config.mesh`` -> a mesh with axes
  ``data``, ``fsdp``, ``sequence``, ``tensor``;
* :mod:`~seqjax.parallel.rules` — logical names -> mesh axes (presets ``dp``,
  ``fsdp``, ``fsdp+sequence``, ``fsdp+tensor``), parameter/state/batch shardings;
* :mod:`~seqjax.parallel.sequence` — :func:`sequence_map`, how a mixer runs its
  core op on length shards (the ops themselves, ring attention and the
  sequence-parallel scans, live in ``seqjax.ops``);
* :mod:`~seqjax.parallel.distributed` — ``jax.distributed`` set-up and
  host-local batches.

See ``docs/parallelism.md``.
"""

from seqjax.parallel.mesh import AXES, make_mesh, mesh_shape
from seqjax.parallel.rules import (
    LOGICAL_AXES,
    PRESETS,
    activate,
    batch_shardings,
    check_preset,
    constrain,
    get_rules,
    logical_to_spec,
    param_specs,
    tree_shardings_like_params,
)
from seqjax.parallel.sequence import sequence_map, sequence_size

__all__ = [
    "AXES", "make_mesh", "mesh_shape",
    "LOGICAL_AXES", "PRESETS", "get_rules", "check_preset", "logical_to_spec", "param_specs",
    "tree_shardings_like_params", "batch_shardings", "activate", "constrain",
    "sequence_map", "sequence_size",
]
