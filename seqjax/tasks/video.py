"""Next-frame video prediction as a seqjax Task: Moving Digits, or Moving MNIST from a manual directory.

Config (``config.task``, name ``"video"``; every field in :func:`default_config`):

- ``source``: ``"moving_digits"`` (generated on the fly by
  ``seqjax.data.moving_digits``: train videos over the train digit pool, eval
  videos over the disjoint test pool) or ``"moving_mnist"`` (the standard
  ``mnist_test_seq.npy`` read from ``manual_dir``: the last ``eval_examples``
  of its videos are the eval set, the others the training set; the whole file
  is held as float32, ~3.3 GB for its 10,000 videos).
- ``manual_dir``: the folder of ``mnist_test_seq.npy`` (``moving_mnist`` only).
- ``num_digits``, ``frame_size``, ``num_frames``, ``max_speed``: the Moving
  Digits law (``moving_digits`` only; Moving MNIST's frames are 64×64, 20 per
  video, from the file).
- ``context_frames``: frames given before the scored ones at evaluation
  (default 10: predict frames 10..19 of 20).
- ``eval_examples``, ``eval_batch_size``, ``eval_seed`` (None: the run's
  seed), ``rollout`` (also score the autoregressive rollout).

Batches: ``inputs`` are frames ``0 .. T-2`` flattened to ``(b, T-1, H·W)``
(``config.model.input = "continuous"``, ``input_dim = H·W``), ``targets``
frames ``1 .. T-1`` likewise; the model (causal, ``head = "regression"``,
``output_dim = H·W``) predicts frame ``t+1`` at position ``t``.

Streams: training video ``i`` (global row ``r`` of step ``s`` is ``i = s·b +
r``) of Moving Digits is video ``i`` of the run's seed over the train pool; a
Moving MNIST step draws its ``b`` training videos with
``default_rng([seed, s])`` (with replacement). Eval video ``i`` is video ``i``
of ``eval_seed`` over the test pool (Moving Digits) or file video ``N -
eval_examples + i`` (Moving MNIST).

Loss: the mean squared error per pixel over every predicted frame (frames
``1 .. T-1``); metrics ``mse`` and ``mae``. Evaluation, per pixel over the
frames after the context (``context_frames .. T-1``) of the eval set:

- ``mse``, ``mae``: teacher-forced (every input frame is the true one);
- ``baseline_mse``, ``baseline_mae``: copy-last-frame (frame ``t+1`` predicted
  as the true frame ``t``), on the same frames;
- with ``rollout``: ``rollout_mse``, ``rollout_mae`` and
  ``rollout_mse_per_frame``: after the context the model's own predictions
  (raw, unclipped) are fed back as input frames; ``baseline_rollout_mse``
  repeats the last context frame;
- ``num_examples``, ``num_predicted_frames``, ``source``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from seqjax.data import moving_digits as md
from seqjax.errors import ConfigError, check_choice
from seqjax.tasks.base import Batch, Metrics, StepIterator, row_weights

SOURCES = ("moving_digits", "moving_mnist")
_DEFAULTS = dict(source="moving_digits", manual_dir=None, num_digits=2, frame_size=16, num_frames=20, max_speed=2,
                 context_frames=10, eval_examples=256, eval_batch_size=64, eval_seed=None, rollout=True)
_P = "config.task."


def default_config() -> ml_collections.ConfigDict:
    """Every field of ``config.task`` for ``task.name = "video"``, with its default.

    Returns:
      A ConfigDict (see the module docstring); ``manual_dir`` and ``eval_seed``
      are typed None placeholders.
    """
    return ml_collections.ConfigDict({"name": "video", **_DEFAULTS, "manual_dir": placeholder(str),
                                      "eval_seed": placeholder(int)})


def _get(cfg, key):
    value = cfg.get(key, _DEFAULTS[key]) if hasattr(cfg, "get") else getattr(cfg, key, _DEFAULTS[key])
    return _DEFAULTS[key] if value is None and key not in ("eval_seed", "manual_dir") else value


def _int(name: str, value, low: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{_P}{name}={value!r} is not allowed; allowed: an int >= {low}{hint}")
    return int(value)


def to_batch(videos: np.ndarray) -> Batch:
    """``{"inputs": frames 0..T-2, "targets": frames 1..T-1}``, each float32 ``(n, T-1, H·W)``.

    Args:
      videos: ``(n, T, H, W)`` frames.

    Returns:
      The batch.
    """
    flat = np.asarray(videos, np.float32).reshape(videos.shape[:2] + (-1,))
    return {"inputs": flat[:, :-1], "targets": flat[:, 1:]}


class VideoTask:
    """Next-frame prediction of Moving Digits or Moving MNIST videos (``config.task.source``).

    Attributes:
      name: ``"video"``.
      source: ``"moving_digits"`` or ``"moving_mnist"``.
      frame_size: frame side ``H = W``.
      num_frames: frames per video ``T``.
      max_length: ``T - 1`` (the input frames).
      pixels: ``H · W``, the width of the model's input and output.
      context_frames: frames given before the scored ones at evaluation.
      digits_kwargs: the Moving Digits law (``moving_digits`` only).
      videos: the Moving MNIST videos (``moving_mnist`` only, else None).
      num_train_videos: videos of the training set (``moving_mnist`` only).
      eval_examples, eval_batch_size, eval_seed, rollout: evaluation settings.
    """

    name = "video"
    weighted_rows = True  # loss() honours batch["weight"] (seqjax.tasks.base.pad_rows)

    def __init__(self, task_config):
        get = {k: _get(task_config, k) for k in _DEFAULTS}
        self.source = get["source"]
        check_choice(f"{_P}source", self.source, SOURCES)
        self.eval_examples = _int("eval_examples", get["eval_examples"], 1)
        self.eval_batch_size = _int("eval_batch_size", get["eval_batch_size"], 1)
        self.eval_seed = get["eval_seed"]
        if self.eval_seed is not None:
            _int("eval_seed", self.eval_seed, 0, " or None (the run's seed)")
        if not isinstance(get["rollout"], bool):
            raise ConfigError(f"{_P}rollout={get['rollout']!r} is not allowed; allowed: True, False")
        self.rollout = get["rollout"]
        self.videos, self.digits_kwargs, self.num_train_videos = None, {}, 0
        if self.source == "moving_digits":
            self.digits_kwargs = {k: get[k] for k in ("num_digits", "frame_size", "num_frames", "max_speed")}
            md.validate(**self.digits_kwargs, prefix=_P)
            self.frame_size, self.num_frames = get["frame_size"], get["num_frames"]
        else:
            if not get["manual_dir"]:
                raise ConfigError(f"{_P}manual_dir={get['manual_dir']!r} is not allowed with source='moving_mnist'; "
                                  f"allowed: the folder holding {md.MOVING_MNIST_FILE}")
            self.videos = md.load_moving_mnist(get["manual_dir"])
            n, self.num_frames, self.frame_size = self.videos.shape[:3]
            if self.eval_examples >= n:
                raise ConfigError(f"{_P}eval_examples={self.eval_examples} is not allowed; allowed: an int < {n} "
                                  "(the file's videos; the rest train)")
            self.num_train_videos = n - self.eval_examples
        if self.num_frames < 2:
            raise ConfigError(f"{_P}num_frames={self.num_frames!r} is not allowed; allowed: an int >= 2")
        self.context_frames = _int("context_frames", get["context_frames"], 1,
                                   f" and <= num_frames - 1 = {self.num_frames - 1}")
        if self.context_frames > self.num_frames - 1:
            raise ConfigError(f"{_P}context_frames={self.context_frames} is not allowed; allowed: 1 .. "
                              f"{self.num_frames - 1} (num_frames - 1)")
        self.max_length = self.num_frames - 1
        self.pixels = self.frame_size * self.frame_size

    def train_iterator(self, seed: int, batch_size: int) -> StepIterator:
        """This process's rows of each global batch (see the module docstring for the streams).

        Args:
          seed: the run's seed.
          batch_size: global batch size (divisible by the process count).

        Returns:
          A resumable iterator of ``{"inputs", "targets"}`` float32 ``(rows, T-1, H·W)``.
        """
        seed, batch_size = int(seed), int(batch_size)

        def make_batch(step: int, first: int, rows: int) -> Batch:
            if self.source == "moving_digits":
                return to_batch(md.generate(seed, rows, split="train", start=step * batch_size + first,
                                            **self.digits_kwargs))
            # Moving MNIST: a fixed file, sampled with replacement per step (the whole global batch, then our rows).
            picks = np.random.default_rng([seed, step]).integers(0, self.num_train_videos, batch_size)
            return to_batch(self.videos[picks[first:first + rows]])

        return StepIterator(make_batch, batch_size)

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
        """Mean squared error per pixel over every predicted frame; also the mean absolute error.

        Args:
          outputs: ``(b, T-1, H·W)`` regression outputs.
          batch: ``targets`` ``(b, T-1, H·W)`` and optionally ``weight`` ``(b,)``.

        Returns:
          ``(mse, {"mse": mse, "mae": mae})``.
        """
        err = outputs.astype(jnp.float32) - batch["targets"].astype(jnp.float32)
        w = row_weights(batch, err.shape[0])
        denom = jnp.maximum(w.sum(), 1e-9)  # every real row has weight 1
        mse = (jnp.mean(err**2, axis=(1, 2)) * w).sum() / denom
        mae = (jnp.mean(jnp.abs(err), axis=(1, 2)) * w).sum() / denom
        return mse, {"mse": mse, "mae": mae}

    def eval_videos(self, seed: int, start: int, n: int) -> np.ndarray:
        """Eval videos ``start .. start + n - 1`` (indices past the eval set wrap to its start).

        Args:
          seed: the eval set's seed (Moving Digits).
          start: index of the first.
          n: how many.

        Returns:
          float32 ``(n, T, H, W)``.
        """
        if self.source == "moving_digits":
            return md.generate(seed, n, split="test", start=start, **self.digits_kwargs)
        index = self.num_train_videos + (np.arange(start, start + n) % self.eval_examples)
        return self.videos[index]

    def _rollout(self, predict: Callable[[Batch], jax.Array], inputs: np.ndarray) -> np.ndarray:
        """Predictions of frames ``c .. T-1`` fed back one at a time after the true context frames ``0 .. c-1``.

        The model is causal, so input frames after position ``t`` do not change
        its output at ``t``; they are zeros until a prediction is written there.
        """
        c = self.context_frames
        frames = np.zeros_like(inputs)
        frames[:, :c] = inputs[:, :c]
        preds = np.empty((inputs.shape[0], self.num_frames - c, inputs.shape[2]), np.float32)
        for t in range(c - 1, self.num_frames - 1):
            out = np.asarray(predict({"inputs": frames}), np.float32)
            preds[:, t - c + 1] = out[:, t]
            if t + 1 < self.num_frames - 1:
                frames[:, t + 1] = out[:, t]
        return preds

    def evaluate(self, predict: Callable[[Batch], jax.Array], seed: int) -> Metrics:
        """Teacher-forced and rollout errors per pixel on the frames after the context, with the copy baselines.

        Args:
          predict: ``batch -> (b, T-1, H·W)``; always called with
            ``eval_batch_size`` rows (the last call's extra rows are not scored).
          seed: the eval set's seed when ``eval_seed`` is None.

        Returns:
          See the module docstring.
        """
        eval_seed = int(self.eval_seed if self.eval_seed is not None else seed)
        c = self.context_frames
        sums = dict.fromkeys(("se", "ae", "base_se", "base_ae", "roll_se", "roll_ae", "base_roll_se"), 0.0)
        roll_per_frame = np.zeros(self.num_frames - c)
        for start in range(0, self.eval_examples, self.eval_batch_size):
            batch = to_batch(self.eval_videos(eval_seed, start, self.eval_batch_size))
            rows = min(self.eval_batch_size, self.eval_examples - start)
            out = np.asarray(predict(batch), np.float32)[:rows, c - 1:].astype(np.float64)
            target = batch["targets"][:rows, c - 1:].astype(np.float64)  # frames c .. T-1
            last = batch["inputs"][:rows, c - 1:].astype(np.float64)  # frames c-1 .. T-2
            sums["se"] += float(np.sum((out - target) ** 2))
            sums["ae"] += float(np.sum(np.abs(out - target)))
            sums["base_se"] += float(np.sum((last - target) ** 2))
            sums["base_ae"] += float(np.sum(np.abs(last - target)))
            if self.rollout:
                roll = self._rollout(predict, batch["inputs"])[:rows].astype(np.float64)
                se = (roll - target) ** 2
                sums["roll_se"] += float(se.sum())
                sums["roll_ae"] += float(np.sum(np.abs(roll - target)))
                roll_per_frame += se.sum(axis=(0, 2))
                sums["base_roll_se"] += float(np.sum((last[:, :1] - target) ** 2))
        count = self.eval_examples * (self.num_frames - c) * self.pixels
        metrics = {"mse": sums["se"] / count, "mae": sums["ae"] / count, "baseline_mse": sums["base_se"] / count,
                   "baseline_mae": sums["base_ae"] / count}
        if self.rollout:
            metrics.update(rollout_mse=sums["roll_se"] / count, rollout_mae=sums["roll_ae"] / count,
                           rollout_mse_per_frame=(roll_per_frame / (self.eval_examples * self.pixels)).tolist(),
                           baseline_rollout_mse=sums["base_roll_se"] / count)
        metrics.update(num_examples=self.eval_examples, num_predicted_frames=self.num_frames - c, source=self.source)
        return metrics


__all__ = ["SOURCES", "VideoTask", "default_config", "to_batch"]
