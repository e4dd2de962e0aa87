"""Recall synthetics as a seqjax Task: MQAR (Zoology) and set disjointness (Just Read Twice).

Config (``config.task``, name ``"mqar"``; every field in :func:`default_config`):

- ``kind``: ``"mqar"`` (multi-query associative recall, ``seqjax.data.mqar``)
  or ``"set_disjointness"`` (``seqjax.data.recall``).
- ``vocab_size`` (Zoology: 8,192), ``seq_len``: token ids and tokens per
  sequence (the model's input length). For set disjointness ``seq_len`` must be
  at least ``size_a + size_b + 3``; longer rows are padded.
- MQAR: ``num_kv_pairs``, ``power_a`` (the query-slot power law, 0.01),
  ``random_fill`` (random filler tokens, True; False fills with 0).
- Set disjointness: ``size_a``, ``size_b`` (set sizes, A first), ``answer``
  (``"label"``: is there a shared element, YES/NO; ``"element"``: the one
  shared element, the JRT code's synthetic).
- ``num_train_examples``: 0 draws a fresh example for every row of every step
  (an endless stream); ``N > 0`` trains on a fixed set of ``N`` examples,
  reshuffled every epoch (Zoology trains on 100,000 for up to 64 epochs).
- ``eval_examples`` (Zoology: 3,000), ``eval_batch_size``, ``eval_seed``
  (None: the run's seed; set it so every run is scored on the same examples).

Every example is drawn from its own key: example ``i`` of the fixed train set
from ``fold_in(key(seed, stream 1), i)``, row ``r`` of step ``s`` of the
endless stream from ``fold_in(fold_in(key(seed, stream 0), s), r)``, eval
example ``i`` from ``fold_in(key(eval_seed, stream 3), i)`` (the epoch
shuffles use stream 2). The streams differ even when ``eval_seed`` equals the
seed, a batch does not depend on how many processes read it (each process draws
only its rows of the global batch), and the eval set does not depend on
``eval_batch_size``.

Loss: cross-entropy of the LM logits ``(b, l, vocab_size)`` at the scored
positions (targets ``!= -100``), averaged over them; metrics ``ce`` and
``acc`` (greedy token = target). Evaluation: ``accuracy`` over the scored
positions of the eval set (Zoology's ``valid/accuracy``), ``ce``,
``sequence_accuracy`` (every scored position of an example right),
``num_examples``, ``num_positions``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from seqjax.data import mqar as mqar_data
from seqjax.data import recall as recall_data
from seqjax.errors import ConfigError, check_choice
from seqjax.tasks.base import Batch, Metrics, host_shard, row_weights

KINDS = ("mqar", "set_disjointness")
_DEFAULTS = dict(kind="mqar", vocab_size=8192, seq_len=64, num_kv_pairs=4, power_a=0.01, random_fill=True, size_a=4,
                 size_b=16, answer="label", num_train_examples=0, eval_examples=3000, eval_batch_size=100,
                 eval_seed=None)
_P = "config.task."
# Key streams (see the module docstring).
_FRESH, _TRAIN_SET, _SHUFFLE, _EVAL = range(4)


def default_config() -> ml_collections.ConfigDict:
    """Every field of ``config.task`` for ``task.name = "mqar"``, with its default.

    Returns:
      A ConfigDict (see the module docstring for the fields); ``eval_seed`` is a
      typed None placeholder.
    """
    return ml_collections.ConfigDict({"name": "mqar", **_DEFAULTS, "eval_seed": placeholder(int)})


def _get(cfg, key):
    value = cfg.get(key, _DEFAULTS[key]) if hasattr(cfg, "get") else getattr(cfg, key, _DEFAULTS[key])
    return _DEFAULTS[key] if value is None and key != "eval_seed" else value


class _RecallIterator:
    """Training batches of a :class:`MQARTask`: this process's rows of each global batch; the state is the step.

    Attributes:
      task: the task.
      batch_size: global rows per step.
      step: index of the next batch.
    """

    def __init__(self, task: MQARTask, seed: int, batch_size: int):
        self.task, self.batch_size, self.step = task, int(batch_size), 0
        per_host, (index, _) = host_shard(self.batch_size)
        self._rows = np.arange(index * per_host, (index + 1) * per_host)
        root = jax.random.key(int(seed))
        self._fresh, self._set, self._shuffle = (jax.random.fold_in(root, s) for s in (_FRESH, _TRAIN_SET, _SHUFFLE))
        self._perms: dict[int, np.ndarray] = {}

    def __iter__(self):
        return self

    def _set_indices(self) -> np.ndarray:
        """Indices into the fixed train set of this process's rows: epoch ``e`` reads permutation ``e``."""
        n = self.task.num_train_examples
        seen = self.step * self.batch_size + self._rows
        epochs = seen // n
        for e in np.unique(epochs):
            if int(e) not in self._perms:
                key = jax.random.fold_in(self._shuffle, int(e))
                self._perms = {k: v for k, v in self._perms.items() if k >= int(e) - 1}  # at most two epochs
                self._perms[int(e)] = np.asarray(jax.random.permutation(key, n))
        return np.asarray([self._perms[int(e)][i] for e, i in zip(epochs, seen % n)], np.int32)

    def __next__(self) -> Batch:
        if self.task.num_train_examples:
            batch = self.task.examples(self._set, jnp.asarray(self._set_indices()))
        else:
            batch = self.task.examples(jax.random.fold_in(self._fresh, self.step), jnp.asarray(self._rows, jnp.int32))
        self.step += 1
        return {k: np.asarray(v) for k, v in batch.items()}

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state) -> None:
        self.step = int(state["step"])


