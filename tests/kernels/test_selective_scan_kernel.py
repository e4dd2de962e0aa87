"""selective_scan's Pallas kernels: interpret mode (GPU and TPU semantics) against the float64 loop reference, and lowering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.kernels import selective_scan as kernel
from seqjax.kernels import selective_scan_tpu, sequence_split
from seqjax.kernels.common import interpret_as
from seqjax.ops import dispatch, selective_scan
from seqjax.ops.selective_scan import auto_impl
from tests.kernels.lowering import kernel_calls, lower_for, specs
from tests.ops.ref_selective import selective_scan_ref
from tests.ops.utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks small enough that tiny inputs span several channel tiles, chunks and a padded remainder."""
    monkeypatch.setattr(kernel, "TILE", 8)
    monkeypatch.setattr(kernel, "STATE_ROWS", 8)  # chunk = MIN_CHUNK = 8 positions
    # TPU kernels: 16 positions a grid step (unrolled; 128 on a TPU, which the
    # interpreter would walk slowly), so tiny inputs span several blocks.
    monkeypatch.setattr(selective_scan_tpu, "BLOCK", 16)


@pytest.fixture
def split_blocks(small_blocks, monkeypatch):
    """Small blocks, and the GPU forward's sequence split at a few programs: 4 programs (2 rows, 2
    tiles) over 48 positions run as 4 segments of 16 (two chunks each)."""
    monkeypatch.setattr(sequence_split, "SPLIT_PROGRAMS", 64)
    monkeypatch.setattr(sequence_split, "MIN_SEGMENT", 8)


def _inputs(rng, length, d, n, groups, optional):
    bc = (2, length, n) if groups == 0 else (2, length, groups, n)
    args = dict(
        u=rng.standard_normal((2, length, d)), delta=rng.standard_normal((2, length, d)),
        A=-rng.uniform(0.2, 3.0, (d, n)), B=rng.standard_normal(bc), C=rng.standard_normal(bc),
        D=rng.standard_normal(d), z=rng.standard_normal((2, length, d)), delta_bias=rng.uniform(-0.5, 0.5, d),
    )
    seg = np.cumsum(rng.random((2, length)) < 0.15, axis=1) % 3
    return {k: v for k, v in args.items() if k in optional or k in ARG_NAMES[:5]}, seg


def _check(rng, kind, dtype, rtol, rtol_grad, length, d, n, groups, optional):
    args, seg = _inputs(rng, length, d, n, groups, optional)
    names = list(args)
    w, w_last = rng.standard_normal((2, length, d)), rng.standard_normal((2, d, n))

    def loss(fn):
        def f(*vals):
            y, last = fn(**dict(zip(names, vals)), delta_softplus=True, segment_ids=seg)
            return jnp.sum(y * w) + jnp.sum(last * w_last), (y, last)
        return jax.jit(jax.value_and_grad(f, argnums=tuple(range(len(names))), has_aux=True))

    def ref(**kw):
        return selective_scan_ref(jnp, **kw)

    def fast(**kw):
        return selective_scan(**kw, impl="pallas", return_last_state=True)

    with jax.enable_x64(True):
        (_, (y_ref, last_ref)), g_ref = loss(ref)(*(jnp.float64(args[k]) for k in names))
        with interpret_as(kind):
            (_, (y, last)), g = loss(fast)(*(jnp.asarray(args[k], dtype) for k in names))
    assert y.dtype == dtype and last.shape == (2, d, n)
    assert_rel_close(y, y_ref, rtol, "y")
    assert_rel_close(last, last_ref, rtol, "last_state")
    for name, gi, gr in zip(names, g, g_ref):
        assert gi.dtype == dtype and gi.shape == np.shape(args[name])
        assert_rel_close(gi, gr, rtol_grad, f"d{name}")


def test_float64_exact_groups_segments_all_options(rng, small_blocks):
    # d = 12 in 2 groups of 6 channels: each group padded to one tile of 8;
    # 13 positions = 2 chunks of 8, the second padded. GPU semantics only:
    # TPUs have no float64.
    _check(rng, "gpu", jnp.float64, RTOL_F64, RTOL_F64, length=13, d=12, n=3, groups=2, optional=ARG_NAMES)


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_float32_shared_bc_segments(rng, small_blocks, kind):
    # B, C (b, l, n) shared by all 10 channels (2 tiles of 8, the second padded).
    _check(rng, kind, jnp.float32, RTOL_SCAN, RTOL_GRAD, length=11, d=10, n=2, groups=0, optional=("D",))


