"""Multi-query associative recall (MQAR) batches, pure JAX and jittable.

MQAR is the recall probe of Zoology (Arora et al. 2023, "Zoology: Measuring and
Improving Recall in Efficient Language Models", arXiv 2312.04927). The layout
follows the paper's public generator (``zoology/data/associative_recall.py``,
``_mqar``):

- vocabulary split in two: keys are drawn from ``[1, vocab_size // 2)``,
  values from ``[vocab_size // 2, vocab_size)``; each sequence has
  ``num_kv_pairs`` distinct keys and distinct values (token 0 is never a key
  or value: it is the paper's filler when ``random_fill=False``);
- the pairs come first, ``k_1 v_1 k_2 v_2 ... k_n v_n`` (``C = 2n`` tokens);
- the rest of the sequence has ``S = (seq_len - C) // 2`` query slots at
  positions ``C + 2g`` (``g = 0 .. S - 1``). Every key is queried once, in a
  random order: the ``n`` slots are drawn without replacement with
  probability ``p(g) ∝ power_a * (g + 1) ** (power_a - 1)`` (the paper's
  power law; ``power_a = 1`` is uniform, the default 0.01 puts most queries
  right after the pairs). Key ``k_i`` at position ``2i`` is queried at
  ``C + 2g`` for its slot ``g``: a distance of ``C + 2g - 2i`` tokens;
- ``targets`` at a query position hold the value bound to the queried key (a
  causal model predicts it from the query token); every other position is
  :data:`IGNORE` (``-100``), not scored;
- the other positions are filled with uniform random tokens from ``[0,
  vocab_size)`` (the paper's ``random_non_queries=True``; a random filler
  token may equal a key, and is then just not scored), or with 0 when
  ``random_fill=False`` (the setting of the paper's Figure 2 configs).

Slots drawn without replacement with probabilities ``p`` are the top ``n`` of
``log p(g) + Gumbel`` noise (Gumbel top-k), which has the law of the
successive draws of NumPy's ``choice(replace=False, p=p)`` that the paper uses.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError

IGNORE = -100
"""Target of every position that is not scored."""


def check_int(name: str, value, low: int, *, prefix: str = "", hint: str = "") -> int:
    """``value`` as an int, or a one-line :class:`ConfigError` (a ValueError) naming ``prefix + name``.

    Args:
      name: the argument's name.
      value: its value.
      low: the smallest allowed value.
      prefix: put before ``name`` in the message (``"config.task."`` for a task field).
      hint: why ``low`` is the bound, appended to the message.

    Returns:
      ``int(value)``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{prefix}{name}={value!r} is not allowed; allowed: an int >= {low}{hint}")
    return int(value)


def validate(*, batch_size: int, seq_len: int, num_kv_pairs: int, vocab_size: int, power_a: float,
             prefix: str = "") -> None:
    """Raises a one-line :class:`ConfigError` (a ValueError) for settings no MQAR sequence fits.

    Args:
      batch_size, seq_len, num_kv_pairs, vocab_size, power_a: as :func:`sample_batch`.
      prefix: put before each argument's name in the message (``"config.task."``).
    """
    p = prefix
    check_int("batch_size", batch_size, 1, prefix=p)
    check_int("num_kv_pairs", num_kv_pairs, 1, prefix=p)
    # The pairs take 2n tokens and the n queries need n slots of 2 tokens after them (the paper's bound).
    check_int("seq_len", seq_len, 4 * num_kv_pairs, prefix=p,
              hint=f" = 4 * {p}num_kv_pairs (2n tokens of pairs, then n query slots of 2 tokens)")
    # Keys are distinct ids in [1, vocab_size // 2): at least n + 1 ids below the split.
    check_int("vocab_size", vocab_size, 2 * num_kv_pairs + 2, prefix=p,
              hint=f" = 2 * {p}num_kv_pairs + 2 (distinct keys in [1, vocab_size // 2))")
    if isinstance(power_a, bool) or not isinstance(power_a, (int, float)) or not 0 < power_a < math.inf:
        raise ConfigError(f"{p}power_a={power_a!r} is not allowed; allowed: a number > 0 (1 = uniform query slots)")


