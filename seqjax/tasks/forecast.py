"""Long-sequence time-series forecasting (Informer, Zhou et al. 2021) as a seqjax Task.

Config (``config.task``, name ``"forecast"``; every field in :func:`default_config`):

- ``dataset``: one of :data:`seqjax.data.forecast.DATASETS` (statsmodels'
  ``co2``, ``sunspots``, ``elnino``, ``macrodata``; the paper's ``ETTh1``,
  ``ETTh2``, ``ETTm1``, ``ECL``, ``WTH`` from ``manual_dir``).
- ``manual_dir``: the folder of the paper's CSV (paper datasets only).
- ``features``: ``"S"`` (the target column only) or ``"M"`` (every column in,
  every column out), as the paper's univariate / multivariate settings.
- ``seq_len``, ``label_len``, ``pred_len``: history, the decoder's known start
  (``<= seq_len``), horizon.
- ``eval_split`` (``"test"`` or ``"val"``), ``eval_examples`` (None: every
  window of the split; else the first ones), ``eval_batch_size``,
  ``linear_baseline`` (also fit and score the least-squares linear baseline).

Batches (:func:`to_batch`): ``inputs`` the history ``(b, seq_len, C + k)``
(the ``C`` scaled values, then the ``k`` time features), ``decoder_inputs``
``(b, label_len + pred_len, C + k)`` (the last ``label_len`` history values,
zeros over the horizon, the time features of every step), ``targets`` the
horizon ``(b, pred_len, C)``. The model returns ``(b, L_out, C)`` with ``L_out
>= pred_len``; its last ``pred_len`` positions are the forecast (Informer's
``dec_out[:, -pred_len:]``).

Streams: the training windows (every start of the train segment) are visited
in a fresh permutation per epoch, ``default_rng([seed, epoch])``; global row
``r`` of step ``s`` is window ``k = s·b + r`` of that order (epoch ``k // n``),
so the state is the step.

Loss: the mean squared error over the horizon and the channels (the paper's
MSE loss), on the standardised scale. Evaluation over the eval windows, per
value (window × step × channel), standardised (the paper's reported scale):

- ``mse``, ``mae``: the model's forecast;
- ``baseline_mse``, ``baseline_mae``: repeat the last history value over the horizon;
- ``linear_mse``, ``linear_mae`` (``linear_baseline``): a least-squares linear
  map from the ``seq_len`` history values of one channel (and a bias) to its
  ``pred_len`` horizon, one map shared by the channels, fit on every training
  window (:func:`fit_linear`);
- ``mse_per_step``: the model's MSE at each horizon step;
- ``examples``: :data:`NUM_EXAMPLES` eval windows evenly spaced over the split
  (``starts``, and per window the target column's ``history``, ``truth`` and
  ``forecast``, standardised) for the figures;
- ``num_windows``, ``num_channels``, ``dataset``, ``features``, ``pred_len``, ``eval_split``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from seqjax.data import forecast as fd
from seqjax.errors import ConfigError, check_choice
from seqjax.tasks.base import Batch, Metrics, host_shard, row_weights

_DEFAULTS = dict(dataset="co2", manual_dir=None, features="S", seq_len=96, label_len=48, pred_len=24,
                 eval_split="test", eval_examples=None, eval_batch_size=64, linear_baseline=True)
_P = "config.task."
NUM_EXAMPLES = 4
"""Eval windows whose forecasts ``evaluate`` keeps for the figures."""


def default_config() -> ml_collections.ConfigDict:
    """Every field of ``config.task`` for ``task.name = "forecast"``, with its default.

    Returns:
      A ConfigDict (see the module docstring); ``manual_dir`` and ``eval_examples`` are typed None placeholders.
    """
    return ml_collections.ConfigDict({"name": "forecast", **_DEFAULTS, "manual_dir": placeholder(str),
                                      "eval_examples": placeholder(int)})


def _int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{_P}{name}={value!r} is not allowed; allowed: an int >= {low}")
    return int(value)


def to_batch(windows: dict[str, np.ndarray]) -> Batch:
    """``inputs``, ``decoder_inputs`` and ``targets`` of :func:`seqjax.data.forecast.make_windows`' output.

    Args:
      windows: ``history``, ``history_marks``, ``decoder``, ``decoder_marks``, ``targets``.

    Returns:
      The batch (float32).
    """
    return {"inputs": np.concatenate([windows["history"], windows["history_marks"]], axis=-1),
            "decoder_inputs": np.concatenate([windows["decoder"], windows["decoder_marks"]], axis=-1),
            "targets": windows["targets"]}


def fit_linear(history: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Least-squares ``[history, 1] @ W ≈ horizon`` per channel, one ``W`` shared by the channels.

    Args:
      history: ``(n, seq_len, C)``.
      targets: ``(n, pred_len, C)``.

    Returns:
      ``W`` ``(seq_len + 1, pred_len)`` float64 (the last row is the bias).
    """
    x = np.moveaxis(history, 2, 1).reshape(-1, history.shape[1]).astype(np.float64)
    y = np.moveaxis(targets, 2, 1).reshape(-1, targets.shape[1]).astype(np.float64)
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    return np.linalg.lstsq(x, y, rcond=None)[0]


