"""In-context learning of function classes: metrics and the ``icl`` task.

The task trains a regression model on prompts from ``seqjax.data.icl`` (Garg
et al. 2022) and evaluates it against classical learners run on the same
prompts (``seqjax.tasks.icl_baselines``) with the metrics of Garg et al. and
Akyürek et al. 2022:

- ``error_per_n``: squared error at prompt point ``n`` divided by the
  dimension, averaged over prompts (the zero predictor scores ~1 on linear).
- SPD, squared prediction difference: ``E[(f_a(x_n) - f_b(x_n))^2] / dim``
  per point, between the model and a learner on the same prompts.
- ILWD, implicit linear weight difference: for a context of ``i`` pairs, the
  predictor is *probed* with ``q`` fresh queries ``x ~ N(0, I)`` (the query
  replaces token ``2i``, the ``x_i`` token; the model must be causal so that
  later tokens do not matter); a linear map is fitted to its answers by
  minimum-norm least squares, ``w_hat = pinv(Q) f(Q)``; ILWD is ``E ||w_hat_a
  - w_hat_b||^2 / dim`` per context size. The learners are probed with the
  same queries (for linear learners this recovers their weights exactly), and
  ``"true"`` compares with the prompt's own ``w`` on the linear classes.

Batches: ``{"inputs": (b, 2n, dim), "ys": (b, n)}``; the model's regression
output ``(b, 2n, 1)`` is read at the even (``x``) positions.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from seqjax.data import icl as icl_data
from seqjax.errors import ConfigError, check_choice, check_positive
from seqjax.tasks import icl_baselines, icl_learned_baselines
from seqjax.tasks.base import host_shard, row_weights

Batch = dict[str, Any]

DEFAULT_BASELINES = ("least_squares", "knn3", "averaging", "ridge", "gd")


# Garg et al.'s class-specific learners (boosting is opt-in: ~35 ms per fit on
# the host, i.e. ~30 min for Garg's 1280 prompts x 41 prefixes).
CLASS_BASELINES = {
    "sparse_linear": ("lasso",),
    "relu2nn": ("nn_gd",),
    "decision_tree": ("tree", "tree4"),
    "fourier": ("bayes_fourier",),
    "fourier_mixture": ("bayes_fourier",),
    "linear_mixture": ("lasso", "bayes_linear_mixture"),
    "class_mixture": ("tree4",),  # the default mixture is DR + DT; bayes_class_mixture needs Gaussian members
}


def default_baselines(function_class: str) -> tuple[str, ...]:
    """The baselines evaluated by default: :data:`DEFAULT_BASELINES` plus :data:`CLASS_BASELINES`."""
    return DEFAULT_BASELINES + CLASS_BASELINES.get(function_class, ())


def default_config(function_class: str = "linear") -> ml_collections.ConfigDict:
    """Every field of ``config.task`` for ``task.name = "icl"``, with its default.

    Config files start from it, so every documented field can be set from the
    command line (``--config.task.<field>=<value>``); fields whose default is
    "derived" (``ridge_lambda``, ``gd_lr``, ``ilwd_probes``, ``eval_seed``)
    are typed None placeholders.

    Args:
      function_class: the class; ``task_kwargs`` holds its keyword arguments
        (``seqjax.data.icl.TASK_KWARGS``) and ``baselines`` its default list.

    Returns:
      A ConfigDict (see :class:`ICLTask` for the meaning of each field).
    """
    check_choice("config.task.function_class", function_class, icl_data.FUNCTION_CLASSES)
    curriculum = {f.name: f.default for f in dataclasses.fields(icl_data.Curriculum)}
    return ml_collections.ConfigDict({
        "name": "icl",
        "function_class": function_class,
        "dim": 20,
        "n_points": 41,
        "noise_std": 0.0,
        "train_label_noise": 0.0,  # fraction of in-context labels randomised in training batches
        "eval_label_noise": 0.0,  # ... in the evaluation prompts (scored targets stay clean)
        "task_kwargs": dict(icl_data.TASK_KWARGS[function_class]),
        "curriculum": {"enabled": False, **curriculum},
        "eval_batch_size": 1280,
        "eval_seed": placeholder(int),  # None: the run's seed
        "eval_chunk_size": 256,
        "baselines": default_baselines(function_class),
        "ridge_lambda": placeholder(float),  # None: noise_std^2 with noise, else 0.1
        "gd_steps": 10,
        "gd_lr": placeholder(float),  # None: 1 / dim
        "lasso_alpha": 0.01,
        "lasso_iters": 300,
        "nn_hidden": placeholder(int),  # None: the class's hidden_size (relu2nn), else 100
        "nn_steps": 100,
        "nn_lr": 5e-3,
        "boosting_estimators": 100,
        "boosting_lr": 0.1,
        "boosting_depth": 3,
        "ilwd_batch_size": 64,  # 0: no ILWD
        "ilwd_probes": placeholder(int),  # None: 2 * dim
    })


# ----------------------------------------------------------------------------
# Metrics (jnp in, jnp out; jittable).


def error_per_n(preds: jax.Array, ys: jax.Array, dim: int) -> jax.Array:
    """Squared error per prompt point, divided by ``dim``, averaged over the batch.

    Args:
      preds: ``(b, n)`` predictions.
      ys: ``(b, n)`` targets.
      dim: the problem dimension (Garg's normaliser).

    Returns:
      ``(n,)``.
    """
    return jnp.mean((preds.astype(jnp.float32) - ys.astype(jnp.float32)) ** 2, axis=0) / dim


def spd(preds_a: jax.Array, preds_b: jax.Array, dim: int = 1) -> jax.Array:
    """Squared prediction difference per point (Akyürek et al.), divided by ``dim``.

    Args:
      preds_a: ``(b, n)`` predictions of one predictor.
      preds_b: ``(b, n)`` of another, on the same prompts.
      dim: normaliser (1 for the raw SPD).

    Returns:
      ``(n,)``: ``mean_b (a - b)^2 / dim``.
    """
    return jnp.mean((preds_a.astype(jnp.float32) - preds_b.astype(jnp.float32)) ** 2, axis=0) / dim


def fit_linear_weights(queries: jax.Array, answers: jax.Array) -> jax.Array:
    """Fits ``answers ~ queries @ w`` by minimum-norm least squares.

    Args:
      queries: ``(..., q, d)`` probe inputs.
      answers: ``(..., q)`` a predictor's outputs on them.

    Returns:
      ``(..., d)`` the implicit linear weights.
    """
    return jnp.einsum(
        "...dq,...q->...d", jnp.linalg.pinv(queries), answers, precision=jax.lax.Precision.HIGHEST
    )


def ilwd(w_a: jax.Array, w_b: jax.Array, dim: int = 1) -> jax.Array:
    """Implicit linear weight difference: ``mean_b ||w_a - w_b||^2 / dim``.

    Args:
      w_a: ``(b, n, d)`` implicit weights per context size.
      w_b: ``(b, n, d)``.
      dim: normaliser.

    Returns:
      ``(n,)``.
    """
    return jnp.mean(jnp.sum((w_a - w_b) ** 2, axis=-1), axis=0) / dim


@jax.jit
def _probe_tokens(xs, ys, probes, i):
    """``(b*q, 2n, d)``: the prompt's tokens with token ``2i`` replaced by each probe."""
    tokens = icl_data.to_model_inputs(xs, ys)  # (b, 2n, d)
    b, length, d = tokens.shape
    q = probes.shape[1]
    at = (jnp.arange(length) == 2 * i)[None, None, :, None]
    out = jnp.where(at, probes[:, :, None, :], tokens[:, None])  # (b, q, 2n, d)
    return out.reshape(b * q, length, d)


def _predict_x_positions(predict, inputs, chunk_size):
    """Runs ``predict`` over ``inputs`` in fixed-size chunks; returns ``(B, n)`` numpy."""
    total = inputs.shape[0]
    outs = []
    for start in range(0, total, chunk_size):
        chunk = inputs[start : start + chunk_size]
        valid = chunk.shape[0]
        if valid < chunk_size:  # pad: one shape, one compile
            pad = jnp.zeros((chunk_size - valid,) + chunk.shape[1:], chunk.dtype)
            chunk = jnp.concatenate([chunk, pad])
        out = jnp.asarray(predict({"inputs": chunk}))
        if out.ndim == 3:
            out = out[..., 0]
        outs.append(np.asarray(out[:valid, 0::2], np.float32))
    return np.concatenate(outs)


def probe_model_weights(
    predict: Callable[[Batch], jax.Array],
    xs: jax.Array,
    ys: jax.Array,
    probes: jax.Array,
    chunk_size: int = 256,
) -> np.ndarray:
    """Implicit linear weights of a causal model per context size, by probing.

    For every context size ``i`` (``0..n-1``) and probe ``p``, the model reads
    the prompt's tokens with the ``x_i`` token replaced by ``p``; its output
    there is its prediction for ``p`` given pairs ``0..i-1``.

    Args:
      predict: ``batch -> outputs (B, 2n, 1)``.
      xs: ``(b, n, d)`` prompts.
      ys: ``(b, n)``.
      probes: ``(b, q, d)`` probe queries (``q >= d`` for a unique fit).
      chunk_size: sequences per ``predict`` call.

    Returns:
      ``(b, n, d)`` fitted weights.
    """
    b, n, _ = xs.shape
    q = probes.shape[1]
    answers = np.zeros((b, n, q), np.float32)
    for i in range(n):
        tokens = _probe_tokens(xs, ys, probes, i)
        preds = _predict_x_positions(predict, tokens, chunk_size)  # (b*q, n)
        answers[:, i, :] = preds[:, i].reshape(b, q)
    queries = jnp.broadcast_to(probes[:, None], (b, n) + probes.shape[1:])
    return np.asarray(fit_linear_weights(queries, jnp.asarray(answers)))


# ----------------------------------------------------------------------------
# The task.


def _get(cfg, name, default=None):
    if cfg is None:
        return default
    value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
    return default if value is None and default is not None else value


def _as_dict(cfg) -> dict:
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    return dict(cfg)


class _ICLIterator:
    """Training batches of an :class:`ICLTask`; the state is the step.

    Attributes:
      task: the task.
      seed: the stream's seed; batch ``s`` uses ``fold_in(key(seed), s)``.
      batch_size: prompts per batch.
      step: index of the next batch.
    """

    def __init__(self, task: ICLTask, seed: int, batch_size: int):
        self.task = task
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.step = 0
        self._key = jax.random.key(self.seed)
        # Every process samples the same global batch and keeps its own block
        # of rows, so N processes train exactly as one does.
        per_host, (index, _) = host_shard(self.batch_size)
        self._rows = slice(index * per_host, (index + 1) * per_host)
        self._whole = per_host == self.batch_size

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        active_dim, n_points = self.task.stage(self.step)
        key = jax.random.fold_in(self._key, self.step)
        batch = self.task._sample_train(key, jnp.int32(active_dim), self.batch_size, n_points)
        self.step += 1
        if self._whole:
            return batch
        return jax.tree.map(lambda x: np.asarray(x)[self._rows], batch)

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state) -> None:
        self.step = int(state["step"])


