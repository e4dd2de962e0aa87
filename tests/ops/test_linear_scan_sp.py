"""Sequence-parallel linear_scan and ssd under jax.shard_map against float64 references.

The length is split over the mesh axis ``sequence``; outputs, global final
states and gradients (through ``shard_map``) are compared with the float64 loop
references and with the unsharded ops.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from seqjax.ops import linear_scan, linear_scan_sp, ssd
from tests.ops.ref_scan import linear_scan_ref
from tests.ops.ref_ssd import ssd_ref
from tests.ops.utils import assert_rel_close, make_mesh, outputs_and_grads

RTOL = 2e-5
RTOL_GRAD = 5e-5  # the decay gradients sum many products of decays
SEQ = P(None, "sequence")


def _f32(x):
    return jnp.asarray(x, jnp.complex64 if np.iscomplexobj(x) else jnp.float32)


def _scan_inputs(rng, b_shape, a_shape, complex_=False):
    a = rng.uniform(0.5, 1.0, a_shape) * rng.choice([-1.0, 1.0], a_shape)
    b = rng.standard_normal(b_shape)
    h0 = rng.standard_normal((b_shape[0],) + b_shape[2:])
    if complex_:
        a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, a_shape))
        b = b + 1j * rng.standard_normal(b_shape)
        h0 = h0 + 1j * rng.standard_normal(h0.shape)
    return a, b, h0


# (mesh shape, names, b shape, a shape, complex, reverse, impl, extra)
SCAN_CASES = {
    "p8": ((8,), ("sequence",), (2, 32, 3), (2, 32, 3), False, False, "auto", {}),
    "p8_reverse_associative_l48": ((8,), ("sequence",), (2, 48, 3), (2, 48, 3), False, True,
                                   "associative", {}),
    "p8_complex_shared_decay": ((8,), ("sequence",), (2, 32, 3, 2), (2, 32, 3, 1), True, False,
                                "auto", {}),
    "p2_time_invariant_reverse_no_h0": ((2,), ("sequence",), (2, 48, 4), (1, 1, 4), False, True,
                                        "chunked", dict(no_h0=True)),
    "data2_seq4_segments": ((2, 4), ("data", "sequence"), (2, 32, 3), (2, 32, 3), False, False,
                            "auto", dict(segments=True)),
    "p8_reverse_segments_unchecked": ((8,), ("sequence",), (2, 32, 3), (2, 32, 3), False, True,
                                      "auto", dict(segments=True, check_vma=False)),
}


def _segment_ids(batch, length, shard):
    # Changes inside shards and exactly on shard boundaries (both scan
    # directions see a start there); ids repeat, so only changes matter.
    seg = np.zeros((batch, length), int)
    seg[0, 3:] = 1
    seg[0, shard:] = 2  # boundary
    seg[0, 3 * shard + 1:] = 0
    seg[1, 2 * shard:] = 1  # boundary
    seg[1, 2 * shard + 3:] = 2
    return seg


@pytest.mark.parametrize("name", list(SCAN_CASES))
def test_linear_scan_sp(rng, name):
    shape, names, b_shape, a_shape, complex_, reverse, impl, extra = SCAN_CASES[name]
    mesh = make_mesh(shape, names)
    a, b, h0 = _scan_inputs(rng, b_shape, a_shape, complex_)
    if extra.get("no_h0"):
        h0 = None
    seg = None
    if extra.get("segments"):
        seg = _segment_ids(b_shape[0], b_shape[1], b_shape[1] // mesh.shape["sequence"])
    batch_axis = "data" if "data" in names else None
    spec = P(batch_axis, "sequence")
    a_spec = spec if a_shape[1] > 1 else P()
    state_spec = P(batch_axis)

    def sharded(a, b, h0):
        def inner(a, b, h0, seg):
            return linear_scan(a, b, h0, reverse=reverse, segment_ids=seg, impl=impl,
                               chunk_size=4, sequence_axis="sequence")
        return jax.shard_map(
            inner, mesh=mesh, check_vma=extra.get("check_vma", True),
            in_specs=(a_spec, spec, None if h0 is None else state_spec, None if seg is None else spec),
            out_specs=(spec, state_spec))(a, b, h0, None if seg is None else jnp.asarray(seg))

    wh, wl = rng.standard_normal(b_shape), rng.standard_normal((b_shape[0],) + b_shape[2:])
    args = tuple(_f32(x) for x in (a, b, h0) if x is not None)
    fn = sharded if h0 is not None else (lambda a, b: sharded(a, b, None))
    dtype = jnp.complex64 if complex_ else jnp.float32
    cot = (jnp.asarray(wh, dtype), jnp.asarray(wl, dtype))
    (h, last), grads = outputs_and_grads(fn, args, cot)

    h_ref, last_ref = linear_scan_ref(np, a, b, h0, reverse=reverse, segment_ids=seg)
    assert_rel_close(h, h_ref, RTOL, "h vs f64 reference")
    assert_rel_close(last, last_ref, RTOL, "h_last vs f64 reference")
    with jax.enable_x64(True):
        def ref(*x):
            return linear_scan_ref(jnp, *x[:2], *(x[2:] or (None,)), reverse=reverse,
                                   segment_ids=seg)
        _, grads_ref = jax.vjp(ref, *(jnp.asarray(x) for x in (a, b, h0) if x is not None))
        grads_ref = grads_ref((jnp.asarray(wh, h_ref.dtype), jnp.asarray(wl, h_ref.dtype)))
    for name_, g, e in zip(("da", "db", "dh0"), grads, grads_ref):
        assert g.shape == e.shape
        assert np.abs(np.asarray(e)).max() > 1e-2
        assert_rel_close(g, e, RTOL_GRAD, f"{name_} vs f64 reference")

    # The unsharded op.
    plain = lambda *x: linear_scan(*x[:2], *(x[2:] or (None,)), reverse=reverse,  # noqa: E731
                                   segment_ids=seg)
    (h_p, last_p), grads_p = outputs_and_grads(plain, args, cot)
    assert_rel_close(h, h_p, RTOL, "h vs unsharded")
    assert_rel_close(last, last_p, RTOL, "h_last vs unsharded")
    for name_, g, e in zip(("da", "db", "dh0"), grads, grads_p):
        assert_rel_close(g, e, RTOL_GRAD, f"{name_} vs unsharded")


# --- ssd ------------------------------------------------------------------------

SSD_NAMES = ("x", "dt", "A", "B", "C", "D", "initial_state")


def _ssd_inputs(rng, b, l, h=4, p=3, g=2, n=5):
    return (rng.standard_normal((b, l, h, p)), rng.uniform(0.1, 1.0, (b, l, h)),
            -rng.uniform(0.2, 1.5, h), rng.standard_normal((b, l, g, n)),
            rng.standard_normal((b, l, g, n)), rng.standard_normal(h),
            rng.standard_normal((b, h, p, n)))


@pytest.mark.parametrize("mesh_shape,segments,chunk", [((8,), False, 2), ((2,), True, 4)])
def test_ssd_sp(rng, mesh_shape, segments, chunk):
    mesh = make_mesh(mesh_shape, ("sequence",))
    num = mesh_shape[0]
    args = _ssd_inputs(rng, 2, 32)
    seg = _segment_ids(2, 32, 32 // num) if segments else None
    seg_arg = None if seg is None else jnp.asarray(seg)
    specs = (SEQ, SEQ, P(), SEQ, SEQ, P(), P(), None if seg is None else SEQ)

    def sharded(*a):
        def inner(x, dt, A, B, C, D, h0, s):
            return ssd(x, dt, A, B, C, D=D, initial_state=h0, segment_ids=s, chunk_size=chunk,
                       sequence_axis="sequence")
        return jax.shard_map(inner, mesh=mesh, in_specs=specs, out_specs=(SEQ, P()))(*a, seg_arg)

    wy, wf = rng.standard_normal(args[0].shape), rng.standard_normal(args[6].shape)
    cot = (_f32(wy), _f32(wf))
    args32 = tuple(_f32(x) for x in args)
    (y, final), grads = outputs_and_grads(sharded, args32, cot)

    y_ref, final_ref = ssd_ref(np, *args, seg)
    assert_rel_close(y, y_ref, RTOL, "y vs f64 reference")
    assert_rel_close(final, final_ref, RTOL, "final vs f64 reference")
    with jax.enable_x64(True):
        _, vjp = jax.vjp(lambda *a: ssd_ref(jnp, *a, seg), *(jnp.asarray(x) for x in args))
        grads_ref = vjp((jnp.asarray(wy), jnp.asarray(wf)))
    for name, g, e in zip(SSD_NAMES, grads, grads_ref):
        assert np.abs(np.asarray(e)).max() > 1e-2, name
        assert_rel_close(g, e, RTOL_GRAD, f"d{name} vs f64 reference")

    def plain(x, dt, A, B, C, D, h0):
        return ssd(x, dt, A, B, C, D=D, initial_state=h0, segment_ids=seg, chunk_size=chunk)

    (y_p, final_p), grads_p = outputs_and_grads(plain, args32, cot)
    assert_rel_close(y, y_p, RTOL, "y vs unsharded")
    assert_rel_close(final, final_p, RTOL, "final vs unsharded")
    for name, g, e in zip(SSD_NAMES, grads, grads_p):
        assert_rel_close(g, e, RTOL_GRAD, f"d{name} vs unsharded")


def test_sp_scan_is_exact_in_float64(rng):
    # The decomposition itself adds nothing but rounding: float64 matches to ~1e-12.
    mesh = make_mesh((8,), ("sequence",))
    a, b, h0 = _scan_inputs(rng, (1, 16, 2), (1, 16, 2))
    with jax.enable_x64(True):
        h, last = jax.jit(jax.shard_map(
            lambda a, b, h0: linear_scan_sp(a, b, h0, axis_name="sequence"), mesh=mesh,
            in_specs=(SEQ, SEQ, P()), out_specs=(SEQ, P())))(a, b, h0)
        assert h.dtype == jnp.float64
    h_ref, last_ref = linear_scan_ref(np, a, b, h0)
    assert_rel_close(h, h_ref, 1e-12, "h")
    assert_rel_close(last, last_ref, 1e-12, "h_last")
