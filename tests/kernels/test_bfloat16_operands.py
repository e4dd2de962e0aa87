"""bf16 operands handed through the front doors of ``ssd`` and ``linear_attention`` to the kernels.

With ``impl="pallas"`` the ops pass bf16 ``x, B, C`` (SSD) and ``q, k, v``
(linear attention) to the chunked kernels as they come, so their matmuls run
one bf16 tensor-core / MXU pass with float32 accumulation instead of the
three (GPU, split TF32) or six (TPU, HIGHEST) a float32 operand costs; the
XLA paths and mixed dtypes keep casting to float32
(:func:`seqjax.ops.common.operand_dtype`). Checked here: the dtype the
Triton kernels receive (lowered for ``cuda``, forward and backward), and the
outputs and gradients in interpret mode against the float64 references of the
bf16-rounded inputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops.common import accum_dtype, operand_dtype
from seqjax.ops.linear_attention import linear_attention
from seqjax.ops.ssd import ssd
from tests.kernels.lowering import lower
from tests.ops.ref_linear_attention import linear_attention_ref
from tests.ops.ref_ssd import ssd_ref
from tests.ops.utils import assert_rel_close

BF16, F32 = jnp.bfloat16, jnp.float32
# A few bf16 roundings of operands (dt·x, the decayed q/k, the states as
# matmul operands; 8-bit mantissa, 2^-9 relative each) and of the output.
RTOL_BF16 = 2e-2


@pytest.mark.parametrize("impl, dtypes, expected", [
    ("pallas", (BF16, BF16), BF16),
    ("pallas", (BF16, F32), F32),  # mixed: the accumulation dtype
    ("pallas", (jnp.float16, jnp.float16), F32),  # bf16 only (TPUs have no f16 matmul)
    ("pallas", (F32, F32), F32),
    ("chunked", (BF16, BF16), F32),  # the XLA paths compute in float32
])
def test_operand_dtype(impl, dtypes, expected):
    assert operand_dtype(impl, accum_dtype(*dtypes), *dtypes) == jnp.dtype(expected)


def _ssd_inputs(rng, length, b=2, h=4, p=6, g=2, n=5):
    x = rng.standard_normal((b, length, h, p))
    dt = rng.uniform(0.1, 1.0, (b, length, h))
    A = -rng.uniform(0.2, 1.5, h)
    B, C = rng.standard_normal((2, b, length, g, n))
    D = rng.standard_normal(h)
    h0 = rng.standard_normal((b, h, p, n))
    seg = np.zeros((b, length), np.int32)
    seg[0, length // 2:] = 1
    return [x, dt, A, B, C, D, h0], seg


def _la_inputs(rng, length, b=2, h=2, dk=6, dv=5):
    q, k = rng.standard_normal((2, b, length, h, dk))
    v = rng.standard_normal((b, length, h, dv))
    ld = -rng.uniform(0.0, 0.5, (b, length, h))
    s0 = rng.standard_normal((b, h, dk, dv))
    seg = np.zeros((b, length), np.int32)
    seg[0, length // 2:] = 1
    return [q, k, v, ld, s0], seg


def _ssd_loss(seg, w):
    def loss(x, dt, A, B, C, D, h0, reference=False):
        if reference:
            y, final = ssd_ref(jnp, x, dt, A, B, C, D, h0, seg)
        else:
            y, final = ssd(x, dt, A, B, C, D=D, initial_state=h0, segment_ids=seg, impl="pallas")
        return jnp.sum(y.astype(jnp.promote_types(y.dtype, F32)) * w[0]) + jnp.sum(final * w[1]), (y, final)
    return loss


def _la_loss(seg, w):
    def loss(q, k, v, ld, s0, reference=False):
        if reference:
            o, s = linear_attention_ref(jnp, q, k, v, ld, True, s0, seg)
        else:
            o, s = linear_attention(q, k, v, log_decay=ld, initial_state=s0, segment_ids=seg, impl="pallas")
        return jnp.sum(o.astype(jnp.promote_types(o.dtype, F32)) * w[0]) + jnp.sum(s * w[1]), (o, s)
    return loss


# Which arguments are matmul operands (bf16 in the bf16 case); the rest stay float32.
CASES = {
    "ssd": (_ssd_inputs, _ssd_loss, (0, 3, 4)),
    "linear_attention": (_la_inputs, _la_loss, (0, 1, 2)),
}


def _out_shape(op, args):
    """The output's shape: ``(b, l, h)`` and the last axis of ``v`` (linear attention) or ``x`` (SSD)."""
    return args[0].shape[:3] + (args[2 if op == "linear_attention" else 0].shape[-1],)


def _cast(args, operands, dtype):
    return [jnp.asarray(a, dtype if i in operands else F32) for i, a in enumerate(args)]


@pytest.mark.parametrize("op", sorted(CASES))
@pytest.mark.parametrize("dtype", [BF16, F32], ids=["bf16", "f32"])
def test_kernels_receive_the_operands_dtype(op, dtype):
    # Every Triton kernel of the forward and the backward takes its matmul
    # operands in bf16 for bf16 inputs, none does for float32 ones.
    make, make_loss, operands = CASES[op]
    args, seg = make(np.random.default_rng(0), 40)
    w = (np.ones(_out_shape(op, args)), 1.0)
    loss = make_loss(seg, w)
    fn = jax.value_and_grad(lambda *a: loss(*a)[0], tuple(range(len(args))))
    args = _cast(args, operands, dtype)
    calls = [line for line in lower(fn, args, "cuda").as_text().splitlines() if "xla.gpu.triton" in line]
    with_bf16 = [line for line in calls if "xbf16>" in line.rsplit(" : (", 1)[-1].split(") ->")[0]]
    assert len(calls) == 5  # 2 forward kernels (states, outputs), 3 backward
    assert len(with_bf16) == (len(calls) if dtype == BF16 else 0)


@pytest.mark.parametrize("op", sorted(CASES))
def test_bf16_outputs_and_gradients_match_reference(op):
    # Interpret mode (GPU semantics) through the front door against the
    # float64 reference of the bf16-rounded inputs; segments, an initial state
    # and a length (21) that pads the chunk.
    make, make_loss, operands = CASES[op]
    rng = np.random.default_rng(1)
    args, seg = make(rng, 21)
    w = (rng.standard_normal(_out_shape(op, args)), rng.standard_normal(args[-1].shape))
    loss = make_loss(seg, w)
    argnums = tuple(range(len(args)))
    bf = _cast(args, operands, BF16)
    grads, (y, final) = jax.jit(jax.grad(loss, argnums, has_aux=True))(*bf)
    assert y.dtype == BF16 and final.dtype == F32
    for i in operands:
        assert grads[i].dtype == BF16
    rounded = [np.asarray(a, np.float64) for a in bf]
    with jax.enable_x64(True):
        g_ref, (y_ref, final_ref) = jax.grad(lambda *a: loss(*a, reference=True), argnums, has_aux=True)(
            *(jnp.asarray(a) for a in rounded))
    assert_rel_close(np.asarray(y, np.float64), y_ref, RTOL_BF16, f"{op} output")
    assert_rel_close(final, final_ref, RTOL_BF16, f"{op} final state")
    for i, (gi, gr) in enumerate(zip(grads, g_ref)):
        assert_rel_close(np.asarray(gi, np.float64), np.asarray(gr), RTOL_BF16, f"{op} gradient {i}")
