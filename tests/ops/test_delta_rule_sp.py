"""Sequence-parallel delta_rule under jax.shard_map against the float64 reference and the unsharded op.

The length is split over the mesh axis ``sequence``; the local outputs, the
global final state and the gradients w.r.t. q, k, v, beta, the log decay and
the replicated initial state are compared with the float64 loop of the
papers' recurrence (``ref_delta_rule``, in the papers' ``dv x dk``
orientation, with the Householder factor built as a matrix) and with the
unsharded op. Every case also checks that shards run alone from a zero state
(no carried state) are far from the answer, so the comparison can fail.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from seqjax.ops import delta_rule
from tests.ops.ref_delta_rule import delta_rule_ref
from tests.ops.utils import assert_rel_close, make_mesh, outputs_and_grads, rel_err, sp_segment_ids

RTOL = 2e-5
RTOL_GRAD = 1e-4
B, H, DK, DV = 2, 2, 4, 3


def _inputs(rng, length, gated):
    q = rng.standard_normal((B, length, H, DK))
    k = rng.standard_normal((B, length, H, DK))
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)  # |k| = 1 as the mixers make it: a contraction
    v = rng.standard_normal((B, length, H, DV))
    beta = rng.uniform(0.1, 0.9, (B, length, H))
    ld = rng.uniform(-0.2, -0.01, (B, length, H)) if gated else None
    return q, k, v, beta, ld, rng.standard_normal((B, H, DK, DV))


def _sharded(mesh, batch_axis, gated, impl, chunk, seg):
    seq, state = P(batch_axis, "sequence"), P(batch_axis)
    seg_arg = None if seg is None else jnp.asarray(seg)

    def inner(q, k, v, beta, ld, s0, s):
        return delta_rule(q, k, v, beta, log_decay=ld, initial_state=s0, segment_ids=s, chunk_size=chunk,
                          impl=impl, sequence_axis="sequence")

    def fn(q, k, v, beta, *rest):
        ld, s0 = rest if gated else (None, *rest)
        specs = (seq,) * 4 + (None if ld is None else seq, state, None if seg is None else seq)
        return jax.shard_map(inner, mesh=mesh, in_specs=specs, out_specs=(seq, state))(q, k, v, beta, ld, s0, seg_arg)

    return fn


# (mesh shape, names, gated, impl, chunk_size, segments, length)
CASES = {
    "p8_deltanet_chunked": ((8,), ("sequence",), False, "chunked", 4, False, 32),
    "p4_gated_sequential_segments": ((4,), ("sequence",), True, "sequential", 64, True, 24),
    "data2_seq4_gated_chunked_segments": ((2, 4), ("data", "sequence"), True, "chunked", 4, True, 32),
}
# The float64 loop reference's autodiff compiles slowly (~25 s a case on 2 shared cores):
# the 8-device case runs by default, the gated / segment / 2-D mesh cases under -m slow.
SLOW = {"p4_gated_sequential_segments", "data2_seq4_gated_chunked_segments"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CASES])
def test_delta_rule_sp(rng, name):
    shape, names, gated, impl, chunk, segments, length = CASES[name]
    mesh = make_mesh(shape, names)
    num = mesh.shape["sequence"]
    q, k, v, beta, ld, s0 = _inputs(rng, length, gated)
    seg = sp_segment_ids(B, length, length // num) if segments else None
    fn = _sharded(mesh, "data" if "data" in names else None, gated, impl, chunk, seg)
    args64 = (q, k, v, beta) + ((ld,) if gated else ()) + (s0,)
    labels = ("q", "k", "v", "beta") + (("log_decay",) if gated else ()) + ("initial_state",)
    args32 = tuple(jnp.asarray(x, jnp.float32) for x in args64)
    wo, wf = rng.standard_normal((B, length, H, DV)), rng.standard_normal((B, H, DK, DV))
    cot = (jnp.asarray(wo, jnp.float32), jnp.asarray(wf, jnp.float32))
    (o, final), grads = outputs_and_grads(fn, args32, cot)
    assert o.dtype == jnp.float32 and o.shape == (B, length, H, DV) and final.shape == (B, H, DK, DV)

    o_ref, final_ref = delta_rule_ref(np, q, k, v, beta, ld, s0, seg)
    assert_rel_close(o, o_ref, RTOL, "o vs f64 reference")
    assert_rel_close(final, final_ref, RTOL, "final state vs f64 reference")
    # Shards run alone from zero (no carried state) are far from the global result.
    n = length // num
    alone = np.concatenate([delta_rule_ref(np, *(None if x is None else x[:, i * n:(i + 1) * n]
                                                 for x in (q, k, v, beta, ld)), None,
                                           None if seg is None else seg[:, i * n:(i + 1) * n])[0]
                            for i in range(num)], axis=1)
    assert rel_err(alone, o_ref) > 1e-2

    def unpack(*a):
        return a if gated else a[:4] + (None,) + a[4:]

    with jax.enable_x64(True):
        _, grads_ref = outputs_and_grads(lambda *a: delta_rule_ref(jnp, *unpack(*a), seg),
                                         tuple(jnp.asarray(x) for x in args64), (jnp.asarray(wo), jnp.asarray(wf)),
                                         {"xla_backend_optimization_level": 0})
    for label, g, e in zip(labels, grads, grads_ref):
        assert g.shape == e.shape and np.abs(np.asarray(e)).max() > 1e-2, label
        assert_rel_close(g, e, RTOL_GRAD, f"d{label} vs f64 reference")

    def plain(*a):
        q_, k_, v_, b_, ld_, s0_ = unpack(*a)
        return delta_rule(q_, k_, v_, b_, log_decay=ld_, initial_state=s0_, segment_ids=seg, chunk_size=chunk,
                          impl=impl)

    (o_p, final_p), _ = outputs_and_grads(plain, args32, cot)
    assert_rel_close(o, o_p, RTOL, "o vs unsharded")
    assert_rel_close(final, final_p, RTOL, "final state vs unsharded")
