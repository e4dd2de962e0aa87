"""What the Pallas kernels share: choosing the kernel for the platform a call is lowered for, and launching it."""

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.experimental.pallas import tpu as pltpu

from seqjax.kernels.partitioning import batch_partitioned
from seqjax.ops.collectives import match_vma

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


def on_platform(build: Callable[[str, Any], Callable], *args, interpret: str | None = None,
                batched: Sequence[bool] | None = None):
    """Runs the kernel that ``build`` makes for the platform the call is lowered for.

    ``build(kind, interpret)`` returns a function of ``*args``; ``kind`` is
    ``"gpu"`` or ``"tpu"`` (the kernel body and block layout) and ``interpret``
    is what ``pl.pallas_call(interpret=...)`` takes: ``False`` on the device,
    ``True`` (GPU semantics) or a ``pltpu.InterpretParams`` (TPU semantics) on
    CPU. The choice is made at lowering time (``lax.platform_dependent``), so
    one jitted function lowers for ``cuda``, ``tpu`` and ``cpu`` alike, and a
    CPU machine can lower it for the accelerators
    (``jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))``).

    Under a ``jit`` that shards the batch over several devices, each device
    launches the kernel on its own rows (:mod:`seqjax.kernels.partitioning`);
    without this XLA would gather the whole batch onto every device.

    Args:
      build: ``(kind, interpret) -> fn``.
      *args: the arrays passed to ``fn``.
      interpret: None on the normal path (CPU runs the GPU kernel
        interpreted, unless inside :func:`interpret_as`); ``"gpu"`` or
        ``"tpu"`` forces that kernel in interpret mode on any platform (the
        tests' way to check TPU semantics on CPU).
      batched: one flag per argument, True where its leading axis is the
        batch (default: all); ``fn``'s results all lead with the batch.

    Returns:
      What ``fn(*args)`` returns.
    """
    args = vary_alike(*args)
    if interpret is None:
        interpret = _forced
    if interpret is not None:
        if interpret not in SEMANTICS:
            raise ValueError(f"interpret={interpret!r} is not one of {SEMANTICS} or None")
        if interpret == "tpu":
            # The TPU interpreter's callbacks carry ordered effects, which
            # custom_partitioning cannot lower; this path only runs in tests.
            return build("tpu", pltpu.InterpretParams())(*args)
        launch = build("gpu", True)
    else:
        def launch(*xs):
            return lax.platform_dependent(
                *xs,
                cpu=build("gpu", True),
                cuda=build("gpu", False),
                tpu=build("tpu", False),
            )
    return batch_partitioned(launch, args, batched)


def vary_alike(*args):
    """``args`` (a tuple; None entries allowed) cast to vary over every mesh axis any of them varies over.

    Inside ``jax.shard_map`` with ``check_vma`` a kernel's outputs are typed
    with one input's variance (:func:`out_struct`), so its inputs must agree.
    :func:`on_platform` applies it; a kernel's public function applies it
    once more *before* its ``custom_vjp``, so that autodiff sums the
    cotangents of replicated inputs (a state, ``A``) back over the mesh. A
    no-op outside ``shard_map``.
    """
    return match_vma(args, *args)


def out_struct(shape, dtype, like) -> jax.ShapeDtypeStruct:
    """A ``pallas_call`` output's shape that varies over the mesh axes ``like`` (an input) varies over.

    Inside ``jax.shard_map`` with ``check_vma`` (ring attention calls the
    attention kernels on its local shards) a ``pallas_call`` must be told how
    each output varies across the mesh; the kernels' outputs vary as their
    inputs do. Outside ``shard_map`` the type is empty and changes nothing.

    Args:
      shape: the output's shape.
      dtype: its dtype.
      like: an input array whose variance the output takes (the inputs
        agree: :func:`vary_alike`).

    Returns:
      The ``jax.ShapeDtypeStruct``.
    """
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.typeof(like).manual_axis_type)