def _train_batch(key, active_dim, batch_size, n_points, *, function_class, dim, noise_std, task_kwargs,
                 label_noise=0.0):
    data = icl_data.sample_batch(
        key,
        function_class,
        batch_size,
        n_points,
        dim,
        active_dim=active_dim,
        noise_std=noise_std,
        **task_kwargs,
    )
    # Randomised labels change only the tokens read; the loss scores the clean ys.
    ys_context, _ = icl_data.context_labels(key, data["ys"], label_noise)
    return {"inputs": icl_data.to_model_inputs(data["xs"], ys_context), "ys": data["ys"]}


class ICLTask:
    """In-context regression on a function class (config ``task.name = "icl"``).

    Config fields (``config.task``): ``function_class``, ``dim``,
    ``n_points``, ``noise_std``, ``train_label_noise`` and
    ``eval_label_noise`` (fractions of in-context labels randomised by
    ``seqjax.data.icl.randomize_labels``; targets stay clean), ``task_kwargs`` (dict, see
    ``seqjax.data.icl.TASK_KWARGS``), ``curriculum`` (``enabled`` and the
    :class:`~seqjax.data.icl.Curriculum` fields; absent means disabled),
    ``eval_batch_size`` (1280), ``eval_seed`` (None: use ``evaluate``'s seed),
    ``eval_chunk_size`` (256, sequences per ``predict`` call), ``baselines``
    (default least_squares, knn3, averaging, ridge, gd; + lasso for
    sparse_linear, nn_gd for relu2nn, tree and tree4 for decision_tree,
    bayes_fourier for the Fourier classes, lasso and bayes_linear_mixture
    for linear_mixture), ``ridge_lambda`` (None: ``noise_std^2`` if noise else
    0.1), ``gd_steps`` (10), ``gd_lr`` (None: ``1/dim``), ``lasso_alpha``
    (0.01), ``lasso_iters`` (300), ``nn_hidden`` (None: the class's
    ``hidden_size`` on relu2nn, else 100), ``nn_steps`` (100), ``nn_lr``
    (5e-3), ``boosting_estimators`` (100), ``boosting_lr`` (0.1),
    ``boosting_depth`` (3), ``ilwd_batch_size`` (64; 0 turns ILWD
    off), ``ilwd_probes`` (None: ``2 * dim``).

    Attributes:
      name: ``"icl"``.
      max_length: ``2 * n_points`` tokens.
      function_class: the class sampled.
      dim: dimension of ``x`` (final curriculum stage).
      n_points: points per prompt (final stage).
      noise_std: label noise std.
      train_label_noise, eval_label_noise: fractions of randomised context labels.
      task_kwargs: class kwargs with defaults filled in.
      curriculum: a :class:`Curriculum`, or None when disabled.
      baselines: baseline names evaluated.
      baseline_kwargs: per-baseline-family kwargs.
      eval_batch_size, eval_seed, eval_chunk_size, ilwd_batch_size,
      ilwd_probes: evaluation settings (see above).
    """

    name = "icl"
    weighted_rows = True  # loss() honours batch["weight"] (seqjax.tasks.base.pad_rows)

    def __init__(self, task_config):
        fc = _get(task_config, "function_class", "linear")
        check_choice("config.task.function_class", fc, icl_data.FUNCTION_CLASSES)
        self.function_class = fc
        self.dim = _get(task_config, "dim", 20)
        self.n_points = _get(task_config, "n_points", 41)
        check_positive("config.task.dim", self.dim)
        check_positive("config.task.n_points", self.n_points)
        for field, value in (("dim", self.dim), ("n_points", self.n_points)):
            if not isinstance(value, int):
                raise ConfigError(f"config.task.{field}={value!r} must be an int > 0")
        noise_std = _get(task_config, "noise_std", 0.0)
        check_positive("config.task.noise_std", noise_std, allow_zero=True)
        self.noise_std = float(noise_std)
        if fc == "noisy_linear" and self.noise_std == 0:
            raise ConfigError(
                "config.task.noise_std=0.0 must be > 0 for function_class='noisy_linear'"
            )
        given = _as_dict(_get(task_config, "task_kwargs"))
        for key in given:
            if key not in icl_data.TASK_KWARGS[fc]:
                # Name the classes that take it: the usual slip is a kwarg of another class.
                owners = [c for c, kw in icl_data.TASK_KWARGS.items() if key in kw]
                hint = f" ({key!r} is a kwarg of function_class={', '.join(owners)})" if owners else ""
                raise ConfigError(f"config.task.task_kwargs.{key} is not allowed for function_class={fc!r}; "
                                  f"allowed: {', '.join(icl_data.TASK_KWARGS[fc]) or '(none)'}{hint}")
        self.task_kwargs = icl_data.task_kwargs_with_defaults(fc, given)
        for field in ("train_label_noise", "eval_label_noise"):
            value = _get(task_config, field, 0.0)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ConfigError(f"config.task.{field}={value!r} must be a number in [0, 1]")
            setattr(self, field, float(value))
        self.curriculum = self._build_curriculum(_get(task_config, "curriculum"))
        self.max_length = 2 * self.n_points

        self.eval_batch_size = _get(task_config, "eval_batch_size", 1280)
        check_positive("config.task.eval_batch_size", self.eval_batch_size)
        self.eval_seed = _get(task_config, "eval_seed")
        self.eval_chunk_size = _get(task_config, "eval_chunk_size", 256)
        check_positive("config.task.eval_chunk_size", self.eval_chunk_size)
        self.ilwd_batch_size = _get(task_config, "ilwd_batch_size", 64)
        check_positive("config.task.ilwd_batch_size", self.ilwd_batch_size, allow_zero=True)
        self.ilwd_probes = _get(task_config, "ilwd_probes", 2 * self.dim)
        check_positive("config.task.ilwd_probes", self.ilwd_probes)

        baselines = _get(task_config, "baselines", default_baselines(fc))
        if isinstance(baselines, str):
            baselines = [b.strip() for b in baselines.split(",") if b.strip()]
        self.baselines = tuple(baselines)
        for b in self.baselines:
            icl_learned_baselines.parse_baseline(b)
        ridge_lambda = _get(task_config, "ridge_lambda")
        if ridge_lambda is None:
            ridge_lambda = icl_baselines.bayes_ridge_lambda(self.noise_std) if self.noise_std > 0 else 0.1
        check_positive("config.task.ridge_lambda", ridge_lambda)
        gd_lr = _get(task_config, "gd_lr")
        gd_lr = 1.0 / self.dim if gd_lr is None else gd_lr
        check_positive("config.task.gd_lr", gd_lr)
        gd_steps = _get(task_config, "gd_steps", 10)
        check_positive("config.task.gd_steps", gd_steps)
        lasso_alpha = _get(task_config, "lasso_alpha", 0.01)
        check_positive("config.task.lasso_alpha", lasso_alpha)
        lasso_iters = _get(task_config, "lasso_iters", 300)
        check_positive("config.task.lasso_iters", lasso_iters)
        self.baseline_kwargs = {
            "least_squares": {},
            "averaging": {},
            "knn": {},
            "ridge": {"lam": float(ridge_lambda)},
            "gd": {"steps": int(gd_steps), "lr": float(gd_lr)},
            "lasso": {"alpha": float(lasso_alpha), "iters": int(lasso_iters)},
            **icl_learned_baselines.config_kwargs(
                lambda field, default=None: _get(task_config, field, default),
                fc, self.task_kwargs, self.noise_std, self.baselines,
            ),
        }

        self._sample_train = jax.jit(
            functools.partial(
                _train_batch,
                function_class=fc,
                dim=self.dim,
                noise_std=self.noise_std,
                task_kwargs=self.task_kwargs,
                label_noise=self.train_label_noise,
            ),
            static_argnums=(2, 3),
        )

    def _build_curriculum(self, cfg) -> icl_data.Curriculum | None:
        if cfg is None or not _get(cfg, "enabled", True):
            return None
        fields = {}
        for f in ("dim_start", "dim_end", "dim_inc", "points_start", "points_end", "points_inc", "interval"):
            value = _get(cfg, f)
            if value is not None:
                fields[f] = value
        cur = icl_data.Curriculum(**fields)
        if cur.dim_end > self.dim:
            raise ConfigError(f"config.task.curriculum.dim_end={cur.dim_end} must be <= config.task.dim={self.dim}")
        if cur.points_end > self.n_points:
            raise ConfigError(
                f"config.task.curriculum.points_end={cur.points_end} must be <= "
                f"config.task.n_points={self.n_points}"
            )
        return cur

    def stage(self, step: int) -> tuple[int, int]:
        """``(active_dim, n_points)`` of the training batch at ``step``."""
        if self.curriculum is None:
            return self.dim, self.n_points
        return self.curriculum.at(step)

    def train_iterator(self, seed: int, batch_size: int) -> _ICLIterator:
        """Batch ``s`` is sampled from ``fold_in(key(seed), s)`` at curriculum stage ``s``.

        Args:
          seed: stream seed.
          batch_size: prompts per batch.

        Returns:
          A resumable iterator of ``{"inputs": (b, 2n, dim), "ys": (b, n)}``.
        """
        check_positive("config.train.batch_size", batch_size)
        return _ICLIterator(self, seed, batch_size)

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict]:
        """Mean squared error of the predictions read at the ``x`` tokens.

        Args:
          outputs: ``(b, 2n, 1)`` (or ``(b, 2n)``) regression outputs.
          batch: with ``"ys"`` ``(b, n)`` and optionally ``"weight"`` ``(b,)``
            (see :func:`seqjax.tasks.base.row_weights`).

        Returns:
          ``(mse, {"mse": mse, "error_last": squared error at the last point})``.
          For ``linear_classification`` the same squared loss on the ±1
          labels (as Garg et al.).
        """
        if outputs.ndim == 3:
            outputs = outputs[..., 0]
        preds = outputs[:, 0::2].astype(jnp.float32)
        sq = (preds - batch["ys"].astype(jnp.float32)) ** 2
        # Rows of weight 0 (padding that splits a batch evenly over devices) do not count.
        w = row_weights(batch, sq.shape[0])
        total = jnp.sum(w)
        mse = jnp.sum(w[:, None] * sq) / (total * sq.shape[1])
        return mse, {"mse": mse, "error_last": jnp.sum(w * sq[:, -1]) / total}

    def _family_kwargs(self, name):
        family, _ = icl_learned_baselines.parse_baseline(name)
        return self.baseline_kwargs[family]

    def baseline_predictions(self, xs: jax.Array, ys: jax.Array) -> dict[str, np.ndarray]:
        """Every configured baseline's ``(b, n)`` predictions, computed in chunks."""
        total, chunk = xs.shape[0], self.eval_chunk_size
        pad = (-total) % chunk if total > chunk else 0
        if pad:  # zero prompts fill the last chunk: one shape, one compile per baseline
            xs = jnp.concatenate([xs, jnp.zeros((pad,) + xs.shape[1:], xs.dtype)])
            ys = jnp.concatenate([ys, jnp.zeros((pad,) + ys.shape[1:], ys.dtype)])
        out = {}
        for name in self.baselines:
            kw = self._family_kwargs(name)
            parts = [
                np.asarray(icl_learned_baselines.predict(name, xs[s : s + chunk], ys[s : s + chunk], **kw))
                for s in range(0, xs.shape[0], chunk)
            ]
            out[name] = np.concatenate(parts)[:total]
        return out

    def evaluate(self, predict: Callable[[Batch], jax.Array], seed: int) -> dict:
        """Errors, SPD and ILWD of the model and the baselines on a fixed eval set.

        The eval set is ``eval_batch_size`` prompts at the final stage
        (``active_dim = dim``, ``n_points``), drawn from ``key(eval_seed)``
        (or ``key(seed)`` when ``eval_seed`` is None), so every run with the
        same ``eval_seed`` is scored on identical prompts.

        Args:
          predict: ``{"inputs": (B, 2n, dim)} -> (B, 2n, 1)``, deterministic.
          seed: used when ``eval_seed`` is None.

        Returns:
          JSON-able dict: ``n`` (``[1..N]``; entry ``n`` is the ``n``-th point,
          predicted from ``n - 1`` pairs), ``dim``, ``function_class``,
          ``error_per_n`` (model, ``zero`` and each baseline), ``spd`` (model
          vs each baseline), ``ilwd`` (model vs each baseline and ``true``
          where the class has a weight vector; per ``n``), and
          ``accuracy_per_n`` for ``linear_classification``.
        """
        base_seed = self.eval_seed if self.eval_seed is not None else seed
        key = jax.random.key(int(base_seed))
        k_data, k_probe = jax.random.split(key)
        data = icl_data.sample_batch(
            k_data, self.function_class, self.eval_batch_size, self.n_points, self.dim,
            noise_std=self.noise_std, **self.task_kwargs,
        )
        xs, ys = data["xs"], data["ys"]
        # The model and the baselines read the (possibly randomised) context labels; every
        # prediction is scored against the clean ys.
        ys_context, replaced = icl_data.context_labels(k_data, ys, self.eval_label_noise)
        inputs = icl_data.to_model_inputs(xs, ys_context)
        preds = {"model": _predict_x_positions(predict, inputs, self.eval_chunk_size)}
        preds["zero"] = np.zeros_like(preds["model"])
        preds.update(self.baseline_predictions(xs, ys_context))
        ys_np = np.asarray(ys)

        def to_list(a):
            return [float(v) for v in np.asarray(a)]

        result = {
            "n": list(range(1, self.n_points + 1)),
            "dim": self.dim,
            "function_class": self.function_class,
            "error_per_n": {k: to_list(error_per_n(jnp.asarray(p), ys, self.dim)) for k, p in preds.items()},
            "spd": {
                b: to_list(spd(jnp.asarray(preds["model"]), jnp.asarray(preds[b]), self.dim))
                for b in self.baselines
            },
        }
        if self.function_class == "linear_classification":
            result["accuracy_per_n"] = {
                k: to_list(np.mean(np.where(p >= 0, 1.0, -1.0) == ys_np, axis=0)) for k, p in preds.items()
            }
        result["label_noise"] = {"train": self.train_label_noise, "eval": self.eval_label_noise,
                                 "eval_replaced_fraction": float(np.mean(np.asarray(replaced)))}
        if self.ilwd_batch_size > 0:
            result["ilwd"] = self._ilwd(predict, {**data, "ys": ys_context}, k_probe)
        return result

    def _ilwd(self, predict, data, key) -> dict[str, list[float]]:
        nb = min(self.ilwd_batch_size, self.eval_batch_size)
        xs, ys = data["xs"][:nb], data["ys"][:nb]
        probes = jax.random.normal(key, (nb, self.ilwd_probes, self.dim))
        w_model = jnp.asarray(probe_model_weights(predict, xs, ys, probes, self.eval_chunk_size))
        queries = jnp.broadcast_to(probes[:, None], (nb, self.n_points) + probes.shape[1:])
        out = {}
        for name in self.baselines:
            answers = icl_learned_baselines.predict_queries(name, xs, ys, queries, **self._family_kwargs(name))
            w_base = fit_linear_weights(queries, jnp.asarray(answers))
            out[name] = [float(v) for v in np.asarray(ilwd(w_model, w_base, self.dim))]
        if "w" in data and self.function_class in ("linear", "noisy_linear", "sparse_linear"):
            w_true = jnp.broadcast_to(data["w"][:nb, None], w_model.shape)
            out["true"] = [float(v) for v in np.asarray(ilwd(w_model, w_true, self.dim))]
        return out