def test_tpu_backward_in_sub_blocks(rng, small_blocks, monkeypatch):
    # A large n makes the TPU backward recompute and walk its block in
    # sub-blocks from the forward's chunk states (n = 128: 32 of 128
    # positions); forced here at n = 8 (padded from 3): blocks of 32 (the
    # test's), sub-blocks of 8, documents starting inside them, 45 positions.
    monkeypatch.setattr(selective_scan_tpu, "BLOCK", 128)
    assert selective_scan_tpu.sub_block(128, 128, 8) == 32  # the real budget, real blocks
    monkeypatch.setattr(selective_scan_tpu, "BLOCK", 32)
    monkeypatch.setattr(selective_scan_tpu, "STATE_SCRATCH_BYTES", 8 * 8 * 8 * 4)
    assert selective_scan_tpu.sub_block(8, 8, 8) == 8
    _check(rng, "tpu", jnp.float32, RTOL_SCAN, RTOL_GRAD, length=45, d=10, n=3, groups=0, optional=())


# float64 (slow: 63 s of the default suite on the 2-core AMD VM, 2026-12-07) holds the
# split to 1e-10; the float32 case runs the same cut by default.
@pytest.mark.parametrize("dtype, rtol, rtol_grad", [
    pytest.param(jnp.float64, RTOL_F64, RTOL_F64, marks=pytest.mark.slow), (jnp.float32, RTOL_SCAN, RTOL_GRAD)])
def test_split_forward_segments_and_documents(rng, split_blocks, dtype, rtol, rtol_grad):
    # 45 positions padded to 48 and cut into 4 segments of 16 (the last one
    # partly padding); documents start at random positions (p = 0.15), so
    # some segments hand their state on and others restart inside. A wrong
    # segment decay, a dropped restart or a misplaced state fails the
    # reference at ~1e-1. Gradients: the backward is cut the same way (the
    # adjoint entering each segment from a pass over the later ones), on the
    # chunk states the forward's second pass saved; a wrong adjoint combine
    # fails du at ~0.25.
    assert sequence_split.split_for(4, 48, 8) == 4
    _check(rng, "gpu", dtype, rtol, rtol_grad, length=45, d=12, n=3, groups=2, optional=ARG_NAMES)


def test_split_for():
    # The shape (b=2, d=2048: 32 programs) cuts l=4096 into 16
    # segments of 256; a batch that fills the GPU, or a short sequence, is not cut.
    assert sequence_split.split_for(32, 4096, 8) == 16
    assert sequence_split.split_for(32, 1024, 8) == 4
    assert sequence_split.split_for(256, 4096, 8) == 2
    assert sequence_split.split_for(512, 4096, 8) == 1
    assert sequence_split.split_for(32, 511, 8) == 1


def test_front_door_default_blocks(rng):
    # The real blocks (128 channels, 16 positions at n = 16) with no override:
    # on CPU the GPU kernel runs interpreted. Length 21: two chunks, the
    # second padded; 2 groups of 2 channels, each padded to a tile.
    args, seg = _inputs(rng, 21, 4, 16, 2, ("z",))
    y, last = jax.jit(lambda a, s: selective_scan(**a, segment_ids=s, delta_softplus=True, return_last_state=True,
                                                  impl="pallas"))({k: jnp.float32(v) for k, v in args.items()}, seg)
    y_ref, last_ref = selective_scan_ref(np, **args, delta_softplus=True, segment_ids=seg)
    assert_rel_close(y, y_ref, RTOL_SCAN, "y")
    assert_rel_close(last, last_ref, RTOL_SCAN, "last_state")