def round_up(size: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is ``>= size``."""
    return -(-size // multiple) * multiple


def grid_call(
    kind: str,
    interpret: Any,
    body: Callable,
    *,
    grid: tuple[int, ...],
    in_specs: Sequence[pl.BlockSpec],
    out_specs: Sequence[pl.BlockSpec],
    out_shape: Sequence[jax.ShapeDtypeStruct],
    scratch_shapes: Sequence[tuple[tuple[int, ...], Any]] = (),
    gpu_stages: int = 1,
) -> Callable:
    """A kernel over ``grid`` whose axes are parallel but the last, which runs in order.

    The layout every scan kernel here uses: parallel programs over (batch,
    channel tiles), the sequence in chunks along the last axis, a state
    carried from chunk to chunk in scratch memory.

    * ``kind="tpu"`` (and any interpret mode): ``pl.pallas_call`` with
      ``dimension_semantics=(parallel, ..., arbitrary)``; scratch in VMEM.
    * ``kind="gpu"`` on the device: Mosaic GPU through its own entry point
      (``plgpu.kernel`` with the parallel axes as the CUDA grid, and
      ``plgpu.emit_pipeline`` over the last axis inside each CTA, TMA copying
      the next blocks into shared memory while the body runs). JAX 0.10
      deprecated ``pl.pallas_call`` for Mosaic GPU and JAX 0.11 no longer
      lowers it (its GPU rule is Triton's), so this is the form that lowers on
      both. Scratch in shared memory; lane semantics (one value per thread,
      what the bodies are written for; 0.11 defaults to warpgroup semantics).

    Args:
      kind: ``"gpu"`` or ``"tpu"``.
      interpret: what ``on_platform`` passes ``build`` (False on the device).
      body: ``body(step, *in_refs, *out_refs, *scratch_refs)`` with ``step``
        the index along the last grid axis.
      grid: the grid; the last axis is the sequential one.
      in_specs, out_specs: BlockSpecs whose index maps take all grid indices.
      out_shape: the outputs.
      scratch_shapes: ``(shape, dtype)`` of each scratch buffer; it persists
        along the last axis.
      gpu_stages: Mosaic GPU pipeline stages in flight (shared memory per
        block times this).

    Returns:
      A function of the input arrays returning the list of outputs.
    """
    if kind == "gpu" and not interpret:
        return _mosaic_gpu_call(body, grid, in_specs, out_specs, out_shape, scratch_shapes, gpu_stages)
    if kind == "gpu":
        scratch = [plgpu.SMEM(shape, dtype) for shape, dtype in scratch_shapes]
        params = None  # the interpreter runs the grid in order on one core
    else:
        scratch = [pltpu.VMEM(shape, dtype) for shape, dtype in scratch_shapes]
        params = pltpu.CompilerParams(dimension_semantics=("parallel",) * (len(grid) - 1) + ("arbitrary",))
    call = pl.pallas_call(
        lambda *refs: body(pl.program_id(len(grid) - 1), *refs),
        grid=grid, in_specs=list(in_specs), out_specs=list(out_specs), out_shape=list(out_shape),
        scratch_shapes=scratch, compiler_params=params, interpret=interpret,
    )
    return lambda *args: list(call(*args))


def _mosaic_gpu_call(body, grid, in_specs, out_specs, out_shape, scratch_shapes, stages):
    names = tuple(f"grid{i}" for i in range(len(grid) - 1))

    def pipelined(spec):
        # The pipeline passes the sequential index; the CTA's own indices come from the grid.
        def index_map(step):
            return spec.index_map(*(lax.axis_index(name) for name in names), step)
        return pl.BlockSpec(spec.block_shape, index_map)

    @plgpu.kernel(
        out_type=list(out_shape),
        scratch_types=[plgpu.SMEM(shape, dtype) for shape, dtype in scratch_shapes],
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane),
        grid=tuple(grid[:-1]),
        grid_names=names,
    )
    def kernel(*refs):
        split = len(refs) - len(scratch_shapes)
        hbm, scratch = refs[:split], refs[split:]

        def step(indices, *blocks):
            body(indices[0], *blocks, *scratch)

        plgpu.emit_pipeline(
            step, grid=grid[-1:], in_specs=[pipelined(s) for s in in_specs],
            out_specs=[pipelined(s) for s in out_specs], max_concurrent_steps=stages,
        )(*hbm)

    # plgpu.kernel drops the outputs' manual axis types (out_struct): inside
    # shard_map they would be typed invariant, unlike the other platforms'
    # branches; they vary as the inputs do.
    return lambda *args: list(match_vma(tuple(kernel(*args)), *args))
