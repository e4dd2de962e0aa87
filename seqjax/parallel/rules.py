"""Logical-axis rules: which mesh axes each named array dimension is split over.

Modules name the dimensions of their parameters (``nn.with_logical_partitioning``
in ``seqjax/mixers/_layers.py`` and the mixers) and of the residual stream
(``nn.with_logical_constraint`` in the backbone) with the logical names

    batch, length, embed, heads, state, mlp, vocab

and a *preset* maps them to the mesh axes of :mod:`seqjax.parallel.mesh`:

=================  ==========================================================
preset             rules (logical -> mesh axes, in priority order)
=================  ==========================================================
``dp``             batch -> data. Parameters replicated.
``fsdp``           batch -> (data, fsdp); parameters split over ``fsdp`` along
                   their first splittable dimension among embed, mlp, heads,
                   vocab, state (ZeRO-3: gathered per layer in the step).
``fsdp+sequence``  ``fsdp`` plus length -> sequence (the activations' length
                   split; sequence-parallel mixers, see
                   :mod:`seqjax.parallel.sequence`).
``fsdp+tensor``    ``fsdp`` plus heads/mlp/vocab -> tensor first (Megatron-style
                   column/row splits of the projections), embed -> fsdp.
=================  ==========================================================

Rules are applied in order; a mesh axis is used at most once per array, and a
dimension is only split when its size is divisible by the axes' total size
(otherwise the next rule is tried, and finally the dimension is replicated), so
any model runs on any mesh. Parameters without names are replicated.
"""

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seqjax.errors import ConfigError

Rules = tuple[tuple[str, str | tuple[str, ...]], ...]

LOGICAL_AXES = ("batch", "length", "embed", "heads", "state", "mlp", "vocab")
"""The logical dimension names modules use."""

_FSDP_PARAMS: Rules = (("embed", "fsdp"), ("mlp", "fsdp"), ("heads", "fsdp"), ("vocab", "fsdp"), ("state", "fsdp"))

PRESETS: dict[str, Rules] = {
    "dp": (("batch", "data"),),
    "fsdp": (("batch", ("data", "fsdp")),) + _FSDP_PARAMS,
    "fsdp+sequence": (("batch", ("data", "fsdp")), ("length", "sequence")) + _FSDP_PARAMS,
    "fsdp+tensor": (
        ("batch", ("data", "fsdp")), ("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"),
    ) + _FSDP_PARAMS,
}
"""Rule presets by name (see the module docstring)."""

# The mesh axes a preset splits something over; a mesh axis of size > 1 that
# the preset never uses would hold copies, which is a config mistake.
_USED = {name: {a for _, axes in rules for a in ((axes,) if isinstance(axes, str) else axes)}
         for name, rules in PRESETS.items()}


def get_rules(preset: str) -> Rules:
    """The rules of a preset.

    Args:
      preset: a key of :data:`PRESETS`.

    Returns:
      The rules, a tuple of ``(logical name, mesh axis or axes)``.

    Raises:
      ConfigError: an unknown preset (naming ``config.mesh.preset``).
    """
    if preset not in PRESETS:
        raise ConfigError(f"config.mesh.preset={preset!r} is not allowed; allowed: {', '.join(PRESETS)}")
    return PRESETS[preset]


def check_preset(preset: str, sizes: dict[str, int]) -> None:
    """Raises unless every mesh axis of size > 1 is used by the preset.

    Args:
      preset: ``config.mesh.preset``.
      sizes: mesh axis sizes (:func:`seqjax.parallel.mesh.mesh_shape`).

    Raises:
      ConfigError: e.g. ``mesh.sequence=2`` with preset ``fsdp``.
    """
    get_rules(preset)
    for axis, size in sizes.items():
        if size > 1 and axis not in _USED[preset]:
            users = [p for p, used in _USED.items() if axis in used]
            raise ConfigError(
                f"config.mesh.{axis}={size} but config.mesh.preset={preset!r} does not use the {axis!r} axis; "
                f"use one of: {', '.join(users)} (or set config.mesh.{axis}=1)"
            )


def _axes(entry) -> tuple[str, ...]:
    return (entry,) if isinstance(entry, str) else tuple(entry)


