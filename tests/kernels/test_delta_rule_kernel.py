"""The chunked delta-rule Pallas kernel against a float64 loop of the recurrence.

The reference below is written from the equations (the op's ``(dk, dv)``
orientation, ``I - beta k kᵀ`` built as a matrix), not from the op's code::

    S_t = a_t (I - beta_t k_t k_tᵀ) S_{t-1} + beta_t k_t v_tᵀ,   o_t = S_tᵀ q_t

with ``a_t = exp(log_decay_t)`` (1 ungated) and ``a_t = 0`` where the segment
id changes. Interpret mode on CPU with GPU and TPU semantics, outputs, final
and chunk-boundary states, gradients of every input (the interim XLA
backward), segment starts mid-chunk (continuing into the next chunk) and on chunk boundaries, an initial state,
lengths that are not a multiple of the chunk, several GPU value tiles (and, slow,
the real blocks C = 64, dk = dv = 128), bf16 inputs; the op's front door
with ``impl="pallas"``; ``auto`` never picking the kernel; and lowering for
``cuda`` and ``tpu`` at a realistic shape and at odd sizes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.kernels.common import interpret_as
from seqjax.kernels.delta_rule import _forward, delta_rule_pallas
from seqjax.ops import dispatch
from seqjax.ops.common import segment_runs
from seqjax.ops.delta_rule import delta_rule
from tests.kernels.lowering import lower
from tests.ops.utils import RTOL_GRAD, RTOL_SCAN, assert_rel_close

SLOW = pytest.mark.slow
B, H, DK, DV = 2, 2, 6, 5
CHUNK = 16


def delta_rule_loop(xp, q, k, v, beta, log_decay, s0, seg):
    """The recurrence one position at a time, float64 under numpy or jax x64; no in-place writes.

    numpy runs a Python loop; jax.numpy (for the reference gradients) runs the
    same step in a ``lax.scan``, which compiles in a fraction of the time of
    an unrolled loop.

    Args:
      xp: numpy or jax.numpy.
      q, k: ``(b, l, h, dk)``; v: ``(b, l, h, dv)``; beta: ``(b, l, h)``.
      log_decay: ``(b, l, h)`` or None; s0: ``(b, h, dk, dv)``; seg: ``(b, l)`` ids.

    Returns:
      ``(o (b, l, h, dv), final state (b, h, dk, dv), states (b, l, h, dk, dv))``.
    """
    eye = xp.eye(q.shape[3])
    a = xp.ones(beta.shape) if log_decay is None else xp.exp(log_decay)
    # a_t = 0 where the segment id changes: the state restarts from zero.
    keep = np.concatenate([np.ones((seg.shape[0], 1), bool), seg[:, 1:] == seg[:, :-1]], axis=1)
    a = a * keep[:, :, None]

    def step(state, q_t, k_t, v_t, b_t, a_t):
        b_t = b_t[..., None, None]
        erase = eye - b_t * k_t[..., :, None] * k_t[..., None, :]
        state = a_t[..., None, None] * xp.matmul(erase, state) + b_t * k_t[..., :, None] * v_t[..., None, :]
        return state, xp.einsum("bhkv,bhk->bhv", state, q_t)

    if xp is np:
        state, outs, states = s0, [], []
        for t in range(q.shape[1]):
            state, o_t = step(state, q[:, t], k[:, t], v[:, t], beta[:, t], a[:, t])
            outs.append(o_t)
            states.append(state)
        return np.stack(outs, 1), state, np.stack(states, 1)
    def scan_step(state, x):
        state, o_t = step(state, *x)
        return state, (o_t, state)

    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, beta, a))
    final, (outs, states) = jax.lax.scan(scan_step, s0, xs)
    return jnp.moveaxis(outs, 0, 1), final, jnp.moveaxis(states, 0, 1)


def _inputs(rng, length, gated, dk=DK, dv=DV):
    """Unit keys, beta in (0, 1), log decays <= 0 with one strongly decaying head, s0, segments."""
    q, k = rng.standard_normal((2, B, length, H, dk))
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((B, length, H, dv))
    beta = rng.uniform(0.05, 1.0, (B, length, H))
    ld = None
    if gated:
        ld = -rng.uniform(0.0, 0.5, (B, length, H))
        ld[:, :, 0] = -rng.uniform(4.0, 6.0, (B, length))
    s0 = rng.standard_normal((B, H, dk, dv))
    seg = np.zeros((B, length), np.int32)
    seg[0, 9:] = 1  # a start mid-chunk whose segment continues into the next chunk
    seg[0, 2 * CHUNK:] = 2  # a start on a chunk boundary (when the length reaches it)
    seg[1, CHUNK:] = 1  # and one on the first chunk boundary
    return q, k, v, beta, ld, s0, seg


def _f32(x):
    return None if x is None else jnp.asarray(x, jnp.float32)


def _kernel(q, k, v, beta, ld, s0, seg, interpret):
    fn = jax.jit(functools.partial(delta_rule_pallas, chunk_size=CHUNK, interpret=interpret))
    return fn(q, k, v, beta, log_decay=ld, initial_state=s0, segment_ids=seg)


@pytest.mark.parametrize("interpret", ["gpu", "tpu"])
@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
def test_kernel_matches_reference(rng, gated, interpret):
    # 37 = two full chunks of 16 and a padded one.
    q, k, v, beta, ld, s0, seg = _inputs(rng, 37, gated)
    o, s = _kernel(*map(_f32, (q, k, v, beta, ld, s0)), seg, interpret)
    o_ref, s_ref, _ = delta_rule_loop(np, q, k, v, beta, ld, s0, seg)
    assert o.dtype == jnp.float32 and s.shape == (B, H, DK, DV)
    assert_rel_close(o, o_ref, RTOL_SCAN, "o")
    assert_rel_close(s, s_ref, RTOL_SCAN, "final_state")


@pytest.mark.parametrize("dk, dv, chunk, interpret", [
    (6, 80, CHUNK, "gpu"),  # dv pads to 128: two GPU value tiles of 64
    pytest.param(128, 128, 64, "gpu", marks=SLOW), pytest.param(128, 128, 64, "tpu", marks=SLOW)])
def test_value_tiles_and_real_blocks(rng, dk, dv, chunk, interpret):
    # Every GPU program carries its own state columns; the real blocks (C = 64,
    # dk = dv = 128) over several chunks with a padded one.
    q, k, v, beta, ld, s0, seg = _inputs(rng, 150 if chunk == 64 else 37, True, dk, dv)
    fn = jax.jit(functools.partial(delta_rule_pallas, chunk_size=chunk, interpret=interpret))
    o, s = fn(*map(_f32, (q, k, v, beta)), log_decay=_f32(ld), initial_state=_f32(s0), segment_ids=seg)
    o_ref, s_ref, _ = delta_rule_loop(np, q, k, v, beta, ld, s0, seg)
    assert_rel_close(o, o_ref, RTOL_SCAN, "o")
    assert_rel_close(s, s_ref, RTOL_SCAN, "final_state")


@pytest.mark.parametrize("interpret", ["gpu", pytest.param("tpu", marks=SLOW)])
def test_chunk_boundary_states(rng, interpret):
    # The states the kernel hands the backward: the one entering chunk j is the
    # reference's state after position j*C - 1 (s0 for chunk 0).
    q, k, v, beta, ld, s0, seg = _inputs(rng, 37, True)
    run = segment_runs(jnp.asarray(seg))
    _, final, states = jax.jit(_forward, static_argnums=(7, 8))(
        *map(_f32, (q, k, v, beta, ld, s0)), run, CHUNK, interpret)
    _, s_ref, per_step = delta_rule_loop(np, q, k, v, beta, ld, s0, seg)
    expected = np.stack([s0, per_step[:, CHUNK - 1], per_step[:, 2 * CHUNK - 1]], axis=2)
    assert states.shape == (B, H, 3, DK, DV)
    assert_rel_close(states, expected, RTOL_SCAN, "chunk states")
    assert_rel_close(final, s_ref, RTOL_SCAN, "final_state")


@functools.cache
def _grad_case(gated):
    """Inputs (l = 21: a full chunk of 16 and a padded one), loss weights, float64 reference gradients."""
    rng = np.random.default_rng(13 + gated)
    q, k, v, beta, ld, s0, seg = _inputs(rng, 21, gated)
    w_o, w_s = rng.standard_normal((B, 21, H, DV)), rng.standard_normal((B, H, DK, DV))
    args = (q, k, v, beta, s0) + ((ld,) if gated else ())

    def loss(q, k, v, beta, s0, ld=None):
        o, s, _ = delta_rule_loop(jnp, q, k, v, beta, ld, s0, seg)
        return jnp.sum(w_o * o) + jnp.sum(w_s * s**2)

    with jax.enable_x64(True):
        g_ref = jax.jit(jax.grad(loss, tuple(range(len(args)))))(*args)
    return args, seg, w_o, w_s, [np.asarray(g) for g in g_ref]


NAMES = ["q", "k", "v", "beta", "initial_state", "log_decay"]


@pytest.mark.parametrize("gated, interpret", [
    (False, "gpu"), (True, "gpu"), pytest.param(False, "tpu", marks=SLOW), (True, "tpu")])
def test_gradients_match_reference(gated, interpret):
    # custom_vjp: the interim backward from the kernel's chunk states, against
    # the float64 loop's autodiff; segments, s0 and a padded chunk.
    args, seg, w_o, w_s, g_ref = _grad_case(gated)

    def loss(q, k, v, beta, s0, ld=None):
        o, s = delta_rule_pallas(q, k, v, beta, log_decay=ld, initial_state=s0, segment_ids=seg,
                                 chunk_size=CHUNK, interpret=interpret)
        return jnp.sum(w_o * o) + jnp.sum(w_s * s**2)

    grads = jax.jit(jax.grad(loss, tuple(range(len(args)))))(*map(_f32, args))
    for name, gi, gr in zip(NAMES, grads, g_ref):
        assert gi.shape == gr.shape
        assert_rel_close(gi, gr, RTOL_GRAD, f"grad {name}")


@pytest.mark.parametrize("interpret", ["gpu", pytest.param("tpu", marks=SLOW)])
def test_bfloat16_inputs(rng, interpret):
    q, k, v, beta, ld, s0, seg = _inputs(rng, 37, True)
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    o, s = _kernel(*bf, _f32(beta), _f32(ld), _f32(s0), seg, interpret)
    assert o.dtype == jnp.bfloat16 and s.dtype == jnp.float32
    o_ref, s_ref, _ = delta_rule_loop(np, *(np.float64(x) for x in bf), beta, ld, s0, seg)
    # bf16 operands of q kᵀ and k kᵀ (float32 accumulation, float32 state) and o rounded to bf16.
    assert_rel_close(o, o_ref, 2e-2, "bf16 o")
    assert_rel_close(s, s_ref, 1e-2, "bf16 final_state")


@pytest.mark.parametrize("gated, semantics", [(True, "gpu"), pytest.param(False, "tpu", marks=SLOW)])
def test_front_door_outputs_and_gradients(gated, semantics):
    args, seg, w_o, w_s, g_ref = _grad_case(gated)

    def loss(q, k, v, beta, s0, ld=None):
        o, s = delta_rule(q, k, v, beta, log_decay=ld, initial_state=s0, segment_ids=seg, chunk_size=CHUNK,
                          impl="pallas")
        return jnp.sum(w_o * o) + jnp.sum(w_s * s**2), (o, s)

    with interpret_as(semantics):
        grads, (o, s) = jax.jit(jax.grad(loss, tuple(range(len(args))), has_aux=True))(*map(_f32, args))
    q, k, v, beta, s0 = args[:5]
    o_ref, s_ref, _ = delta_rule_loop(np, q, k, v, beta, args[5] if gated else None, s0, seg)
    assert_rel_close(o, o_ref, RTOL_SCAN, "o")
    assert_rel_close(s, s_ref, RTOL_SCAN, "final_state")
    for name, gi, gr in zip(NAMES, grads, g_ref):
        assert_rel_close(gi, gr, RTOL_GRAD, f"grad {name}")


@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
def test_auto_never_picks_the_kernel(monkeypatch, platform):
    # Not on CPU (interpreted), not on GPU (35x slower than the XLA chunks on an
    # H200), and not on TPU until one measures it.
    monkeypatch.setattr(dispatch, "platform", lambda: platform)
    assert "pallas" in dispatch.implementations("delta_rule")
    assert dispatch.resolve("delta_rule", "auto", length=4096, chunk_size=64) == "chunked"


@pytest.mark.parametrize("chunk", [24, 8])
def test_bad_chunk_raises(chunk):
    x, b = jnp.ones((1, 8, 1, 4)), jnp.ones((1, 8, 1))
    with pytest.raises(ValueError, match="chunk_size must be a power of two >= 16"):
        delta_rule_pallas(x, x, x, b, chunk_size=chunk)
    with pytest.raises(ValueError, match="chunk_size must be a power of two >= 16"):
        delta_rule(x, x, x, b, chunk_size=chunk, impl="pallas")


def test_bad_shapes_raise():
    x, b = jnp.ones((1, 8, 1, 4)), jnp.ones((1, 8, 1))
    with pytest.raises(ValueError, match="initial_state"):
        delta_rule_pallas(x, x, x, b, initial_state=jnp.ones((1, 1, 4, 3)))


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
@pytest.mark.parametrize("shape, grad", [((4, 4096, 16, 128, 128), False), ((1, 1000, 3, 48, 80), True)],
                         ids=["realistic", "odd"])
def test_lowers_at_realistic_shape(platform, gated, shape, grad):
    # bf16 q, k, v with segments and an initial state: two kernels (the
    # forward's chunk-parallel solve and its sequential pass), the same two
    # with and without the gradient (the forward always returns the chunk
    # states). The realistic shape lowers the forward, the odd one the
    # gradient too: the interim backward is XLA, and compiling it at the
    # realistic shape took 244-369 s of libtpu's time in .ci/run's TPU step
    # (2-core AMD VM, 2026-12-07) while testing no kernel.
    b, length, h, dk, dv = shape
    spec = lambda *shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dtype)
    f32 = jnp.float32
    args = [spec(b, length, h, dk), spec(b, length, h, dk), spec(b, length, h, dv), spec(b, length, h, dtype=f32),
            spec(b, h, dk, dv, dtype=f32), spec(b, length, dtype=jnp.int32)]
    if gated:
        args.append(spec(b, length, h, dtype=f32))

    def loss(q, k, v, beta, s0, seg, ld=None):
        o, s = delta_rule_pallas(q, k, v, beta, log_decay=ld, initial_state=s0, segment_ids=seg, chunk_size=64)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(s)

    diff = (0, 1, 2, 3, 4) + ((6,) if gated else ())
    fn = jax.value_and_grad(loss, diff) if grad else loss
    text = lower(fn, args, platform).as_text()
    assert text.count("__gpu$xla.gpu.triton" if platform == "cuda" else "tpu_custom_call") == 2