@pytest.mark.parametrize("kind", ["gpu", pytest.param("tpu", marks=pytest.mark.slow)])
def test_bfloat16_inputs_reach_the_kernel(rng, small_blocks, kind):
    # The GPU kernel reads bf16 blocks and accumulates in float32 (the TPU path
    # widens them to float32 first: Mosaic TPU cannot load one bf16 row at a
    # dynamic offset): against the reference on the bf16-rounded inputs, y is
    # off by its own bf16 rounding (tolerance 1e-2) and the float32 last state
    # by float32 rounding (1e-5).
    args, seg = _inputs(rng, 13, 8, 2, 2, ())
    args["delta"] = rng.uniform(0.05, 1.0, args["u"].shape)
    bf = {k: jnp.asarray(v, jnp.float32 if k == "A" else jnp.bfloat16) for k, v in args.items()}
    y, last = jax.jit(lambda u, delta, A, B, C: kernel.selective_scan_pallas(u, delta, A, B, C, seg, interpret=kind))(
        **bf)
    assert y.dtype == jnp.bfloat16 and last.dtype == jnp.float32
    rounded = {k: np.asarray(v, np.float64) for k, v in bf.items()}
    y_ref, last_ref = selective_scan_ref(np, **rounded, segment_ids=seg)
    assert_rel_close(y, y_ref, 1e-2, "y bf16")
    assert_rel_close(last, last_ref, 1e-5, "last_state from bf16 inputs")


