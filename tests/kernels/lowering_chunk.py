"""Lowering a jitted function for an accelerator from a CPU machine (the chunked kernels' tests).

``jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))`` runs the
Pallas -> Triton / Mosaic TPU lowering without a device, so shared-memory,
VMEM and block-shape errors show on CPU; args may be ``jax.ShapeDtypeStruct``s.
The Triton lowering (from JAX 0.11) and the Mosaic TPU lowering ask the
device for its kind (compute capability, VMEM size); without one they are told
it through an abstract mesh.
"""

import jax
from jax.sharding import AbstractMesh

try:
    from jax.sharding import AbstractDevice
except ImportError:  # JAX 0.10 keeps it private
    from jax._src.mesh import AbstractDevice

# The devices lowered for: the GPU this project is lent, and a TPU generation
# with the smallest VMEM still in service (v5e: 128 MiB, 16 MiB scoped by default).
DEVICES = {
    "cuda": AbstractDevice("NVIDIA H200", None, "gpu"),
    "tpu": AbstractDevice("TPU v5 lite", 1, "tpu"),
}


def lower(fn, args, platform):
    """``fn`` lowered for ``platform`` (``"cuda"`` or ``"tpu"``) at the shapes of ``args``.

    Returns:
      The ``jax.stages.Lowered``; its ``as_text()`` holds the kernels' custom calls.
    """
    mesh = AbstractMesh((1,), ("x",), abstract_device=DEVICES[platform])
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))
