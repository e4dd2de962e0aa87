"""Set disjointness (SD) batches and JRT-Prompt (the context read twice), pure JAX and jittable.

Set disjointness is the problem through which "Just read twice: closing the
recall gap for recurrent language models" (Arora et al. 2024, arXiv
2407.05483) studies recall: given two sets A and B in context, decide whether
they share an element. A streaming (recurrent) model must remember the first
set to check the second against it, so the memory it needs depends on which
set comes first. :func:`jrt_prompt` is the paper's JRT-Prompt: any batch
(SD, MQAR) with its context repeated, so that the model reads it twice.

Layout (the paper's synthetic, ``synthetic/zoology/data/non_autoreg.py`` of
its public code, ``disjoint_sets``; special ids as there, two answer ids added
for the decision version)::

    BOS a_1 .. a_m SEP b_1 .. b_n ANS [PAD ...]

- ``m = size_a``, ``n = size_b``; the elements of each set are distinct ids
  from ``[FIRST_ELEMENT, vocab_size)``. The two sets are drawn disjoint
  (``m + n`` distinct ids); an intersecting example then overwrites one
  uniform position of B with one uniform element of A, so it shares exactly
  one element (as the paper's generator does).
- the only scored position is ``ANS``: with ``answer="label"`` (the decision
  problem) its target is :data:`YES` when the sets intersect, :data:`NO`
  when they are disjoint, each with probability 1/2; with
  ``answer="element"`` (the paper's synthetic, which always intersects) the
  target is the shared element. Every other target is
  :data:`~seqjax.data.mqar.IGNORE`.
- positions after ``ANS`` (when ``seq_len > m + n + 3``) are :data:`PAD` and
  not scored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqjax.data.mqar import IGNORE, check_int, distinct_tokens
from seqjax.errors import ConfigError

PAD, BOS, SEP, ANS, NO, YES = range(6)
"""Special ids: padding, start, the separator of the sets, the answer marker, and the two labels."""
FIRST_ELEMENT = 6
"""Set elements are ids ``>= FIRST_ELEMENT``."""
ANSWERS = ("label", "element")


def sd_length(size_a: int, size_b: int) -> int:
    """Tokens of one example without padding: ``BOS``, A, ``SEP``, B, ``ANS``."""
    return size_a + size_b + 3


def validate(*, batch_size: int, size_a: int, size_b: int, vocab_size: int, seq_len: int | None,
             answer: str, prefix: str = "") -> None:
    """Raises a one-line :class:`ConfigError` (a ValueError) for settings no SD example fits.

    Args:
      batch_size, size_a, size_b, vocab_size, seq_len, answer: as :func:`set_disjointness`.
      prefix: put before each argument's name in the message (``"config.task."``).
    """
    p = prefix
    check_int("batch_size", batch_size, 1, prefix=p)
    check_int("size_a", size_a, 1, prefix=p)
    check_int("size_b", size_b, 1, prefix=p)
    check_int("vocab_size", vocab_size, FIRST_ELEMENT + size_a + size_b, prefix=p,
              hint=f" = {FIRST_ELEMENT} special ids + {p}size_a + {p}size_b (distinct elements)")
    if seq_len is not None:
        check_int("seq_len", seq_len, sd_length(size_a, size_b), prefix=p,
                  hint=f" = {p}size_a + {p}size_b + 3 (BOS, SEP, ANS)")
    if answer not in ANSWERS:
        raise ConfigError(f"{p}answer={answer!r} is not allowed; allowed: {', '.join(ANSWERS)}")


def set_disjointness(key: jax.Array, *, batch_size: int, size_a: int, size_b: int, vocab_size: int,
                     seq_len: int | None = None, answer: str = "label") -> dict[str, jax.Array]:
    """A batch of set-disjointness examples (see the module docstring for the layout).

    Jittable with every argument but ``key`` static.

    Args:
      key: PRNG key; the batch is a deterministic function of it.
      batch_size: examples.
      size_a: elements of the first set (``m``).
      size_b: elements of the second set (``n``).
      vocab_size: ids are in ``[0, vocab_size)`` (``>= 6 + m + n``).
      seq_len: tokens per row (None: ``m + n + 3``; longer rows end in ``PAD``).
      answer: ``"label"`` (target ``YES``/``NO``, balanced) or ``"element"``
        (always one shared element, which is the target).

    Returns:
      ``{"inputs", "targets"}``, int32 ``(batch_size, seq_len)``; the only
      scored target of a row is at its ``ANS`` position (index ``m + n + 2``).

    Raises:
      ConfigError: (a ValueError) an argument out of range, named with the allowed range.
    """
    validate(batch_size=batch_size, size_a=size_a, size_b=size_b, vocab_size=vocab_size, seq_len=seq_len,
             answer=answer)
    b, m, n = batch_size, size_a, size_b
    length = sd_length(m, n) if seq_len is None else seq_len
    k_elems, k_which, k_where, k_label = jax.random.split(key, 4)
    elems = distinct_tokens(k_elems, b, m + n, FIRST_ELEMENT, vocab_size)
    set_a, set_b = elems[:, :m], elems[:, m:]
    shared = jnp.take_along_axis(set_a, jax.random.randint(k_which, (b, 1), 0, m), axis=1)  # (b, 1)
    where = jax.random.randint(k_where, (b, 1), 0, n)
    if answer == "label":
        intersect = jax.random.bernoulli(k_label, 0.5, (b, 1))
    else:
        intersect = jnp.ones((b, 1), bool)
    set_b = jnp.where(intersect & (jnp.arange(n) == where), shared, set_b)

    def column(token, width=1):
        return jnp.full((b, width), token, jnp.int32)

    inputs = jnp.concatenate([column(BOS), set_a, column(SEP), set_b, column(ANS), column(PAD, length - m - n - 3)],
                             axis=1)
    target = jnp.where(intersect, YES, NO) if answer == "label" else shared
    targets = jnp.full((b, length), IGNORE, jnp.int32).at[:, m + n + 2].set(target[:, 0].astype(jnp.int32))
    return {"inputs": inputs, "targets": targets}


def jrt_prompt(batch: dict[str, jax.Array], context_length: int, *, repeats: int = 2,
               start: int = 0) -> dict[str, jax.Array]:
    """JRT-Prompt (Arora et al. 2024, "Just read twice"): the context repeated before the rest of each row.

    A recurrent model that reads the context once must decide what to keep
    before it sees what will be asked; read twice, it meets every part of the
    context again after having seen all of it. Row layout, ``C =
    context_length`` tokens of context from position ``start``::

        inputs[:start]  ctx ctx ... ctx (repeats times)  inputs[start + C:]

    Targets move with their tokens (a target belongs to the position whose
    token predicts it, the MQAR / SD convention): the last copy of the
    context keeps the context's own targets and every other copy gets
    :data:`~seqjax.data.mqar.IGNORE` (nothing is scored twice), so the
    scored positions and values are the original ones, shifted by ``(repeats
    - 1) · C``. The rows grow by that many tokens. For MQAR the context is
    the ``2 · num_kv_pairs`` pair tokens (``start=0``); for set disjointness
    the two sets, ``BOS a_1 .. a_m SEP b_1 .. b_n`` (``C = m + n + 2``, or
    ``start=1, C = m + n + 1`` to keep one ``BOS``). With the ``jrt`` mixer
    the repeated context, ``start + repeats · C`` tokens, is the natural
    ``prefix_length``. Pure JAX; jittable with everything but ``batch`` static.

    Args:
      batch: ``{"inputs", "targets"}``, int ``(b, l)`` each (no other keys:
        what a per-position extra would become is the caller's choice).
      context_length: ``C`` (``>= 1``, ``start + C <= l``).
      repeats: copies of the context (``>= 1``; 2 = "read twice", the paper's
        setting; 1 returns the batch unchanged).
      start: first position of the context (``>= 0``); tokens before it stay once, in front.

    Returns:
      ``{"inputs", "targets"}`` of shape ``(b, l + (repeats - 1) · C)``, the dtypes kept.

    Raises:
      ConfigError: (a ValueError) a bad argument, named with the allowed values.
    """
    if not isinstance(batch, dict) or set(batch) != {"inputs", "targets"}:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ConfigError(f"batch={keys!r} is not allowed; allowed: a dict with exactly 'inputs' and 'targets'")
    inputs, targets = jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"])
    if inputs.ndim != 2 or targets.shape != inputs.shape:
        raise ConfigError(f"batch shapes inputs={inputs.shape}, targets={targets.shape} are not allowed; "
                          "allowed: both (batch, length)")
    length = inputs.shape[1]
    check_int("repeats", repeats, 1)
    check_int("start", start, 0)
    check_int("context_length", context_length, 1)
    if start + context_length > length:
        raise ConfigError(f"context_length={context_length!r} is not allowed; allowed: an int in [1, {length - start}] "
                          f"(start={start} + context_length <= the row length {length})")
    end = start + context_length
    ignore = jnp.full_like(targets[:, start:end], IGNORE)
    new_inputs = [inputs[:, :start]] + [inputs[:, start:end]] * repeats + [inputs[:, end:]]
    new_targets = [targets[:, :start]] + [ignore] * (repeats - 1) + [targets[:, start:end], targets[:, end:]]
    return {"inputs": jnp.concatenate(new_inputs, axis=1), "targets": jnp.concatenate(new_targets, axis=1)}


__all__ = ["PAD", "BOS", "SEP", "ANS", "NO", "YES", "FIRST_ELEMENT", "ANSWERS", "sd_length", "validate",
           "set_disjointness", "jrt_prompt"]
