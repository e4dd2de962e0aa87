"""Long Range Arena (Tay et al. 2020) as a seqjax Task: sequence classification
and two-document retrieval over the ``lra_*`` TFDS builders.

Config (``config.task``, name ``"lra"``):

- ``dataset``: one of :data:`DATASETS` (the TFDS builder name).
- ``builder_config``: a registered builder config name (e.g. ``"32_hard"``
  for ``lra_pathfinder``), or None for the builder's default; or
  ``builder_kwargs``: keyword arguments of the builder module's
  ``make_config`` (any size, seed or length range, e.g. a short ListOps
  variant for CPU runs). Not both.
- ``data_dir``: where the dataset is prepared (generated datasets are made
  on first use; archive-backed ones read ``manual_dir``).
- ``manual_dir``: folder holding the official archives (``lra_text``,
  ``lra_retrieval``, ``lra_image``, official ListOps/Pathfinder files).
- ``max_length``: inputs are padded (pad id 0) or cut to it; per document
  for retrieval.
- ``pixels``: ``"tokens"`` (the 256 intensities as tokens) or
  ``"continuous"`` (``(x/255 - mean) / std`` as a 1-channel input, mean
  122.6/255 and std 61.0/255 as in REFERENCES.md); image datasets only.
- ``eval_splits`` (default ``("validation", "test")``), ``eval_examples``
  (0 = the whole split), ``eval_batch_size``.
- ``objective``: ``"classify"`` (the benchmark), or a pretraining objective
  on the inputs alone, ``"causal_lm"`` or ``"masked_lm"`` (with
  ``mask_token_id``, default 0, the pad id, for the variable-length
  datasets); see :mod:`seqjax.tasks.lra_objectives`. Single-sequence token
  datasets only; the model needs ``head="lm"``.

Batches: ``inputs`` ``(b, l)`` int32 (``(b, l, 1)`` float32 for continuous
pixels; ``(b, 2, l)`` for retrieval), ``mask`` (True at real tokens, the
classification head's pooling reads it), ``label`` ``(b,)``. Variable-length
datasets (ListOps, text, retrieval) pad with id 0, which no real token uses,
so the mask is ``inputs != 0``; the image datasets have fixed length.

Loss: softmax cross-entropy; metrics ``ce`` and ``acc``. Evaluation: accuracy
and cross-entropy per eval split, the split's label distribution and the
majority-class accuracy (the floor a model must clear); ``accuracy`` is the
last eval split's (the test split by default), as the papers report.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from seqjax.data.pipeline import make_loader
from seqjax.errors import ConfigError, check_choice, check_positive
from seqjax.tasks import lra_objectives as objectives
from seqjax.tasks.base import Batch, DataIterator, Metrics, host_shard, row_weights

# dataset -> (classes, retrieval?, variable length?, image?)
DATASETS = {
    "lra_listops": (10, False, True, False),
    "lra_text": (2, False, True, False),
    "lra_retrieval": (2, True, True, False),
    "lra_image": (10, False, False, True),
    "lra_pathfinder": (2, False, False, True),
}
PIXELS = ("tokens", "continuous")
PIXEL_MEAN, PIXEL_STD = 122.6 / 255.0, 61.0 / 255.0

_DEFAULTS = dict(dataset=None, builder_config=None, builder_kwargs=None, data_dir=None, manual_dir=None,
                 max_length=None, pixels="tokens", eval_splits=("validation", "test"), eval_examples=0,
                 eval_batch_size=32, objective="classify", mask_token_id=None)


def default_config() -> ml_collections.ConfigDict:
    """Every field of ``config.task`` for ``task.name = "lra"``, with its default.

    Config files start from it, so every field can be set from the command line.
    ``builder_kwargs`` is an open map (``--config.task.builder_kwargs.seed=3``);
    ``dataset``, ``builder_config``, ``data_dir``, ``manual_dir`` and
    ``max_length`` are typed None placeholders.

    Returns:
      A ConfigDict (see the module docstring for the fields).
    """
    from ml_collections.config_dict import placeholder

    return ml_collections.ConfigDict({
        "name": "lra", **_DEFAULTS,
        "dataset": placeholder(str), "builder_config": placeholder(str), "data_dir": placeholder(str),
        "manual_dir": placeholder(str), "max_length": placeholder(int), "mask_token_id": placeholder(int),
        "builder_kwargs": None,  # an open map: None or {make_config kwarg: value}
    })


def _get(cfg, key):
    v = cfg.get(key, _DEFAULTS[key]) if hasattr(cfg, "get") else getattr(cfg, key, _DEFAULTS[key])
    return _DEFAULTS[key] if v is None else v


def _plain(value):
    """A plain dict/tuple of a ConfigDict/FrozenConfigDict/list (for make_config kwargs)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


