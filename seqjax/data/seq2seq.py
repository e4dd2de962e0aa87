"""String transduction data for encoder–decoder models: copy and reverse (Sutskever et al. 2014's reversal test).

Tokens: ``PAD = 0``, ``BOS = 1``, ``EOS = 2``, symbols ``3 .. 3 + num_symbols - 1``
(so the vocabulary is ``num_symbols + 3``). An example is a source of
``n ~ U{min_length .. max_length}`` symbols drawn uniformly (padded on the right
to ``max_length``) and its target ``f(source) + [EOS]`` (padded to
``max_length + 1``), where ``f`` is the identity (``copy``) or the reversal
(``reverse``). The decoder reads ``[BOS] + target[:-1]`` (teacher forcing) and
position ``t`` predicts ``target[t]``.

Example ``i`` of seed ``s`` comes from ``np.random.default_rng([s, i])``: it does
not depend on how many examples are drawn or in which batches.
"""

import numpy as np

from seqjax.errors import ConfigError, check_choice

PAD, BOS, EOS, FIRST_SYMBOL = 0, 1, 2, 3
KINDS = ("copy", "reverse")


def vocab_size(num_symbols: int) -> int:
    """Token ids in use: the three specials and ``num_symbols`` symbols."""
    return FIRST_SYMBOL + int(num_symbols)


def validate(*, kind: str, num_symbols: int, min_length: int, max_length: int, prefix: str = "") -> None:
    """Raises ConfigError (one line naming the field) for settings that cannot generate examples.

    Args:
      kind: ``"copy"`` or ``"reverse"``.
      num_symbols: distinct symbols (>= 2).
      min_length, max_length: source lengths ``1 <= min_length <= max_length``.
      prefix: the fields' dotted prefix for the messages (e.g. ``"config.task."``).
    """
    check_choice(f"{prefix}kind", kind, KINDS)
    for field, value, low in (("num_symbols", num_symbols, 2), ("min_length", min_length, 1),
                              ("max_length", max_length, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{prefix}{field}={value!r} must be an int >= {low}")
    if min_length > max_length:
        raise ConfigError(f"{prefix}min_length={min_length} must be <= {prefix}max_length={max_length}")


def example(seed: int, index: int, *, kind: str, num_symbols: int, min_length: int,
            max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Example ``index`` of ``seed``: ``(source (max_length,), target (max_length + 1,))`` int32, padded with PAD.

    Args:
      seed: the data seed.
      index: the example's index.
      kind, num_symbols, min_length, max_length: as :func:`validate`.

    Returns:
      The source and its target (``f(source) + [EOS]``).
    """
    rng = np.random.default_rng([int(seed), int(index)])
    n = int(rng.integers(min_length, max_length + 1))
    symbols = rng.integers(FIRST_SYMBOL, FIRST_SYMBOL + num_symbols, n).astype(np.int32)
    src = np.full((max_length,), PAD, np.int32)
    src[:n] = symbols
    tgt = np.full((max_length + 1,), PAD, np.int32)
    tgt[:n] = symbols if kind == "copy" else symbols[::-1]
    tgt[n] = EOS
    return src, tgt


def batch(seed: int, indices, **settings) -> dict[str, np.ndarray]:
    """The examples ``indices`` of ``seed`` as a batch.

    Args:
      seed: the data seed.
      indices: example indices (one row each).
      **settings: ``kind``, ``num_symbols``, ``min_length``, ``max_length``.

    Returns:
      ``{"inputs" (b, max_length), "decoder_inputs" (b, max_length + 1), "targets" (b, max_length + 1),
      "mask" (b, max_length) bool (real source tokens)}``; ``decoder_inputs`` is BOS + targets shifted right.
    """
    pairs = [example(seed, i, **settings) for i in indices]
    src = np.stack([p[0] for p in pairs])
    tgt = np.stack([p[1] for p in pairs])
    dec = np.concatenate([np.full((len(pairs), 1), BOS, np.int32), tgt[:, :-1]], axis=1)
    return {"inputs": src, "decoder_inputs": dec, "targets": tgt, "mask": src != PAD}


__all__ = ["PAD", "BOS", "EOS", "FIRST_SYMBOL", "KINDS", "vocab_size", "validate", "example", "batch"]
