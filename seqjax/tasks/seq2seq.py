"""String transduction (copy / reverse) for encoder–decoder models, as a seqjax Task.

Config (``config.task``, name ``"seq2seq"``; every field in :func:`default_config`):

- ``kind``: ``"copy"`` or ``"reverse"`` (``seqjax.data.seq2seq``);
- ``num_symbols`` (10), ``min_length`` (1), ``max_length`` (8): sources of
  ``U{min_length..max_length}`` symbols; the vocabulary is ``num_symbols + 3``
  (PAD, BOS, EOS);
- ``layout``: ``"encoder_decoder"`` (default) or ``"decoder_only"``;
- ``eval_examples`` (512), ``eval_batch_size`` (128), ``eval_seed`` (None:
  the run's seed).

Layouts. ``encoder_decoder``: the model must be an encoder–decoder
(``config.model.architecture = "encoder_decoder"``); batches carry ``inputs``
(the source), ``mask`` (its real tokens), ``decoder_inputs`` (BOS + the target
shifted right) and ``targets``. ``decoder_only``: a causal LM
(``SequenceModel``, ``head="lm"``) reads the source, padded to ``max_length``,
then BOS and the shifted target as one sequence of ``2 max_length + 1`` tokens
(BOS is the separator), and is scored only where the target is (``targets`` is
PAD over the source) — the decoder-only side of Fu et al. 2023's comparison.
Training example ``i`` of step ``s`` is example ``s * batch + i`` of data seed
``(seed, 0)``; eval example ``i`` is example ``i`` of ``(eval_seed, 1)``.

Loss: cross-entropy of the logits at the real
target positions (the symbols and the EOS), averaged over them; metrics ``ce``,
``acc``. Evaluation: teacher-forced ``token_accuracy`` and ``ce``, and free-running
greedy decoding — the decoder is fed its own argmax, one position per call of the
model (a causal decoder's position ``t`` reads only inputs ``<= t``, so this is the
cached greedy search of ``seqjax.models.generate_seq2seq``, run without caches):
``greedy_token_accuracy`` at the real target positions and ``exact_match`` (every
one of an example's target tokens right, EOS included).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from seqjax.data import seq2seq as data
from seqjax.errors import ConfigError, check_choice
from seqjax.tasks.base import Batch, Metrics, StepIterator, row_weights

LAYOUTS = ("encoder_decoder", "decoder_only")
_DEFAULTS = dict(kind="reverse", num_symbols=10, min_length=1, max_length=8, layout="encoder_decoder",
                 eval_examples=512, eval_batch_size=128, eval_seed=None)
_P = "config.task."
_TRAIN, _EVAL = 0, 1  # data streams


def default_config() -> ml_collections.ConfigDict:
    """Every field of ``config.task`` for ``task.name = "seq2seq"``, with its default."""
    return ml_collections.ConfigDict({"name": "seq2seq", **_DEFAULTS, "eval_seed": placeholder(int)})


def _positive(field: str, value, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{_P}{field}={value!r} must be an int >= {low}")
    return value


class Seq2SeqTask:
    """Copy or reverse a string with an encoder–decoder; teacher-forced loss, greedy evaluation.

    Attributes:
      name: ``"seq2seq"``.
      kind: ``"copy"`` or ``"reverse"``.
      layout: ``"encoder_decoder"`` or ``"decoder_only"``.
      settings: the generator's ``kind``/``num_symbols``/``min_length``/``max_length``.
      max_length: ``inputs`` length: the source (encoder–decoder; the decoder reads one more
        position), or source + BOS + target (decoder-only: ``2 * max_length + 1``).
      vocab_size: token ids fed and scored are below it.
      eval_examples, eval_batch_size, eval_seed: evaluation settings.
    """

    name = "seq2seq"
    weighted_rows = True  # loss() honours batch["weight"] (seqjax.tasks.base.pad_rows)

    def __init__(self, task_config):
        get = {k: task_config.get(k, v) if hasattr(task_config, "get") else v for k, v in _DEFAULTS.items()}
        self.settings = {k: get[k] for k in ("kind", "num_symbols", "min_length", "max_length")}
        data.validate(**self.settings, prefix=_P)
        self.kind = get["kind"]
        self.layout = get["layout"]
        check_choice(f"{_P}layout", self.layout, LAYOUTS)
        self._source_length = int(get["max_length"])
        # Decoder-only: source, BOS, target minus its last token (2 max_length + 1 positions).
        self.max_length = 2 * self._source_length + 1 if self.layout == "decoder_only" else self._source_length
        self.vocab_size = data.vocab_size(get["num_symbols"])
        self.eval_examples = _positive("eval_examples", get["eval_examples"])
        self.eval_batch_size = _positive("eval_batch_size", get["eval_batch_size"])
        self.eval_seed = get["eval_seed"]
        if self.eval_seed is not None:
            _positive("eval_seed", self.eval_seed, 0)

    def check_model(self, model_config) -> None:
        """Raises ConfigError unless ``config.model`` fits the layout (an encoder–decoder, or a causal LM)."""
        arch = model_config.get("architecture", "sequence")
        if self.layout == "encoder_decoder" and arch != "encoder_decoder":
            raise ConfigError(f"config.model.architecture={arch!r}: task 'seq2seq' with layout 'encoder_decoder' "
                              "feeds a source and decoder inputs; allowed: 'encoder_decoder' "
                              "(seqjax.models.encoder_decoder.default_config), or config.task.layout='decoder_only'")
        if self.layout == "decoder_only":
            lm = (arch == "sequence" and model_config.get("head", "lm") == "lm"
                  and model_config.get("causal", True) and model_config.get("input", "tokens") == "tokens")
            if not lm:
                raise ConfigError("config.task.layout='decoder_only' needs a causal token LM: "
                                  "config.model.architecture='sequence', head='lm', causal=True, input='tokens'")

    def examples(self, seed: int, stream: int, indices) -> Batch:
        """Examples ``indices`` of data seed ``(seed, stream)`` in the task's layout.

        Encoder–decoder: ``seqjax.data.seq2seq.batch``. Decoder-only: ``inputs`` = source +
        decoder inputs, ``targets`` = PAD over the source + the target.
        """
        batch = data.batch(int(seed) * 2 + stream, indices, **self.settings)
        if self.layout == "encoder_decoder":
            return batch
        pad = np.full(batch["inputs"].shape, data.PAD, np.int32)
        return {"inputs": np.concatenate([batch["inputs"], batch["decoder_inputs"]], axis=1),
                "targets": np.concatenate([pad, batch["targets"]], axis=1)}

    def train_iterator(self, seed: int, batch_size: int) -> StepIterator:
        """The training stream (resumable: the state is the step).

        Args:
          seed: the run's seed.
          batch_size: global batch size.

        Returns:
          An iterator of this process's rows of each batch.
        """
        seed, batch_size = int(seed), int(batch_size)
        return StepIterator(lambda step, first, rows: self.examples(
            seed, _TRAIN, step * batch_size + np.arange(first, first + rows)), batch_size)

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
        """Cross-entropy and token accuracy at the real target positions.

        Args:
          outputs: logits ``(b, l, vocab)`` (``l`` the length of ``targets``).
          batch: ``targets`` (PAD where not scored), optionally ``weight``.

        Returns:
          ``(ce, {"ce": ce, "acc": acc})``.
        """
        logits = outputs.astype(jnp.float32)
        targets = batch["targets"].astype(jnp.int32)
        mask = (targets != data.PAD).astype(jnp.float32) * row_weights(batch, targets.shape[0])[:, None]
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        denom = jnp.maximum(mask.sum(), 1.0)
        ce = (nll * mask).sum() / denom
        acc = ((jnp.argmax(logits, axis=-1) == targets) * mask).sum() / denom
        return ce, {"ce": ce, "acc": acc}

    def evaluate(self, predict: Callable[[Batch], jax.Array], seed: int) -> Metrics:
        """Teacher-forced and greedy (free-running) accuracy on ``eval_examples`` held-out strings.

        Args:
          predict: ``batch -> logits (b, l, vocab)``; always called with
            ``eval_batch_size`` rows (the last call's extra rows are not scored).
          seed: the eval data's seed when ``eval_seed`` is None.

        Returns:
          ``{"token_accuracy", "ce", "greedy_token_accuracy", "exact_match", "num_examples",
          "num_positions", "kind", "layout", "greedy_accuracy_per_position"}`` (the last: greedy
          accuracy at target index ``0 … max_length``, None where no target reaches it).
        """
        eval_seed = int(self.eval_seed if self.eval_seed is not None else seed)
        forced = greedy = nll = exact = 0.0
        positions = 0
        # Per target index (0 … max_length: the symbols, then the EOS of the longest sources).
        hits, counts = np.zeros(self._source_length + 1), np.zeros(self._source_length + 1)
        for start in range(0, self.eval_examples, self.eval_batch_size):
            batch = self.examples(eval_seed, _EVAL, np.arange(start, start + self.eval_batch_size))
            rows = min(self.eval_batch_size, self.eval_examples - start)
            targets = batch["targets"][:rows]
            real = targets != data.PAD
            logits = np.asarray(predict(batch), np.float64)[:rows]
            top = logits.max(axis=-1, keepdims=True)
            logp = logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
            nll -= float(np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0][real].sum())
            forced += float((logits.argmax(axis=-1) == targets)[real].sum())
            tokens = self.greedy_decode(predict, batch)[:rows]
            right = (tokens == targets) | ~real
            greedy += float((tokens == targets)[real].sum())
            index = np.cumsum(real, axis=1) - 1  # target index of each real position
            np.add.at(hits, index[real], (tokens == targets)[real])
            np.add.at(counts, index[real], 1)
            exact += float(np.all(right, axis=1).sum())
            positions += int(real.sum())
        return {"token_accuracy": forced / positions, "ce": nll / positions,
                "greedy_token_accuracy": greedy / positions,
                "exact_match": exact / self.eval_examples, "num_examples": self.eval_examples,
                "num_positions": positions, "kind": self.kind, "layout": self.layout,
                "greedy_accuracy_per_position": [float(h / c) if c else None for h, c in zip(hits, counts)]}

    def greedy_decode(self, predict: Callable[[Batch], jax.Array], batch: Batch) -> np.ndarray:
        """Free-running greedy decoding through ``predict``: each target position is fed the argmax before it.

        The decoder's inputs are ``batch["decoder_inputs"]`` (encoder–decoder) or
        ``batch["inputs"]`` from position ``max_length`` on (decoder-only); only their
        BOS is kept, every later token is the model's own.

        Args:
          predict: ``batch -> logits (b, l, vocab)`` of a causal decoder.
          batch: a batch of :meth:`examples`.

        Returns:
          int32 ``(b, l)``: the argmax token at every target position (PAD elsewhere).
        """
        key, start = ("decoder_inputs", 0) if self.layout == "encoder_decoder" else ("inputs", self._source_length)
        seq = np.array(batch[key], np.int32)
        seq[:, start + 1:] = data.PAD
        out = np.full(seq.shape, data.PAD, np.int32)
        for t in range(start, seq.shape[1]):
            logits = np.asarray(predict({**batch, key: seq.copy()}))
            out[:, t] = logits[:, t].argmax(axis=-1)
            if t + 1 < seq.shape[1]:
                seq[:, t + 1] = out[:, t]
        return out


__all__ = ["LAYOUTS", "Seq2SeqTask", "default_config"]
