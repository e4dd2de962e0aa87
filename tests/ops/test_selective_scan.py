"""selective_scan (Mamba-1 S6): every implementation against the float64 loop reference."""

import functools
import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops import selective_scan
from seqjax.ops.selective_scan import auto_impl
from tests.ops.ref_selective import selective_scan_ref
from tests.ops.utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close, rel_err

# The module (``seqjax.ops.selective_scan`` the name is the function).
selective_scan_module = importlib.import_module("seqjax.ops.selective_scan")
IMPLS = ["reference", "chunked", "sequential", "auto"]
FAST = ["reference", "chunked", "sequential"]
CHUNK = 16  # small, so that lengths 37 and 130 span several chunks and a remainder
ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

# (length, groups, with D, with z, with delta_bias, softplus, with segments);
# groups = 0 means B, C of shape (b, l, n) (shared by all channels), else (b, l, g, n).
CASES = {
    "l1_plain": (1, 0, False, False, False, False, False),
    "l7_g2_all_softplus": (7, 2, True, True, True, True, False),
    "l37_shared_D_softplus_seg": (37, 0, True, False, False, True, True),
    "l37_g2_z_bias_seg": (37, 2, False, True, True, False, True),
}


def _inputs(rng, case, batch=2, d=4, n=3):
    length, groups, use_d, use_z, use_bias, softplus, use_seg = case
    bc = (batch, length, n) if groups == 0 else (batch, length, groups, n)
    args = dict(
        u=rng.standard_normal((batch, length, d)),
        # Raw delta is any real under softplus; otherwise a positive step size.
        delta=rng.standard_normal((batch, length, d)) if softplus
        else rng.uniform(0.05, 1.0, (batch, length, d)),
        A=-rng.uniform(0.2, 3.0, (d, n)),
        B=rng.standard_normal(bc),
        C=rng.standard_normal(bc),
        D=rng.standard_normal(d) if use_d else None,
        z=rng.standard_normal((batch, length, d)) if use_z else None,
        delta_bias=rng.uniform(-0.5, 0.5, d) if softplus else rng.uniform(0.0, 0.3, d),
    )
    if not use_bias:
        args["delta_bias"] = None
    seg = np.cumsum(rng.random((batch, length)) < 0.15, axis=1) % 3 if use_seg else None
    return args, softplus, seg


def _cast(args, dtype):
    return {k: None if v is None else jnp.asarray(v, dtype) for k, v in args.items()}


@functools.partial(jax.jit, static_argnames=("softplus", "impl"))
def _run(args, softplus, seg, impl):
    # Jitted: one compile per shape instead of one per eager op keeps the file fast.
    return selective_scan(
        **args, delta_softplus=softplus, segment_ids=seg, return_last_state=True,
        impl=impl, chunk_size=CHUNK,
    )


def _ref(args, softplus, seg, xp=np):
    return selective_scan_ref(xp, **args, delta_softplus=softplus, segment_ids=seg)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_float32(rng, impl, case):
    args, softplus, seg = _inputs(rng, CASES[case])
    y, last = _run(_cast(args, jnp.float32), softplus, seg, impl)
    y_ref, last_ref = _ref(args, softplus, seg)
    assert y.dtype == jnp.float32 and last.dtype == jnp.float32
    assert last.shape == (2, 4, 3)
    assert_rel_close(y, y_ref, RTOL_SCAN, "y")
    assert_rel_close(last, last_ref, RTOL_SCAN, "last_state")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ["l7_g2_all_softplus", "l37_g2_z_bias_seg"])
def test_float64_exact(rng, impl, case):
    args, softplus, seg = _inputs(rng, CASES[case])
    with jax.enable_x64(True):
        y, last = _run(_cast(args, jnp.float64), softplus, seg, impl)
        assert y.dtype == jnp.float64 and last.dtype == jnp.float64
    y_ref, last_ref = _ref(args, softplus, seg)
    assert_rel_close(y, y_ref, RTOL_F64, "y")
    assert_rel_close(last, last_ref, RTOL_F64, "last_state")


