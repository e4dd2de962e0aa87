"""Pure-JAX sequence ops: the hot loops that every mixer calls.

No Flax here. One file per op, named after it, holding the op's public
function and its implementations; the op's sequence-parallel variant sits
beside it (``<op>_sp.py``, or ``ring_attention.py`` for attention) and imports
the op, never the other way round. Every op takes ``impl=`` and
``sequence_axis=`` and routes them through the one front door,
:mod:`seqjax.ops.dispatch` (one implementation vocabulary, one registry, one
``auto`` table by platform and problem size). Every implementation is tested
against a float64 NumPy reference (``tests/ops``).

Ops (``seqjax.ops.<name>``):
  * :func:`linear_scan` — ``h_t = a_t * h_{t-1} + b_t`` over any trailing axes.
  * :func:`selective_scan` — Mamba-1 S6.
  * :func:`ssd` — Mamba-2 state-space duality.
  * :func:`attention` — softmax attention (reference, blockwise flash);
    :func:`decode_attention` — one query against a KV cache (split-KV).
  * :func:`linear_attention` — linear attention with optional decay.
  * :func:`delta_rule` — the (gated) delta rule of DeltaNet / Gated DeltaNet.
  * :func:`mlstm` — the mLSTM cell of xLSTM (stabilised exponential gating; parallel, recurrent, chunked).
  * :func:`memory_update` — Miras' memories trained online (one gradient step per token).
  * :func:`fft_conv` — long depthwise convolution.
  * sequence-parallel variants (inside ``jax.shard_map``, also reached as
    ``sequence_axis=`` of the op): :func:`linear_scan_sp`, :func:`selective_scan_sp`,
    :func:`ssd_sp`, :func:`linear_attention_sp`, :func:`delta_rule_sp`, :func:`ring_attention` (with
    :func:`zigzag_permute` / :func:`zigzag_unpermute`).
  * SSM building blocks: HiPPO matrices and inits (``hippo.py``, NumPy,
    init-time), discretisation and convolution kernels (``ssm_kernels.py``).

Shared modules: ``common.py`` (accumulation dtypes, padding, segments),
``collectives.py`` (what the sequence-parallel ops share), ``flash.py`` (the
flash block kernel of blockwise and ring attention), ``online_softmax.py``
(the one partial-softmax merge).

Import the functions (``from seqjax.ops import ssd``): the name ``seqjax.ops.ssd``
is the function, which shadows the module of the same name; reach a module's
other names with ``from seqjax.ops.ssd import ...``.
"""

# The sequence-parallel modules register their variants with the front door on
# import, so they are imported here, after the ops they build on.
from seqjax.ops.attention import attention
from seqjax.ops.decode_attention import decode_attention
from seqjax.ops.delta_rule import delta_rule
from seqjax.ops.delta_rule_sp import delta_rule_sp
from seqjax.ops.fft_conv import fft_conv
from seqjax.ops.hippo import (
    block_diagonal_legs, hippo_fout, hippo_lagt, hippo_legs, hippo_legt, nplr_legs, s4d_init)
from seqjax.ops.linear_attention import linear_attention
from seqjax.ops.linear_attention_sp import linear_attention_sp
from seqjax.ops.linear_scan import linear_scan
from seqjax.ops.linear_scan_sp import linear_scan_sp
from seqjax.ops.memory_update import memory_update
from seqjax.ops.mlstm import mlstm
from seqjax.ops.online_softmax import SoftmaxState
from seqjax.ops.ring_attention import ring_attention, zigzag_permute, zigzag_unpermute
from seqjax.ops.selective_scan import selective_scan
from seqjax.ops.selective_scan_sp import selective_scan_sp
from seqjax.ops.ssd import ssd
from seqjax.ops.ssd_sp import ssd_sp
from seqjax.ops.ssm_kernels import (
    cauchy, discretize, discretize_dense, dplr_c_tilde, dplr_kernel, krylov_kernel, vandermonde_kernel)

__all__ = [
    "SoftmaxState", "attention", "block_diagonal_legs", "cauchy", "decode_attention", "delta_rule", "discretize",
    "discretize_dense", "dplr_c_tilde", "dplr_kernel", "fft_conv", "hippo_fout", "hippo_lagt", "hippo_legs",
    "hippo_legt", "krylov_kernel", "linear_attention", "linear_attention_sp", "delta_rule_sp", "linear_scan",
    "linear_scan_sp",
    "memory_update", "mlstm", "nplr_legs", "ring_attention", "s4d_init", "selective_scan", "selective_scan_sp", "ssd", "ssd_sp",
    "vandermonde_kernel", "zigzag_permute", "zigzag_unpermute",
]