class MQARTask:
    """MQAR or set disjointness (``config.task.kind``), LM loss at the scored positions.

    Attributes:
      name: ``"mqar"``.
      kind: ``"mqar"`` or ``"set_disjointness"``.
      max_length: ``seq_len``.
      vocab_size: token ids fed and scored are below it (the model's vocabulary must hold them).
      sampler_kwargs: the sampler's keyword arguments (but ``batch_size``).
      num_train_examples: 0 (a fresh example per row) or the size of the fixed train set.
      eval_examples, eval_batch_size, eval_seed: evaluation settings.
    """

    name = "mqar"
    weighted_rows = True  # loss() honours batch["weight"] (seqjax.tasks.base.pad_rows)

    def __init__(self, task_config):
        self.kind = _get(task_config, "kind")
        check_choice(f"{_P}kind", self.kind, KINDS)
        get = {k: _get(task_config, k) for k in _DEFAULTS}
        common = dict(batch_size=1, seq_len=get["seq_len"], vocab_size=get["vocab_size"])
        if self.kind == "mqar":
            if not isinstance(get["random_fill"], bool):
                raise ConfigError(f"{_P}random_fill={get['random_fill']!r} is not allowed; allowed: True, False")
            self.sampler_kwargs = dict(common, num_kv_pairs=get["num_kv_pairs"], power_a=get["power_a"],
                                       random_fill=get["random_fill"])
            mqar_data.validate(**{k: v for k, v in self.sampler_kwargs.items() if k != "random_fill"}, prefix=_P)
            sample = mqar_data.sample_batch
        else:
            self.sampler_kwargs = dict(common, size_a=get["size_a"], size_b=get["size_b"], answer=get["answer"])
            recall_data.validate(**self.sampler_kwargs, prefix=_P)
            sample = recall_data.set_disjointness
        self.sampler_kwargs.pop("batch_size")
        self.max_length = int(get["seq_len"])
        self.vocab_size = int(get["vocab_size"])
        self.num_train_examples = mqar_data.check_int("num_train_examples", get["num_train_examples"], 0, prefix=_P,
                                                      hint=" (0: a fresh example for every row)")
        self.eval_examples = mqar_data.check_int("eval_examples", get["eval_examples"], 1, prefix=_P)
        self.eval_batch_size = mqar_data.check_int("eval_batch_size", get["eval_batch_size"], 1, prefix=_P)
        self.eval_seed = get["eval_seed"]
        if self.eval_seed is not None:
            mqar_data.check_int("eval_seed", self.eval_seed, 0, prefix=_P, hint=" or None (the run's seed)")
        kwargs = dict(self.sampler_kwargs, batch_size=1)

        def examples(root, indices):
            """One example per index, each from ``fold_in(root, index)``."""
            keys = jax.vmap(lambda i: jax.random.fold_in(root, i))(indices)
            return jax.tree.map(lambda x: x[:, 0], jax.vmap(lambda k: sample(k, **kwargs))(keys))

        self._examples = jax.jit(examples)

    def examples(self, root: jax.Array, indices: jax.Array) -> dict[str, jax.Array]:
        """``{"inputs", "targets"}`` int32 ``(len(indices), seq_len)``: example ``i`` drawn from ``fold_in(root, i)``."""
        return self._examples(root, indices)

    def train_iterator(self, seed: int, batch_size: int) -> _RecallIterator:
        """This process's rows of each global batch (see the module docstring for the streams).

        Args:
          seed: the run's seed.
          batch_size: global batch size (divisible by the process count).

        Returns:
          A resumable iterator of ``{"inputs", "targets"}`` int32 ``(rows, seq_len)``.
        """
        return _RecallIterator(self, seed, batch_size)

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
        """Cross-entropy and accuracy at the scored positions.

        Args:
          outputs: logits ``(b, l, vocab)``.
          batch: ``targets`` ``(b, l)`` (``-100`` where not scored) and optionally
            ``weight`` ``(b,)`` (rows of weight 0 are padding).

        Returns:
          ``(ce, {"ce": ce, "acc": acc})``.
        """
        logits = outputs.astype(jnp.float32)
        targets = batch["targets"].astype(jnp.int32)
        scored = targets != mqar_data.IGNORE
        mask = scored.astype(jnp.float32) * row_weights(batch, targets.shape[0])[:, None]
        safe = jnp.where(scored, targets, 0)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
        denom = jnp.maximum(mask.sum(), 1.0)
        ce = (nll * mask).sum() / denom
        acc = ((jnp.argmax(logits, axis=-1) == safe) * mask).sum() / denom
        return ce, {"ce": ce, "acc": acc}

    def evaluate(self, predict: Callable[[Batch], jax.Array], seed: int) -> Metrics:
        """Accuracy and cross-entropy at the scored positions of ``eval_examples`` held-out examples.

        Args:
          predict: ``batch -> logits (b, seq_len, vocab)``; always called with
            ``eval_batch_size`` rows (the last call's extra rows are not scored).
          seed: the eval set's seed when ``eval_seed`` is None.

        Returns:
          ``{"accuracy", "ce", "sequence_accuracy", "num_examples", "num_positions", "kind"}``.
        """
        root = jax.random.fold_in(jax.random.key(int(self.eval_seed if self.eval_seed is not None else seed)), _EVAL)
        correct = nll = 0.0
        positions = whole = 0
        for start in range(0, self.eval_examples, self.eval_batch_size):
            batch = {k: np.asarray(v) for k, v in
                     self.examples(root, jnp.arange(start, start + self.eval_batch_size, dtype=jnp.int32)).items()}
            logits = np.asarray(predict(batch), np.float32)
            rows = min(self.eval_batch_size, self.eval_examples - start)
            targets = batch["targets"][:rows]
            scored = targets != mqar_data.IGNORE
            picked = logits[:rows][scored].astype(np.float64)  # (k, vocab) at the scored positions
            top = picked.max(axis=-1)
            lse = top + np.log(np.exp(picked - top[:, None]).sum(axis=-1))
            nll += float(np.sum(lse - picked[np.arange(len(picked)), targets[scored]]))
            right = np.zeros(targets.shape, bool)
            right[scored] = picked.argmax(axis=-1) == targets[scored]
            correct += float(right.sum())
            positions += int(scored.sum())
            whole += int(np.sum(np.all(right | ~scored, axis=1)))
        # Every example has a scored position (num_kv_pairs >= 1; the ANS token), so positions > 0.
        return {"accuracy": correct / positions, "ce": nll / positions, "sequence_accuracy": whole / self.eval_examples,
                "num_examples": self.eval_examples, "num_positions": positions, "kind": self.kind}