def test_auto_picks_the_kernel_on_tpu_only(monkeypatch):
    big, small = (2, 4096, 2048), (2, 7, 4)
    monkeypatch.setattr(dispatch, "platform", lambda: "tpu")
    assert auto_impl("auto", big, 16) == "pallas" and auto_impl("auto", small, 3) == "pallas"
    assert auto_impl("auto", big, 64) == "pallas"
    # On an H200 the kernel's forward+backward was 0.77x the chunked path's
    # (benchmarks/results/h200-kernels.json): GPUs take the XLA rows.
    monkeypatch.setattr(dispatch, "platform", lambda: "gpu")
    assert auto_impl("auto", big, 16) == "chunked" and auto_impl("auto", small, 3) == "reference"
    assert auto_impl("auto", big, 32) == "chunked"
    # On CPU the one-step-per-position scan wins at every measured size.
    monkeypatch.setattr(dispatch, "platform", lambda: "cpu")
    assert auto_impl("auto", big, 16) == "sequential" and auto_impl("auto", small, 3) == "sequential"


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_lowers_at_realistic_shapes(platform):
    # b=2, l=4096, d=2048, n=16: the forward and the gradient (forward with
    # boundary states + backward) through the op in float32, and the kernel on
    # bfloat16 inputs with 4 groups. On GPU the forward and the backward are
    # two kernels each (the sequence cut into 16 segments: split_for), on TPU one.
    b, l, d, n = 2, 4096, 2048, 16

    def args(dtype, groups):
        return specs(((b, l, d), dtype), ((b, l, d), dtype), ((d, n), jnp.float32), ((b, l, groups, n), dtype),
                     ((b, l, groups, n), dtype))

    def op(*x):
        return selective_scan(*x, delta_softplus=True, impl="pallas", return_last_state=True)

    def grad(fn):
        def loss(*x):
            y, last = fn(*x)
            return jnp.sum(y.astype(jnp.float32)) + jnp.sum(last)
        return jax.grad(loss, argnums=(0, 1, 2, 3, 4))

    forward = 2 if platform == "cuda" else 1
    assert sequence_split.split_for(b * d // kernel.TILE, l, kernel.chunk_for(n)) == 16
    assert kernel_calls(lower_for(op, args(jnp.float32, 1), platform), platform) == forward
    assert kernel_calls(lower_for(grad(op), args(jnp.float32, 1), platform), platform) == 2 * forward
    assert kernel_calls(lower_for(grad(kernel.selective_scan_pallas), args(jnp.bfloat16, 4), platform),
                        platform) == 2 * forward


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("n", [4, 5, 8])
def test_small_state_sizes_lower(platform, n):
    # Fewer states must not mean longer chunks than shared memory holds: at
    # n = 4 the chunk was 64 and the GPU backward asked for 315,400 bytes.
    # n = 5: a (16, 5) float32 block of B (320 bytes) is no whole number of
    # 128-byte warpgroup copies; the states are padded to 8 since.
    specs_ = specs(((2, 1024, 256), jnp.float32), ((2, 1024, 256), jnp.float32), ((256, n), jnp.float32),
                   ((2, 1024, n), jnp.float32), ((2, 1024, n), jnp.float32))
    loss = lambda *x: jnp.sum(selective_scan(*x, delta_softplus=True, impl="pallas"))  # noqa: E731
    text = lower_for(jax.grad(loss, argnums=(0, 1, 2, 3, 4)), specs_, platform)
    # GPU: two passes each way over 4 segments (4 programs, 1,024 positions: split_for).
    assert kernel_calls(text, platform) == (4 if platform == "cuda" else 2)


def test_largest_state_lowers_for_tpu(monkeypatch):
    # n = 64, the largest the TPU kernels compile for (libtpu; n = 128 ran out
    # of v5e's 16 MiB of scoped VMEM: the unrolled backward's (128, 128)
    # temporaries), so TPU auto takes the XLA path above it. Compiled by
    # libtpu where it is installed (.ci/run's TPU step).
    n = selective_scan_tpu.MAX_STATES
    specs_ = specs(((2, 1024, 256), jnp.float32), ((2, 1024, 256), jnp.float32), ((256, n), jnp.float32),
                   ((2, 1024, n), jnp.float32), ((2, 1024, n), jnp.float32))
    loss = lambda *x: jnp.sum(selective_scan(*x, delta_softplus=True, impl="pallas"))  # noqa: E731
    assert kernel_calls(lower_for(jax.grad(loss, argnums=(0, 1, 2, 3, 4)), specs_, "tpu"), "tpu") == 2
    monkeypatch.setattr(dispatch, "platform", lambda: "tpu")
    assert auto_impl("auto", (2, 4096, 2048), n) == "pallas"
    assert auto_impl("auto", (2, 4096, 2048), 2 * n) == "chunked"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_default_blocks_several_tiles_and_chunks(rng, kind):
    # The real blocks (128 channels, 16 positions at n = 16) with gradients:
    # 2 groups of 130 channels (2 tiles each, the second padded), 37 positions
    # (3 chunks, the last padded), every option.
    _check(rng, kind, jnp.float32, RTOL_SCAN, RTOL_GRAD, length=37, d=260, n=16, groups=2, optional=ARG_NAMES)



def test_gradient_through_an_inner_jit(rng):
    """Differentiating a jitted call (as a model's train step does: the mixers run inside ``jit``) linearizes
    the inner jaxpr, which checks that the kernel's fwd rule returns the primal's structure (it returned a
    tuple against the primal's list: a TypeError); the gradient matches the XLA path's."""
    args, _ = _inputs(rng, 13, 8, 4, 0, ())
    x = {k: jnp.asarray(v, jnp.float32) for k, v in args.items()}
    grads = {}
    for impl in ("pallas", "sequential"):
        inner = jax.jit(lambda u, impl=impl: jnp.sum(
            selective_scan(u, x["delta"], x["A"], x["B"], x["C"], delta_softplus=True, impl=impl) * x["delta"]))
        grads[impl] = jax.grad(inner)(x["u"])
    assert_rel_close(grads["pallas"], grads["sequential"], RTOL_GRAD)


def test_device_benchmark_times_the_unsplit_forward_beside(monkeypatch, split_blocks):
    # benchmarks.kernels on a GPU also times the kernel with its forward
    # uncut (pallas_unsplit_*), compiled with the split off and the setting
    # restored after; here on CPU, as if on a GPU, at a size the test blocks cut.
    from benchmarks import kernels as bench

    monkeypatch.setattr(bench.jax, "default_backend", lambda: "gpu")
    rates = {"copy_bytes_per_s": 1e10, "matmul_float32_flops_per_s": 1e11, "matmul_bfloat16_flops_per_s": 1e11}
    case = bench._selective_case(1, 64, 16, 4)
    assert sequence_split.split_for(2, 64, 8) > 1
    row = bench.run_case(case, jnp.float32, rates, 1, {"op": case.op, "dtype": "float32"})
    assert "errors" not in row, row.get("errors")
    assert row["pallas_unsplit_forward_ms"] > 0 and row["pallas_unsplit_forward_backward_ms"] > 0
    assert sequence_split.SPLIT_PROGRAMS == 64
