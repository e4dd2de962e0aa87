"""What the Pallas kernels share: choosing the kernel body for the platform a call is lowered for."""

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from jax import lax
from jax.experimental.pallas import tpu as pltpu

# The kernel semantics a test may ask for on CPU (interpret mode).
SEMANTICS = ("gpu", "tpu")

# Set by interpret_as(): the semantics on_platform interprets when its caller
# passes interpret=None (so a test can reach a kernel through an op's front
# door, gradients included, with TPU semantics).
_forced: str | None = None


@contextlib.contextmanager
def interpret_as(kind: str) -> Iterator[None]:
    """Within this block, kernels traced with ``interpret=None`` run ``kind``'s kernel interpreted.

    The choice is read when a call is traced: jit a function inside the block
    (a function jitted and traced before keeps what it traced).

    Args:
      kind: ``"gpu"`` or ``"tpu"``.
    """
    global _forced
    if kind not in SEMANTICS:
        raise ValueError(f"interpret_as: kind={kind!r} is not one of {SEMANTICS}")
    before, _forced = _forced, kind
    try:
        yield
    finally:
        _forced = before


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
        interpreted, unless inside :func:`interpret_as`); ``"gpu"`` or
        ``"tpu"`` forces that kernel in interpret mode on any platform (the
        tests' way to check TPU semantics on CPU).

    Returns:
      What ``fn(*args)`` returns.
    """
    if interpret is None:
        interpret = _forced
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


def round_up(size: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is ``>= size``."""
    return -(-size // multiple) * multiple