def unigram_logits(inputs: np.ndarray, vocab_size: int) -> np.ndarray:
    """The in-context 1-gram baseline: at each position, the most frequent token of the prefix.

    A prediction that uses token counts only, no order: the bar a recall
    mixer must beat (the issue's "in-context 1-gram baseline"). Ties go to
    the most recently seen of the tied tokens. Pass it to
    :meth:`MQARTask.evaluate` as ``lambda batch: unigram_logits(batch["inputs"], vocab)``.

    Args:
      inputs: int ``(b, l)`` token ids below ``vocab_size``.
      vocab_size: ``V``.

    Returns:
      float64 ``(b, l, V)`` scores: the count of each token in ``inputs[:, :t+1]``
      plus less than 1 for recency (the argmax is the baseline's prediction).
    """
    inputs = np.asarray(inputs)
    length = inputs.shape[1]
    onehot = np.eye(vocab_size)[inputs]  # (b, l, V)
    counts = np.cumsum(onehot, axis=1)
    # Position of each token's last occurrence (+1; 0 = unseen), scaled below one count.
    last = np.maximum.accumulate(onehot * (np.arange(length)[None, :, None] + 1), axis=1)
    return counts + last / (length + 1)


__all__ = ["KINDS", "MQARTask", "default_config", "unigram_logits"]