def distinct_tokens(key: jax.Array, batch_size: int, count: int, low: int, high: int) -> jax.Array:
    """``count`` distinct ids per row, uniform over ``[low, high)``, in random order.

    Args:
      key: PRNG key.
      batch_size: rows.
      count: ids per row (``<= high - low``).
      low, high: the id range.

    Returns:
      int32 ``(batch_size, count)``.
    """
    scores = jax.random.uniform(key, (batch_size, high - low))
    _, idx = jax.lax.top_k(scores, count)  # the top-k of iid scores: a uniform ordered k-subset
    return (idx + low).astype(jnp.int32)


def slot_log_probs(num_slots: int, power_a: float) -> jax.Array:
    """Unnormalised ``log p(g)`` of query slot ``g = 0 .. num_slots - 1``: ``(power_a - 1) log(g + 1)``."""
    return (power_a - 1.0) * jnp.log(jnp.arange(1, num_slots + 1, dtype=jnp.float32))


def sample_batch(key: jax.Array, *, batch_size: int, seq_len: int, num_kv_pairs: int, vocab_size: int,
                 power_a: float = 0.01, random_fill: bool = True) -> dict[str, jax.Array]:
    """A batch of MQAR sequences (see the module docstring for the layout).

    Jittable with every argument but ``key`` static.

    Args:
      key: PRNG key; the batch is a deterministic function of it.
      batch_size: sequences.
      seq_len: tokens per sequence (``>= 4 * num_kv_pairs``).
      num_kv_pairs: key-value pairs per sequence, each queried once.
      vocab_size: token ids are in ``[0, vocab_size)`` (``>= 2 * num_kv_pairs + 2``).
      power_a: exponent of the query-slot power law (> 0; 1 = uniform).
      random_fill: fill unused positions with random tokens (True) or 0.

    Returns:
      ``{"inputs", "targets"}``, int32 ``(batch_size, seq_len)``; ``targets``
      is the bound value at the ``num_kv_pairs`` query positions of each row
      and :data:`IGNORE` elsewhere.

    Raises:
      ConfigError: (a ValueError) an argument out of range, named with the allowed range.
    """
    validate(batch_size=batch_size, seq_len=seq_len, num_kv_pairs=num_kv_pairs, vocab_size=vocab_size,
             power_a=power_a)
    b, n, half = batch_size, num_kv_pairs, vocab_size // 2
    context, slots = 2 * n, (seq_len - 2 * n) // 2
    k_keys, k_values, k_slots, k_fill = jax.random.split(key, 4)
    keys = distinct_tokens(k_keys, b, n, 1, half)
    values = distinct_tokens(k_values, b, n, half, vocab_size)
    gumbel = jax.random.gumbel(k_slots, (b, slots))
    _, gaps = jax.lax.top_k(slot_log_probs(slots, float(power_a)) + gumbel, n)  # key i -> slot gaps[:, i]
    query_pos = context + 2 * gaps

    if random_fill:
        inputs = jax.random.randint(k_fill, (b, seq_len), 0, vocab_size, dtype=jnp.int32)
    else:
        inputs = jnp.zeros((b, seq_len), jnp.int32)
    pairs = jnp.stack([keys, values], axis=-1).reshape(b, context)
    inputs = inputs.at[:, :context].set(pairs)
    rows = jnp.arange(b)[:, None]
    inputs = inputs.at[rows, query_pos].set(keys)
    targets = jnp.full((b, seq_len), IGNORE, jnp.int32).at[rows, query_pos].set(values)
    return {"inputs": inputs, "targets": targets}


__all__ = ["IGNORE", "check_int", "validate", "distinct_tokens", "slot_log_probs", "sample_batch"]
