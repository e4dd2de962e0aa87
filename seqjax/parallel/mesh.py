"""The device mesh from ``config.mesh``: axes ``data``, ``fsdp``, ``sequence``, ``tensor``.

``config.mesh`` holds one size per axis and the name of a rule preset
(:mod:`seqjax.parallel.rules`)::

    mesh = {"data": -1, "fsdp": 1, "sequence": 1, "tensor": 1, "preset": "dp"}

Every axis is always present (size 1 when unused), so that specs and rules can
name any axis on any mesh. At most one size may be ``-1``: it takes the
devices the others leave. The product of the sizes must equal the number of
devices used; a smaller product uses the first devices only (handy on one host,
an error across hosts, where every device must take part).

Axis order is ``(data, fsdp, sequence, tensor)``: the outermost axis changes
slowest over ``jax.devices()``, so ``data`` replicas sit on different hosts and
``tensor`` (the most communication-hungry) stays within a host, as
``jax.make_mesh`` arranges for the physical topology.
"""

import math
from collections.abc import Mapping

import jax
import ml_collections
from jax.sharding import AxisType, Mesh

from seqjax.errors import ConfigError

AXES = ("data", "fsdp", "sequence", "tensor")
"""Mesh axis names, outermost first."""

PRESET_FIELD = "preset"


def default_config() -> ml_collections.ConfigDict:
    """``config.mesh`` defaults: pure data parallelism over every device.

    Returns:
      ``{"data": -1, "fsdp": 1, "sequence": 1, "tensor": 1, "preset": "dp"}``.
    """
    return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "sequence": 1, "tensor": 1, "preset": "dp"})


def _get(section, key, default):
    if isinstance(section, Mapping):
        return section.get(key, default)
    return section.get(key, default) if hasattr(section, "get") else default


def mesh_shape(section, num_devices: int | None = None) -> dict[str, int]:
    """The size of each mesh axis, ``-1`` resolved.

    Args:
      section: ``config.mesh`` (ConfigDict or dict); missing axes are 1 and a
        missing ``data`` is -1.
      num_devices: devices available (default ``jax.device_count()``).

    Returns:
      ``{axis: size}`` in :data:`AXES` order.

    Raises:
      ConfigError: a size that is not a positive int (or -1), two ``-1``, a
        product that does not fit the devices, or an unknown key.
    """
    num_devices = jax.device_count() if num_devices is None else num_devices
    known = set(AXES) | {PRESET_FIELD}
    for key in (section.keys() if hasattr(section, "keys") else ()):
        if key not in known:
            raise ConfigError(f"config.mesh.{key} is not a mesh field; allowed: {', '.join(AXES + (PRESET_FIELD,))}")
    sizes = {}
    for axis in AXES:
        value = _get(section, axis, -1 if axis == "data" else 1)
        if not isinstance(value, int) or isinstance(value, bool) or not (value == -1 or value >= 1):
            raise ConfigError(f"config.mesh.{axis}={value!r} must be -1 (the remaining devices) or an int >= 1")
        sizes[axis] = value
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ConfigError(f"config.mesh: at most one axis may be -1; got {', '.join(f'{a}=-1' for a in free)}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f"config.mesh.{free[0]}=-1: the other axes ({fixed} devices) do not divide the {num_devices} devices"
            )
        sizes[free[0]] = num_devices // fixed
    total = math.prod(sizes.values())
    if total > num_devices:
        shown = " x ".join(f"config.mesh.{a}={s}" for a, s in sizes.items() if s > 1)
        raise ConfigError(f"{shown} needs {total} devices; {num_devices} available")
    if total < num_devices and jax.process_count() > 1:
        raise ConfigError(
            f"config.mesh uses {total} of {num_devices} devices; across {jax.process_count()} processes every "
            f"device must be in the mesh"
        )
    return sizes


def make_mesh(section=None, num_devices: int | None = None) -> Mesh:
    """A mesh with the four axes of :data:`AXES` (sizes from ``config.mesh``).

    Args:
      section: ``config.mesh`` (None: :func:`default_config`).
      num_devices: devices available (default ``jax.device_count()``).

    Returns:
      A ``jax.sharding.Mesh`` over the first ``prod(sizes)`` devices, every axis
      of type ``Auto`` (the partitioner propagates shardings; ``shard_map``
      makes axes manual where a mixer needs it).

    Raises:
      ConfigError: as :func:`mesh_shape`.
    """
    sizes = mesh_shape(default_config() if section is None else section, num_devices)
    total = math.prod(sizes.values())
    devices = jax.devices()
    kwargs = {} if total == len(devices) else {"devices": devices[:total]}
    return jax.make_mesh(tuple(sizes.values()), AXES, axis_types=(AxisType.Auto,) * len(AXES), **kwargs)


__all__ = ["AXES", "default_config", "mesh_shape", "make_mesh"]