class _MappedLoader:
    """A loader whose batches go through ``fn``; position saving is the loader's own.

    Attributes:
      loader: the wrapped resumable loader.
      fn: batch -> batch.
    """

    def __init__(self, loader, fn: Callable[[dict], dict]):
        self.loader, self.fn = loader, fn

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return self.fn(next(self.loader))

    def get_state(self):
        return self.loader.get_state()

    def set_state(self, state) -> None:
        self.loader.set_state(state)


class LRATask:
    """One LRA dataset: classification (or retrieval) with accuracy.

    Attributes:
      name: ``"lra"``.
      dataset: the TFDS builder name.
      num_classes: classes of the dataset.
      retrieval: whether examples are document pairs.
      max_length: model input length (per document for retrieval).
      pixels: ``"tokens"`` or ``"continuous"`` (image datasets).
      eval_splits: splits :meth:`evaluate` reports, in order.
      eval_examples: examples per eval split (0 = all).
      eval_batch_size: rows per ``predict`` call in :meth:`evaluate`.
      data_dir: tfds data directory.
      manual_dir: folder of the official archives.
      objective: ``"classify"``, ``"causal_lm"`` or ``"masked_lm"``.
      mask_token_id: the id masked tokens become (``masked_lm``; else None).
    """

    name = "lra"
    weighted_rows = True  # loss() honours batch["weight"] (seqjax.tasks.base.pad_rows)

    def __init__(self, task_config):
        p = "config.task"
        dataset = _get(task_config, "dataset")
        check_choice(f"{p}.dataset", dataset, tuple(DATASETS))
        self.dataset = dataset
        self.num_classes, self.retrieval, self._variable, self._image = DATASETS[dataset]
        max_length = _get(task_config, "max_length")
        if max_length is None or isinstance(max_length, bool) or not isinstance(max_length, int):
            raise ConfigError(f"{p}.max_length={max_length!r} must be an int > 0 (the padded input length)")
        check_positive(f"{p}.max_length", max_length)
        self.max_length = int(max_length)
        self.pixels = _get(task_config, "pixels")
        check_choice(f"{p}.pixels", self.pixels, PIXELS)
        if self.pixels == "continuous" and not self._image:
            raise ConfigError(f"{p}.pixels='continuous' is only allowed for lra_image and lra_pathfinder, "
                              f"not {dataset!r}; allowed here: tokens")
        splits = tuple(_plain(_get(task_config, "eval_splits")))
        for s in splits:
            check_choice(f"{p}.eval_splits", s, ("train", "validation", "test"))
        if not splits:
            raise ConfigError(f"{p}.eval_splits is empty; allowed: a non-empty list of validation, test, train")
        self.eval_splits = splits
        for key in ("eval_examples", "eval_batch_size"):
            v = _get(task_config, key)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"{p}.{key}={v!r} must be an int")
            check_positive(f"{p}.{key}", v, allow_zero=key == "eval_examples")
        self.eval_examples = int(_get(task_config, "eval_examples"))
        self.eval_batch_size = int(_get(task_config, "eval_batch_size"))
        config_name, kwargs = _get(task_config, "builder_config"), _get(task_config, "builder_kwargs")
        if config_name is not None and kwargs is not None:
            raise ConfigError(f"{p}.builder_config={config_name!r} and {p}.builder_kwargs are both set; "
                              "allowed: one of them")
        self._config_name, self._config_kwargs = config_name, None if kwargs is None else _plain(kwargs)
        root = os.path.expanduser(os.environ.get("SEQJAX_DATA", "~/seqjax_data"))
        self.data_dir = os.fspath(_get(task_config, "data_dir") or os.path.join(root, "lra"))
        self.manual_dir = os.fspath(_get(task_config, "manual_dir") or os.path.join(root, "lra_manual"))
        self._builder = None
        self.objective = _get(task_config, "objective")
        check_choice(f"{p}.objective", self.objective, objectives.OBJECTIVES)
        self.mask_token_id = None
        if self.objective in objectives.LM_OBJECTIVES:
            if self.retrieval or self.pixels != "tokens":
                raise ConfigError(f"{p}.objective={self.objective!r} needs one sequence of tokens, not "
                                  f"{dataset!r} with pixels={self.pixels!r}; allowed here: classify")
            mask_id = _get(task_config, "mask_token_id")
            if self.objective == "masked_lm":
                if mask_id is None and not self._variable:
                    raise ConfigError(f"{p}.mask_token_id is needed for masked_lm on {dataset!r} (every pixel id "
                                      "0..255 is real): e.g. 256 with config.model.vocab_size >= 257")
                mask_id = 0 if mask_id is None else mask_id  # the pad id: no real token of these datasets
                if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 0:
                    raise ConfigError(f"{p}.mask_token_id={mask_id!r} must be an int >= 0")
                self.mask_token_id = int(mask_id)

    def check_model(self, model_config) -> None:
        """Raises a one-line ConfigError when ``config.model`` cannot train :attr:`objective`."""
        objectives.check_model(self.objective, model_config, self.mask_token_id)

    # Data ------------------------------------------------------------------
    def builder_config(self):
        """The builder config: a registered name, ``make_config(**builder_kwargs)``, or None."""
        if self._config_kwargs is None:
            return self._config_name
        module = importlib.import_module(f"seqjax.data.builders.{self.dataset}")
        try:
            return module.make_config(**self._config_kwargs)
        except TypeError as e:
            raise ConfigError(f"config.task.builder_kwargs={self._config_kwargs!r}: {e}") from None

    def builder(self):
        """The prepared tfds builder (generated or read from ``manual_dir`` on first use)."""
        if self._builder is None:
            import tensorflow_datasets as tfds

            import seqjax.data.builders  # noqa: F401  (registers the builders with tfds)

            config = self.builder_config()
            kwargs = {} if config is None else {"config": config}
            b = tfds.builder(self.dataset, data_dir=self.data_dir, file_format="array_record", **kwargs)
            if not b.is_prepared():
                print(f"[lra] preparing {self.dataset} ({b.builder_config.name if b.builder_config else 'default'}) "
                      f"in {self.data_dir}; done once, then reused", file=sys.stderr, flush=True)
                b.download_and_prepare(file_format="array_record",
                                       download_config=tfds.download.DownloadConfig(manual_dir=self.manual_dir))
            self._builder = b
        return self._builder

    def source(self, split: str):
        """Random-access source of ``split``."""
        return self.builder().as_data_source(split)

    def _features(self) -> tuple[str, ...]:
        return ("inputs1", "inputs2") if self.retrieval else ("inputs",)

    def to_batch(self, raw: dict) -> Batch:
        """Padded loader output -> the model's batch (``inputs``, ``mask``, ``label``)."""
        if self.retrieval:
            tokens = np.stack([np.asarray(raw["inputs1"]), np.asarray(raw["inputs2"])], axis=1).astype(np.int32)
        else:
            tokens = np.asarray(raw["inputs"]).astype(np.int32)
        mask = tokens != 0 if self._variable else np.ones(tokens.shape, bool)
        if self.pixels == "continuous":
            inputs = ((tokens.astype(np.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD)[..., None]
        else:
            inputs = tokens
        batch = {"inputs": inputs, "mask": mask, "label": np.asarray(raw["label"]).astype(np.int32)}
        if self.objective in objectives.LM_OBJECTIVES:
            batch = objectives.lm_batch(batch, self.objective, self.mask_token_id)
        return batch

    def train_iterator(self, seed: int, batch_size: int) -> DataIterator:
        """Shuffled, repeated, padded training batches (see the module docstring).

        Args:
          seed: shuffle seed.
          batch_size: global batch size (divisible by the process count).

        Returns:
          A resumable iterator (``get_state``/``set_state``).
        """
        per_host, shard = host_shard(batch_size)
        loader = make_loader(self.source("train"), batch_size=per_host, seed=seed, shuffle=True,
                             pad_to=self.max_length, pad_id=0, num_epochs=None,
                             shard=shard, features=self._features(), keep=("label",))
        return _MappedLoader(loader, self.to_batch)

    # Loss -------------------------------------------------------------------
    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
        """Softmax cross-entropy of the class logits (of the tokens: :func:`~seqjax.tasks.lra_objectives.lm_loss`).

        Args:
          outputs: logits ``(b, num_classes)``.
          batch: has ``label`` ``(b,)`` and optionally ``weight`` ``(b,)``
            (rows of weight 0 are padding and do not count).

        Returns:
          ``(ce, {"ce": ce, "acc": acc})``.
        """
        if self.objective in objectives.LM_OBJECTIVES:
            return objectives.lm_loss(outputs, batch, self.objective)
        logits = outputs.astype(jnp.float32)
        labels = batch["label"].astype(jnp.int32)
        w = row_weights(batch, labels.shape[0])
        total = jnp.sum(w)
        logp = jax.nn.log_softmax(logits, axis=-1)
        ce = -jnp.sum(w * jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]) / total
        acc = jnp.sum(w * (jnp.argmax(logits, axis=-1) == labels)) / total
        return ce, {"ce": ce, "acc": acc}

    # Evaluation ---------------------------------------------------------------
    def evaluate(self, predict: Callable[[Batch], jax.Array], seed: int) -> Metrics:
        """Accuracy per eval split, with the label distribution and the majority-class floor.

        Args:
          predict: ``batch -> logits (eval_batch_size, num_classes)``; the last
            batch of a split is filled with repeated rows that are not scored.
          seed: unused (the splits are stored).

        Returns:
          ``{split: {"accuracy", "ce", "num_examples", "label_counts",
          "majority"}, "accuracy": <last split's accuracy>}``; for an LM
          objective ``{split: {"ce", "acc", "num_examples", "num_tokens"}, "ce": <last split's>}``.
        """
        del seed
        out: Metrics = {}
        if self.objective in objectives.LM_OBJECTIVES:  # token ce/acc per split; "ce" is the last split's
            for split in self.eval_splits:
                out[split] = objectives.evaluate_lm_split(self.source(split), predict, self.to_batch,
                                                          max_length=self.max_length,
                                                          batch_size=self.eval_batch_size, limit=self.eval_examples)
            out["ce"] = out[self.eval_splits[-1]]["ce"]
            return out
        for split in self.eval_splits:
            out[split] = evaluate_split(self.source(split), predict, self.to_batch, features=self._features(),
                                        max_length=self.max_length, batch_size=self.eval_batch_size,
                                        num_classes=self.num_classes, limit=self.eval_examples)
        out["accuracy"] = out[self.eval_splits[-1]]["accuracy"]
        return out


def evaluate_split(source, predict: Callable[[Batch], jax.Array], to_batch: Callable[[dict], Batch], *,
                   features: tuple[str, ...], max_length: int, batch_size: int, num_classes: int,
                   limit: int = 0) -> Metrics:
    """Accuracy and cross-entropy of ``predict`` over the first ``limit`` records of ``source``.

    Args:
      source: random-access records (dicts with ``features`` and ``label``).
      predict: ``batch -> logits (batch_size, num_classes)``.
      to_batch: padded raw batch -> model batch.
      features: variable-length features, padded (id 0) or cut to ``max_length``.
      max_length: padded length.
      batch_size: rows per ``predict`` call (fixed: one compile).
      num_classes: classes (for the label counts).
      limit: records evaluated (0 = all).

    Returns:
      ``{"accuracy", "ce", "num_examples", "label_counts", "majority"}``.
    """
    n = len(source) if limit == 0 else min(limit, len(source))
    correct, nll = 0, 0.0
    counts = np.zeros(num_classes, np.int64)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        records = [source[i] for i in idx]
        real = len(records)
        records += [records[-1]] * (batch_size - real)  # static shape; the copies are not scored
        raw = {"label": np.asarray([r["label"] for r in records])}
        for f in features:
            rows = np.zeros((batch_size, max_length), np.int32)
            for j, r in enumerate(records):
                x = np.asarray(r[f])[:max_length]
                rows[j, :len(x)] = x
            raw[f] = rows
        batch = to_batch(raw)
        logits = np.asarray(predict(batch), np.float64)[:real]
        labels = batch["label"][:real]
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll -= float(np.take_along_axis(logp, labels[:, None], -1).sum())
        correct += int((logits.argmax(-1) == labels).sum())
        counts += np.bincount(labels, minlength=num_classes)[:num_classes]
    if n == 0:
        return {"accuracy": math.nan, "ce": math.nan, "num_examples": 0, "label_counts": counts.tolist(),
                "majority": math.nan}
    return {"accuracy": correct / n, "ce": nll / n, "num_examples": n, "label_counts": counts.tolist(),
            "majority": float(counts.max() / n)}


__all__ = ["LRATask", "DATASETS", "evaluate_split"]