def test_auto_large_takes_sequential_on_cpu_and_matches(rng):
    # Past the 2**19 row of other platforms (b*l*d*n = 2*600*32*16): on CPU "auto" is "sequential" at any size.
    b, l, d, n = 2, 600, 32, 16
    assert auto_impl("auto", (b, l, d), n) == "sequential" and auto_impl("auto", (2, 7, 4), 3) == "sequential"
    args = dict(
        u=rng.standard_normal((b, l, d)), delta=rng.standard_normal((b, l, d)),
        A=-rng.uniform(0.2, 3.0, (d, n)), B=rng.standard_normal((b, l, 2, n)),
        C=rng.standard_normal((b, l, 2, n)), D=rng.standard_normal(d),
        z=rng.standard_normal((b, l, d)), delta_bias=rng.standard_normal(d),
    )
    y, last = selective_scan(**_cast(args, jnp.float32), delta_softplus=True, return_last_state=True)
    y_ref, last_ref = _ref(args, True, None)
    assert_rel_close(y, y_ref, RTOL_SCAN, "y")
    assert_rel_close(last, last_ref, RTOL_SCAN, "last_state")


def _loss_fn(fn, names, weights):
    # A random linear functional of (y, last_state): exercises both cotangents.
    wy, wh = weights

    def loss(*vals):
        y, last = fn(dict(zip(names, vals)))
        return jnp.sum(y * wy) + jnp.sum(last * wh)

    return loss


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("case", ["l7_g2_all_softplus", "l37_shared_D_softplus_seg", "l37_g2_z_bias_seg"])
def test_gradients_match_reference_autodiff(rng, impl, case):
    args, softplus, seg = _inputs(rng, CASES[case])
    names = [k for k in ARG_NAMES if args[k] is not None]
    shape_y = args["u"].shape
    weights = (rng.standard_normal(shape_y), rng.standard_normal((shape_y[0], 4, 3)))
    argnums = tuple(range(len(names)))

    with jax.enable_x64(True):
        ref_fn = lambda a: _ref({**args, **a}, softplus, seg, xp=jnp)  # noqa: E731
        g_ref = jax.grad(_loss_fn(ref_fn, names, weights), argnums)(
            *(jnp.asarray(args[k], jnp.float64) for k in names)
        )
        # Float64 run of the fast path: the custom backward is exact, not just close.
        fast = lambda a: _run({**_cast(args, jnp.float64), **a}, softplus, seg, impl)  # noqa: E731
        g64 = jax.jit(jax.grad(_loss_fn(fast, names, weights), argnums))(
            *(jnp.asarray(args[k], jnp.float64) for k in names)
        )
    fast32 = lambda a: _run({**_cast(args, jnp.float32), **a}, softplus, seg, impl)  # noqa: E731
    w32 = tuple(jnp.float32(w) for w in weights)
    g32 = jax.jit(jax.grad(_loss_fn(fast32, names, w32), argnums))(
        *(jnp.asarray(args[k], jnp.float32) for k in names)
    )
    for name, r, a32, a64 in zip(names, g_ref, g32, g64):
        assert a32.dtype == jnp.float32 and a32.shape == np.shape(args[name])
        assert_rel_close(a32, r, RTOL_GRAD, f"d{name} float32")
        assert_rel_close(a64, r, RTOL_F64, f"d{name} float64")


