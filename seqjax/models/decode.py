"""Generation from a causal LM through its mixers' recurrent ``step``: greedy and beam search.

A causal model is a stack of mixers that each have a cache and a ``step``
(the KV cache of attention, the state of a recurrence); decoding feeds one
token at a time through ``SequenceModel(..., caches=...)``, which runs every
layer's ``step`` and returns the next-token logits and the new caches. The
prompt goes through the same steps (one position at a time, inside one
``lax.scan``), so a prompt of any mixer mix works without a prefill form.

* :func:`init_caches` — every layer's empty cache, from the model and its variables.
* :func:`generate` — ``beam_size=1``: greedy (argmax) decoding; ``beam_size=k``:
  beam search over ``k`` hypotheses per row scored by the sum of token
  log-probabilities (no length penalty: every hypothesis has the same length).
* :func:`greedy_search`, :func:`beam_search` — the two loops over any
  ``step(tokens, caches) -> (log-probs, caches)``; the encoder–decoder's
  ``generate_seq2seq`` (``encoder_decoder.py``) runs them too.

Both run inside ``jit`` (the loops are ``lax.scan``), and agree with the
parallel forward: the logits of every generated position equal the model's
logits on the whole sequence (tests/models/test_decode.py).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from seqjax import mixers
from seqjax.errors import ConfigError


def _mixer_variables(variables: dict, layer: int) -> dict:
    """The variables of layer ``layer``'s mixer (params and any other collection)."""
    out = {}
    for collection, tree in variables.items():
        node = tree.get("backbone", {}).get(f"block_{layer}", {}).get("mixer") if hasattr(tree, "get") else None
        if node is not None:
            out[collection] = node
    return out


def init_caches(model, variables: dict, batch_size: int, max_length: int) -> list[dict]:
    """Every layer's empty cache (``Mixer.init_cache``), for ``model.apply(..., caches=...)``.

    Args:
      model: a :class:`~seqjax.models.model.SequenceModel` whose layers are all causal.
      variables: its variables (``{"params": ...}`` and any other collection).
      batch_size: rows to decode.
      max_length: the longest sequence (prompt + generated) the caches hold.

    Returns:
      One cache per layer.

    Raises:
      ConfigError: a layer is not causal (it has no ``step``).
    """
    caches = []
    for i, (name, kwargs) in enumerate(model.layers):
        mixer = mixers.get(name)(**dict(kwargs))
        if not mixer.is_causal:
            raise ConfigError(f"config.model.mixers: layer {i} ({name!r}) is not causal, so it cannot decode "
                              "step by step; set config.model.causal=True")
        caches.append(mixer.apply(_mixer_variables(variables, i), batch_size, max_length, method="init_cache"))
    return caches


def _step(model, variables, tokens_t, caches):
    """Log-probabilities ``(b, vocab)`` after ``tokens_t (b,)`` and the new caches."""
    logits, caches = model.apply(variables, tokens_t[:, None], caches=caches)
    return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1), caches


def _prompt(model, variables, prompt, caches):
    """Runs the prompt through the caches; returns the log-probs after its last token and the caches."""
    def body(carry, tok):
        _, caches = carry
        logp, caches = _step(model, variables, tok, caches)
        return (logp, caches), None

    vocab = model.vocab_size
    start = (jnp.zeros((prompt.shape[0], vocab), jnp.float32), caches)
    (logp, caches), _ = lax.scan(body, start, jnp.swapaxes(prompt, 0, 1))
    return logp, caches


def _take_rows(tree: Any, rows: jax.Array, batch: int) -> Any:
    """Reorders every cache leaf whose leading axis is the (rows × beams) batch."""
    return jax.tree.map(lambda x: x[rows] if x.ndim and x.shape[0] == batch else x, tree)


