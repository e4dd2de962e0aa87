"""Pretraining objectives on an LRA dataset's own input tokens (``config.task.objective``).

Self-pretraining (Amos et al. 2023, "Never Train from Scratch"): before the
classification run, train the same backbone on the task's inputs alone, then
start the classifier from it (``config.train.init_from``). Two objectives:

- ``"causal_lm"``: next-token cross-entropy, position ``t`` predicts token
  ``t + 1`` wherever that token is real (not padding); the model must be
  causal (``config.model.causal=True``), else it reads the answer.
- ``"masked_lm"``: denoising: :data:`MASK_RATE` (15%) of each sequence's real
  tokens (at least one) are replaced by ``mask_token_id`` and the model
  predicts the originals there (cross-entropy over those positions only).
  Which tokens are masked is a pure function of the sequence's tokens (a
  seed from their CRC-32), so a resumed run and every evaluation see the same
  corruption without any iterator state.

Both need per-position logits: ``config.model.head="lm"`` with a
``vocab_size`` above every token id (and above ``mask_token_id``).
Batches gain ``targets`` ``(b, l)`` int32 and ``target_mask`` ``(b, l)``
(the scored positions); metrics are ``ce`` and ``acc`` (token accuracy).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.errors import ConfigError
from seqjax.tasks.base import Batch, Metrics, row_weights

OBJECTIVES = ("classify", "causal_lm", "masked_lm")
LM_OBJECTIVES = ("causal_lm", "masked_lm")
MASK_RATE = 0.15


def masked_positions(tokens: np.ndarray, real: np.ndarray, rate: float = MASK_RATE) -> np.ndarray:
    """Which real tokens of each row are masked: ``max(1, round(rate * n_real))`` of them.

    Args:
      tokens: ``(b, l)`` int tokens (they seed each row's choice).
      real: ``(b, l)`` bool, True at real (non-padding) tokens.
      rate: fraction of a row's real tokens to mask.

    Returns:
      ``(b, l)`` bool, True at the masked positions (none in a row without real tokens).
    """
    out = np.zeros(tokens.shape, bool)
    for i in range(tokens.shape[0]):
        where = np.flatnonzero(real[i])
        if where.size == 0:
            continue
        rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(tokens[i], np.int32).tobytes()))
        k = max(1, int(round(rate * where.size)))
        out[i, rng.choice(where, size=k, replace=False)] = True
    return out


def lm_batch(batch: Batch, objective: str, mask_token_id: int | None) -> Batch:
    """Adds ``targets`` and ``target_mask`` to a classification batch (and corrupts ``inputs`` for masked_lm).

    Args:
      batch: ``inputs`` ``(b, l)`` int tokens, ``mask`` ``(b, l)`` (True at real tokens), ``label``.
      objective: ``"causal_lm"`` or ``"masked_lm"``.
      mask_token_id: the id masked tokens become (masked_lm).

    Returns:
      A new batch: ``inputs`` (masked_lm: with the masked tokens replaced),
      ``targets`` (the next token for causal_lm, the original for masked_lm;
      0 where not scored), ``target_mask`` and the other keys unchanged.
    """
    tokens, real = np.asarray(batch["inputs"]), np.asarray(batch["mask"], bool)
    out = dict(batch)
    if objective == "causal_lm":
        targets = np.zeros_like(tokens)
        targets[:, :-1] = tokens[:, 1:]
        scored = np.zeros_like(real)
        scored[:, :-1] = real[:, 1:]
    else:
        scored = masked_positions(tokens, real)
        targets = np.where(scored, tokens, 0)
        out["inputs"] = np.where(scored, np.int32(mask_token_id), tokens).astype(tokens.dtype)
    out["targets"], out["target_mask"] = targets.astype(np.int32), scored
    return out


def lm_loss(outputs: jax.Array, batch: Batch, objective: str) -> tuple[jax.Array, Metrics]:
    """Token cross-entropy over the scored positions (padding rows of weight 0 left out).

    Args:
      outputs: ``(b, l, vocab)`` logits.
      batch: with ``targets``, ``target_mask`` and optionally ``weight``.
      objective: for the error message.

    Returns:
      ``(ce, {"ce": ce, "acc": token accuracy})``, means over the scored tokens.

    Raises:
      ConfigError: the model gives one vector per sequence (not an LM head).
    """
    if outputs.ndim != 3:
        raise ConfigError(f"config.task.objective={objective!r} needs per-position logits: set "
                          f"config.model.head='lm' (the model's outputs have shape {tuple(outputs.shape)})")
    logits = outputs.astype(jnp.float32)
    targets = batch["targets"].astype(jnp.int32)
    w = row_weights(batch, targets.shape[0])[:, None] * batch["target_mask"].astype(jnp.float32)
    total = jnp.maximum(jnp.sum(w), 1.0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.sum(w * jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]) / total
    acc = jnp.sum(w * (jnp.argmax(logits, axis=-1) == targets)) / total
    return ce, {"ce": ce, "acc": acc}


def evaluate_lm_split(source, predict: Callable[[Batch], jax.Array], to_batch: Callable[[dict], Batch], *,
                      max_length: int, batch_size: int, limit: int = 0) -> Metrics:
    """Token cross-entropy and accuracy of ``predict`` over the first ``limit`` records of ``source``.

    Args:
      source: random-access records (dicts with ``inputs`` and ``label``).
      predict: ``batch -> logits (batch_size, l, vocab)``.
      to_batch: padded raw batch -> the objective's batch (with ``targets``, ``target_mask``).
      max_length: padded length.
      batch_size: rows per ``predict`` call (fixed: one compile).
      limit: records evaluated (0 = all).

    Returns:
      ``{"ce", "acc", "num_examples", "num_tokens"}`` (means over scored tokens).
    """
    n = len(source) if limit == 0 else min(limit, len(source))
    nll, correct, tokens = 0.0, 0, 0
    for start in range(0, n, batch_size):
        records = [source[i] for i in range(start, min(start + batch_size, n))]
        real = len(records)
        records += [records[-1]] * (batch_size - real)  # static shape; the copies are not scored
        rows = np.zeros((batch_size, max_length), np.int32)
        for j, r in enumerate(records):
            x = np.asarray(r["inputs"])[:max_length]
            rows[j, :len(x)] = x
        batch = to_batch({"inputs": rows, "label": np.asarray([r["label"] for r in records])})
        logits = np.asarray(predict(batch), np.float64)[:real]
        targets, scored = batch["targets"][:real], batch["target_mask"][:real]
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll -= float(np.take_along_axis(logp, targets[..., None], -1)[..., 0][scored].sum())
        correct += int((logits.argmax(-1) == targets)[scored].sum())
        tokens += int(scored.sum())
    if tokens == 0:
        return {"ce": float("nan"), "acc": float("nan"), "num_examples": n, "num_tokens": 0}
    return {"ce": nll / tokens, "acc": correct / tokens, "num_examples": n, "num_tokens": tokens}


def check_model(objective: str, model_config, mask_token_id: int | None) -> None:
    """Raises when ``config.model`` cannot train ``objective`` (one line naming the field).

    Args:
      objective: ``config.task.objective``.
      model_config: ``config.model``.
      mask_token_id: the masked_lm mask id (None otherwise).

    Raises:
      ConfigError: an LM objective without an ``lm`` head, causal_lm with a
        non-causal model, or a mask id the vocabulary lacks.
    """
    if objective not in LM_OBJECTIVES:
        return
    head = model_config.get("head")
    if head != "lm":
        raise ConfigError(f"config.model.head={head!r} cannot train config.task.objective={objective!r}; allowed: lm")
    if objective == "causal_lm" and not model_config.get("causal"):
        raise ConfigError("config.model.causal=False with config.task.objective='causal_lm': a bidirectional model "
                          "sees the next token; allowed: True")
    vocab = model_config.get("vocab_size")
    if objective == "masked_lm" and vocab is not None and mask_token_id >= vocab:
        raise ConfigError(f"config.model.vocab_size={vocab} has no id {mask_token_id} "
                          f"(config.task.mask_token_id); allowed: vocab_size > {mask_token_id}")


__all__ = ["OBJECTIVES", "LM_OBJECTIVES", "MASK_RATE", "masked_positions", "lm_batch", "lm_loss",
           "evaluate_lm_split", "check_model"]
