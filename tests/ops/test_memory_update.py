"""memory_update: sequential and chunked against the float64 loop of Miras' equations (ref_memory_update).

Small odd shapes (dk = dv = 3, hidden 5, prime lengths, lengths not multiples
of the chunk), fresh random inputs, packed segments and a carried state. The
three Miras configurations (Huber + ℓ2 retention: Yaad; ℓp + ℓq: Moneta; ℓ2 +
KL: Memora) on the residual-MLP memory, and ℓ2 + ℓ2 on the linear memory
(DeltaNet, checked against ``delta_rule`` too).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops import dispatch
from seqjax.ops.delta_rule import delta_rule
from seqjax.ops.memory_update import memory_update
from tests.ops.ref_memory_update import memory_update_ref
from tests.ops.utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close, rel_err

B, H, D, DH = 2, 2, 3, 5
# (memory, loss, retention): DeltaNet, Yaad, Moneta, Memora.
CASES = [("linear", "l2", "l2"), ("mlp", "huber", "l2"), ("mlp", "lp", "lq"), ("mlp", "l2", "kl")]
IDS = ["deltanet", "yaad", "moneta", "memora"]


def _inputs(rng, memory, l, b=B):
    q = rng.standard_normal((b, l, H, D))
    k = rng.standard_normal((b, l, H, D))
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((b, l, H, D))
    lr = rng.uniform(0.05, 0.6, (b, l, H))
    ld = -rng.uniform(0.0, 0.3, (b, l, H))
    delta = rng.uniform(0.1, 1.0, (b, l, H))
    if memory == "linear":
        params0 = (0.3 * rng.standard_normal((b, H, D, D)),)
    else:
        params0 = (0.3 * rng.standard_normal((b, H, D, DH)), 0.3 * rng.standard_normal((b, H, DH, D)))
    seg = np.repeat(np.array([[0] * (l // 2) + [1] * (l - l // 2), [0] * l]), 1, axis=0)[:b]
    return q, k, v, lr, ld, delta, params0, seg


def _run(args, loss, retention, impl, chunk_size, state=None, segments=True):
    q, k, v, lr, ld, delta, params0, seg = args
    return memory_update(q, k, v, lr, params0=params0, log_decay=ld, delta=delta, loss=loss, retention=retention,
                         initial_state=state, segment_ids=seg if segments else None, chunk_size=chunk_size,
                         impl=impl)


def _ref(args, loss, retention, chunk_size, state=None, segments=True):
    q, k, v, lr, ld, delta, params0, seg = args
    return memory_update_ref(q, k, v, lr, params0, ld, delta, loss, retention, initial_state=state,
                             segment_ids=seg if segments else None, chunk_size=chunk_size)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("impl,chunk", [("sequential", 1), pytest.param("chunked", 1, marks=pytest.mark.slow),
                                        ("chunked", 3)])
def test_float64_exact_with_segments_and_state(rng, case, impl, chunk):
    memory, loss, retention = case
    args = _inputs(rng, memory, 7)
    state = tuple(w + 0.1 for w in args[6])
    o_ref, s_ref = _ref(args, loss, retention, chunk, state)
    with jax.enable_x64(True):
        o, s = _run(args, loss, retention, impl, chunk, state)
        assert o.dtype == jnp.float64
    assert_rel_close(o, o_ref, RTOL_F64, "o")
    for a, r in zip(s, s_ref):
        assert_rel_close(a, r, RTOL_F64, "final state")


@pytest.mark.parametrize("case, l", [
    pytest.param(CASES[0], 11, id="deltanet-11", marks=pytest.mark.slow),
    pytest.param(CASES[1], 1, id="yaad-1"), pytest.param(CASES[1], 11, id="yaad-11", marks=pytest.mark.slow),
    pytest.param(CASES[2], 11, id="moneta-11", marks=pytest.mark.slow), pytest.param(CASES[3], 11, id="memora-11"),
])
def test_float32_close_and_chunk1_equals_sequential(rng, case, l):
    memory, loss, retention = case
    args = _inputs(rng, memory, l)
    o_ref, _ = _ref(args, loss, retention, 1)
    seq, _ = _run(args, loss, retention, "sequential", 1)
    ch1, _ = _run(args, loss, retention, "chunked", 1)
    assert seq.dtype == jnp.float32
    assert_rel_close(seq, o_ref, RTOL_SCAN, "sequential")
    np.testing.assert_allclose(np.asarray(ch1), np.asarray(seq), rtol=1e-6, atol=1e-6)


def test_linear_l2_is_deltanet(rng):
    """Linear memory, ℓ2 bias, no decay: W_t = W − η (W k − v) kᵀ is DeltaNet's S = Wᵀ with β = η."""
    q, k, v, lr, _, _, params0, seg = _inputs(rng, "linear", 9)
    o, s = memory_update(q, k, v, lr, params0=params0, impl="sequential")
    s0 = jnp.swapaxes(jnp.asarray(params0[0]), -1, -2)
    o_d, s_d = delta_rule(q, k, v, lr, initial_state=s0, impl="sequential")
    assert_rel_close(o, o_d, RTOL_SCAN, "o vs delta_rule")
    assert_rel_close(jnp.swapaxes(s[0], -1, -2), s_d, RTOL_SCAN, "state vs delta_rule")


