"""The Mixer base class: the contract every registered mixer keeps, written once.

A mixer maps ``x: (batch, length, d_model)`` to the same shape. Every mixer
here is the same three steps, and :class:`Mixer` owns their order and all the
checks around them; a family file writes only the hooks that are its own:

* :meth:`Mixer.parts` (``@nn.compact`` in the subclass): create or read the
  parameters for width ``d``; returns the layers and arrays the other hooks use.
* :meth:`Mixer.project`: everything before the sequence mixing, for a whole
  sequence: a :class:`Projection` of per-token arrays (split over devices
  under sequence parallelism), shared arrays (parameters: replicated) and
  whatever the output needs.
* :meth:`Mixer.mix`: the sequence mixing itself, one or a few calls of
  ``seqjax.ops`` (the hot loop), given ``axis`` (the mesh axis that splits the
  length, or None) and the projection's arrays.
* :meth:`Mixer.output`: everything after the mixing (gates, norms, the output
  projection).

From those, the base class gives every mixer:

* ``__call__(x, *, segment_ids=None, deterministic=True)``: project → mix →
  output, the mix wrapped in :func:`seqjax.parallel.sequence_map` when the
  mixer's ``sequence_axis`` is set (and the class declares
  ``sequence_parallel``);
* ``mixing_matrix(x, *, segment_ids=None)`` for mixers linear in one of the
  projection's arrays (the *values*, ``values_index``): the matrix ``M[b, c,
  t, s]`` with ``mix(v)[b, t, c] = Σ_s M[b, c, t, s] v[b, s, c']``, read off
  the mix itself by feeding it one-hot values (one basis vector per
  position, vmapped); ``apply_mixing_matrix(x, M)`` runs the same projection
  and output around a dense ``M``. The float64 oracles in ``tests/mixers``
  check ``M`` against the papers' closed forms;
* ``init_cache(batch_size, max_length=None)`` and ``step(x_t, cache,
  reset=None)`` for causal mixers (hooks :meth:`Mixer.empty_cache` and
  :meth:`Mixer.step_mix`), with the argument checks; ``reset`` (classes that
  declare ``resettable``) restarts chosen rows from the empty cache;
  ``state_size(length)`` from the cache;
* construction-time checks: :meth:`Mixer.check_fields` raises
  :class:`~seqjax.errors.ConfigError` naming ``<mixer>.<field>`` and the
  allowed values, and the ``impl`` field is checked against the front door of
  the ops (:mod:`seqjax.ops.dispatch`).

Class-level declarations: ``ssm_params`` (parameter names that are SSM
dynamics: the optimizer gives them their own learning rate and no weight
decay), ``no_decay_params`` (parameters of rank > 1 kept out of weight decay,
e.g. gate biases), ``ops`` (the ops the ``impl`` field addresses, primary first),
``causality`` (``"causal"``, ``"bidirectional"`` or ``"either"``: then the
mixer has a ``causal`` field), ``sequence_parallel``, ``values_index``,
``resettable``.
"""

import math
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError
from seqjax.mixers.common import check_input, check_step_input
from seqjax.ops import dispatch
from seqjax.ops.common import accum_dtype
from seqjax.parallel.sequence import sequence_map
from seqjax.types import SegmentIds, Seq, SeqStep

CAUSALITIES = ("causal", "bidirectional", "either")
# The collection a mixer sows auxiliary losses into (already weighted, one scalar per layer and name), only
# when it is mutable and not at init; the trainer adds them to the task's loss (seqjax.train.step.aux_losses).
AUX_LOSSES = "losses"


class Projection(NamedTuple):
    """What :meth:`Mixer.project` hands to the mix and the output.

    Attributes:
      tokens: per-token arrays ``(b, l, ...)`` (or None), the mix's first
        arguments after ``axis``; split over the length under sequence
        parallelism. Segment ids, when the mix needs them, go here.
      shared: arrays used whole by the mix (parameters such as ``A``, ``D``),
        its last arguments; replicated under sequence parallelism.
      rest: anything :meth:`Mixer.output` needs besides the mix's result
        (a gate, the input for a skip connection); not seen by the mix.
    """

    tokens: tuple = ()
    shared: tuple = ()
    rest: Any = None


