"""Lowering a jitted function for an accelerator from the CPU machine (no device needed).

``jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))`` runs the
Pallas -> Mosaic GPU / Triton / Mosaic TPU lowering, which checks block shapes
and shared-memory / VMEM budgets at realistic sizes without allocating them;
args may be ``jax.ShapeDtypeStruct``s. The Triton lowering (from JAX 0.11) and
the Mosaic TPU lowering ask the device for its kind (compute capability, VMEM
size); without one they are told it through an abstract mesh.

Where the ``libtpu`` package is installed (``pip install -e ".[tpu-compile]"``;
``.ci/run`` does, for its TPU step), :func:`lower` for ``"tpu"`` also compiles
the function with libtpu for a TPU v5e topology, without a TPU
(:func:`compile_for_tpu`): Mosaic TPU's own compiler then checks what lowering
cannot (vector layouts, alignment, the kernel's VMEM at compile time).
``SEQJAX_COMPILE_TPU=0`` turns that off; ``SEQJAX_COMPILE_TPU=v6e:2x2`` (any
topology name libtpu knows) picks another generation.
"""

import functools
import importlib.util
import os
import re

import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

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

# The TPU topology compile_for_tpu compiles for: the same generation.
TPU_TOPOLOGY = "v5e:2x2"


def specs(*shapes_and_dtypes) -> tuple[jax.ShapeDtypeStruct, ...]:
    """``jax.ShapeDtypeStruct``s from ``(shape, dtype)`` pairs."""
    return tuple(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes_and_dtypes)


def abstract_mesh(platform):
    """The one-device abstract mesh, axis ``"x"``, that :func:`lower` lowers under (on TPU, the
    compiled topology's device where :func:`compiles_for_tpu`, so both agree).

    Args whose ``sharding`` names it (``NamedSharding(abstract_mesh(p), spec)``)
    can enter a ``jax.shard_map`` over ``"x"`` (ring attention, say).
    """
    if platform == "tpu" and compiles_for_tpu():
        return _topology_mesh(os.environ.get("SEQJAX_COMPILE_TPU") or TPU_TOPOLOGY).abstract_mesh
    return AbstractMesh((1,), ("x",), abstract_device=DEVICES[platform])


@functools.cache
def _topology_mesh(topology: str) -> Mesh:
    """A one-device mesh, axis ``"x"``, on the first device of a libtpu ``topology`` (no TPU needed)."""
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
    return Mesh(np.array(devices[:1]), ("x",))


def lower(fn, args, platform):
    """``jax.jit(fn)`` lowered for ``platform`` (``"cuda"`` or ``"tpu"``) at the shapes of ``args``.

    Raises whatever the lowering raises (e.g. a block that overflows shared memory).

    Returns:
      The ``jax.stages.Lowered``; its ``as_text()`` holds the kernels' custom calls.
    """
    with jax.sharding.use_abstract_mesh(abstract_mesh(platform)):
        lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))
    if platform == "tpu" and compiles_for_tpu():
        compile_for_tpu(fn, args, os.environ.get("SEQJAX_COMPILE_TPU") or TPU_TOPOLOGY)
    return lowered


def compiles_for_tpu() -> bool:
    """Whether :func:`lower` also compiles for TPU: libtpu installed and ``SEQJAX_COMPILE_TPU`` not ``"0"``."""
    return os.environ.get("SEQJAX_COMPILE_TPU") != "0" and importlib.util.find_spec("libtpu") is not None


def compile_for_tpu(fn, args, topology: str = TPU_TOPOLOGY):
    """``jax.jit(fn)`` compiled by libtpu for a TPU ``topology`` without a TPU (deviceless AOT).

    Runs Mosaic TPU's own compiler on every kernel (vector layouts, alignment
    proofs, VMEM), which lowering alone does not. Needs the ``libtpu`` package.

    Returns:
      The ``jax.stages.Compiled``.
    """
    mesh = _topology_mesh(topology)

    def place(a):
        spec = a.sharding.spec if isinstance(getattr(a, "sharding", None), NamedSharding) else PartitionSpec()
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, spec))

    # The mesh in context tells the Pallas TPU lowering the device kind (the default device is the CPU).
    with jax.set_mesh(mesh):
        return jax.jit(fn).trace(*(place(a) for a in args)).lower().compile()


def lower_for(fn, args, platform: str) -> str:
    """The StableHLO text of :func:`lower`."""
    return lower(fn, args, platform).as_text()


def kernel_calls(text: str, platform: str) -> int:
    """How many Mosaic kernel custom calls for ``platform`` the lowered ``text`` holds."""
    return len(re.findall(rf"custom_call @{KERNEL_CALL[platform]}\w*", text))