def test_chunked_is_an_approximation_for_c_gt_1(rng):
    """C > 1 lags the gradients: different numbers from the sequential form (but close for small lr)."""
    args = _inputs(rng, "mlp", 16)
    seq, _ = _run(args, "huber", "l2", "sequential", 1, segments=False)
    ch, _ = _run(args, "huber", "l2", "chunked", 4, segments=False)
    err = rel_err(ch, seq)
    assert 1e-6 < err < 0.5, err


@pytest.mark.parametrize("p, q_norm", [(2.5, 3.5), (3.0, 4.0)], ids=["pow", "whole"])
def test_whole_and_fractional_exponents(rng, p, q_norm):
    """ℓp + ℓq with whole exponents (multiplied out) and fractional ones (``pow``) against the float64 loop."""
    args = _inputs(rng, "mlp", 7)
    q, k, v, lr, ld, delta, params0, seg = args
    o_ref, s_ref = memory_update_ref(q, k, v, lr, params0, ld, delta, "lp", "lq", p=p, q_norm=q_norm,
                                     segment_ids=seg, chunk_size=3)
    with jax.enable_x64(True):
        o, s = memory_update(q, k, v, lr, params0=params0, log_decay=ld, delta=delta, loss="lp", retention="lq",
                             p=p, q_norm=q_norm, segment_ids=seg, chunk_size=3, impl="chunked")
    assert_rel_close(o, o_ref, RTOL_F64, "o")
    for a, r in zip(s, s_ref):
        assert_rel_close(a, r, RTOL_F64, "final state")


@pytest.mark.parametrize("case, impl", [
    pytest.param(CASES[1], "chunked", id="yaad", marks=pytest.mark.slow),
    # slow too: test_miras.py's default gradient check runs moneta through this op end to end
    pytest.param(CASES[2], "chunked", id="moneta", marks=pytest.mark.slow),
    pytest.param(CASES[3], "chunked", id="memora", marks=pytest.mark.slow),
    # the sequential scan's checkpointed step (its backward recomputes each token's forward)
    pytest.param(CASES[2], "sequential", id="moneta-sequential"),
])
def test_gradients_match_finite_differences_of_the_reference(rng, case, impl):
    """d/dε of a random projection of the float64 reference along random directions vs the op's autodiff."""
    memory, loss, retention = case
    chunk = 2 if impl == "chunked" else 1
    args = _inputs(rng, memory, 5)
    q, k, v, lr, ld, delta, params0, seg = args
    w_out = rng.standard_normal(v.shape)

    def op_loss(q, k, v, lr, ld, w1):
        o, _ = memory_update(q, k, v, lr, params0=(w1,) + params0[1:], log_decay=ld, delta=delta, loss=loss,
                             retention=retention, segment_ids=seg, chunk_size=chunk, impl=impl)
        return jnp.sum(o * w_out)

    def ref_loss(q, k, v, lr, ld, w1):
        o, _ = memory_update_ref(q, k, v, lr, (w1,) + params0[1:], ld, delta, loss, retention, segment_ids=seg,
                                 chunk_size=chunk)
        return float(np.sum(o * w_out))

    x = (q, k, v, lr, ld, params0[0])
    with jax.enable_x64(True):
        grads = jax.grad(op_loss, argnums=tuple(range(6)))(*x)
    eps = 1e-6
    for i, g in enumerate(grads):
        u = rng.standard_normal(x[i].shape)
        plus = list(x)
        minus = list(x)
        plus[i] = x[i] + eps * u
        minus[i] = x[i] - eps * u
        fd = (ref_loss(*plus) - ref_loss(*minus)) / (2 * eps)
        assert abs(float(np.sum(np.asarray(g) * u)) - fd) <= RTOL_GRAD * max(1.0, abs(fd)), (i, fd)


def test_registered_and_bad_arguments(rng):
    assert dispatch.implementations("memory_update") == ("auto", "sequential", "chunked")
    q, k, v, lr, ld, delta, params0, seg = _inputs(rng, "mlp", 4)
    with pytest.raises(ValueError, match="loss"):
        memory_update(q, k, v, lr, params0=params0, loss="l3")
    with pytest.raises(ValueError, match="retention"):
        memory_update(q, k, v, lr, params0=params0, retention="l1")
    with pytest.raises(ValueError, match="delta"):
        memory_update(q, k, v, lr, params0=params0, loss="huber")
    with pytest.raises(ValueError, match="params0"):
        memory_update(q, k, v, lr, params0=params0[:1] + params0)
    with pytest.raises(ValueError, match="impl"):
        memory_update(q, k, v, lr, params0=params0, impl="fft")