def apply_linear(w: np.ndarray, history: np.ndarray) -> np.ndarray:
    """The linear baseline's forecast ``(n, pred_len, C)`` from ``history (n, seq_len, C)``."""
    x = np.moveaxis(history, 2, 1).astype(np.float64)  # (n, C, seq_len)
    return np.moveaxis(x @ w[:-1] + w[-1], 1, 2)


class _ForecastIterator:
    """Training windows in a fresh permutation per epoch; the state is the step.

    Attributes:
      task: the task.
      seed: the run's seed.
      batch_size: global rows per step.
      step: index of the next batch.
    """

    def __init__(self, task: ForecastTask, seed: int, batch_size: int):
        self.task, self.seed, self.batch_size, self.step = task, int(seed), int(batch_size), 0
        self._rows, (index, _) = host_shard(self.batch_size)
        self._first = index * self._rows

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        n = len(self.task.train_starts)
        k = self.step * self.batch_size + self._first + np.arange(self._rows)
        epochs, pos = k // n, k % n
        order = {int(e): np.random.default_rng([self.seed, int(e)]).permutation(n) for e in np.unique(epochs)}
        picks = np.array([order[int(e)][p] for e, p in zip(epochs, pos)])
        self.step += 1
        return self.task.batch(self.task.train_starts[picks])

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state) -> None:
        self.step = int(state["step"])