@pytest.mark.parametrize("impl", FAST)
def test_packed_segments_equal_separate_runs(rng, impl):
    # Row 0 packs sequences of lengths 13 then 24; row 1 packs 24 then 13.
    splits = [[13, 24], [24, 13]]
    d, n, length = 4, 3, 37
    args, softplus, _ = _inputs(rng, (length, 1, True, True, True, True, False))  # (b, l, 1, n)
    seg = np.stack([np.repeat(np.arange(len(s)) + 7 * i, s) for i, s in enumerate(splits)])
    with jax.enable_x64(True):
        packed_y, packed_last = _run(_cast(args, jnp.float64), softplus, seg, impl)
        for row, sizes in enumerate(splits):
            start = 0
            for size in sizes:
                part = {
                    k: v if v is None or np.ndim(v) < 3 else v[row:row + 1, start:start + size]
                    for k, v in args.items()
                }
                y, last = _run(_cast(part, jnp.float64), softplus, None, impl)
                np.testing.assert_allclose(packed_y[row:row + 1, start:start + size], y, rtol=0, atol=1e-12)
                start += size
            # The packed last state is the last sequence's own last state.
            np.testing.assert_allclose(packed_last[row], last[0], rtol=0, atol=1e-12)
        # And packing really changes the result: without segment ids it differs.
        whole_y = _run(_cast(args, jnp.float64), softplus, None, impl)[0]
    assert rel_err(whole_y, packed_y) > 1e-3
    assert packed_last.shape == (2, d, n)


@pytest.mark.parametrize("impl", FAST)
def test_bfloat16(rng, impl):
    args, softplus, seg = _inputs(rng, CASES["l37_g2_z_bias_seg"])
    bf = _cast(args, jnp.bfloat16)
    y, last = _run(bf, softplus, seg, impl)
    assert y.dtype == jnp.bfloat16 and last.dtype == jnp.float32
    # Reference on the bf16-rounded inputs: what is left is the output rounding.
    rounded = {k: None if v is None else np.asarray(v, np.float64) for k, v in bf.items()}
    y_ref, last_ref = _ref(rounded, softplus, seg)
    assert_rel_close(y, y_ref, 1e-2, "y bf16")
    assert_rel_close(last, last_ref, 1e-4, "last_state from bf16 inputs")


def test_chunk_size_does_not_change_result(rng):
    args, softplus, seg = _inputs(rng, CASES["l37_g2_z_bias_seg"])
    run = lambda c: jax.jit(functools.partial(  # noqa: E731
        selective_scan, delta_softplus=softplus, impl="chunked", chunk_size=c))
    outs = [run(c)(**_cast(args, jnp.float32), segment_ids=seg) for c in (1, 5, 37, 64)]
    y_ref, _ = _ref(args, softplus, seg)
    for y in outs:
        assert_rel_close(y, y_ref, RTOL_SCAN, "y")


def _bad(rng, **over):
    b, l, d, n = 2, 5, 6, 3
    args = dict(
        u=rng.standard_normal((b, l, d)), delta=rng.standard_normal((b, l, d)),
        A=-rng.uniform(0.5, 1.0, (d, n)), B=rng.standard_normal((b, l, n)),
        C=rng.standard_normal((b, l, n)),
    )
    args.update(over)
    return {k: jnp.asarray(v, jnp.float32) if isinstance(v, np.ndarray) and k != "segment_ids" else v
            for k, v in args.items()}


@pytest.mark.parametrize("over, match", [
    (dict(B=np.ones((2, 5, 4, 3)), C=np.ones((2, 5, 4, 3))), r"g = 4 .* must divide d = 6"),
    (dict(A=np.ones((3, 6))), r"A must be \(d, n\) = \(6, n\)"),
    (dict(A=np.ones(6)), r"A must be \(d, n\)"),
    (dict(u=np.ones((2, 5))), r"u must be \(batch, length, d\)"),
    (dict(u=np.ones((2, 0, 6)), delta=np.ones((2, 0, 6))), r"length >= 1"),
    (dict(delta=np.ones((2, 4, 6))), r"delta \(2, 4, 6\) must have u's shape"),
    (dict(B=np.ones((2, 5, 4))), r"B must be \(batch, length, n\)"),
    (dict(C=np.ones((2, 5, 1, 3))), r"C \(2, 5, 1, 3\) must have B's shape"),
    (dict(D=np.ones(5)), r"D must be \(d,\) = \(6,\)"),
    (dict(delta_bias=np.ones((6, 1))), r"delta_bias must be \(d,\)"),
    (dict(z=np.ones((2, 5, 5))), r"z \(2, 5, 5\) must have u's shape"),
    (dict(segment_ids=np.zeros((2, 4), np.int32)), r"segment_ids \(2, 4\) must be"),
    (dict(impl="fast"), r"impl='fast' is not one of 'auto', 'reference', 'sequential', 'chunked'"),
    (dict(chunk_size=0), r"chunk_size must be >= 1"),
])
def test_bad_arguments(rng, over, match):
    with pytest.raises(ValueError, match=match):
        selective_scan(**_bad(rng, **over))


