"""In-context language learning on RegBench (Akyürek et al. 2024) as a seqjax Task.

Config (``config.task``, name ``"icll"``):

- ``data_dir``: where the tfds ``regbench`` dataset is prepared (on first use,
  with a progress message; reused when present).
- ``num_train_dfas`` (paper 625 … 40,000, default 5,000), ``num_eval_dfas``
  (500: half validation, half test), ``seed`` (data seed).
- ``max_length``: model input length. Prompts are padded to it and longer
  ones cut. The paper caps prompts at 4,096 characters; CPU-scale configs use
  short prompts (``num_strings``, ``string_length``) and a short
  ``max_length`` instead. ``max_chars`` is the cap used when generating.
- ``num_strings``, ``string_length``: inclusive prompt ranges (paper (10, 19)
  and (1, 49)).
- ``eval_split`` (``"validation"`` | ``"test"``), ``eval_examples`` (0 = all),
  ``eval_batch_size``.

Loss: next-token cross-entropy on the LM logits ``(b, l, 20)``, averaged over
scored targets (letters; ``"|"`` and pad are not scored); metrics ``ce`` and
``acc`` (greedy token = target on scored positions).

Evaluation: DFA accuracy (greedy token is a legal next letter) and TVD
between the model's full softmax over the 20 tokens (NOT renormalised over
letters: mass on ``"|"``/pad counts as error, as in the paper's code) and
the uniform distribution over legal letters, means over scored positions of
the eval split. The eval set is stored, so ``seed`` is unused.

``batch_size`` passed to :meth:`ICLLTask.train_iterator` is global; each
host reads ``batch_size / process_count`` examples from its shard.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from seqjax.data import regbench as rb
from seqjax.data.builders.regbench import Regbench, make_config
from seqjax.data.pipeline import make_loader
from seqjax.errors import ConfigError, check_choice, check_positive
from seqjax.tasks.base import Batch, DataIterator, Metrics, host_shard, row_weights
from seqjax.tasks.icll_baselines import ngram_baseline

_DEFAULTS = dict(data_dir=None, num_train_dfas=5000, num_eval_dfas=500, seed=0, max_length=4096,
                 num_strings=(10, 19), string_length=(1, 49), max_chars=4096, eval_split="test",
                 eval_examples=0, eval_batch_size=32, ngram_orders=(1, 2, 3))


def default_config() -> ml_collections.ConfigDict:
    """Every field of ``config.task`` for ``task.name = "icll"``, with its default.

    Config files start from it, so every field can be set from the command line.
    ``data_dir`` is "" (the task's fallback: ``~/tensorflow_datasets``).

    Returns:
      A ConfigDict (see the module docstring for the fields).
    """
    return ml_collections.ConfigDict({"name": "icll", **_DEFAULTS, "data_dir": ""})


def _get(cfg, key):
    if hasattr(cfg, "get"):
        v = cfg.get(key, _DEFAULTS[key])
    else:
        v = getattr(cfg, key, _DEFAULTS[key])
    return _DEFAULTS[key] if v is None and key != "data_dir" else v


def _check_int(field: str, value, *, allow_zero: bool = False):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ConfigError(f"{field}={value!r} must be an int")
    check_positive(field, int(value), allow_zero=allow_zero)


def _check_pair(field: str, value):
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field}={value!r} must be a pair (lo, hi) of ints") from None
    if lo < 1 or hi < lo:
        raise ConfigError(f"{field}={value!r} is not allowed; allowed: 1 <= lo <= hi")
    return lo, hi


class ICLLTask:
    """RegBench in-context language learning.

    Attributes:
      name: ``"icll"``.
      max_length: model input length (prompts padded / cut to it).
      data_dir: tfds data directory.
      eval_split: split used by :meth:`evaluate`.
      eval_examples: examples evaluated (0 = all).
      eval_batch_size: batch size of :meth:`evaluate`.
      builder_config: the ``regbench`` builder config these settings map to.
      ngram_orders: orders of the in-context n-gram baselines reported by :meth:`evaluate`.
    """

    name = "icll"
    weighted_rows = True  # loss() honours batch["weight"] (seqjax.tasks.base.pad_rows)

    def __init__(self, task_config):
        p = "config.task"
        for key in ("num_train_dfas", "num_eval_dfas", "max_length", "max_chars", "eval_batch_size"):
            _check_int(f"{p}.{key}", _get(task_config, key), allow_zero=(key == "num_eval_dfas"))
        _check_int(f"{p}.eval_examples", _get(task_config, "eval_examples"), allow_zero=True)
        _check_int(f"{p}.seed", _get(task_config, "seed"), allow_zero=True)
        check_choice(f"{p}.eval_split", _get(task_config, "eval_split"), ("validation", "test"))
        num_strings = _check_pair(f"{p}.num_strings", _get(task_config, "num_strings"))
        string_length = _check_pair(f"{p}.string_length", _get(task_config, "string_length"))
        data_dir = _get(task_config, "data_dir")
        if not data_dir:
            data_dir = os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
        self.data_dir = os.fspath(data_dir)
        self.max_length = int(_get(task_config, "max_length"))
        self.eval_split = _get(task_config, "eval_split")
        self.eval_examples = int(_get(task_config, "eval_examples"))
        self.eval_batch_size = int(_get(task_config, "eval_batch_size"))
        self.builder_config = make_config(
            int(_get(task_config, "num_train_dfas")), num_eval_dfas=int(_get(task_config, "num_eval_dfas")),
            seed=int(_get(task_config, "seed")), num_strings=num_strings, string_length=string_length,
            max_chars=int(_get(task_config, "max_chars")))
        self.ngram_orders = tuple(int(n) for n in (_get(task_config, "ngram_orders") or ()))
        self._builder = None

    # Data ------------------------------------------------------------------
    def builder(self) -> Regbench:
        """The prepared tfds builder (generates the data on first use)."""
        if self._builder is None:
            b = Regbench(config=self.builder_config, data_dir=self.data_dir)
            if not b.is_prepared():
                print(f"[icll] preparing RegBench '{self.builder_config.name}' in {self.data_dir} "
                      f"({self.builder_config.num_train_dfas} train DFAs); done once, then reused",
                      file=sys.stderr, flush=True)
                b.download_and_prepare(file_format="array_record")
            self._builder = b
        return self._builder

    def source(self, split: str):
        """Random-access source of a split (dicts with inputs, targets, transitions)."""
        return self.builder().as_data_source(split)

    def train_iterator(self, seed: int, batch_size: int) -> DataIterator:
        """Shuffled, repeated, padded training batches ``{"inputs", "targets"}`` (b, max_length) int32.

        Args:
          seed: shuffle seed.
          batch_size: global batch size (divisible by the process count).

        Returns:
          A resumable iterator (``get_state``/``set_state``).
        """
        per_host, shard = host_shard(batch_size)
        return make_loader(self.source("train"), batch_size=per_host, seed=seed, shuffle=True,
                           pad_to=self.max_length, pad_id=rb.PAD, num_epochs=None,
                           shard=shard)

    # Loss -------------------------------------------------------------------
    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
        """Masked next-token cross-entropy over scored (letter) targets.

        Args:
          outputs: logits ``(b, l, 20)``.
          batch: has ``targets`` ``(b, l)`` int and optionally ``weight`` ``(b,)``
            (rows of weight 0 are padding and not scored).

        Returns:
          ``(ce, {"ce": ce, "acc": acc})``.
        """
        logits = outputs.astype(jnp.float32)
        targets = batch["targets"]
        mask = ((targets >= 1) & (targets <= len(rb.LETTERS))).astype(jnp.float32)
        mask = mask * row_weights(batch, targets.shape[0])[:, None]
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
        denom = jnp.maximum(mask.sum(), 1.0)
        ce = (nll * mask).sum() / denom
        acc = ((jnp.argmax(logits, axis=-1) == targets) * mask).sum() / denom
        return ce, {"ce": ce, "acc": acc}

    # Evaluation ---------------------------------------------------------------
    def eval_examples_list(self) -> list[dict]:
        """The evaluated examples of ``eval_split`` (first ``eval_examples``, or all)."""
        src = self.source(self.eval_split)
        n = len(src) if self.eval_examples == 0 else min(self.eval_examples, len(src))
        return [src[i] for i in range(n)]

    def evaluate(self, predict: Callable[[Batch], jax.Array], seed: int) -> Metrics:
        """DFA accuracy and TVD of the model on the eval split.

        Args:
          predict: ``batch -> logits (b, max_length, 20)``; always called with
            ``eval_batch_size`` rows (the last batch is filled with pad rows
            that are not scored).
          seed: unused (the eval set is stored).

        Returns:
          ``{"accuracy", "tvd", "num_examples", "num_positions", "ngram"}``;
          ``ngram`` maps each order in ``ngram_orders`` to the in-context n-gram
          baseline's metrics on the same examples.
        """
        del seed
        examples = self.eval_examples_list()
        metrics = evaluate_examples(examples, predict, max_length=self.max_length, batch_size=self.eval_batch_size)
        # The paper's reference rows, on exactly the prompts (and cut) the model saw.
        metrics["ngram"] = {
            str(n): ngram_baseline(examples, n, max_length=self.max_length) for n in self.ngram_orders
        }
        return metrics


def evaluate_examples(examples: list[dict], predict: Callable[[Batch], jax.Array], *, max_length: int,
                      batch_size: int) -> Metrics:
    """DFA accuracy / TVD of ``predict`` over RegBench examples (see :class:`ICLLTask`).

    Args:
      examples: dicts with ``inputs``, ``targets``, ``transitions``.
      predict: ``batch -> logits (b, max_length, 20)``.
      max_length: inputs padded / cut to this length.
      batch_size: rows per ``predict`` call.

    Returns:
      ``{"accuracy", "tvd", "num_examples", "num_positions"}``.
    """
    correct = tvd = 0.0
    count = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        inputs = np.zeros((batch_size, max_length), np.int32)
        targets = np.zeros((batch_size, max_length), np.int32)
        for r, ex in enumerate(chunk):
            x = np.asarray(ex["inputs"])[:max_length]
            y = np.asarray(ex["targets"])[:max_length]
            inputs[r, :len(x)] = x
            targets[r, :len(y)] = y
        logits = np.asarray(predict({"inputs": inputs, "targets": targets}), np.float64)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        for r, ex in enumerate(chunk):
            m = rb.dfa_metrics(probs[r], inputs[r], targets[r], ex["transitions"])
            correct += m["correct"]
            tvd += m["tvd"]
            count += m["count"]
    if count == 0:
        return {"accuracy": math.nan, "tvd": math.nan, "num_examples": len(examples), "num_positions": 0}
    return {"accuracy": correct / count, "tvd": tvd / count, "num_examples": len(examples), "num_positions": count}


__all__ = ["ICLLTask", "evaluate_examples"]
