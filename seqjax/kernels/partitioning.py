"""Splitting a kernel launch over the batch axis when ``jit`` shards its inputs.

A ``pallas_call`` lowers to one opaque custom call (Mosaic TPU, Triton,
Mosaic GPU). XLA's SPMD partitioner has no rule for it, so under a ``jit``
whose inputs are sharded over the devices of a mesh (data parallelism, as
``seqjax.train`` runs) it gathers every operand and runs the whole global
batch on every device: correct, but each device does all of the work and
holds all of the data. :func:`batch_partitioned` wraps a launch in
``jax.experimental.custom_partitioning`` with one rule: the leading (batch)
axis of the batched operands and of every result keeps the sharding its
first batched operand arrives with, every other axis is gathered, and each
device launches the kernel on its own rows. That is exact because every
kernel here treats batch rows independently and returns per-row results
(sums over the batch, such as a parameter's gradient, are taken by the
caller after the launch).

The launch is called directly (no ``custom_partitioning``) when the process
sees one device, or the mesh in context has one device or only manual axes (inside ``shard_map``, where the
sequence-parallel ops call the kernels on their local shards); and
``custom_partitioning`` itself lowers straight to the kernel on one device.
So single-device programs and the lowering tests see the kernel itself.
"""

import itertools
from collections.abc import Callable, Sequence

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def _rule(args: Sequence[jax.ShapeDtypeStruct], batched: Sequence[bool], results) -> str:
    """The Shardy rule: ``b`` for every batch axis, a factor of its own for every other axis."""
    count = itertools.count()

    def factors(ndim, batch):
        names = [f"x{next(count)}" for _ in range(ndim - (1 if batch else 0))]
        return " ".join((["b"] if batch else []) + names)

    inputs = ", ".join(factors(a.ndim, b) for a, b in zip(args, batched))
    outputs = ", ".join(factors(r.ndim, True) for r in results)
    return f"{inputs} -> {outputs}"


def _batch_entry(shapes, batched):
    """The mesh axes the first batched operand's leading axis is split over (None: not split)."""
    for shape, is_batched in zip(shapes, batched):
        if is_batched:
            spec = getattr(shape.sharding, "spec", None)
            return spec[0] if spec else None
    return None


def _shardings(mesh, shapes, entry, batched):
    return tuple(NamedSharding(mesh, P(*((entry if b else None),) + (None,) * (s.ndim - 1)) if s.ndim else P())
                 for s, b in zip(shapes, batched))


def may_split(mesh_in_context: bool = False) -> bool:
    """Whether :func:`batch_partitioned` wraps a launch here (else it calls it directly).

    Nothing is split with one device, under a one-device mesh, or on local
    shards inside ``shard_map`` (where JAX 0.11 also refuses
    ``custom_partitioning`` when lowering under an abstract mesh, as the CPU
    lowering tests do); skipping the wrapper there spares its extra traces.

    Args:
      mesh_in_context: also ask for a mesh set in context (``jax.set_mesh``,
        as ``seqjax.train`` runs its step): for a caller whose split costs
        work of its own (splash's recomputed forward), paid only where a
        batch is likely to be sharded.
    """
    context = jax.sharding.get_abstract_mesh()
    if mesh_in_context and context.empty:
        return False
    return not (jax.device_count() == 1
                or (not context.empty and (context.size == 1 or context.are_all_axes_manual)))


def batch_partitioned(launch: Callable, args: Sequence[jax.Array], batched: Sequence[bool] | None = None):
    """``launch(*args)``, split over the batch axis when ``jit`` shards it (module docstring).

    Args:
      launch: a function of ``args`` returning an array or a list/tuple of
        arrays, each with the batch as its leading axis.
      args: the arrays; the batched ones have the batch as their leading axis.
      batched: one flag per argument, True where its leading axis is the
        batch (default: every argument). Unbatched arguments are replicated.

    Returns:
      What ``launch(*args)`` returns (a list for several results).
    """
    batched = tuple(True for _ in args) if batched is None else tuple(batched)
    if len(batched) != len(args):
        raise ValueError(f"batch_partitioned: {len(batched)} batched flags for {len(args)} arguments")
    if not any(batched) or not may_split():
        return launch(*args)
    results = jax.eval_shape(launch, *args)
    single = not isinstance(results, (list, tuple))
    flat_results = (results,) if single else tuple(results)
    batch = next(a.shape[0] for a, b in zip(args, batched) if b)
    for i, r in enumerate(flat_results):
        if not r.ndim or r.shape[0] != batch:
            raise ValueError(f"batch_partitioned: result {i} {r.shape} does not lead with the batch ({batch})")

    def local(*xs):
        out = launch(*xs)
        return out if single else tuple(out)

    @custom_partitioning
    def call(*xs):
        return local(*xs)

    def partition(mesh, arg_shapes, result_shape):
        del result_shape
        entry = _batch_entry(arg_shapes, batched)
        arg_shardings = _shardings(mesh, arg_shapes, entry, batched)
        out_shardings = _shardings(mesh, flat_results, entry, (True,) * len(flat_results))
        return mesh, local, out_shardings[0] if single else out_shardings, arg_shardings

    def infer(mesh, arg_shapes, result_shape):  # the GSPMD partitioner's question (Shardy reads the rule)
        del result_shape
        out = _shardings(mesh, flat_results, _batch_entry(arg_shapes, batched), (True,) * len(flat_results))
        return out[0] if single else out

    call.def_partition(partition=partition, infer_sharding_from_operands=infer,
                       sharding_rule=_rule(args, batched, flat_results))

    # custom_partitioning has no vmap rule; under jax.vmap the launch is vmapped
    # as it was before this wrapper (pallas_call's own rule), without the split.
    @jax.custom_batching.custom_vmap
    def run(*xs):
        return call(*xs)

    @run.def_vmap
    def _vmapped(axis_size, in_batched, *xs):
        del axis_size
        out = jax.vmap(local, in_axes=tuple(0 if b else None for b in in_batched))(*xs)
        return out, jax.tree.map(lambda _: True, out)

    out = run(*args)
    return out if single else list(out)
