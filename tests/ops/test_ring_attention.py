"""Ring attention under jax.shard_map against the float64 loop reference and the unsharded op.

Inputs are full sequences in natural order; the function under test permutes
them to the layout (zigzag), shards the length over the mesh axis, runs
``ring_attention`` inside ``shard_map`` and un-permutes the output, so its
outputs and gradients compare directly with unsharded attention.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax.ops import attention
from seqjax.ops.ring_attention import (
    DIAG, FULL, LAYOUTS, LOWER, UPPER, block_schedule, block_tiles, ring_attention, zigzag_permute, zigzag_unpermute)
from tests.ops.ref_attention import attention_ref
from tests.ops.utils import assert_rel_close, make_mesh

# Float32 against float64, relative to the largest |expected| (the brief's bar).
RTOL = 2e-5
# Blocks of the per-block flash kernel: smaller than (and, for l = 48, not
# dividing) the local lengths, so the kernel's inner loops and padding run.
BLOCKS = dict(block_q=4, block_k=4)
# The autodiffed loop reference unrolls to ~1000 ops: compile it cheaply.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def sharded_attention(mesh, layout, *, batch_axis=None, seq_axis="sequence", via_attention=False,
                      check_vma=True, **kw):
    """fn(q, k, v, seg=None) on full natural-order arrays, computed by ring attention."""
    num = mesh.shape[seq_axis]
    spec = P(batch_axis, seq_axis)

    def inner(q, k, v, seg):
        if via_attention:
            return attention(q, k, v, segment_ids=seg, sequence_axis=seq_axis,
                             sequence_layout=layout, **BLOCKS, **kw)
        return ring_attention(q, k, v, axis_name=seq_axis, segment_ids=seg, layout=layout,
                                 **BLOCKS, **kw)

    def fn(q, k, v, seg=None):
        args = (q, k, v, seg)
        if layout == "zigzag":
            args = tuple(None if x is None else zigzag_permute(x, num) for x in args)
        # Explicitly placed inputs: shard_map accepts them under any mesh axis type.
        args = tuple(None if x is None else jax.lax.with_sharding_constraint(
            x, NamedSharding(mesh, spec)) for x in args)
        out = jax.shard_map(inner, mesh=mesh, in_specs=(spec, spec, spec, None if seg is None else spec),
                            out_specs=spec, check_vma=check_vma)(*args)
        return zigzag_unpermute(out, num) if layout == "zigzag" else out

    return fn


def value_and_grads(fn, args, w, compiler_options=None):
    def run(*a):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, *a[3:]), *a[:3])
        return out, vjp(w)

    return jax.jit(run, compiler_options=compiler_options)(*args)


def check_case(rng, mesh, layout, b, l, h, hk, causal, seg=None, **mesh_kw):
    dk, dv = 8, 6
    q = rng.standard_normal((b, l, h, dk))
    k = rng.standard_normal((b, l, hk, dk))
    v = rng.standard_normal((b, l, hk, dv))
    w = rng.standard_normal((b, l, h, dv))
    args32 = tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))
    extra = () if seg is None else (jnp.asarray(seg),)
    fn = sharded_attention(mesh, layout, causal=causal, **mesh_kw)
    out, grads = value_and_grads(fn, args32 + extra, jnp.asarray(w, jnp.float32))

    # Independent float64 reference: forward in NumPy, gradients by autodiff.
    expected = attention_ref(q, k, v, causal=causal, segment_ids=seg)
    assert np.abs(expected).max() > 0.1
    assert out.dtype == jnp.float32
    assert_rel_close(out, expected, RTOL, "out vs f64 reference")
    with jax.enable_x64(True):
        ref = lambda q, k, v: attention_ref(q, k, v, causal=causal, segment_ids=seg, xp=jnp)  # noqa: E731
        _, expected_grads = value_and_grads(
            lambda q, k, v: ref(q, k, v), tuple(jnp.asarray(x, jnp.float64) for x in (q, k, v)),
            jnp.asarray(w, jnp.float64), FAST_COMPILE)
    for name, g, e in zip(("dq", "dk", "dv"), grads, expected_grads):
        assert np.abs(np.asarray(e)).max() > 1e-2
        assert_rel_close(g, e, RTOL, f"{name} vs f64 reference")

    # The unsharded op, float32 (its reference impl: the quickest to compile).
    plain = lambda q, k, v, s=None: attention(q, k, v, causal=causal, segment_ids=s,  # noqa: E731
                                              impl="reference")
    out_plain, grads_plain = value_and_grads(plain, args32 + extra, jnp.asarray(w, jnp.float32))
    assert_rel_close(out, out_plain, RTOL, "out vs unsharded")
    for name, g, e in zip(("dq", "dk", "dv"), grads, grads_plain):
        assert_rel_close(g, e, RTOL, f"{name} vs unsharded")
    return out, grads


# (mesh shape, mesh axis names, mesh kwargs, layout, b, l, h, hk, causal)
CASES = {
    "causal_contiguous_p8": ((8,), ("sequence",), {}, "contiguous", 2, 32, 4, 2, True),
    "causal_zigzag_p8_l48_mqa": ((8,), ("sequence",), {}, "zigzag", 1, 48, 4, 1, True),
    "full_contiguous_p2_l48": ((2,), ("sequence",), {}, "contiguous", 2, 48, 4, 2, False),
    "causal_zigzag_data2_seq4": ((2, 4), ("data", "sequence"), dict(batch_axis="data"),
                                 "zigzag", 2, 32, 4, 2, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference_and_unsharded(rng, name):
    shape, names, mesh_kw, layout, b, l, h, hk, causal = CASES[name]
    check_case(rng, make_mesh(shape, names), layout, b, l, h, hk, causal, **mesh_kw)


def test_segments_across_shard_boundaries(rng):
    # Packed sequences whose boundaries fall inside shards and on them (local
    # length 4: a new id at position 8 starts exactly at a shard boundary,
    # zigzag chunks are 2 long); ids not increasing.
    ids = np.array([[0] * 5 + [1] * 3 + [2] * 13 + [0] * 11,
                    [3] * 8 + [1] * 16 + [3] * 8])
    check_case(rng, make_mesh((8,), ("sequence",)), "zigzag", 2, 32, 4, 2, True, seg=ids,
               via_attention=True)


def test_attention_sequence_axis_with_traced_scale(rng):
    mesh = make_mesh((8,), ("sequence",))
    q, k, v = (jnp.asarray(rng.standard_normal((1, 16, 2, 8)), jnp.float32) for _ in range(3))
    scale = jnp.float32(0.3)
    spec = P(None, "sequence")

    def fn(q, k, v, scale):
        inner = functools.partial(attention, causal=True, sequence_axis="sequence")
        return jax.shard_map(lambda q, k, v, s: inner(q, k, v, scale=s), mesh=mesh,
                             in_specs=(spec, spec, spec, P()), out_specs=spec)(q, k, v, scale)

    out, d_scale = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=3))(
        q, k, v, scale)
    plain = lambda s: jnp.sum(attention(q, k, v, causal=True, scale=s) ** 2)  # noqa: E731
    exp_out, exp_d = jax.value_and_grad(plain)(scale)
    assert_rel_close(out, exp_out, RTOL, "loss")
    assert_rel_close(d_scale, exp_d, 1e-4, "d scale")


def _tiles(num, layout, device):
    return (2 * device, 2 * device + 1) if layout == "contiguous" else (device, 2 * num - 1 - device)


@pytest.mark.parametrize("num", [1, 2, 3, 8])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_schedule_covers_causal_mask_once(num, layout):
    # Rebuild, from the schedule the ring runs, every (query chunk, key chunk)
    # pair that gets computed: it must be each causally visible pair exactly once.
    table = block_schedule(num, layout, causal=True)
    seen = []
    for s in range(num):
        for i in range(num):
            qa, qb = _tiles(num, layout, i)
            ka, kb = _tiles(num, layout, (i - s) % num)
            kind = table[s, i]
            if kind == FULL:
                seen += [(x, y) for x in (qa, qb) for y in (ka, kb)]
            elif kind == DIAG:
                assert (ka, kb) == (qa, qb)
                seen += [(qa, qa), (qb, qa), (qb, qb)]
            elif kind == LOWER:
                seen += [(qa, ka), (qb, ka)]
            elif kind == UPPER:
                seen += [(qb, ka), (qb, kb)]
    expected = [(x, y) for x in range(2 * num) for y in range(x + 1)]
    assert sorted(seen) == expected
    assert (block_schedule(num, layout, causal=False) == FULL).all()


def test_zigzag_balances_causal_work():
    for num in (2, 4, 8):
        zig = block_tiles(num, "zigzag")
        assert (zig == 2 * num + 1).all(), zig
        contiguous = block_tiles(num, "contiguous")
        # Same total work, but the contiguous layout piles it on the last device.
        assert zig.sum() == contiguous.sum() == num * (2 * num + 1)
        assert contiguous.max() == 4 * num - 1 and contiguous.min() == 3


def test_zigzag_permute_roundtrip_and_chunks():
    x = np.arange(2 * 24).reshape(2, 24)
    y = np.asarray(zigzag_permute(x, 3, axis=1))
    # Device 1 of 3 (chunks of 4): chunks 1 and 4 of the original.
    np.testing.assert_array_equal(y[0, 8:16], np.r_[4:8, 16:20])
    np.testing.assert_array_equal(np.asarray(zigzag_unpermute(y, 3, axis=1)), x)
    with pytest.raises(ValueError, match="multiple of 2 \\* P"):
        zigzag_permute(x, 5)


def test_unsupported_options_raise():
    q = jnp.ones((1, 8, 2, 4))
    with pytest.raises(NotImplementedError, match="window"):
        attention(q, q, q, window=3, sequence_axis="sequence")
    with pytest.raises(NotImplementedError, match="bias"):
        attention(q, q, q, bias=jnp.zeros((8, 8)), sequence_axis="sequence")
    with pytest.raises(NotImplementedError, match="reference"):
        attention(q, q, q, impl="reference", sequence_axis="sequence")
    with pytest.raises(ValueError, match="layout"):
        ring_attention(q, q, q, axis_name="sequence", layout="striped")
    with pytest.raises(ValueError, match="ring_attention: impl='reference' is not one of 'auto', 'blockwise'"):
        ring_attention(q, q, q, axis_name="sequence", impl="reference")
    with pytest.raises(ValueError, match="even local length"):
        ring_attention(q[:, :7], q[:, :7], q[:, :7], axis_name="sequence", causal=True,
                          layout="zigzag")