def test_no_retrace(rng):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(u, delta, A, B, C):
        return selective_scan(u, delta, A, B, C, delta_softplus=True, impl="chunked", chunk_size=4)

    args = _bad(rng)
    y1 = f(**args)
    y2 = f(**_bad(rng))  # fresh values, same shapes: must hit the cache
    assert y1.shape == y2.shape and not np.allclose(y1, y2)


def _temp_bytes(impl, length, b=1, d=8, n=32):
    def loss(u, delta, A, B, C):
        return jnp.sum(selective_scan(u, delta, A, B, C, delta_softplus=True, impl=impl))

    spec = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
    args = (spec(b, length, d), spec(b, length, d), spec(d, n), spec(b, length, n), spec(b, length, n))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
    return grad.lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_chunked_memory_does_not_scale_with_state():
    # 8x the length: the reference's temporaries (full (b, l, d, n) tensors)
    # grow 8x, the chunked path's far less (only O(b*l*d) and the chunk-boundary
    # states grow; the (b, chunk, d, n) chunk tensors do not).
    ref_long = _temp_bytes("reference", 1024)
    ref_ratio = ref_long / _temp_bytes("reference", 128)
    small, large = _temp_bytes("chunked", 128), _temp_bytes("chunked", 1024)
    assert ref_ratio > 6.0, ref_ratio
    assert large / small < 3.0, (small, large)
    # And at the long length it needs a small fraction of the reference's memory.
    assert large < 0.2 * ref_long, (large, ref_long)


@pytest.mark.parametrize("case", ["l37_shared_D_softplus_seg", "l7_g2_all_softplus"])
def test_sequential_row_blocks_match_reference(rng, monkeypatch, case):
    # 5 rows of 12 state elements in blocks of 2 (one padded row): outputs, the
    # last state and every gradient against the float64 reference.
    monkeypatch.setattr(selective_scan_module, "STATE_BLOCK", 24)
    assert selective_scan_module._row_blocks(5, 12) == 2
    args, softplus, seg = _inputs(rng, CASES[case], batch=5)
    names = [k for k in ARG_NAMES if args[k] is not None]

    def run(a):
        return selective_scan(**a, delta_softplus=softplus, segment_ids=seg, return_last_state=True,
                              impl="sequential", chunk_size=CHUNK)

    y, last = jax.jit(run)(_cast(args, jnp.float32))
    y_ref, last_ref = _ref(args, softplus, seg)
    assert_rel_close(y, y_ref, RTOL_SCAN, "y")
    assert_rel_close(last, last_ref, RTOL_SCAN, "last state")
    weights = (rng.standard_normal(y.shape), rng.standard_normal(last.shape))
    argnums = tuple(range(len(names)))
    with jax.enable_x64(True):
        ref_fn = lambda a: _ref({**args, **a}, softplus, seg, xp=jnp)  # noqa: E731
        g_ref = jax.grad(_loss_fn(ref_fn, names, weights), argnums)(
            *(jnp.asarray(args[k], jnp.float64) for k in names))
    fast = lambda a: run({**_cast(args, jnp.float32), **a})  # noqa: E731
    g32 = jax.jit(jax.grad(_loss_fn(fast, names, tuple(jnp.float32(w) for w in weights)), argnums))(
        *(jnp.asarray(args[k], jnp.float32) for k in names))
    for name, r, a32 in zip(names, g_ref, g32):
        assert_rel_close(a32, r, RTOL_GRAD, f"d{name}")
