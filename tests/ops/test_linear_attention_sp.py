"""Sequence-parallel linear_attention under jax.shard_map against float64 references.

The length is split over the mesh axis ``sequence``; the local outputs, the
global final state and the gradients w.r.t. q, k, v, the log decay (all four
forms, the replicated ``(h,)`` one included) and the replicated initial state
are compared with float64 references and with the unsharded op.

Forward: the float64 NumPy loop of ``ref_linear_attention``. Gradients:
autodiff of :func:`_matrix_ref`, the unrolled sum of the recurrence in float64
(jitted; the loop reference's unrolled autodiff compiles far more slowly).
Every test first checks that the matrix form equals the loop to 1e-12.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from seqjax.ops import linear_attention
from tests.ops.ref_linear_attention import linear_attention_ref
from tests.ops.utils import assert_rel_close, make_mesh, outputs_and_grads, rel_err, sp_segment_ids

RTOL = 2e-5
RTOL_GRAD = 5e-5
B, L, H, DK, DV = 2, 32, 2, 4, 3
# The autodiffed float64 reference only has to be right, not fast: compile it cheaply.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _runs(segment_ids, batch, length):
    """(b, l) run index: 0 in the first segment, +1 at every change of id."""
    if segment_ids is None:
        return np.zeros((batch, length), int)
    seg = np.asarray(segment_ids)
    return np.cumsum(np.concatenate([np.zeros((batch, 1), bool), seg[:, 1:] != seg[:, :-1]], 1), 1)


def _matrix_ref(q, k, v, log_decay, s0, segment_ids=None):
    """Linear attention as the unrolled sum of the recurrence.

    ``o_t = Σ_{s ≤ t, same segment} Σ_j q_t[j] k_s[j] e^{c_t[j] - c_s[j]} v_s
    + (q_t e^{c_t})^T S_0``. Float64 jax.numpy (under ``jax.enable_x64``) for autodiff; ``c`` is the
    inclusive prefix sum of the log decay, the ``S_0`` term only in the first
    segment. Builds ``(b, l, l, h, dk)`` weights, so only for small tests.
    """
    b, l, h, dk = q.shape
    if log_decay is None:
        g = jnp.zeros((b, l, h, 1))
    elif log_decay.ndim == 1:
        g = jnp.broadcast_to(log_decay[:, None], (b, l, h, 1))
    elif log_decay.ndim == 3:
        g = log_decay[..., None]
    else:
        g = log_decay
    c = jnp.cumsum(g, axis=1)  # (b, l, h, e)
    run = _runs(segment_ids, b, l)
    pos = np.arange(l)
    mask = (pos[:, None] >= pos[None, :]) & (run[:, :, None] == run[:, None, :])  # (b, t, s)
    expo = jnp.where(mask[..., None, None], c[:, :, None] - c[:, None], -jnp.inf)  # (b, t, s, h, e)
    scores = jnp.sum(q[:, :, None] * k[:, None] * jnp.exp(expo), axis=-1)  # (b, t, s, h)
    first = jnp.asarray(run == 0, q.dtype)[:, :, None, None]
    o = jnp.einsum("btsh,bshv->bthv", scores, v) + first * jnp.einsum(
        "bthk,bhkv->bthv", q * jnp.exp(c), s0)
    # Final state: the keys of the last segment decayed to the end, plus S_0 if
    # the whole row is one segment.
    last = jnp.asarray(run == run[:, -1:], q.dtype)[..., None, None]  # (b, s, 1, 1)
    k_end = k * jnp.exp(c[:, -1:] - c) * last
    final = jnp.einsum("bshk,bshv->bhkv", k_end, v) + jnp.asarray(
        run[:, -1] == 0, q.dtype)[:, None, None, None] * jnp.exp(c[:, -1])[..., None] * s0
    return o, final


def _inputs(rng, kind, batch=B, length=L):
    shapes = {"none": None, "head": (H,), "scalar": (batch, length, H),
              "channel": (batch, length, H, DK)}
    # exp(-0.3 .. -0.02) per step: states from earlier shards still matter.
    ld = None if shapes[kind] is None else rng.uniform(-0.3, -0.02, shapes[kind])
    q, k = (rng.standard_normal((batch, length, H, DK)) for _ in range(2))
    v = rng.standard_normal((batch, length, H, DV))
    return q, k, v, ld, rng.standard_normal((batch, H, DK, DV))


def _local_only_ref(q, k, v, ld, seg, num):
    """The float64 loop reference on each of ``num`` shards separately from zero.

    Returns the concatenated outputs and the last shard's final state.
    """
    shard = q.shape[1] // num
    outs = []
    for i in range(num):
        def cut(x):  # the shard of a (b, l, ...) array; None and (h,) pass through
            return x if x is None or x.ndim < 2 else x[:, i * shard:(i + 1) * shard]

        o, final = linear_attention_ref(np, cut(q), cut(k), cut(v), log_decay=cut(ld),
                                        segment_ids=cut(seg))
        outs.append(o)
    return np.concatenate(outs, axis=1), final


def _sharded(mesh, batch_axis, kind, impl, chunk_size, seg, check_vma=True):
    seq, state = P(batch_axis, "sequence"), P(batch_axis)
    ld_spec = P() if kind == "head" else seq
    seg_arg = None if seg is None else jnp.asarray(seg)

    def inner(q, k, v, ld, s0, s):
        return linear_attention(q, k, v, log_decay=ld, initial_state=s0, segment_ids=s,
                                chunk_size=chunk_size, impl=impl, sequence_axis="sequence")

    def fn(q, k, v, *rest):
        ld, s0 = (None, *rest) if kind == "none" else rest
        specs = (seq, seq, seq, None if ld is None else ld_spec, state,
                 None if seg is None else seq)
        return jax.shard_map(inner, mesh=mesh, in_specs=specs, out_specs=(seq, state),
                             check_vma=check_vma)(q, k, v, ld, s0, seg_arg)

    return fn


# (mesh shape, names, log_decay kind, impl, chunk_size, segments, check_vma)
CASES = {
    "p8_no_decay": ((8,), ("sequence",), "none", "auto", 64, False, True),
    "p4_head_decay_segments_sequential": ((4,), ("sequence",), "head", "sequential", 64, True,
                                          True),
    "p4_scalar_decay_chunked_unchecked": ((4,), ("sequence",), "scalar", "chunked", 4, False,
                                          False),
    "data2_seq4_channel_decay_segments": ((2, 4), ("data", "sequence"), "channel", "chunked", 4,
                                          True, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_linear_attention_sp(rng, name):
    shape, names, kind, impl, chunk, segments, check_vma = CASES[name]
    mesh = make_mesh(shape, names)
    num = mesh.shape["sequence"]
    q, k, v, ld, s0 = _inputs(rng, kind)
    seg = sp_segment_ids(B, L, L // num) if segments else None
    batch_axis = "data" if "data" in names else None
    fn = _sharded(mesh, batch_axis, kind, impl, chunk, seg, check_vma)
    labels = ("q", "k", "v") + (() if ld is None else ("log_decay",)) + ("initial_state",)
    args64 = (q, k, v) + (() if ld is None else (ld,)) + (s0,)
    args32 = tuple(jnp.asarray(x, jnp.float32) for x in args64)
    wo, wf = rng.standard_normal((B, L, H, DV)), rng.standard_normal((B, H, DK, DV))
    cot = (jnp.asarray(wo, jnp.float32), jnp.asarray(wf, jnp.float32))
    (o, final), grads = outputs_and_grads(fn, args32, cot)
    assert o.dtype == jnp.float32 and o.shape == (B, L, H, DV) and final.shape == (B, H, DK, DV)

    o_ref, final_ref = linear_attention_ref(np, q, k, v, log_decay=ld, initial_state=s0,
                                            segment_ids=seg)
    assert_rel_close(o, o_ref, RTOL, "o vs f64 reference")
    assert_rel_close(final, final_ref, RTOL, "final state vs f64 reference")
    # The check can fail: every shard run alone from a zero state (no carried
    # state, i.e. no correction) is far from the global result.
    o_loc, final_loc = _local_only_ref(q, k, v, ld, seg, num)
    assert rel_err(o_loc, o_ref) > 1e-2
    if seg is None:
        assert rel_err(final_loc, final_ref) > 1e-2

    def unpack(*a):
        return (a[:3] + (None,) + a[3:]) if ld is None else a

    with jax.enable_x64(True):
        (o_m, final_m), grads_ref = outputs_and_grads(
            lambda *a: _matrix_ref(*unpack(*a), segment_ids=seg),
            tuple(jnp.asarray(x) for x in args64), (jnp.asarray(wo), jnp.asarray(wf)),
            FAST_COMPILE)
    assert_rel_close(o_m, o_ref, 1e-12, "matrix reference vs loop reference")
    assert_rel_close(final_m, final_ref, 1e-12, "matrix reference vs loop reference (state)")
    for label, g, e in zip(labels, grads, grads_ref):
        assert g.shape == e.shape, label
        assert np.abs(np.asarray(e)).max() > 1e-2, label
        assert_rel_close(g, e, RTOL_GRAD, f"d{label} vs f64 reference")

    def plain(*a):
        q_, k_, v_, ld_, s0_ = unpack(*a)
        return linear_attention(q_, k_, v_, log_decay=ld_, initial_state=s0_, segment_ids=seg,
                                chunk_size=chunk, impl=impl)

    (o_p, final_p), grads_p = outputs_and_grads(plain, args32, cot)
    assert_rel_close(o, o_p, RTOL, "o vs unsharded")
    assert_rel_close(final, final_p, RTOL, "final state vs unsharded")
    for label, g, e in zip(labels, grads, grads_p):
        assert_rel_close(g, e, RTOL_GRAD, f"d{label} vs unsharded")


def test_linear_attention_sp_bidirectional(rng):
    # causal=False: one psum of the local sums of k v^T.
    mesh = make_mesh((8,), ("sequence",))
    q, k, v, _, _ = _inputs(rng, "none")
    seq = P(None, "sequence")
    fn = jax.shard_map(
        lambda q, k, v: linear_attention(q, k, v, causal=False, sequence_axis="sequence"),
        mesh=mesh, in_specs=(seq,) * 3, out_specs=(seq, P()))
    args32 = tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))
    w = rng.standard_normal((B, L, H, DV))
    o, grads = outputs_and_grads(lambda *a: fn(*a)[0], args32, jnp.asarray(w, jnp.float32))
    o_ref, final_ref = linear_attention_ref(np, q, k, v, causal=False)
    assert_rel_close(o, o_ref, RTOL, "o vs f64 reference")
    assert_rel_close(jax.jit(fn)(*args32)[1], final_ref, RTOL, "final vs f64 reference")

    def dense(q, k, v):  # o_t = Σ_s (q_t · k_s) v_s, float64
        return jnp.einsum("bthk,bshk,bshv->bthv", q, k, v)

    with jax.enable_x64(True):
        o_m, grads_ref = outputs_and_grads(dense, tuple(jnp.asarray(x) for x in (q, k, v)),
                                           jnp.asarray(w), FAST_COMPILE)
    assert_rel_close(o_m, o_ref, 1e-12, "dense reference vs loop reference")
    for label, g, e in zip("qkv", grads, grads_ref):
        assert_rel_close(g, e, RTOL_GRAD, f"d{label} vs f64 reference")

    seg = jnp.asarray(sp_segment_ids(B, L, L // 8))
    with pytest.raises(ValueError, match="causal=False"):
        jax.shard_map(
            lambda q, k, v, s: linear_attention(q, k, v, causal=False, segment_ids=s,
                                                sequence_axis="sequence"),
            mesh=mesh, in_specs=(seq,) * 4, out_specs=(seq, P()))(*args32, seg)


def test_plain_chunked_op_inside_shard_map_over_the_batch(rng):
    """The unsharded-length op inside shard_map (data parallel), no initial state, check_vma on.

    Its zero carry must be cast to varying; without it tracing fails.
    """
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:4])
    q, k, v = (jnp.asarray(rng.normal(size=(4, 16, 2, 4)), jnp.float32) for _ in range(3))
    log_decay = -jnp.asarray(rng.uniform(0.01, 0.5, size=(4, 16, 2, 4)), jnp.float32)

    def f(q, k, v, ld):
        return linear_attention(q, k, v, log_decay=ld, impl="chunked", chunk_size=4)[0]

    spec = jax.sharding.PartitionSpec("data")
    out = jax.shard_map(f, mesh=mesh, in_specs=spec, out_specs=spec)(q, k, v, log_decay)
    np.testing.assert_allclose(np.asarray(out), np.asarray(f(q, k, v, log_decay)), rtol=1e-6, atol=1e-6)
