"""Lowering a function for an accelerator from the CPU machine (no device needed).

``jax.jit(fn).trace(*specs).lower(lowering_platforms=(platform,))`` runs the
Pallas -> Mosaic GPU / Mosaic TPU lowering, which checks block shapes and
shared-memory / VMEM budgets at realistic sizes without allocating them.
"""

import re

import jax

# The custom call each platform's Pallas kernels lower to.
KERNEL_CALL = {"cuda": "mosaic_gpu", "tpu": "tpu_custom_call"}


def specs(*shapes_and_dtypes) -> tuple[jax.ShapeDtypeStruct, ...]:
    """``jax.ShapeDtypeStruct``s from ``(shape, dtype)`` pairs."""
    return tuple(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes_and_dtypes)


def lower_for(fn, args, platform: str) -> str:
    """Lowers ``jax.jit(fn)(*args)`` for ``platform`` (``"cuda"`` or ``"tpu"``) and returns the StableHLO text.

    Raises whatever the lowering raises (e.g. a block that overflows shared memory).
    """
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def kernel_calls(text: str, platform: str) -> int:
    """How many Pallas kernel custom calls for ``platform`` the lowered ``text`` holds."""
    return len(re.findall(rf"custom_call @{KERNEL_CALL[platform]}\w*", text))
