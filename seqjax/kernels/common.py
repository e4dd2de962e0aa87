"""What the Pallas kernels share: choosing the kernel body for the platform a call is lowered for."""

from collections.abc import Callable
from typing import Any

from jax import lax
from jax.experimental.pallas import tpu as pltpu

# The kernel semantics a test may ask for on CPU (interpret mode).
SEMANTICS = ("gpu", "tpu")


def on_platform(build: Callable[[str, Any], Callable], *args, interpret: str | None = None):
    """Runs the kernel that ``build`` makes for the platform the call is lowered for.

    ``build(kind, interpret)`` returns a function of ``*args``; ``kind`` is
    ``"gpu"`` or ``"tpu"`` (the kernel body and block layout) and ``interpret``
    is what ``pl.pallas_call(interpret=...)`` takes: ``False`` on the device,
    ``True`` (GPU semantics) or a ``pltpu.InterpretParams`` (TPU semantics) on
    CPU. The choice is made at lowering time (``lax.platform_dependent``), so
    one jitted function lowers for ``cuda``, ``tpu`` and ``cpu`` alike, and a
    CPU machine can lower it for the accelerators
    (``jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))``).

    Args:
      build: ``(kind, interpret) -> fn``.
      *args: the arrays passed to ``fn``.
      interpret: None on the normal path (CPU runs the GPU kernel
        interpreted); ``"gpu"`` or ``"tpu"`` forces that kernel in interpret
        mode on any platform (the tests' way to check TPU semantics on CPU).

    Returns:
      What ``fn(*args)`` returns.
    """
    if interpret is not None:
        if interpret not in SEMANTICS:
            raise ValueError(f"interpret={interpret!r} is not one of {SEMANTICS} or None")
        return build(interpret, True if interpret == "gpu" else pltpu.InterpretParams())(*args)
    return lax.platform_dependent(
        *args,
        cpu=build("gpu", True),
        cuda=build("gpu", False),
        tpu=build("tpu", False),
    )
