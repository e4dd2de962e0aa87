"""The chunked linear-attention Pallas kernels against the float64 loop reference.

Interpret mode on CPU with GPU semantics and TPU semantics (``interpret=``),
forward and backward kernels (gradients of every input against the
reference's autodiff), small odd shapes (dk = 6, dv = 5: the GPU kernels pad
them to 16), lengths that are not a multiple of the chunk, segments and an
initial state; the op's front door with ``impl="pallas"``; the ``auto`` rows;
and lowering for ``cuda`` and ``tpu`` at a realistic shape and odd sizes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.kernels import chunked
from seqjax.kernels.linear_attention import linear_attention_pallas
from seqjax.ops import dispatch
from seqjax.ops.common import segment_runs
from seqjax.ops.linear_attention import linear_attention, per_step_log_decay
from tests.kernels.lowering import lower
from tests.ops.ref_linear_attention import linear_attention_ref
from tests.ops.utils import RTOL_GRAD, RTOL_SCAN, assert_rel_close

# A fixed per-head decay reaches the kernel as the per-step scalar decay
# broadcast over time, so it runs with the slow cases only.
SLOW = pytest.mark.slow
KIND_PARAMS = [None, pytest.param("head", marks=SLOW), "scalar", "channel"]
B, H, DK, DV = 2, 2, 6, 5


def _inputs(rng, kind, length):
    """q, k, v, log decay (<= 0, one strongly decaying head/channel), s0, segment ids."""
    q, k = rng.standard_normal((2, B, length, H, DK))
    v = rng.standard_normal((B, length, H, DV))
    s0 = rng.standard_normal((B, H, DK, DV))
    ld = None
    if kind == "head":
        ld = -rng.uniform(0.05, 1.0, (H,))
    elif kind == "scalar":
        ld = -rng.uniform(0.0, 0.5, (B, length, H))
        ld[:, :, 0] = -rng.uniform(4.0, 6.0, (B, length))
    elif kind == "channel":
        ld = -rng.uniform(0.0, 0.3, (B, length, H, DK))
        ld[..., 0] = -rng.uniform(4.0, 6.0, (B, length, H))
    seg = np.zeros((B, length), np.int32)
    seg[0, length // 3:] = 1
    seg[0, length // 2:] = 2  # two segment starts in row 0, none in row 1
    return q, k, v, ld, s0, seg


def _f32(x):
    return None if x is None else jnp.asarray(x, jnp.float32)


def _kernel(q, k, v, ld, s0, seg, interpret, chunk=16):
    b, length, h, _ = q.shape
    g = per_step_log_decay(None if ld is None else jnp.asarray(ld, jnp.float32), b, length, h, jnp.float32)
    fn = jax.jit(functools.partial(linear_attention_pallas, chunk=chunk, interpret=interpret))
    return fn(q, k, v, g, jnp.asarray(s0, jnp.float32), segment_runs(jnp.asarray(seg)))


@pytest.mark.parametrize("interpret", ["gpu", "tpu"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_kernel_matches_reference(rng, kind, interpret):
    # 37 = two full chunks of 16 and a padded one; segments start mid-chunk.
    q, k, v, ld, s0, seg = _inputs(rng, kind, 37)
    o, s = _kernel(*map(_f32, (q, k, v)), ld, s0, seg, interpret)
    o_ref, s_ref = linear_attention_ref(np, q, k, v, ld, True, s0, seg)
    assert o.dtype == jnp.float32 and s.shape == (B, H, DK, DV)
    assert_rel_close(o, o_ref, RTOL_SCAN, "o")
    assert_rel_close(s, s_ref, RTOL_SCAN, "final_state")


@functools.lru_cache(maxsize=None)
def _grad_case(kind):
    """Inputs (l = 21: a full chunk of 16 and a padded one), loss weights, float64 reference gradients."""
    rng = np.random.default_rng(KIND_NAMES.index(kind))
    q, k, v, ld, s0, seg = _inputs(rng, kind, 21)
    w_o, w_s = rng.standard_normal((B, 21, H, DV)), rng.standard_normal((B, H, DK, DV))
    args = (q, k, v, s0) + (() if ld is None else (ld,))

    def loss(q, k, v, s0, ld=None):
        o, s = linear_attention_ref(jnp, q, k, v, ld, True, s0, seg)
        return jnp.sum(w_o * o) + jnp.sum(w_s * s**2)

    with jax.enable_x64(True):
        g_ref = jax.jit(jax.grad(loss, tuple(range(len(args)))))(*args)
    return args, seg, w_o, w_s, [np.asarray(g) for g in g_ref]


KIND_NAMES = [None, "head", "scalar", "channel"]


@pytest.mark.parametrize("kind, interpret", [
    (None, "gpu"), pytest.param(None, "tpu", marks=SLOW),
    ("scalar", "gpu"), pytest.param("scalar", "tpu", marks=SLOW),
    ("channel", "gpu"), ("channel", "tpu")])
def test_backward_kernels_match_reference(kind, interpret):
    # The backward kernels (reverse states pass + chunk pass) against the
    # float64 reference's autodiff; segments, s0 and a padded chunk.
    _check_backward(kind, interpret)


def _check_backward(kind, interpret):
    """The kernel's gradients (all inputs) against the float64 reference's, for a decay ``kind``."""
    args, seg, w_o, w_s, g_ref = _grad_case(kind)

    def loss(q, k, v, s0, ld=None):
        o, s = _kernel(q, k, v, ld, s0, seg, interpret)
        return jnp.sum(w_o * o) + jnp.sum(w_s * s**2)

    grads = jax.jit(jax.grad(loss, tuple(range(len(args)))))(*map(_f32, args))
    for name, gi, gr in zip(["q", "k", "v", "initial_state", "log_decay"], grads, g_ref):
        assert gi.shape == gr.shape
        assert_rel_close(gi, gr, RTOL_GRAD, f"grad {name}")


@pytest.mark.parametrize("kind", [None, "scalar", "channel"])
def test_backward_value_tiles_match_reference(monkeypatch, kind):
    # The GPU backward splits the value channels into tiles (dv = 128 float32
    # does not fit shared memory whole): with tiles of 4, the padded dv = 16
    # runs as four, the real channels 0-4 spanning two, whose dq, dk and decay
    # parts must be summed and whose dv parts placed side by side.
    monkeypatch.setattr(chunked, "GPU_VALUE_TILE", 4)
    _check_backward(kind, "gpu")


def test_strong_channel_decay_keeps_float32_precision(rng):
    # ~-5 per step on one channel: a chunk's cumulative log decay reaches -320,
    # where differences of running sums lose ~1e-5 relative; the kernel's
    # masked sums of genuine terms stay at float32 rounding.
    q, k, v, ld, s0, _ = _inputs(rng, "channel", 64)
    seg = np.zeros((B, 64), np.int32)
    o, s = _kernel(*map(_f32, (q, k, v)), ld, s0, seg, "gpu", chunk=64)
    o_ref, s_ref = linear_attention_ref(np, q, k, v, ld, True, s0, seg)
    assert_rel_close(o, o_ref, 2e-6, "o")
    assert_rel_close(s, s_ref, 2e-6, "final_state")


@pytest.mark.parametrize("interpret", ["gpu", pytest.param("tpu", marks=SLOW)])
def test_bfloat16_inputs(rng, interpret):
    q, k, v, ld, s0, seg = _inputs(rng, "channel", 37)
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    o, s = _kernel(*bf, ld, s0, seg, interpret)
    assert o.dtype == jnp.bfloat16 and s.dtype == jnp.float32
    o_ref, s_ref = linear_attention_ref(np, *(np.float64(x) for x in bf), ld, True, s0, seg)
    # bf16 matmul operands (the decayed q and k are rounded to bf16 before the
    # tensor-core products) and o rounded to bf16: ~3 bf16 roundings.
    assert_rel_close(o, o_ref, 2e-2, "bf16 o")
    assert_rel_close(s, s_ref, 1e-2, "bf16 final_state")


# The float64 reference's gradient dominates the time: kinds that the kernel
# tests above cover run with the slow cases only.
@pytest.mark.parametrize("kind", [pytest.param(None, marks=SLOW), "head",
                                  pytest.param("scalar", marks=SLOW), pytest.param("channel", marks=SLOW)])
def test_front_door_outputs_and_gradients(kind):
    args, seg, w_o, w_s, g_ref = _grad_case(kind)

    def loss(q, k, v, s0, ld=None):
        o, s = linear_attention(q, k, v, log_decay=ld, initial_state=s0, segment_ids=seg, impl="pallas")
        return jnp.sum(w_o * o) + jnp.sum(w_s * s**2), (o, s)

    grads, (o, s) = jax.jit(jax.grad(loss, tuple(range(len(args))), has_aux=True))(*map(_f32, args))
    q, k, v, s0 = args[:4]
    o_ref, s_ref = linear_attention_ref(np, q, k, v, args[4] if kind else None, True, s0, seg)
    assert_rel_close(o, o_ref, RTOL_SCAN, "o")
    assert_rel_close(s, s_ref, RTOL_SCAN, "final_state")
    for name, gi, gr in zip(["q", "k", "v", "initial_state", "log_decay"], grads, g_ref):
        assert gi.shape == gr.shape
        assert_rel_close(gi, gr, RTOL_GRAD, f"grad {name}")


@pytest.mark.slow
def test_front_door_bidirectional_with_segments(rng):
    q, k, v, _, _, seg = _inputs(rng, None, 21)
    o, _ = linear_attention(*map(_f32, (q, k, v)), causal=False, segment_ids=seg, impl="pallas")
    o_ref, _ = linear_attention_ref(np, q, k, v, None, False, None, seg)
    assert_rel_close(o, o_ref, RTOL_SCAN, "bidirectional o")


# GPU: the XLA path (the kernel's backward did not launch on an H200 at d = 128 float32);
# CPU: the scan for narrow heads with a per-channel decay, else chunks.
@pytest.mark.parametrize("platform, per_channel, expected", [
    ("gpu", 0, "chunked"), ("gpu", 1, "chunked"), ("tpu", 0, "pallas"), ("tpu", 1, "pallas"),
    ("cpu", 0, "chunked"), ("cpu", 1, "sequential")])
def test_auto_picks_the_kernel_on_accelerators(monkeypatch, platform, per_channel, expected):
    monkeypatch.setattr(dispatch, "platform", lambda: platform)
    assert dispatch.resolve("linear_attention", "auto", per_channel=per_channel, dv=16) == expected


def test_bad_chunk_raises():
    x = jnp.zeros((1, 8, 1, 4))
    with pytest.raises(ValueError, match="chunk must be a power of two >= 16"):
        linear_attention_pallas(x, x, x, chunk=24)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("kind", [None, "scalar", "channel"])
@pytest.mark.parametrize("shape", [(2, 4096, 16, 128, 128), (1, 1000, 3, 48, 80)], ids=["gla", "odd"])
def test_lowers_at_realistic_shape(platform, kind, shape):
    # GLA at b=2, l=4096, h=16, d=128 in bf16 with segments, and sizes that are
    # neither powers of two nor a multiple of the chunk; forward and gradient:
    # 2 forward kernels (states, outputs) and 3 backward ones (states
    # recomputed, reverse states, chunk gradients).
    b, length, h, dk, dv = shape
    spec = lambda *shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
    args = [spec(b, length, h, dk), spec(b, length, h, dk), spec(b, length, h, dv),
            spec(b, length, dtype=jnp.int32), spec(b, h, dk, dv, dtype=jnp.float32)]
    e = {None: None, "scalar": 1, "channel": dk}[kind]
    if e is not None:
        args.append(spec(b, length, h, e, dtype=jnp.float32))

    def loss(q, k, v, run, s0, g=None):
        o, s = linear_attention_pallas(q, k, v, g, s0, run)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(s)

    diff = (0, 1, 2, 4) + ((5,) if e is not None else ())
    text = lower(jax.value_and_grad(loss, diff), args, platform).as_text()
    assert text.count("__gpu$xla.gpu.triton" if platform == "cuda" else "tpu_custom_call") == 5
