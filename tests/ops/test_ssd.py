"""ssd (Mamba-2): every implementation against the float64 loop reference."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops.ssd import _ssd, ssd
from tests.ops.ref_ssd import ssd_ref
from tests.ops.utils import RTOL_ATTN, RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

IMPLS = ["reference", "sequential", "chunked"]
# (impl, chunk_size): chunk_size only matters to "chunked".
IMPL_CHUNKS = [("reference", 16), ("sequential", 16), ("chunked", 16), ("chunked", 64)]
ARG_NAMES = ("x", "dt", "A", "B", "C", "D", "initial_state")


def _inputs(rng, b=2, l=13, h=4, p=3, g=2, n=5, a_range=(0.2, 1.5)):
    """Fresh float64 inputs: (x, dt, A, B, C, D, h0)."""
    x = rng.standard_normal((b, l, h, p))
    dt = rng.uniform(0.1, 1.0, (b, l, h))
    A = -rng.uniform(*a_range, h)
    B = rng.standard_normal((b, l, g, n))
    C = rng.standard_normal((b, l, g, n))
    D = rng.standard_normal(h)
    h0 = rng.standard_normal((b, h, p, n))
    return x, dt, A, B, C, D, h0


def _segments(rng, b, l):
    # Random contiguous segments; ids repeat (mod 3) so only *changes* count.
    return np.cumsum(rng.random((b, l)) < 0.15, axis=1) % 3


def _f32(*arrays):
    return tuple(None if t is None else jnp.asarray(t, jnp.float32) for t in arrays)


def _run(args, impl, chunk_size=16, segment_ids=None, use_d=True, use_h0=True):
    x, dt, A, B, C, D, h0 = args
    return ssd(
        x, dt, A, B, C, chunk_size=chunk_size, D=D if use_d else None,
        initial_state=h0 if use_h0 else None, segment_ids=segment_ids, impl=impl,
    )


def _ref(args, segment_ids=None, use_d=True, use_h0=True, xp=np):
    x, dt, A, B, C, D, h0 = args
    return ssd_ref(xp, x, dt, A, B, C, D if use_d else None, h0 if use_h0 else None, segment_ids)


# --- forward ------------------------------------------------------------------


@pytest.mark.parametrize("impl,chunk_size", IMPL_CHUNKS)
@pytest.mark.parametrize("length", [1, 7, 37, 64, 65, 130])
def test_matches_reference_float32(rng, impl, chunk_size, length):
    args = _inputs(rng, l=length)
    y, final = _run(_f32(*args), impl, chunk_size)
    y_ref, final_ref = _ref(args)
    assert y.dtype == jnp.float32 and y.shape == args[0].shape
    assert final.dtype == jnp.float32 and final.shape == args[6].shape
    assert_rel_close(y, y_ref, RTOL_ATTN, "y")
    assert_rel_close(final, final_ref, RTOL_ATTN, "final_state")


@pytest.mark.parametrize("impl,chunk_size", IMPL_CHUNKS)
def test_float64_exact_with_segments(rng, impl, chunk_size):
    args = _inputs(rng, b=3, l=41)
    seg = _segments(rng, 3, 41)
    with jax.enable_x64(True):
        y, final = _run(args, impl, chunk_size, segment_ids=seg)
        assert y.dtype == jnp.float64 and final.dtype == jnp.float64
    y_ref, final_ref = _ref(args, seg)
    assert_rel_close(y, y_ref, RTOL_F64, "y")
    assert_rel_close(final, final_ref, RTOL_F64, "final_state")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "g,use_d,use_h0", [(1, True, False), (2, False, True), (1, False, False), (2, True, True)]
)
def test_groups_skip_and_initial_state(rng, impl, g, use_d, use_h0):
    args = _inputs(rng, l=29, g=g)
    y, final = _run(_f32(*args), impl, 8, use_d=use_d, use_h0=use_h0)
    y_ref, final_ref = _ref(args, use_d=use_d, use_h0=use_h0)
    assert_rel_close(y, y_ref, RTOL_ATTN, "y")
    assert_rel_close(final, final_ref, RTOL_ATTN, "final_state")


def test_groups_are_contiguous_heads(rng):
    # Head i must read group i // (h // g): swapping the two groups of B and C
    # must equal swapping the two halves of the heads.
    x, dt, A, B, C, D, h0 = _inputs(rng, l=11, h=4, g=2)
    y, _ = ssd(*_f32(x, dt, A, B, C), impl="chunked", chunk_size=4)
    perm = np.array([2, 3, 0, 1])
    y_swapped, _ = ssd(*_f32(x[:, :, perm], dt[:, :, perm], A[perm], B[:, :, ::-1], C[:, :, ::-1]),
                       impl="chunked", chunk_size=4)
    assert_rel_close(y_swapped, np.asarray(y)[:, :, perm], RTOL_ATTN, "y")
    # ...and not the interleaved assignment i % g.
    interleaved = np.array([0, 2, 1, 3])
    y_int, _ = ssd_ref(np, x[:, :, interleaved], dt[:, :, interleaved], A[interleaved], B, C)
    assert rel_err(y, y_int[:, :, np.argsort(interleaved)]) > 1e-2


@pytest.mark.parametrize("impl", IMPLS)
def test_packed_sequences_equal_separate_runs(rng, impl):
    # Three sequences of lengths 5, 11, 21 packed into 37 positions: with
    # chunk_size 8 one segment starts mid-chunk (5) and one on a boundary (16).
    lengths = [5, 11, 21]
    args = _inputs(rng, b=1, l=sum(lengths))
    x, dt, A, B, C, D, h0 = _f32(*args)
    seg = np.repeat(np.arange(len(lengths)) + 7, lengths)[None]
    y, final = ssd(x, dt, A, B, C, chunk_size=8, D=D, initial_state=h0, segment_ids=seg, impl=impl)
    start, ys = 0, []
    for i, ln in enumerate(lengths):
        sl = slice(start, start + ln)
        y_i, final_i = ssd(x[:, sl], dt[:, sl], A, B[:, sl], C[:, sl], chunk_size=8, D=D,
                           initial_state=h0 if i == 0 else None, impl=impl)
        ys.append(y_i)
        start += ln
    assert_rel_close(y, jnp.concatenate(ys, axis=1), RTOL_ATTN, "packed y")
    assert_rel_close(final, final_i, RTOL_ATTN, "packed final_state")
    # The segments do change the result (a run without them differs).
    y_joined, _ = ssd(x, dt, A, B, C, chunk_size=8, D=D, initial_state=h0, impl=impl)
    assert rel_err(y_joined, y) > 1e-3


def test_bfloat16(rng):
    args = _inputs(rng, l=37)
    bf = tuple(jnp.asarray(t, jnp.bfloat16) for t in args)
    # The reference sees exactly the rounded inputs, so only the computation's
    # own rounding (and the bf16 output) is measured.
    args_rounded = tuple(np.asarray(t, np.float64) for t in bf)
    y_ref, final_ref = _ref(args_rounded)
    for impl in IMPLS:
        y, final = _run(bf, impl, 16)
        assert y.dtype == jnp.bfloat16, impl
        assert final.dtype == jnp.float32, impl
        assert_rel_close(y.astype(jnp.float32), y_ref, 1e-2, f"{impl} bf16 y")
        assert_rel_close(final, final_ref, 1e-4, f"{impl} bf16 final_state")


# --- gradients (and the extreme-decay stress cases) -----------------------------

GRAD_CASES = ["mixed_segments", "strong", "weak", "strong_segments_in_padding"]
_GRAD_REF_CACHE = {}


def _grad_case(case):
    """Inputs, loss weights, segment ids and float64 reference results of a case.

    All cases share one shape (b=2, l=130: two full 64-chunks plus a padded
    one), so the jitted reference step and the impls compile once.
      mixed_segments: moderate decays, random segments (row 0 keeps its
        initial state for 40 steps).
      strong: Σ dt·A ≈ -1e3 over the sequence (single steps down to e^-13).
      weak: A = -1e-4, the state barely decays over 130 steps.
      strong_segments_in_padding: strong decay, and segments that start on the
        first position of the padded last chunk (128) and on the last one (129).
    """
    if case in _GRAD_REF_CACHE:
        return _GRAD_REF_CACHE[case]
    rng = np.random.default_rng(GRAD_CASES.index(case))
    a_range = {"mixed_segments": (0.2, 1.5), "weak": (1e-4, 1e-4)}.get(case, (7.0, 9.0))
    args = list(_inputs(rng, b=2, l=130, a_range=a_range))
    seg = None
    if case != "mixed_segments":
        args[1] = rng.uniform(0.5, 1.5, args[1].shape)
    if case == "mixed_segments":
        seg = _segments(rng, 2, 130)
        seg[0, :40] = seg[0, 0]
    elif case == "strong_segments_in_padding":
        seg = np.zeros((2, 130), int)
        seg[0, 128:] = 1
        seg[1, 30:] = 2
        seg[1, 129] = 3
    total = (args[1] * args[2]).sum(axis=1)
    if case.startswith("strong"):
        assert (total < -900).all()
    if case == "weak":
        assert (total > -0.1).all()
    weights = (rng.standard_normal(args[0].shape), rng.standard_normal(args[6].shape))
    fwd = _ref(args, seg)
    result = (tuple(args), weights, seg, fwd, _ref_grads(args, weights, seg))
    _GRAD_REF_CACHE[case] = result
    return result


def _ref_grads(args, weights, seg):
    wy, wf = weights
    with jax.enable_x64(True):
        def loss(*a):
            y, final = ssd_ref(jnp, *a, seg)
            return jnp.sum(y * wy) + jnp.sum(final * wf)
        grads = jax.grad(loss, argnums=tuple(range(7)))(*(jnp.asarray(t) for t in args))
        return [np.asarray(g) for g in grads]


@functools.partial(jax.jit, static_argnames=("impl", "chunk_size"))
def _outputs_and_grads(args, weights, seg, impl, chunk_size):
    wy, wf = weights

    def loss(args):
        x, dt, A, B, C, D, h0 = args
        y, final = ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=h0,
                       segment_ids=seg, impl=impl)
        return jnp.sum(y * wy) + jnp.sum(final * wf), (y, final)

    (_, (y, final)), grads = jax.value_and_grad(loss, has_aux=True)(args)
    return y, final, grads


@pytest.mark.parametrize("impl,chunk_size", IMPL_CHUNKS)
@pytest.mark.parametrize("case", GRAD_CASES)
def test_outputs_and_gradients_match_reference(impl, chunk_size, case):
    args, weights, seg, (y_ref, final_ref), grads_ref = _grad_case(case)
    y, final, grads = _outputs_and_grads(_f32(*args), _f32(*weights), seg, impl, chunk_size)
    assert_rel_close(y, y_ref, RTOL_ATTN, "y")
    assert_rel_close(final, final_ref, RTOL_ATTN, "final_state")
    for name, g, g_ref in zip(ARG_NAMES, grads, grads_ref):
        assert np.abs(g_ref).max() > 0, name  # every argument matters
        assert_rel_close(g, g_ref, RTOL_GRAD, f"d{name}")


# --- API ----------------------------------------------------------------------


@pytest.mark.parametrize("length,expected", [(23, "chunked"), (8, "reference"), (5, "reference")])
def test_auto_picks_by_length(rng, length, expected):
    # One chunk (l <= chunk_size): the quadratic form; more: the chunked one.
    args64 = _inputs(rng, l=length)
    args = _f32(*args64)
    y_auto, f_auto = _run(args, "auto", 8)
    y_exp, f_exp = _run(args, expected, 8)
    np.testing.assert_array_equal(np.asarray(y_auto), np.asarray(y_exp))
    np.testing.assert_array_equal(np.asarray(f_auto), np.asarray(f_exp))
    y_ref, f_ref = _ref(args64)
    assert_rel_close(y_auto, y_ref, RTOL_ATTN, "y")
    assert_rel_close(f_auto, f_ref, RTOL_ATTN, "final_state")


def test_bad_arguments(rng):
    x, dt, A, B, C, D, h0 = _f32(*_inputs(rng, l=6))
    with pytest.raises(ValueError, match="groups"):
        ssd(x, dt, A, B[:, :, :1].repeat(3, axis=2), C[:, :, :1].repeat(3, axis=2))
    with pytest.raises(ValueError, match="dt must be"):
        ssd(x, dt[:, :-1], A, B, C)
    with pytest.raises(ValueError, match="dt must be"):
        ssd(x, dt[..., None], A, B, C)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="chunk_size"):
            ssd(x, dt, A, B, C, chunk_size=bad)
    with pytest.raises(ValueError, match="impl='fast'.*'chunked'"):
        ssd(x, dt, A, B, C, impl="fast")
    with pytest.raises(ValueError, match="x must be"):
        ssd(x[..., 0], dt, A, B, C)
    with pytest.raises(ValueError, match="A must be"):
        ssd(x, dt, A[:2], B, C)
    with pytest.raises(ValueError, match="C must have"):
        ssd(x, dt, A, B, C[..., :2])
    with pytest.raises(ValueError, match="D must be"):
        ssd(x, dt, A, B, C, D=D[:3])
    with pytest.raises(ValueError, match="initial_state must be"):
        ssd(x, dt, A, B, C, initial_state=h0[..., :2])
    with pytest.raises(ValueError, match="segment_ids must be"):
        ssd(x, dt, A, B, C, segment_ids=np.zeros((2, 5), int))


def test_no_retrace_on_second_call(rng):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(x, dt, A, B, C, D, h0):
        return ssd(x, dt, A, B, C, D=D, initial_state=h0, chunk_size=8)

    first = f(*_f32(*_inputs(rng, l=19)))
    second = f(*_f32(*_inputs(rng, l=19)))  # new values, same shapes
    assert rel_err(first[0], second[0]) > 1e-2
    # The eager entry point caches too: its jitted core compiles once per shape.
    if not hasattr(_ssd, "_cache_size"):  # private jax API
        return
    args = _f32(*_inputs(rng, l=17))
    _run(args, "chunked", 8)
    size = _ssd._cache_size()
    _run(_f32(*_inputs(rng, l=17)), "chunked", 8)
    assert _ssd._cache_size() == size