class ForecastTask:
    """Multi-step forecasting of a real series (see the module docstring).

    Attributes:
      name: ``"forecast"``.
      dataset, features: the series and the feature mode.
      seq_len, label_len, pred_len: window lengths.
      max_length: ``seq_len`` (the encoder's input length).
      num_channels: ``C``, values per step (model output width).
      num_marks: ``k``, time features per step.
      input_dim: ``C + k``, the width of ``inputs`` and ``decoder_inputs``.
      values: ``(T, C)`` standardised series (float64); ``marks`` its time features.
      mean, std: the scaler (training-segment statistics).
      borders: the ``[start, end)`` of each split.
      train_starts, eval_starts: window starts (indices into ``values``).
      eval_split, eval_batch_size, linear_baseline: evaluation settings.
    """

    name = "forecast"
    weighted_rows = True  # loss() honours batch["weight"]

    def __init__(self, task_config):
        get = {k: (task_config.get(k, v) if hasattr(task_config, "get") else getattr(task_config, k, v))
               for k, v in _DEFAULTS.items()}
        self.dataset, self.features = get["dataset"], get["features"]
        check_choice(f"{_P}dataset", self.dataset, fd.DATASETS)
        check_choice(f"{_P}features", self.features, fd.FEATURES)
        check_choice(f"{_P}eval_split", get["eval_split"], ("test", "val"))
        self.eval_split = get["eval_split"]
        self.seq_len = _int("seq_len", get["seq_len"], 1)
        self.pred_len = _int("pred_len", get["pred_len"], 1)
        self.label_len = _int("label_len", get["label_len"], 0)
        if self.label_len > self.seq_len:
            raise ConfigError(f"{_P}label_len={self.label_len} is not allowed; allowed: 0 .. seq_len={self.seq_len} "
                              "(the decoder's start is the end of the history)")
        self.eval_batch_size = _int("eval_batch_size", get["eval_batch_size"], 1)
        if get["eval_examples"] is not None:
            _int("eval_examples", get["eval_examples"], 1)
        if not isinstance(get["linear_baseline"], bool):
            raise ConfigError(f"{_P}linear_baseline={get['linear_baseline']!r} is not allowed; allowed: True, False")
        self.linear_baseline = get["linear_baseline"]

        series = fd.load(self.dataset, get["manual_dir"]).select(self.features)
        self.borders = fd.split_borders(self.dataset, len(series.values), self.seq_len)
        a, b = self.borders["train"]
        self.mean, self.std = fd.fit_scaler(series.values[a:b])
        self.values = (series.values - self.mean) / self.std
        self.marks = fd.time_features(series.dates, series.freq)
        self.columns = series.columns
        self.num_channels, self.num_marks = self.values.shape[1], self.marks.shape[1]
        self.input_dim = self.num_channels + self.num_marks
        self.max_length = self.seq_len
        self.train_starts = self._starts("train")
        self.eval_starts = self._starts(self.eval_split)
        if get["eval_examples"] is not None:
            self.eval_starts = self.eval_starts[:get["eval_examples"]]

    def _starts(self, split: str) -> np.ndarray:
        lo, hi = self.borders[split]
        n = fd.num_windows(hi - lo, self.seq_len, self.pred_len)
        if n < 1:
            raise ConfigError(f"{_P}seq_len={self.seq_len}, pred_len={self.pred_len}: the {split} segment of "
                              f"{self.dataset!r} ({hi - lo} steps) holds no window; allowed: seq_len + pred_len <= "
                              f"{hi - lo}")
        return lo + np.arange(n)

    def batch(self, starts: np.ndarray) -> Batch:
        """The batch of the windows starting at ``starts`` (see the module docstring)."""
        return to_batch(fd.make_windows(self.values, self.marks, starts, self.seq_len, self.label_len, self.pred_len))

    def train_iterator(self, seed: int, batch_size: int) -> _ForecastIterator:
        """This process's rows of each global batch of training windows (resumable by step)."""
        return _ForecastIterator(self, seed, batch_size)

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
        """MSE over the horizon and channels (the last ``pred_len`` outputs); also the MAE.

        Args:
          outputs: ``(b, L_out, C)``, ``L_out >= pred_len``.
          batch: ``targets`` ``(b, pred_len, C)`` and optionally ``weight`` ``(b,)``.

        Returns:
          ``(mse, {"mse": mse, "mae": mae})``.
        """
        err = outputs[:, -self.pred_len:].astype(jnp.float32) - batch["targets"].astype(jnp.float32)
        w = row_weights(batch, err.shape[0])
        denom = jnp.maximum(w.sum(), 1e-9)
        mse = (jnp.mean(err**2, axis=(1, 2)) * w).sum() / denom
        mae = (jnp.mean(jnp.abs(err), axis=(1, 2)) * w).sum() / denom
        return mse, {"mse": mse, "mae": mae}

    def forecasts(self, predict: Callable[[Batch], jax.Array], starts: np.ndarray) -> np.ndarray:
        """The model's horizon forecasts ``(n, pred_len, C)`` float64 for the windows at ``starts``.

        ``predict`` always sees ``eval_batch_size`` rows: the last call repeats its last window.
        """
        out = []
        for i in range(0, len(starts), self.eval_batch_size):
            chunk = starts[i:i + self.eval_batch_size]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], self.eval_batch_size - len(chunk))])
            pred = np.asarray(predict(self.batch(padded)), np.float64)[:len(chunk), -self.pred_len:]
            out.append(pred)
        return np.concatenate(out)

    def evaluate(self, predict: Callable[[Batch], jax.Array], seed: int) -> Metrics:
        """Standardised MSE / MAE of the forecasts and of the baselines on the eval windows.

        Args:
          predict: ``batch -> (b, L_out, C)``.
          seed: unused (the eval windows are fixed).

        Returns:
          See the module docstring.
        """
        del seed
        w = fd.make_windows(self.values, self.marks, self.eval_starts, self.seq_len, self.label_len, self.pred_len)
        target = w["targets"].astype(np.float64)
        pred = self.forecasts(predict, self.eval_starts)
        last = np.repeat(w["history"][:, -1:].astype(np.float64), self.pred_len, axis=1)
        metrics = {"mse": float(np.mean((pred - target) ** 2)), "mae": float(np.mean(np.abs(pred - target))),
                   "baseline_mse": float(np.mean((last - target) ** 2)),
                   "baseline_mae": float(np.mean(np.abs(last - target))),
                   "mse_per_step": np.mean((pred - target) ** 2, axis=(0, 2)).tolist()}
        picks = np.unique(np.linspace(0, len(self.eval_starts) - 1, NUM_EXAMPLES).round().astype(int))
        metrics["examples"] = {"starts": [int(self.eval_starts[i]) for i in picks],
                               "history": [w["history"][i, :, -1].astype(float).tolist() for i in picks],
                               "truth": [target[i, :, -1].tolist() for i in picks],
                               "forecast": [pred[i, :, -1].tolist() for i in picks]}
        if self.linear_baseline:
            tw = fd.make_windows(self.values, self.marks, self.train_starts, self.seq_len, 0, self.pred_len)
            lin = apply_linear(fit_linear(tw["history"], tw["targets"]), w["history"])
            metrics.update(linear_mse=float(np.mean((lin - target) ** 2)),
                           linear_mae=float(np.mean(np.abs(lin - target))))
        metrics.update(num_windows=int(len(self.eval_starts)), num_channels=int(self.num_channels),
                       dataset=self.dataset, features=self.features, pred_len=self.pred_len,
                       eval_split=self.eval_split)
        return metrics


__all__ = ["ForecastTask", "apply_linear", "default_config", "fit_linear", "to_batch"]