class Mixer(nn.Module):
    """Base of every registered mixer (see the module docstring).

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of projections and activations; parameters are
        float32 and the ops accumulate in float32 (float64 for float64).
      impl: the implementation of the mixer's op, a name from
        :data:`seqjax.ops.dispatch.VOCABULARY` (it applies to the primary op,
        ``ops[0]``; the others run ``"auto"``), or a mapping ``{op: impl}``
        (stored as sorted ``(op, impl)`` pairs, so the module stays hashable).
      sequence_axis: mesh axis that splits the length (the sequence-parallel
        op under a context mesh, see :func:`seqjax.parallel.sequence_map`);
        None: never split. Only for classes that declare ``sequence_parallel``.
    """

    d_model: int | None = None
    dtype: Any = jnp.float32
    impl: str | Mapping[str, str] | tuple[tuple[str, str], ...] = "auto"
    sequence_axis: str | None = None

    mixer_name: ClassVar[str] = "mixer"  # set by seqjax.mixers.register
    ssm_params: ClassVar[tuple[str, ...]] = ()
    no_decay_params: ClassVar[tuple[str, ...]] = ()
    ops: ClassVar[tuple[str, ...]] = ()
    causality: ClassVar[str] = "causal"
    sequence_parallel: ClassVar[bool] = False
    values_index: ClassVar[int | None] = None
    # Whether ``step`` takes ``reset`` (per-row restarts from the empty cache, Lu et
    # al. 2023): true for mixers whose whole cache restarts at a segment start.
    resettable: ClassVar[bool] = False
    width_param: ClassVar[tuple[tuple[str, ...], int]] = (("out_proj", "kernel"), -1)

    # --- construction -------------------------------------------------------------

    def __post_init__(self):
        if isinstance(self.impl, Mapping):
            # Flax modules are hashed (as static parts of their parents): a mapping is
            # stored as sorted (op, impl) pairs.
            object.__setattr__(self, "impl", tuple(sorted(dict(self.impl).items())))
        self._check_common()
        self.check_fields()
        super().__post_init__()

    def _check_common(self):
        name = self.mixer_name
        if self.d_model is not None and (not isinstance(self.d_model, int) or isinstance(self.d_model, bool)
                                         or self.d_model < 1):
            raise ConfigError(f"{name}.d_model={self.d_model!r} must be None or a positive int")
        pairs = isinstance(self.impl, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in self.impl)
        if not (isinstance(self.impl, str) or pairs):
            raise ConfigError(f"{name}.impl={self.impl!r} must be a string or a mapping {{op: impl}}")
        if not self.ops and isinstance(self.impl, str) and self.impl != "auto":
            raise ConfigError(f"{name}.impl={self.impl!r}: {name} calls no op with implementations; allowed: auto")
        impls = dict(self.impl) if pairs else {self.ops[0]: self.impl} if self.ops else {}
        for op, value in impls.items():
            if op not in self.ops:
                raise ConfigError(f"{name}.impl names op {op!r}; allowed ops: {', '.join(self.ops) or 'none'}")
            allowed = dispatch.implementations(op)
            if value not in allowed:
                raise ConfigError(f"{name}.impl={value!r} is not an implementation of {op}; "
                                  f"allowed: {', '.join(allowed)}")
        if self.sequence_axis is not None and not self.sequence_parallel:
            raise ConfigError(f"{name}.sequence_axis={self.sequence_axis!r}: {name} cannot run with the length split")

    def check_fields(self) -> None:
        """Hook: raise :class:`~seqjax.errors.ConfigError` for a bad field (``<mixer>.<field>=...``)."""

    # --- declarations as properties ----------------------------------------------------

    @property
    def is_causal(self) -> bool:
        """Whether outputs depend on the past only (then ``step`` exists)."""
        if self.causality == "either":
            return bool(getattr(self, "causal"))
        return self.causality == "causal"

    def impl_for(self, op: str) -> str:
        """The implementation to run for ``op`` (``"auto"`` unless the ``impl`` field sets it)."""
        if isinstance(self.impl, tuple):
            return dict(self.impl).get(op, "auto")
        return self.impl if self.ops and op == self.ops[0] else "auto"

    def acc(self):
        """The accumulation dtype: float32, or float64 for a float64 ``dtype``."""
        return accum_dtype(self.dtype)

    def width(self, x: jax.Array | None = None) -> int:
        """The model width: from ``x``, else ``d_model``, else the parameters.

        Args:
          x: an input whose last axis is the width, or None.

        Returns:
          The width ``d``.
        """
        if x is not None:
            if self.d_model is not None and x.shape[-1] != self.d_model:
                raise ValueError(f"{self.mixer_name}: x has shape {x.shape}; expected last axis d_model={self.d_model}")
            return x.shape[-1]
        if self.d_model is not None:
            return self.d_model
        path, axis = self.width_param
        node = self.variables.get("params", {})
        for key in path:
            if key not in node:
                raise ValueError(f"{self.mixer_name}: d_model is None and there are no parameters to infer it from")
            node = node[key]
        return nn.meta.unbox(node).shape[axis]

    # --- hooks ----------------------------------------------------------------------------

    def parts(self, d: int) -> dict[str, Any]:
        """Hook (``@nn.compact``): create or read the parameters for width ``d``."""
        raise NotImplementedError

    def project(self, p: dict, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        """Hook: everything before the sequence mixing, for a whole sequence."""
        raise NotImplementedError

    def mix(self, axis: str | None, *arrays) -> Any:
        """Hook: the sequence mixing, ``mix(axis, *projection.tokens, *projection.shared)``."""
        raise NotImplementedError

    def output(self, p: dict, y: Any, proj: Projection) -> Seq:
        """Hook: everything after the mixing; returns ``(b, l, d_model)`` in ``dtype``."""
        raise NotImplementedError

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """Hook (causal mixers): the cache before the first position."""
        raise NotImplementedError

    def step_mix(self, p: dict, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        """Hook (causal mixers): one position, ``(y_t, new cache)``."""
        raise NotImplementedError

    def cache_keys(self, d: int) -> set[str]:
        """Hook: the keys of the cache that :meth:`step` takes (default: read off :meth:`empty_cache`)."""
        return set(jax.eval_shape(lambda: self.empty_cache(1, d, 1)))

    def expand_values(self, v: jax.Array, channels: int) -> jax.Array:
        """Hook: the values each of the ``channels`` mixing-matrix channels reads.

        Default: the same channel, or (fewer value channels, as grouped-query
        attention's key/value heads) channel ``c // (channels // v.shape[2])``.
        """
        groups = v.shape[2]
        return v if groups == channels else jnp.repeat(v, channels // groups, axis=2)

    # --- the contract -------------------------------------------------------------------

    def _sequence_axis(self) -> str | None:
        return self.sequence_axis if self.sequence_parallel else None

    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True,
                 **kwargs) -> Seq:
        """Runs the mixer over a sequence: project, mix, output.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids of packed sequences; a
            change of id starts a new sequence, so a packed row gives what
            separate runs give.
          deterministic: unused by mixers without dropout.
          **kwargs: extra inputs of a mixer's :meth:`project` (e.g. ``ngram``'s
            ``token_ids``).

        Returns:
          ``(batch, length, d_model)`` in ``dtype``.
        """
        del deterministic
        check_input(self.mixer_name, x, segment_ids)
        p = self.parts(self.width(x))
        proj = self.project(p, x, segment_ids, **kwargs)
        y = sequence_map(self.mix, self._sequence_axis(), proj.tokens, proj.shared, what=self.mixer_name)
        return self.output(p, y, proj)

    def _require_linear(self):
        if self.values_index is None:
            raise ValueError(f"{self.mixer_name}: not linear in a projection of x, so it has no mixing matrix")

    def mixing_matrix(self, x: Seq, *, segment_ids: SegmentIds | None = None, **kwargs) -> jax.Array:
        """The matrix ``M`` with ``mix(v)[b, t, c] = Σ_s M[b, c, t, s] v[b, s, c']``.

        ``v`` is the projection's values (``tokens[values_index]``, shape
        ``(b, l, c', ...)``); everything else the mix reads (decays, gates,
        keys) is held at its value for ``x``. ``M`` is read off the mix by
        feeding one-hot values, one position at a time (vmapped): ``l`` runs
        of the mix, for checks and small inputs.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids.
          **kwargs: extra inputs of :meth:`project`.

        Returns:
          ``(batch, channels, length, length)``; lower triangular for a causal mixer.
        """
        self._require_linear()
        check_input(self.mixer_name, x, segment_ids)
        p = self.parts(self.width(x))
        proj = self.project(p, x, segment_ids, **kwargs)
        tokens = list(proj.tokens)
        v = tokens[self.values_index]
        length = v.shape[1]

        def column(s):
            one_hot = (jnp.arange(length) == s).astype(v.dtype)
            basis = list(tokens)
            basis[self.values_index] = jnp.broadcast_to(one_hot.reshape((1, length) + (1,) * (v.ndim - 2)), v.shape)
            y = self.mix(None, *basis, *proj.shared)  # (b, l, c, ...)
            return y.reshape(y.shape[:3] + (-1,))[..., 0] if y.ndim > 3 else y

        cols = jax.vmap(column)(jnp.arange(length))  # (s, b, t, c)
        return jnp.transpose(cols, (1, 3, 2, 0))

    def apply_mixing_matrix(self, x: Seq, M: jax.Array, *, segment_ids: SegmentIds | None = None,
                            **kwargs) -> Seq:
        """The mixer with the dense ``M`` in place of the mix: same projection and output.

        Args:
          x: ``(batch, length, d_model)`` input.
          M: ``(batch, channels, length, length)``, e.g. from :meth:`mixing_matrix`.
          segment_ids: optional ids (they reach the projection, e.g. a
            segment-aware convolution; ``M`` already holds the mixing).
          **kwargs: extra inputs of :meth:`project`.

        Returns:
          ``(batch, length, d_model)`` in ``dtype``.
        """
        self._require_linear()
        check_input(self.mixer_name, x, segment_ids)
        p = self.parts(self.width(x))
        proj = self.project(p, x, segment_ids, **kwargs)
        v = proj.tokens[self.values_index]
        b, length = v.shape[:2]
        if M.ndim != 4 or M.shape[0] != b or M.shape[2:] != (length, length):
            raise ValueError(f"{self.mixer_name}: M must have shape (b, channels, l, l) with (b, l) = {(b, length)}, "
                             f"got {M.shape}")
        v = self.expand_values(v, M.shape[1])
        dtype = jnp.result_type(M.dtype, v.dtype)
        y = jnp.einsum("bcts,bsc...->btc...", M.astype(dtype), v.astype(dtype), precision=jax.lax.Precision.HIGHEST)
        return self.output(p, y, proj)

    def _require_causal(self, what: str):
        if not self.is_causal:
            raise ValueError(f"{self.mixer_name}.{what}: a bidirectional mixer has no recurrent step (it is not causal)")

    def init_cache(self, batch_size: int, max_length: int | None = None) -> dict:
        """The cache before the first position (causal mixers).

        Args:
          batch_size: number of sequences.
          max_length: the longest sequence the cache must hold (KV caches);
            unused by mixers whose state does not grow.

        Returns:
          The cache pytree, for :meth:`step`.
        """
        self._require_causal("init_cache")
        return self.empty_cache(batch_size, self.width(), max_length)

    def step(self, x_t: SeqStep, cache: dict, reset: jax.Array | None = None) -> tuple[SeqStep, dict]:
        """One position of the recurrence (causal mixers).

        Args:
          x_t: ``(batch, d_model)`` input at the current position.
          cache: from :meth:`init_cache` or a previous :meth:`step`.
          reset: optional ``(batch,)`` booleans (or 0/1): rows where it is set
            restart from the empty cache before this position, as a new
            segment of ``segment_ids`` does in the parallel form (resettable
            recurrences, Lu et al. 2023). Only for classes that declare
            ``resettable``.

        Returns:
          ``(y_t, cache)``: ``(batch, d_model)`` in ``dtype`` and the new cache.
        """
        self._require_causal("step")
        check_step_input(self.mixer_name, x_t)
        if not isinstance(cache, dict):
            raise ValueError(f"{self.mixer_name}.step: cache must be the dict from init_cache, got {type(cache)}")
        d = self.width(x_t)
        p = self.parts(d)
        want = self.cache_keys(d)
        if set(cache) != want:
            raise ValueError(f"{self.mixer_name}.step: cache must have keys {', '.join(sorted(want))} (init_cache), "
                             f"got {', '.join(sorted(cache))}")
        if reset is not None:
            cache = self._reset_rows(cache, reset, x_t.shape[0], d)
        return self.step_mix(p, x_t, cache)

    def _reset_rows(self, cache: dict, reset, batch: int, d: int) -> dict:
        """``cache`` with the rows where ``reset`` is set replaced by the empty cache's rows."""
        if not self.resettable:
            raise ValueError(f"{self.mixer_name}.step: reset is not supported (its cache does not restart per row)")
        reset = jnp.asarray(reset)
        if reset.shape != (batch,):
            raise ValueError(f"{self.mixer_name}.step: reset must have shape (batch,)=({batch},), got {reset.shape}")
        fresh = self.empty_cache(batch, d, None)

        def pick(old, new):
            # Every leaf of a resettable cache is per row (batch first).
            mask = reset.astype(bool).reshape((batch,) + (1,) * (old.ndim - 1))
            return jnp.where(mask, new.astype(old.dtype), old)

        return jax.tree.map(pick, cache, fresh)

    def state_size(self, length: int | None = None) -> int:
        """Bytes of inference state per sequence (cache leaves that grow with the batch).

        Args:
          length: positions the state must cover (KV caches); unused by
            mixers whose state does not grow.

        Returns:
          The size in bytes.
        """
        self._require_causal("state_size")
        d = self.width()

        def size(batch):  # shapes only: nothing is allocated, however long the cache
            leaves = jax.tree.leaves(jax.eval_shape(lambda: self.empty_cache(batch, d, length)))
            return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in leaves)

        return size(2) - size(1)


__all__ = ["Mixer", "Projection", "CAUSALITIES"]
