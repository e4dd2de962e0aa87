"""Pure-JAX sequence ops: the hot loops that every mixer calls.

No Flax here. Each op takes an ``impl`` argument (``"auto"`` picks by platform
and size) and every implementation is tested against a float64 NumPy reference.

Public ops:
  * :func:`linear_scan` — ``h_t = a_t * h_{t-1} + b_t`` (``scan.py``).
  * :func:`selective_scan` — Mamba-1 S6 (``selective.py``).
  * :func:`ssd` — Mamba-2 state-space duality (``state_space_duality.py``).
  * :func:`attention`, :func:`decode_attention` — softmax attention
    (``softmax_attention.py``, ``decode.py``), built on the one online-softmax
    merge in ``online_softmax.py``.
  * :func:`linear_attention` — linear attention with optional decay
    (``linear_attn.py``).
  * Sequence parallelism (inside ``jax.shard_map``, length split over a mesh
    axis; also reachable as ``sequence_axis=`` of ``attention``,
    ``linear_scan``, ``ssd``, ``selective_scan`` and ``linear_attention``):
    ``ring_attention.ring_attention`` with
    :func:`zigzag_permute` / :func:`zigzag_unpermute` (``ring_attention.py``;
    the function is not re-exported here because the attribute
    ``seqjax.ops.ring_attention`` is the submodule once it is imported),
    :func:`linear_scan_sp` and :func:`ssd_sp` (``sp_scan.py``),
    :func:`selective_scan_sp` (``sp_selective.py``), :func:`linear_attention_sp`
    (``sp_linear_attn.py``).
  * SSM building blocks: HiPPO matrices and inits (``hippo.py``, NumPy,
    init-time), discretisation and convolution kernels (``ssm_kernels.py``),
    :func:`fft_conv` (``long_conv.py``).

Names are resolved lazily so that importing one op does not import the others.
"""

import importlib

_EXPORTS = {
    "linear_scan": "scan",
    "selective_scan": "selective",
    "ssd": "state_space_duality",
    "attention": "softmax_attention",
    "decode_attention": "decode",
    "SoftmaxState": "online_softmax",
    "linear_attention": "linear_attn",
    "zigzag_permute": "ring_attention",
    "zigzag_unpermute": "ring_attention",
    "linear_scan_sp": "sp_scan",
    "ssd_sp": "sp_scan",
    "selective_scan_sp": "sp_selective",
    "linear_attention_sp": "sp_linear_attn",
    "fft_conv": "long_conv",
    **{
        name: "hippo"
        for name in (
            "hippo_legs", "hippo_legt", "hippo_lagt", "hippo_fout",
            "nplr_legs", "s4d_init", "block_diagonal_legs",
        )
    },
    **{
        name: "ssm_kernels"
        for name in (
            "discretize", "discretize_dense", "vandermonde_kernel", "dplr_kernel",
            "dplr_c_tilde", "cauchy", "krylov_kernel",
        )
    },
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
