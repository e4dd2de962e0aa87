"""Lowering a jitted function for an accelerator from the CPU machine (no device needed).

``jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))`` runs the
Pallas -> Mosaic GPU / Triton / Mosaic TPU lowering, which checks block shapes
and shared-memory / VMEM budgets at realistic sizes without allocating them;
args may be ``jax.ShapeDtypeStruct``s. The Triton lowering (from JAX 0.11) and
the Mosaic TPU lowering ask the device for its kind (compute capability, VMEM
size); without one they are told it through an abstract mesh.
"""

import re

import jax
from jax.sharding import AbstractMesh

try:
    from jax.sharding import AbstractDevice
except ImportError:  # JAX 0.10 keeps it private
    from jax._src.mesh import AbstractDevice

# The custom call each platform's Mosaic kernels lower to.
KERNEL_CALL = {"cuda": "mosaic_gpu", "tpu": "tpu_custom_call"}

# The devices lowered for: the GPU this project is lent, and a TPU generation
# with the smallest VMEM still in service (v5e: 128 MiB, 16 MiB scoped by default).
DEVICES = {
    "cuda": AbstractDevice("NVIDIA H200", None, "gpu"),
    "tpu": AbstractDevice("TPU v5 lite", 1, "tpu"),
}


def specs(*shapes_and_dtypes) -> tuple[jax.ShapeDtypeStruct, ...]:
    """``jax.ShapeDtypeStruct``s from ``(shape, dtype)`` pairs."""
    return tuple(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes_and_dtypes)


def abstract_mesh(platform):
    """The one-device abstract mesh, axis ``"x"``, that :func:`lower` lowers under.

    Args whose ``sharding`` names it (``NamedSharding(abstract_mesh(p), spec)``)
    can enter a ``jax.shard_map`` over ``"x"`` (ring attention, say).
    """
    return AbstractMesh((1,), ("x",), abstract_device=DEVICES[platform])


def lower(fn, args, platform):
    """``jax.jit(fn)`` lowered for ``platform`` (``"cuda"`` or ``"tpu"``) at the shapes of ``args``.

    Raises whatever the lowering raises (e.g. a block that overflows shared memory).

    Returns:
      The ``jax.stages.Lowered``; its ``as_text()`` holds the kernels' custom calls.
    """
    with jax.sharding.use_abstract_mesh(abstract_mesh(platform)):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))


def lower_for(fn, args, platform: str) -> str:
    """The StableHLO text of :func:`lower`."""
    return lower(fn, args, platform).as_text()


def kernel_calls(text: str, platform: str) -> int:
    """How many Mosaic kernel custom calls for ``platform`` the lowered ``text`` holds."""
    return len(re.findall(rf"custom_call @{KERNEL_CALL[platform]}\w*", text))