def generate(model, variables: dict, prompt: jax.Array, *, max_new_tokens: int, beam_size: int = 1,
             eos_id: int | None = None, length_penalty: float = 0.0) -> dict:
    """Greedy or beam-search continuation of ``prompt`` through the mixers' ``step``.

    Args:
      model: a causal LM (``head="lm"``, ``positions="none"``; every layer causal).
      variables: its variables.
      prompt: ``(b, p)`` int token ids, ``p >= 1``.
      max_new_tokens: tokens to generate (>= 1).
      beam_size: 1 for greedy decoding, ``k > 1`` for beam search.
      eos_id: stop token: a row (hypothesis) that emits it is finished and
        repeats it at no cost; None: every row runs ``max_new_tokens``.
      length_penalty: beam search's final ranking divides scores by
        ``((5 + length) / 6) ** length_penalty`` (GNMT; 0: raw sums).

    Returns:
      A dict: ``tokens`` ``(b, max_new_tokens)`` (greedy: the argmax path;
      beam: the best hypothesis), ``score`` ``(b,)`` (sum of the generated
      tokens' log-probabilities, up to the EOS), ``length`` ``(b,)`` (tokens
      up to and including the first EOS), and for beam search ``beams`` ``(b,
      k, max_new_tokens)``, ``beam_scores`` and ``beam_lengths`` ``(b, k)``,
      best first; for greedy ``logits`` ``(b, max_new_tokens, vocab)``
      (log-probabilities of each generated position).

    Raises:
      ConfigError: a bad ``max_new_tokens`` / ``beam_size`` / prompt, or a
        model that cannot decode step by step.
    """
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ConfigError(f"generate: prompt must be (batch, length >= 1) int token ids, got {prompt.shape} "
                          f"{prompt.dtype}")
    for field, value in (("max_new_tokens", max_new_tokens), ("beam_size", beam_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"generate: {field}={value!r} must be an int >= 1")
    check_stop("generate", model.vocab_size, eos_id, length_penalty)
    b, p = prompt.shape
    caches = init_caches(model, variables, b, p + max_new_tokens)
    return _generate_jit(model, variables, prompt, caches, max_new_tokens, beam_size, eos_id, float(length_penalty))


def _finish(logp: jax.Array, finished: jax.Array, eos_id: int | None) -> jax.Array:
    """``logp`` with finished rows forced to repeat EOS at no cost (log-prob 0 for EOS, -inf elsewhere)."""
    if eos_id is None:
        return logp
    eos_only = jnp.where(jnp.arange(logp.shape[-1]) == eos_id, 0.0, -jnp.inf).astype(logp.dtype)
    return jnp.where(finished[:, None], eos_only, logp)


def lengths(tokens: jax.Array, eos_id: int | None) -> jax.Array:
    """Generated tokens per row up to and including the first EOS (all of them when none, or ``eos_id`` None).

    Args:
      tokens: ``(..., steps)`` generated ids.
      eos_id: the stop token, or None.

    Returns:
      int32 ``(...)`` lengths in ``1 .. steps``.
    """
    steps = tokens.shape[-1]
    if eos_id is None:
        return jnp.full(tokens.shape[:-1], steps, jnp.int32)
    hit = tokens == eos_id
    return jnp.where(hit.any(-1), jnp.argmax(hit, axis=-1) + 1, steps).astype(jnp.int32)


def greedy_search(step: Callable, logp: jax.Array, caches: Any, steps: int, eos_id: int | None = None) -> dict:
    """Greedy (argmax) decoding of ``steps`` tokens from a step function (shared with seq2seq).

    Args:
      step: ``step(tokens (b,), caches) -> (log-probs (b, vocab), caches)``.
      logp: ``(b, vocab)`` log-probabilities of the first generated token.
      caches: the caches after the context (prompt, or BOS).
      steps: tokens to generate.
      eos_id: stop token: after a row emits it, the row repeats it at log-prob 0 (its score stops
        growing); None runs every row to ``steps``.

    Returns:
      ``tokens`` ``(b, steps)``, ``score`` ``(b,)``, ``length`` ``(b,)`` (see :func:`lengths`) and
      ``logits`` ``(b, steps, vocab)`` (log-probs; finished rows' are the forced EOS).
    """
    def body(carry, _):
        logp, caches, finished = carry
        logp = _finish(logp, finished, eos_id)
        tok = jnp.argmax(logp, axis=-1).astype(jnp.int32)  # ties: the lowest id
        chosen = jnp.take_along_axis(logp, tok[:, None], axis=1)[:, 0]
        finished = finished | (tok == eos_id) if eos_id is not None else finished
        new_logp, caches = step(tok, caches)
        return (new_logp, caches, finished), (tok, chosen, logp)

    finished = jnp.zeros((logp.shape[0],), bool)
    _, (toks, chosen, logps) = lax.scan(body, (logp, caches, finished), None, length=steps)
    return {"tokens": toks.T, "score": chosen.sum(0), "length": lengths(toks.T, eos_id),
            "logits": jnp.swapaxes(logps, 0, 1)}


def beam_search(step: Callable, logp: jax.Array, caches: Any, steps: int, k: int, eos_id: int | None = None,
                length_penalty: float = 0.0) -> dict:
    """Beam search of width ``k`` over ``steps`` tokens from a step function (shared with seq2seq).

    With ``eos_id``, a hypothesis that emitted it is finished: its only extension is EOS at log-prob 0,
    so it keeps its score and competes with the live ones at every step. The final ranking divides
    each score by GNMT's length penalty ``((5 + length) / 6) ** length_penalty`` (Wu et al. 2016;
    0 = raw sums of log-probs); the search itself compares raw sums.

    Args:
      step: ``step(tokens (b·k,), caches) -> (log-probs (b·k, vocab), caches)``.
      logp: ``(b, vocab)`` log-probabilities of the first generated token.
      caches: the caches after the context, batch ``b`` on every batch-first leaf.
      steps: tokens to generate.
      k: beam width.
      eos_id: stop token, or None.
      length_penalty: the exponent of the final ranking's length normalisation (>= 0).

    Returns:
      ``tokens``/``score``/``length`` (best hypothesis) and ``beams`` ``(b, k, steps)``,
      ``beam_scores`` ``(b, k)`` (sums of log-probs), ``beam_lengths`` ``(b, k)``, best first.
    """
    b, vocab = logp.shape
    rows = b * k
    # k copies of every row; only the first starts live, so step 1 expands one hypothesis.
    caches = _take_rows(caches, jnp.repeat(jnp.arange(b), k), b)
    logp = jnp.repeat(logp, k, axis=0)
    scores = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf), (b,))  # (b·k,)
    history = jnp.zeros((rows, steps), jnp.int32)
    finished = jnp.zeros((rows,), bool)

    def body(carry, t):
        logp, caches, scores, history, finished = carry
        cand = (scores[:, None] + _finish(logp, finished, eos_id)).reshape(b, k * vocab)
        top, idx = lax.top_k(cand, k)  # (b, k): best k extensions of the row's hypotheses
        parent = (jnp.arange(b)[:, None] * k + idx // vocab).reshape(rows)
        tok = (idx % vocab).reshape(rows).astype(jnp.int32)
        caches = _take_rows(caches, parent, rows)
        history = history[parent].at[:, t].set(tok)
        finished = finished[parent] | (tok == eos_id) if eos_id is not None else finished
        new_logp, caches = step(tok, caches)
        return (new_logp, caches, top.reshape(rows), history, finished), None

    carry = (logp, caches, scores, history, finished)
    (_, _, scores, history, _), _ = lax.scan(body, carry, jnp.arange(steps))
    beams, beam_scores = history.reshape(b, k, steps), scores.reshape(b, k)
    beam_lengths = lengths(beams, eos_id)
    if length_penalty:
        normalised = beam_scores / ((5.0 + beam_lengths) / 6.0) ** length_penalty
        order = jnp.argsort(-normalised, axis=1, stable=True)
        beams, beam_scores, beam_lengths = (jnp.take_along_axis(a, order[..., None] if a.ndim == 3 else order, 1)
                                            for a in (beams, beam_scores, beam_lengths))
    return {"tokens": beams[:, 0], "score": beam_scores[:, 0], "length": beam_lengths[:, 0], "beams": beams,
            "beam_scores": beam_scores, "beam_lengths": beam_lengths}


def check_stop(where: str, vocab_size: int, eos_id, length_penalty) -> None:
    """Raises ConfigError (one line) for a bad ``eos_id`` / ``length_penalty`` of a decoding call."""
    if eos_id is not None and (not isinstance(eos_id, int) or isinstance(eos_id, bool)
                               or not 0 <= eos_id < vocab_size):
        raise ConfigError(f"{where}: eos_id={eos_id!r} must be None or an int in [0, {vocab_size})")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) or length_penalty < 0:
        raise ConfigError(f"{where}: length_penalty={length_penalty!r} must be a number >= 0")


def _generate_impl(model, variables, prompt, caches, steps, k, eos_id, length_penalty):
    logp, caches = _prompt(model, variables, prompt, caches)
    step = lambda tok, caches: _step(model, variables, tok, caches)  # noqa: E731
    if k == 1:
        return greedy_search(step, logp, caches, steps, eos_id)
    return beam_search(step, logp, caches, steps, k, eos_id, length_penalty)


_generate_jit = jax.jit(_generate_impl, static_argnums=(0, 4, 5, 6, 7))


__all__ = ["init_caches", "generate", "greedy_search", "beam_search", "lengths", "check_stop"]
