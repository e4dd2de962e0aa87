"""String transduction (copy / reverse) for encoder–decoder models, as a seqjax Task.

Config (``config.task``, name ``"seq2seq"``; every field in :func:`default_config`):

- ``kind``: ``"copy"`` or ``"reverse"`` (``seqjax.data.seq2seq``);
- ``num_symbols`` (10), ``min_length`` (1), ``max_length`` (8): sources of
  ``U{min_length..max_length}`` symbols; the vocabulary is ``num_symbols + 3``
  (PAD, BOS, EOS);
- ``eval_examples`` (512), ``eval_batch_size`` (128), ``eval_seed`` (None:
  the run's seed).

The model must be an encoder–decoder (``config.model.architecture =
"encoder_decoder"``): batches carry ``inputs`` (the source), ``mask`` (its real
tokens), ``decoder_inputs`` (BOS + the target shifted right) and ``targets``.
Training example ``i`` of step ``s`` is example ``s * batch + i`` of data seed
``(seed, 0)``; eval example ``i`` is example ``i`` of ``(eval_seed, 1)``.

Loss: cross-entropy of the logits ``(b, max_length + 1, vocab)`` at the real
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
from seqjax.errors import ConfigError
from seqjax.tasks.base import Batch, Metrics, host_shard, row_weights

_DEFAULTS = dict(kind="reverse", num_symbols=10, min_length=1, max_length=8, eval_examples=512,
                 eval_batch_size=128, eval_seed=None)
_P = "config.task."
_TRAIN, _EVAL = 0, 1  # data streams


def default_config() -> ml_collections.ConfigDict:
    """Every field of ``config.task`` for ``task.name = "seq2seq"``, with its default."""
    return ml_collections.ConfigDict({"name": "seq2seq", **_DEFAULTS, "eval_seed": placeholder(int)})


def _positive(field: str, value, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{_P}{field}={value!r} must be an int >= {low}")
    return value


class _Iterator:
    """This process's rows of every global training batch; the state is the step.

    Attributes:
      task: the task.
      seed: the run's seed.
      batch_size: global rows per step.
      step: index of the next batch.
    """

    def __init__(self, task: Seq2SeqTask, seed: int, batch_size: int):
        self.task, self.seed, self.batch_size, self.step = task, int(seed), int(batch_size), 0
        per_host, (index, _) = host_shard(self.batch_size)
        self._rows = np.arange(index * per_host, (index + 1) * per_host)

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        out = self.task.examples(self.seed, _TRAIN, self.step * self.batch_size + self._rows)
        self.step += 1
        return out

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state) -> None:
        self.step = int(state["step"])


class Seq2SeqTask:
    """Copy or reverse a string with an encoder–decoder; teacher-forced loss, greedy evaluation.

    Attributes:
      name: ``"seq2seq"``.
      kind: ``"copy"`` or ``"reverse"``.
      settings: the generator's ``kind``/``num_symbols``/``min_length``/``max_length``.
      max_length: source length fed to the encoder (the decoder reads one more position).
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
        self.max_length = int(get["max_length"])
        self.vocab_size = data.vocab_size(get["num_symbols"])
        self.eval_examples = _positive("eval_examples", get["eval_examples"])
        self.eval_batch_size = _positive("eval_batch_size", get["eval_batch_size"])
        self.eval_seed = get["eval_seed"]
        if self.eval_seed is not None:
            _positive("eval_seed", self.eval_seed, 0)

    def check_model(self, model_config) -> None:
        """Raises ConfigError unless ``config.model`` is an encoder–decoder (the task feeds ``decoder_inputs``)."""
        arch = model_config.get("architecture", "sequence")
        if arch != "encoder_decoder":
            raise ConfigError(f"config.model.architecture={arch!r}: task 'seq2seq' feeds a source and decoder "
                              "inputs; allowed: 'encoder_decoder' (seqjax.models.encoder_decoder.default_config)")

    def examples(self, seed: int, stream: int, indices) -> Batch:
        """Examples ``indices`` of data seed ``(seed, stream)`` (see ``seqjax.data.seq2seq.batch``)."""
        return data.batch(int(seed) * 2 + stream, indices, **self.settings)

    def train_iterator(self, seed: int, batch_size: int) -> _Iterator:
        """The training stream (resumable: the state is the step).

        Args:
          seed: the run's seed.
          batch_size: global batch size.

        Returns:
          An iterator of this process's rows of each batch.
        """
        return _Iterator(self, seed, batch_size)

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
        """Cross-entropy and token accuracy at the real target positions.

        Args:
          outputs: logits ``(b, max_length + 1, vocab)``.
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
          predict: ``batch -> logits (b, max_length + 1, vocab)``; always called with
            ``eval_batch_size`` rows (the last call's extra rows are not scored).
          seed: the eval data's seed when ``eval_seed`` is None.

        Returns:
          ``{"token_accuracy", "ce", "greedy_token_accuracy", "exact_match", "num_examples",
          "num_positions", "kind"}``.
        """
        eval_seed = int(self.eval_seed if self.eval_seed is not None else seed)
        forced = greedy = nll = exact = 0.0
        positions = 0
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
            exact += float(np.all(right, axis=1).sum())
            positions += int(real.sum())
        return {"token_accuracy": forced / positions, "ce": nll / positions,
                "greedy_token_accuracy": greedy / positions,
                "exact_match": exact / self.eval_examples, "num_examples": self.eval_examples,
                "num_positions": positions, "kind": self.kind}

    @staticmethod
    def greedy_decode(predict: Callable[[Batch], jax.Array], batch: Batch) -> np.ndarray:
        """Free-running greedy decoding through ``predict``: position ``t`` is fed the argmax at ``t - 1``.

        Args:
          predict: ``batch -> logits (b, lt, vocab)`` of a causal decoder.
          batch: ``inputs``, ``mask`` and ``decoder_inputs`` (only its shape and BOS column are read).

        Returns:
          int32 ``(b, lt)``: the argmax token at every target position.
        """
        dec = np.full(batch["decoder_inputs"].shape, data.PAD, np.int32)
        dec[:, 0] = data.BOS
        out = np.zeros(dec.shape, np.int32)
        for t in range(dec.shape[1]):
            logits = np.asarray(predict({**batch, "decoder_inputs": dec.copy()}))
            out[:, t] = logits[:, t].argmax(axis=-1)
            if t + 1 < dec.shape[1]:
                dec[:, t + 1] = out[:, t]
        return out


__all__ = ["Seq2SeqTask", "default_config"]
