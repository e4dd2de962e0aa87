"""The Pallas kernels inside ``jax.shard_map``: the sequence-parallel ops with ``impl="pallas"``.

On TPU ``auto`` picks the kernels for ``ssd``, ``linear_attention``,
``selective_scan`` and ``linear_scan``, so their sequence-parallel forms
(``sequence_axis=``, inside ``shard_map``) call the kernels on local shards.
Under ``check_vma`` (``shard_map``'s default) a ``pallas_call`` must say how
each output varies over the mesh (``seqjax.kernels.common.out_struct``), and
before that fix every such call failed to trace. Here: each op, forward and
gradient, lowers for ``cuda`` and ``tpu`` inside ``shard_map`` with
``check_vma`` on; and on CPU host devices the interpreted kernels inside a
2-device ``shard_map`` agree with the unsharded op's ``"reference"``
(``"sequential"`` for ``linear_scan``), with
``check_vma=False``: JAX's Pallas interpreter mismatches its own loop
carries' varying axes under it, 0.10-0.12.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax import ops
from tests.kernels.lowering import abstract_mesh, lower
from tests.ops.utils import assert_rel_close, make_mesh

SEQ, REP = P(None, "x"), P()


def _case(op, rng, b, length):
    """``(fn(impl, sequence_axis), args, specs)`` for one op at small sizes."""
    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    def uniform(lo, hi, *shape):
        return jnp.asarray(rng.uniform(lo, hi, shape), jnp.float32)

    if op == "ssd":
        args = (normal(b, length, 2, 4), uniform(0.1, 1.0, b, length, 2), -uniform(0.5, 2.0, 2),
                normal(b, length, 1, 4), normal(b, length, 1, 4))
        specs = (SEQ, SEQ, REP, SEQ, SEQ)

        def fn(impl, axis):
            return lambda x, dt, A, B, C: ops.ssd(x, dt, A, B, C, chunk_size=16, sequence_axis=axis, impl=impl)[0]
    elif op == "linear_attention":
        args = (normal(b, length, 2, 4), normal(b, length, 2, 4), normal(b, length, 2, 4),
                -uniform(0.0, 0.5, b, length, 2, 4))
        specs = (SEQ,) * 4

        def fn(impl, axis):
            return lambda q, k, v, g: ops.linear_attention(
                q, k, v, log_decay=g, chunk_size=16, sequence_axis=axis, impl=impl)[0]
    elif op == "selective_scan":
        args = (normal(b, length, 8), 0.3 * normal(b, length, 8), -uniform(0.5, 2.0, 8, 4),
                normal(b, length, 4), normal(b, length, 4))
        specs = (SEQ, SEQ, REP, SEQ, SEQ)

        def fn(impl, axis):
            return lambda u, dt, A, B, C: ops.selective_scan(
                u, dt, A, B, C, delta_softplus=True, sequence_axis=axis, impl=impl)
    elif op == "linear_scan":
        args = (uniform(0.5, 0.99, b, length, 8), normal(b, length, 8))
        specs = (SEQ, SEQ)

        def fn(impl, axis):
            return lambda a, x: ops.linear_scan(a, x, sequence_axis=axis, impl=impl)[0]
    else:  # delta_rule
        k = rng.standard_normal((b, length, 2, 4))
        args = (normal(b, length, 2, 4), jnp.asarray(k / np.linalg.norm(k, axis=-1, keepdims=True), jnp.float32),
                normal(b, length, 2, 4), uniform(0.1, 1.0, b, length, 2))
        specs = (SEQ,) * 4

        def fn(impl, axis):
            return lambda q, k, v, beta: ops.delta_rule(q, k, v, beta, chunk_size=16, sequence_axis=axis,
                                                        impl=impl)[0]
    return fn, args, specs


OPS = ["ssd", "linear_attention", "selective_scan", "linear_scan", "delta_rule"]


def _loss(fn):
    return lambda *a: jnp.sum(jnp.sin(fn(*a)))


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("op", OPS)
def test_sequence_parallel_kernels_lower_with_check_vma(rng, op, platform):
    fn, args, specs = _case(op, rng, 1, 256)
    mesh = abstract_mesh(platform)
    structs = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, s))
                    for x, s in zip(args, specs))
    sharded = lambda *a: jax.shard_map(fn("pallas", "x"), mesh=mesh, in_specs=specs, out_specs=SEQ)(*a)  # noqa: E731
    text = lower(jax.grad(_loss(sharded), argnums=tuple(range(len(args)))), structs, platform).as_text()
    marker = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}[platform]
    if platform == "cuda" and op in ("selective_scan", "linear_scan"):
        marker = "mosaic_gpu"  # the scans are Mosaic GPU kernels
    assert marker in text


@pytest.mark.parametrize("op", OPS)
def test_sequence_parallel_kernels_match_the_unsharded_op(rng, op):
    fn, args, specs = _case(op, rng, 2, 64)
    mesh = make_mesh((2,), ("x",))
    sharded = lambda *a: jax.shard_map(fn("pallas", "x"), mesh=mesh, in_specs=specs, out_specs=SEQ,  # noqa: E731
                                       check_vma=False)(*a)
    argnums = tuple(range(len(args)))
    value, grads = jax.jit(jax.value_and_grad(_loss(sharded), argnums))(*args)
    plain = "sequential" if op == "linear_scan" else "reference"  # linear_scan has no "reference"
    ref_value, ref_grads = jax.jit(jax.value_and_grad(_loss(fn(plain, None)), argnums))(*args)
    assert_rel_close(value, ref_value, 1e-5, "loss")
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert_rel_close(g, r, 1e-4, f"grad {i}")


@pytest.mark.parametrize("op", ["selective_scan", "linear_scan"])
def test_cut_scans_lower_in_shard_map_with_check_vma(rng, op, monkeypatch):
    # With the GPU sequence cut into segments on each shard (forced at this
    # size), the XLA scan over segments starts from a zero or final-state
    # carry that must vary over the mesh as the segments do: without it the
    # trace fails ("carry input and carry output must have equal types").
    from seqjax.kernels import sequence_split

    monkeypatch.setattr(sequence_split, "SPLIT_PROGRAMS", 10**6)
    monkeypatch.setattr(sequence_split, "MIN_SEGMENT", 8)
    fn, args, specs = _case(op, rng, 1, 256)
    mesh = abstract_mesh("cuda")
    structs = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, s))
                    for x, s in zip(args, specs))
    sharded = lambda *a: jax.shard_map(fn("pallas", "x"), mesh=mesh, in_specs=specs, out_specs=SEQ)(*a)  # noqa: E731
    text = lower(jax.grad(_loss(sharded), argnums=tuple(range(len(args)))), structs, "cuda").as_text()
    assert text.count("mosaic_gpu") >= 4  # two passes each way
