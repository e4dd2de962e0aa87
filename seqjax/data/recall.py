"""Set disjointness (SD) batches, pure JAX and jittable.

Set disjointness is the problem through which "Just read twice: closing the
recall gap for recurrent language models" (Arora et al. 2024, arXiv
2407.05483) studies recall: given two sets A and B in context, decide whether
they share an element. A streaming (recurrent) model must remember the first
set to check the second against it, so the memory it needs depends on which
set comes first.

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


__all__ = ["PAD", "BOS", "SEP", "ANS", "NO", "YES", "FIRST_ELEMENT", "ANSWERS", "sd_length", "validate",
           "set_disjointness"]
