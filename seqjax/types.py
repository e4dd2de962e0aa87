"""Shape letters and array type aliases used across seqjax.

Every array in seqjax is batch-first, length-second: ``(batch, length, ...)``.
Docstrings and jaxtyping annotations use these letters:

====== =====================================================================
letter meaning
====== =====================================================================
``b``  batch (sequences)
``l``  length of the sequence being mixed (queries for attention)
``s``  length of the keys/values or of a cache (``s == l`` for self-attention)
``d``  model width (channels), or the channel axis of a per-channel op
``h``  heads (query heads in attention)
``hk`` key/value heads in grouped-query attention (divides ``h``)
``k``  key/query head dimension (``dk``)
``v``  value head dimension (``dv``)
``p``  head dimension of the SSD inputs ``x`` (Mamba-2)
``n``  state size of a state-space model (per channel or per head)
``g``  groups that share ``B``/``C`` in Mamba/Mamba-2 (divides ``d`` or ``h``)
``c``  chunks (``l`` split into ``c`` chunks of ``chunk_size``)
``...`` any trailing axes (elementwise ops such as ``linear_scan``)
====== =====================================================================

The aliases are plain ``jaxtyping`` annotations: they document shapes and are
checked only where a test enables a runtime checker.
"""

from typing import TypeAlias

import jax
from jaxtyping import Array, Bool, Complex, Float, Inexact, Int

PRNGKey: TypeAlias = jax.Array

# Sequences of vectors.
Seq: TypeAlias = Float[Array, "b l d"]
SeqStep: TypeAlias = Float[Array, "b d"]
SegmentIds: TypeAlias = Int[Array, "b l"]
Mask: TypeAlias = Bool[Array, "b l"]
Tokens: TypeAlias = Int[Array, "b l"]

# linear_scan: elementwise over any trailing axes; real or complex.
ScanCoeff: TypeAlias = Inexact[Array, "b l *rest"]
ScanState: TypeAlias = Inexact[Array, "b *rest"]

# Attention.
Queries: TypeAlias = Float[Array, "b l h k"]
Keys: TypeAlias = Float[Array, "b s hk k"]
Values: TypeAlias = Float[Array, "b s hk v"]
AttnOut: TypeAlias = Float[Array, "b l h v"]
AttnBias: TypeAlias = Float[Array, "#b #h l s"]

# Selective scan (Mamba-1).
SelInput: TypeAlias = Float[Array, "b l d"]
SelA: TypeAlias = Float[Array, "d n"]
SelBC: TypeAlias = Float[Array, "b l n"] | Float[Array, "b l g n"]
SelState: TypeAlias = Float[Array, "b d n"]

# SSD (Mamba-2).
SSDInput: TypeAlias = Float[Array, "b l h p"]
SSDStep: TypeAlias = Float[Array, "b l h"]
SSDBC: TypeAlias = Float[Array, "b l g n"]
SSDState: TypeAlias = Float[Array, "b h p n"]

# Decoding: one query step against a KV cache.
DecodeQuery: TypeAlias = Float[Array, "b h k"]
KVCache: TypeAlias = Float[Array, "b s hk k"]

# Per-channel and per-head parameter vectors (D, delta_bias, A of SSD, ...).
ChannelVec: TypeAlias = Float[Array, "d"]
HeadVec: TypeAlias = Float[Array, "h"]

# Linear attention.
LinAttnState: TypeAlias = Float[Array, "b h k v"]
LogDecay: TypeAlias = Float[Array, "h"] | Float[Array, "b l h"] | Float[Array, "b l h k"]

# Diagonal complex SSMs (S4D, S5, LRU).
ComplexSeq: TypeAlias = Complex[Array, "b l n"]

__all__ = [
    "Array", "PRNGKey", "Seq", "SeqStep", "SegmentIds", "Mask", "Tokens",
    "ScanCoeff", "ScanState", "Queries", "Keys", "Values", "AttnOut", "AttnBias",
    "SelInput", "SelA", "SelBC", "SelState", "SSDInput", "SSDStep", "SSDBC",
    "SSDState", "LinAttnState", "LogDecay", "ComplexSeq", "DecodeQuery", "KVCache",
    "ChannelVec", "HeadVec",
]
