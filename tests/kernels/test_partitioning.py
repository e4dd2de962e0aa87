"""Kernel launches under a batch-sharded ``jit``: each device runs its own rows.

The CPU test machine has 8 host devices (tests/conftest.py). A kernel's launch
is traced once more when the SPMD partitioner splits it; the spies below
record the shapes each launch is traced with, which is how a test sees that a
device got ``b / devices`` rows instead of the gathered batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import seqjax.kernels.selective_scan as kernel_module
from seqjax.kernels.partitioning import batch_partitioned
from seqjax.ops.selective_scan import selective_scan
from tests.ops.ref_selective import selective_scan_ref

DEVICES = 4


def _mesh():
    return jax.make_mesh((DEVICES,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:DEVICES])


def _rows_times_w(seen):
    def launch(x, w):
        seen.append((x.shape, w.shape))
        return [x * w[None, :] + 1.0, jnp.sum(x, axis=1, keepdims=True)]
    return launch


@pytest.mark.parametrize("spec, local_rows", [(P("data", None), 8 // DEVICES), (P(None, "data"), 8)])
def test_batch_partitioned_runs_each_device_on_its_rows(spec, local_rows):
    seen = []
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((8, 12)).astype(np.float32), rng.standard_normal(12).astype(np.float32)
    mesh = _mesh()
    fn = jax.jit(lambda x, w: batch_partitioned(_rows_times_w(seen), (x, w), batched=(True, False)),
                 in_shardings=(NamedSharding(mesh, spec), NamedSharding(mesh, P())))
    y, s = fn(x, w)
    np.testing.assert_allclose(np.asarray(y), x * w + 1.0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s), x.sum(1, keepdims=True), rtol=1e-5)
    # The last trace is the partitioner's: a batch split over 4 devices gives 2 rows each; a split
    # of the other axis is gathered (the rows stay whole), and w is never split.
    assert seen[-1] == ((local_rows, 12), (12,))
    if spec == P("data", None):
        assert y.sharding.spec[0] == "data"


def test_batch_partitioned_rejects_bad_flags_and_results():
    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="2 batched flags for 1 arguments"):
        batch_partitioned(lambda x: x, (x,), batched=(True, False))
    with pytest.raises(ValueError, match=r"result 0 \(3,\) does not lead with the batch \(4\)"):
        batch_partitioned(lambda x: x[0], (x,))


def test_selective_scan_kernel_under_a_batch_sharded_jit(monkeypatch):
    """Values and all gradients of ``impl="pallas"`` on a batch-sharded jit against the float64 reference."""
    seen = []
    grid_call = kernel_module.grid_call

    def spy(*args, **kwargs):
        call = grid_call(*args, **kwargs)

        def traced(*arrays):
            seen.append(arrays[0].shape[0])
            return call(*arrays)
        return traced

    monkeypatch.setattr(kernel_module, "grid_call", spy)
    b, length, d, n = 8, 37, 16, 4
    rng = np.random.default_rng(1)
    u, dt = rng.standard_normal((2, b, length, d))
    A = -np.exp(rng.standard_normal((d, n)))
    B, C = rng.standard_normal((2, b, length, n))
    gy = rng.standard_normal((b, length, d))
    segment_ids = np.cumsum(rng.random((b, length)) < 0.1, axis=1)

    def loss(u, dt, A, B, C):
        y = selective_scan(u, dt, A, B, C, delta_softplus=True, segment_ids=segment_ids, impl="pallas")
        return jnp.sum(y * jnp.asarray(gy))

    mesh = _mesh()
    rows, whole = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    f32 = [x.astype(np.float32) for x in (u, dt, A, B, C)]
    with jax.set_mesh(mesh):  # as seqjax.train runs its step (the other tests have no mesh in context)
        value, grads = jax.jit(jax.value_and_grad(loss, argnums=range(5)),
                               in_shardings=(rows, rows, whole, rows, rows))(*f32)
    assert b // DEVICES in seen  # forward and backward launches traced with the local rows

    def ref_loss(u, dt, A, B, C):
        y, _ = selective_scan_ref(jnp, u, dt, A, B, C, delta_softplus=True, segment_ids=segment_ids)
        return jnp.sum(y * jnp.asarray(gy))

    with jax.enable_x64(True):
        ref_value, ref_grads = jax.value_and_grad(ref_loss, argnums=range(5))(*(jnp.float64(x) for x in (u, dt, A, B, C)))
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-4)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-3, atol=2e-3 * np.abs(want).max())
    assert grads[0].sharding.spec[0] == "data"


def test_vmap_over_a_kernel_call_matches_the_xla_path():
    """``custom_partitioning`` has no vmap rule: the wrapper vmaps the launch itself (values and gradients)."""
    from seqjax.ops.linear_scan import linear_scan

    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.uniform(0.2, 1.0, (3, 2, 7, 4)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((3, 2, 7, 4)), jnp.float32)

    def loss(impl, a, b):
        h = jax.vmap(lambda a, b: linear_scan(a, b, impl=impl)[0], in_axes=(0, None))(a, b)
        return jnp.sum(h * jnp.arange(h.size, dtype=h.dtype).reshape(h.shape))

    got = jax.jit(jax.value_and_grad(lambda a, b: loss("pallas", a, b), argnums=(0, 1)))(a, b[0])
    want = jax.value_and_grad(lambda a, b: loss("sequential", a, b), argnums=(0, 1))(a, b[0])
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("segments", [False, True], ids=["plain", "segments"])
def test_splash_under_a_batch_sharded_jit(monkeypatch, segments):
    """Splash (TPU's ``auto`` pick, interpret mode here): each device runs its own rows, forward and backward."""
    import functools

    import seqjax.kernels.attention_vendor as vendor
    from seqjax.ops.attention import attention
    from tests.kernels.attention_layout import to_internal, to_public
    from tests.ops.ref_attention import attention_ref

    seen = []
    rows_fn = vendor._splash_rows

    def spy(kernel, q, *rest):
        seen.append(q.shape[0])
        return rows_fn(kernel, q, *rest)

    monkeypatch.setattr(vendor, "_splash_rows", spy)
    b, length, h, hk, d = DEVICES, 128, 2, 1, 8
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((b, length, h, d)), *rng.standard_normal((2, b, length, hk, d))
    w = rng.standard_normal((b, length, h, d))
    seg = np.cumsum(rng.random((b, length)) < 0.03, axis=1).astype(np.int32) if segments else None

    def run(q, k, v):
        seg_arg = None if seg is None else jnp.asarray(seg)
        return to_public(vendor.splash_call(*to_internal(q, k, v, hk), seg_arg, d**-0.5, None, 0, interpret=True))

    mesh = _mesh()
    rows = NamedSharding(mesh, P("data"))
    with jax.set_mesh(mesh):
        out = jax.jit(run, in_shardings=(rows,) * 3)(q, k, v)
        # The last trace is the partitioner's: one device's rows (the global batch before it).
        assert seen[-1] == b // DEVICES and b in seen
        seen.clear()
        grads = jax.jit(jax.grad(lambda *a: jnp.sum(run(*a) * w), argnums=(0, 1, 2)),
                        in_shardings=(rows,) * 3)(*(np.float32(x) for x in (q, k, v)))
        assert seen[-1] == b // DEVICES  # the backward's launch (recomputed forward and vjp)
    assert out.sharding.spec[0] == "data" and grads[0].sharding.spec[0] == "data"
    kw = dict(causal=True, segment_ids=seg)
    np.testing.assert_allclose(np.asarray(out), attention_ref(q, k, v, **kw), rtol=2e-4, atol=2e-4)
    with jax.enable_x64(True):
        ref = functools.partial(attention, impl="reference", **kw)
        expected = jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums=(0, 1, 2))(q, k, v)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-3, atol=2e-3 * np.abs(want).max())
