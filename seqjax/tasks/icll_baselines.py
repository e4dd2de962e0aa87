"""In-context n-gram baselines for RegBench (the paper's reference rows), numpy only.

At each position the baseline estimates the next-letter distribution from
the prompt seen so far (nothing is learned across prompts), then is scored
with the same accuracy/TVD as models (:func:`seqjax.data.regbench.dfa_metrics`).

Estimator (order ``n``; written from the description of the paper's
in-context n-gram with backoff and its public evaluation code):

- Strings are the pieces between ``"|"``; the history of a position is the
  last ``n − 1`` letters of its own string, left-padded with a boundary
  symbol (so the first letters of a string condition on "string start").
- Counts cover every position seen so far: the letters of finished strings,
  their end positions (where ``"|"`` followed) and the current partial
  string including the current position. ``ctx_k(h)`` = positions whose
  order-``k`` history is ``h``; ``cont_k(h, c)`` = those followed by letter ``c``.
- Order ``k`` maximum likelihood for a letter seen after ``h``:
  ``P_k(c | h) = cont_k(h, c) / ctx_k(h)``. Because the current position
  counts in ``ctx_k(h)`` without a continuation, the seen letters leave mass
  ``β = 1 − Σ_seen P_k > 0``; it is spread over the letters not seen after
  ``h`` in proportion to the full order ``k − 1`` distribution (Katz backoff
  without discounting). Order 1 is the letter frequency.
- Support = letters seen anywhere in the prompt so far (others get 0); the
  final row is renormalised over letters (mass left when every letter was
  seen after ``h`` is dropped). No mass on ``"|"`` or pad.
- Ties in the greedy prediction go to the lowest token id.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np

from seqjax.data import regbench as rb
from seqjax.errors import ConfigError

_BOS = -1  # boundary symbol in histories (never a token id)


def _history(cur: list[int], k: int) -> tuple[int, ...]:
    """The last ``k − 1`` symbols of the current string, BOS-padded on the left."""
    if k == 1:
        return ()
    h = cur[-(k - 1):]
    return (_BOS,) * (k - 1 - len(h)) + tuple(h)


def _katz(n: int, letters: list[int], cur: list[int], ctx, cont) -> np.ndarray:
    """Order-``n`` backoff probabilities of ``letters`` at the current position.

    Built bottom-up: order 1 is the letter frequency; order k keeps its
    maximum-likelihood value for letters seen after its history and gives
    the rest β_k of the mass to the unseen letters in proportion to the full
    order k − 1 distribution.
    """
    dist = None
    for k in range(1, n + 1):
        h = _history(cur, k)
        total = ctx[k][h] + 1  # + the current position
        counts = np.array([cont[k][(h, c)] for c in letters], dtype=np.float64)
        ml = counts / total
        unseen = counts == 0
        if dist is not None and unseen.any():
            beta = 1.0 - ml.sum()
            z = dist[unseen].sum()
            if z > 0:
                ml[unseen] = beta * dist[unseen] / z
        dist = ml
    return dist


def ngram_probs(tokens, n: int) -> np.ndarray:
    """Next-token distributions of the order-``n`` in-context n-gram along one prompt.

    Args:
      tokens: 1-D token ids (a model input; stops at the first pad).
      n: order (1 = unigram).

    Returns:
      float64 ``[len(tokens), 20]``; row ``i`` predicts the token after
      ``tokens[:i+1]``. Rows after a pad are zero.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n={n!r} must be an int >= 1")
    tokens = np.asarray(tokens).reshape(-1)
    out = np.zeros((len(tokens), rb.VOCAB_SIZE))
    ctx = {k: defaultdict(int) for k in range(1, n + 1)}
    cont = {k: defaultdict(int) for k in range(1, n + 1)}
    cur: list[int] = []
    seen: set[int] = set()
    for i, v in enumerate(tokens):
        v = int(v)
        if v == rb.PAD:
            break
        # Record the position that token v closes: a letter continuation or a string end.
        for k in range(1, n + 1):
            h = _history(cur, k)
            ctx[k][h] += 1
            if v != rb.SEP:
                cont[k][(h, v)] += 1
        if v == rb.SEP:
            cur = []
        else:
            cur.append(v)
            seen.add(v)
        letters = sorted(seen)
        if not letters:
            out[i, rb.LETTER_IDS] = 1.0 / len(rb.LETTER_IDS)
            continue
        row = _katz(n, letters, cur, ctx, cont)
        out[i, letters] = row / row.sum()
    return out


def ngram_baseline(examples: Iterable[Mapping[str, np.ndarray]], n: int, *, max_length: int | None = None,
                   renormalize_letters: bool = False) -> dict:
    """DFA accuracy and TVD of the order-``n`` in-context n-gram over examples.

    Args:
      examples: dicts with ``inputs``, ``targets`` (1-D) and ``transitions``
        (a RegBench data source split, or a list).
      n: order.
      max_length: cut inputs/targets to this many positions (as the model sees them).
      renormalize_letters: passed to :func:`~seqjax.data.regbench.dfa_metrics`
        (no effect here: the n-gram has no mass off letters).

    Returns:
      ``{"accuracy", "tvd", "num_examples", "num_positions"}`` (means over scored positions).
    """
    correct = tvd = 0.0
    count = num = 0
    for ex in examples:
        inputs = np.asarray(ex["inputs"])[:max_length]
        targets = np.asarray(ex["targets"])[:max_length]
        m = rb.dfa_metrics(ngram_probs(inputs, n), inputs, targets, ex["transitions"],
                           renormalize_letters=renormalize_letters)
        correct += m["correct"]
        tvd += m["tvd"]
        count += m["count"]
        num += 1
    return {"accuracy": correct / max(count, 1), "tvd": tvd / max(count, 1), "num_examples": num,
            "num_positions": count}


__all__ = ["ngram_baseline", "ngram_probs"]