def logical_to_spec(
    names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh, rules: Rules
) -> PartitionSpec:
    """The PartitionSpec of one array from its logical dimension names.

    Args:
      names: one logical name (or None) per dimension; None for no names.
      shape: the array's shape (a dimension is split only when divisible).
      mesh: the mesh (axes absent from it, or of size 1, are skipped).
      rules: the rules, in priority order.

    Returns:
      A PartitionSpec with one entry per dimension.
    """
    if names is None:
        return PartitionSpec()
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
    spec: list = [None] * len(shape)
    used: set[str] = set()
    for logical, entry in rules:
        if logical not in names:
            continue
        dim = list(names).index(logical)
        if spec[dim] is not None:
            continue
        axes = tuple(a for a in _axes(entry) if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
        if not axes:
            continue
        size = 1
        for a in axes:
            size *= mesh.shape[a]
        if shape[dim] % size:
            # Not divisible by all of them: try the leading ones alone (e.g. the
            # data axis of (data, fsdp) for a small eval batch).
            while axes and shape[dim] % size:
                size //= mesh.shape[axes[-1]]
                axes = axes[:-1]
            if not axes:
                continue
        spec[dim] = axes[0] if len(axes) == 1 else axes
        used.update(axes)
    return PartitionSpec(*spec)


def _names(leaf) -> tuple | None:
    return tuple(leaf.names) if isinstance(leaf, nn.LogicallyPartitioned) else None


def _is_box(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def param_specs(boxed_params: Any, mesh: Mesh, rules: Rules) -> Any:
    """PartitionSpecs of a boxed parameter tree (as ``model.init`` returns it).

    Args:
      boxed_params: params with ``nn.LogicallyPartitioned`` leaves (arrays or
        ``ShapeDtypeStruct``, e.g. from ``jax.eval_shape(model.init, ...)``).
      mesh: the mesh.
      rules: the rules.

    Returns:
      The *unboxed* tree structure with a PartitionSpec per leaf.
    """
    def one(leaf):
        value = leaf.value if _is_box(leaf) else leaf
        return logical_to_spec(_names(leaf), jnp.shape(value), mesh, rules)

    return jax.tree.map(one, boxed_params, is_leaf=_is_box)


def _path_key(path) -> tuple:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def tree_shardings_like_params(tree: Any, params_specs: Any, mesh: Mesh) -> Any:
    """Shardings for a tree that holds copies of the params (optimiser moments).

    A leaf whose path ends with a parameter's path and has that parameter's
    shape gets the parameter's spec (Adam's ``mu``/``nu``, a mask's
    ``inner_state``...); everything else (step counters, scalars) is replicated.

    Args:
      tree: the pytree (arrays or ``ShapeDtypeStruct``).
      params_specs: :func:`param_specs` of the params.
      mesh: the mesh.

    Returns:
      A matching tree of ``NamedSharding``.
    """
    by_path = {_path_key(p): s for p, s in jax.tree_util.tree_flatten_with_path(params_specs)[0]}
    lengths = sorted({len(k) for k in by_path}, reverse=True)

    def one(path, leaf):
        key = _path_key(path)
        for n in lengths:
            spec = by_path.get(key[-n:]) if len(key) >= n else None
            if spec is not None and len(spec) <= len(jnp.shape(leaf)):
                return NamedSharding(mesh, spec)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_shardings(batch: Any, mesh: Mesh, rules: Rules) -> Any:
    """Shardings of a batch: dimension 0 is ``batch``, dimension 1 ``length`` (rank >= 2).

    Args:
      batch: a pytree of arrays (or shapes); scalars are replicated.
      mesh: the mesh.
      rules: the rules.

    Returns:
      A matching tree of ``NamedSharding``.
    """
    def one(x):
        shape = jnp.shape(x)
        names = ("batch", "length")[: len(shape)] + (None,) * max(len(shape) - 2, 0)
        return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))

    return jax.tree.map(one, batch)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Makes ``mesh`` the context mesh and ``rules`` the logical rules.

    Trace (call for the first time) jitted model code inside it: the backbone's
    ``nn.with_logical_constraint`` and the sequence-parallel mixers'
    ``shard_map`` read both from the context.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield



def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` of ``x`` by logical names, under the context mesh and rules.

    A no-op outside :func:`activate` (no context mesh or no rules), so models
    run unchanged on one device. Dimensions that the mesh does not divide stay
    unsplit (see :func:`logical_to_spec`).

    Args:
      x: the array.
      names: one logical name (or None) per dimension of ``x``.

    Returns:
      ``x``, constrained.
    """
    mesh = jax.sharding.get_abstract_mesh()
    rules = nn.get_logical_axis_rules()
    if mesh.empty or not rules:
        return x
    spec = logical_to_spec(names, x.shape, mesh, tuple(rules))
    return jax.lax.with_sharding_constraint(x, spec)

__all__ = [
    "Rules", "LOGICAL_AXES", "PRESETS", "get_rules", "check_preset", "logical_to_spec", "param_specs",
    "tree_shardings_like_params", "batch_shardings", "activate", "constrain",
]
