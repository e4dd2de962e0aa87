"""Ring attention's blocks by the Pallas attention kernels (``impl="pallas"``).

Inside ``jax.shard_map`` on CPU host devices each block runs the GPU kernel
in interpret mode: outputs and gradients against the float64 loop reference
and the unsharded op (``tests.ops.test_ring_attention.check_case``), causal
and full, contiguous and zigzag, segments across shard boundaries, grouped
queries. These run with ``check_vma=False``: JAX's Pallas interpreter
mismatches a kernel loop's carried varying axes under ``check_vma``
(0.10-0.12); the lowering for the devices, below, is checked with it on. The
TPU kernel's blocks are checked outside ``shard_map`` (the TPU interpreter
deadlocks in a collective permute between host devices), against the XLA
blocks, with a final logsumexp that is not the block's own. Also: ``auto``
picks the kernels on GPU and TPU and the XLA blocks on CPU and for float64;
the ring with the kernels lowers for ``cuda`` and ``tpu`` at l = 8192,
d = 128 with gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax.kernels.common import interpret_as
from seqjax.ops import dispatch
from seqjax.ops.ring_attention import BLOCK_OP, ring_attention
from tests.kernels.lowering import abstract_mesh, lower
from tests.ops.test_ring_attention import check_case
from tests.ops.utils import assert_rel_close, make_mesh


@pytest.mark.parametrize("layout, causal, shape", [
    ("zigzag", True, (4,)),  # DIAG, LOWER and UPPER blocks
    ("contiguous", False, (2,)),  # FULL blocks, l = 48: blocks of 4 over local length 24
])
def test_pallas_blocks_match_reference(rng, layout, causal, shape):
    length = 48 if shape == (2,) else 32
    check_case(rng, make_mesh(shape, ("sequence",)), layout, 2, length, 4, 2, causal, impl="pallas",
               check_vma=False)


def test_pallas_blocks_with_segments_through_the_op(rng):
    # Boundaries inside shards and on them (local length 8), ids not increasing;
    # through attention(..., sequence_axis=, impl="pallas").
    ids = np.array([[0] * 5 + [1] * 3 + [2] * 13 + [0] * 11, [3] * 8 + [1] * 16 + [3] * 8])
    check_case(rng, make_mesh((4,), ("sequence",)), "zigzag", 2, 32, 4, 2, True, seg=ids,
               via_attention=True, impl="pallas", check_vma=False)


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
@pytest.mark.parametrize("causal", [True, False])
def test_block_kernels_match_the_xla_blocks(rng, kind, causal):
    """One block outside shard_map (the TPU interpreter deadlocks in a ring of
    host devices): ``(out, lse)`` and the gradients from a *final* logsumexp
    that is not the block's own, as the ring's backward passes it, GQA and
    segments; the XLA blocks are checked against float64 by the ring tests."""
    b, hk, g, lq, lk, d = 2, 2, 2, 24, 24, 8
    q5 = jnp.asarray(rng.standard_normal((b, hk, g, lq, d)), jnp.float32)
    k4, v4 = (jnp.asarray(rng.standard_normal((b, hk, lk, d)), jnp.float32) for _ in range(2))
    seg = jnp.asarray(np.cumsum(rng.random((b, lq)) < 0.15, axis=1), jnp.int32)
    kw = dict(causal=causal, scale=0.4, block_q=8, block_k=8)
    pallas, xla = (dispatch.implementation(BLOCK_OP, impl) for impl in ("pallas", "blockwise"))
    with interpret_as(kind):
        out, lse = jax.jit(lambda *a: pallas.forward(*a, **kw))(q5, k4, v4, seg, seg)
    out_x, lse_x = jax.jit(lambda *a: xla.forward(*a, **kw))(q5, k4, v4, seg, seg)
    assert_rel_close(out, out_x, 1e-5, "out")
    assert_rel_close(lse, lse_x, 1e-5, "lse")
    # A final logsumexp above the block's (other blocks added mass) and its output.
    final_lse = lse_x + jnp.asarray(rng.uniform(0.1, 1.0, lse_x.shape), jnp.float32)
    final_out = jnp.asarray(rng.standard_normal(out_x.shape), jnp.float32)
    d_out = jnp.asarray(rng.standard_normal(out_x.shape), jnp.float32)
    args = (q5, k4, v4, seg, seg, final_out, final_lse, d_out)
    with interpret_as(kind):
        grads = jax.jit(lambda *a: pallas.backward(*a, **kw))(*args)
    grads_x = jax.jit(lambda *a: xla.backward(*a, **kw))(*args)
    for name, gi, gx in zip(("dq", "dk", "dv"), grads, grads_x):
        assert np.abs(np.asarray(gx)).max() > 1e-2
        assert_rel_close(gi, gx, 1e-5, name)


@pytest.mark.parametrize("platform, bits, expected", [
    ("gpu", 32, "pallas"), ("tpu", 32, "pallas"), ("cpu", 32, "blockwise"), ("gpu", 64, "blockwise")])
def test_auto_picks_the_kernels_on_accelerators(monkeypatch, platform, bits, expected):
    monkeypatch.setattr(dispatch, "platform", lambda: platform)
    assert dispatch.resolve(BLOCK_OP, "auto", bits=bits) == expected


def test_float64_pallas_raises():
    with jax.enable_x64(True):
        q = jnp.ones((1, 8, 2, 4), jnp.float64)
        with pytest.raises(ValueError, match="float32 at most"):
            ring_attention(q, q, q, axis_name="sequence", impl="pallas")


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_ring_with_kernels_lowers(platform):
    mesh, spec = abstract_mesh(platform), P(None, "x")

    def ring(q, k, v, seg):
        inner = lambda q, k, v, seg: ring_attention(  # noqa: E731
            q, k, v, axis_name="x", causal=True, segment_ids=seg, impl="pallas")
        return jax.shard_map(inner, mesh=mesh, in_specs=(spec,) * 4, out_specs=spec)(q, k, v, seg)

    grad = jax.grad(lambda *a: jnp.sum(ring(*a).astype(jnp.float32)), argnums=(0, 1, 2))
    s = lambda shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(  # noqa: E731
        shape, dtype, sharding=NamedSharding(mesh, spec))
    text = lower(grad, (s((1, 8192, 16, 128)), s((1, 8192, 4, 128)), s((1, 8192, 4, 128)),
                        s((1, 8192), jnp.int32)), platform).as_text()
    if platform == "cuda":
        for name in ("seqjax_attention_fwd", "seqjax_attention_dq", "seqjax_attention_dkdv"):
            assert name in text, name
    else:
        assert text.count("tpu_custom_call") == 3
