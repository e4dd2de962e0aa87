"""Learned in-context baselines (Garg et al. 2022) and the baseline front door.

Garg et al. compare the model on ``relu2nn`` with a 2-layer ReLU network
trained on the prompt's pairs, and on ``decision_tree`` with greedy trees and
gradient boosting. Each follows the contract of ``seqjax.tasks.icl_baselines``:
``preds[:, i]`` comes from the learner fitted on pairs ``0..i-1`` only, and
``preds[:, 0] = 0``.

- ``nn_gd``: one network ``x -> a . relu(W x + c) + e`` of ``hidden`` units per
  prompt *and per prefix*, trained from PyTorch's default initialisation
  (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and biases, as Garg's
  code) by full-batch Adam on the prefix's mean squared error. Garg's public
  code: hidden 100, Adam lr 5e-3, 100 steps, batch 100 (so the whole prefix
  of <= 41 pairs: full batch). All ``b * n`` networks train at once: the loss
  is the sum of the per-network losses, and Adam is per coordinate, so this is
  exactly ``b * n`` independent Adam runs, vectorised (no loop over prompts or
  prefixes).
- ``tree`` / ``tree<k>``: scikit-learn's greedy CART regressor
  (``DecisionTreeRegressor``), unlimited depth / ``max_depth = k`` (Garg: 4
  and None), fitted per prompt per prefix on the host.
- ``boosting``: scikit-learn's ``GradientBoostingRegressor`` (Garg used
  XGBoost with its defaults; this is the same algorithm family with
  scikit-learn's defaults: 100 depth-3 trees, learning rate 0.1). About 35 ms
  per fit on one core, so ``eval_batch_size * n_points`` fits are minutes.

``bayes_fourier``, ``bayes_linear_mixture`` and ``bayes_class_mixture``
(``seqjax.tasks.icl_bayes_baselines``), the Bayes-optimal predictors of the
Fourier classes, of ``linear_mixture`` and of a ``class_mixture`` of
Gaussian-prior members, are dispatched here too.

Front door: :func:`parse_baseline`, :func:`predict` and
:func:`predict_queries` accept every baseline name (these and those of
``icl_baselines``) and dispatch; the task calls only these.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqjax.data.icl_mixtures import class_mixture_members
from seqjax.errors import ConfigError, check_positive
from seqjax.tasks import icl_baselines, icl_bayes_baselines

_HI = jax.lax.Precision.HIGHEST
_TREE_RE = re.compile(r"^tree(\d*)$")
FOURIER_CLASSES = ("fourier", "fourier_mixture")
LEARNED_FAMILIES = ("nn_gd", "tree", "boosting", "bayes_fourier", "bayes_linear_mixture", "bayes_class_mixture")
# Families computed on the host (NumPy float64 / scikit-learn), never jitted.
HOST_FAMILIES = ("tree", "boosting", "bayes_fourier", "bayes_linear_mixture", "bayes_class_mixture")


# ----------------------------------------------------------------------------
# A 2-layer ReLU network per prompt and prefix, trained by Adam.


def _init_nets(key, lead, d, hidden):
    """PyTorch ``nn.Linear`` default init for ``lead`` independent networks."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    b1, b2 = 1.0 / np.sqrt(d), 1.0 / np.sqrt(hidden)
    u = functools.partial(jax.random.uniform, dtype=jnp.float32)
    return {
        "w1": u(k1, lead + (d, hidden), minval=-b1, maxval=b1),
        "c1": u(k2, lead + (hidden,), minval=-b1, maxval=b1),
        "w2": u(k3, lead + (hidden,), minval=-b2, maxval=b2),
        "c2": u(k4, lead, minval=-b2, maxval=b2),
    }


def _net_apply(p, x):
    """``x: (b, n, q, d)`` through network ``(b, n)`` -> ``(b, n, q)``."""
    h = jax.nn.relu(jnp.einsum("biqd,bidh->biqh", x, p["w1"], precision=_HI) + p["c1"][:, :, None])
    return jnp.einsum("biqh,bih->biq", h, p["w2"], precision=_HI) + p["c2"][..., None]


def nn_gd_queries(
    xs: jax.Array,
    ys: jax.Array,
    queries: jax.Array,
    hidden: int = 100,
    steps: int = 100,
    lr: float = 5e-3,
    seed: int = 0,
) -> jax.Array:
    """A 2-layer ReLU net trained by Adam on each prefix, answering queries.

    Args:
      xs: ``(b, n, d)``.
      ys: ``(b, n)``.
      queries: ``(b, n, q, d)``; ``queries[:, i]`` is answered by the network
        trained on pairs ``0..i-1``.
      hidden: hidden units (static; Garg: 100, the class's hidden size).
      steps: full-batch Adam steps (static; Garg: 100).
      lr: Adam learning rate (Garg: 5e-3).
      seed: seed of the networks' initialisation.

    Returns:
      ``(b, n, q)``; zero for ``i = 0`` (no pairs to train on).
    """
    b, n, d = xs.shape
    mask = icl_baselines.prefix_mask(n)  # (i, j): pair j trains network i
    count = jnp.maximum(jnp.sum(mask, axis=1), 1.0)  # (i,)
    params = _init_nets(jax.random.key(int(seed)), (b, n), d, int(hidden))
    train_x = jnp.broadcast_to(xs[:, None], (b, n, n, d))  # network i sees every pair, masked

    def loss_fn(p):
        err = (_net_apply(p, train_x) - ys[:, None, :]) ** 2  # (b, i, j)
        # Sum over networks of each network's own mean over its prefix: the
        # gradient of network (b, i) is that of its own MSE.
        return jnp.sum(jnp.sum(err * mask[None], axis=-1) / count[None])

    opt = optax.adam(lr)

    def step(carry, _):
        p, state = carry
        grads = jax.grad(loss_fn)(p)
        updates, state = opt.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=int(steps))
    out = _net_apply(params, queries)
    return jnp.where((jnp.arange(n) > 0)[None, :, None], out, 0.0)


# ----------------------------------------------------------------------------
# Trees on the host (scikit-learn).


def _sk_model(family, **kw):
    # Imported here so that importing seqjax does not import scikit-learn.
    if family == "tree":
        from sklearn.tree import DecisionTreeRegressor

        return DecisionTreeRegressor(max_depth=kw.get("max_depth"), random_state=0)
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(
        n_estimators=int(kw.get("n_estimators", 100)),
        learning_rate=float(kw.get("learning_rate", 0.1)),
        max_depth=int(kw.get("max_depth", 3)),
        random_state=0,
    )


def sklearn_queries(family: str, xs, ys, queries, **kw) -> np.ndarray:
    """A scikit-learn regressor fitted on each prompt's prefixes, answering queries.

    Args:
      family: ``"tree"`` (kwarg ``max_depth``, None = unlimited) or
        ``"boosting"`` (kwargs ``n_estimators``, ``learning_rate``, ``max_depth``).
      xs: ``(b, n, d)``.
      ys: ``(b, n)``.
      queries: ``(b, n, q, d)``; ``queries[:, i]`` answered from pairs ``0..i-1``.
      **kw: the regressor's kwargs.

    Returns:
      ``(b, n, q)`` float32 NumPy; zero for ``i = 0``.
    """
    xs, ys, queries = (np.asarray(a, np.float64) for a in (xs, ys, queries))
    b, n, _ = xs.shape
    out = np.zeros(queries.shape[:3], np.float32)
    for p in range(b):
        for i in range(1, n):
            model = _sk_model(family, **kw).fit(xs[p, :i], ys[p, :i])
            out[p, i] = model.predict(queries[p, i])
    return out


# ----------------------------------------------------------------------------
# The front door: every baseline name.


def parse_baseline(name: str, field: str = "config.task.baselines") -> tuple[str, dict]:
    """Splits any baseline name into its family and fixed kwargs.

    ``"tree"`` -> ``("tree", {"max_depth": None})``, ``"tree4"`` -> ``("tree",
    {"max_depth": 4})``, ``"nn_gd"``, ``"boosting"``; the names of
    ``icl_baselines`` (``least_squares``, ``knn3``, ...) as there.

    Raises:
      ConfigError: unknown name (one line listing the allowed names).
    """
    name = str(name)
    m = _TREE_RE.match(name)
    if m and (m.group(1) == "" or int(m.group(1)) > 0):
        return "tree", {"max_depth": int(m.group(1)) if m.group(1) else None}
    if name in ("nn_gd", "boosting", "bayes_fourier", "bayes_linear_mixture", "bayes_class_mixture"):
        return name, {}
    try:
        return icl_baselines.parse_baseline(name, field)
    except ConfigError:
        allowed = sorted(f for f in icl_baselines.BASELINE_FAMILIES if f != "knn")
        raise ConfigError(
            f"{field} has {name!r}, which is not allowed; allowed: {', '.join(allowed)}, "
            "knn<k> (e.g. knn3), nn_gd, tree, tree<depth> (e.g. tree4), boosting, bayes_fourier, bayes_linear_mixture, "
            "bayes_class_mixture"
        ) from None


@functools.partial(jax.jit, static_argnames=("kw_items",))
def _nn_gd_jit(xs, ys, queries, kw_items):
    return nn_gd_queries(xs, ys, queries, **dict(kw_items))


def predict_queries(name: str, xs, ys, queries, **kw) -> np.ndarray | jax.Array:
    """Any baseline's answers to ``queries: (b, n, q, d)`` per prefix, ``(b, n, q)``.

    Args:
      name: a baseline name (see :func:`parse_baseline`).
      xs: ``(b, n, d)``.
      ys: ``(b, n)``.
      queries: ``(b, n, q, d)``.
      **kw: the family's kwargs (from the task's config).

    Returns:
      ``(b, n, q)``; jitted per name, kwargs and shapes for the JAX families.
    """
    family, fixed = parse_baseline(name)
    kw = {**kw, **fixed}
    if family == "bayes_fourier":
        return icl_bayes_baselines.bayes_fourier_queries(xs, ys, queries, **kw)
    if family == "bayes_linear_mixture":
        return icl_bayes_baselines.bayes_linear_mixture_queries(xs, ys, queries, **kw)
    if family == "bayes_class_mixture":
        return icl_bayes_baselines.gaussian_mixture_queries(xs, ys, queries, **kw)
    if family in HOST_FAMILIES:
        return sklearn_queries(family, xs, ys, queries, **kw)
    if family == "nn_gd":
        return _nn_gd_jit(xs, ys, queries, tuple(sorted(kw.items())))
    return icl_baselines.predict_queries_jit(name, xs, ys, queries, **kw)


def predict(name: str, xs, ys, **kw) -> np.ndarray | jax.Array:
    """Any baseline's ``(b, n)`` predictions on the prompt itself (see :func:`predict_queries`)."""
    family, _ = parse_baseline(name)
    if family in LEARNED_FAMILIES:
        return predict_queries(name, xs, ys, jnp.asarray(xs)[:, :, None, :], **kw)[..., 0]
    return icl_baselines.predict(name, xs, ys, **kw)


def config_kwargs(get, function_class: str, task_kwargs: dict, noise_std: float, baselines) -> dict:
    """The learned and Bayes families' kwargs from ``config.task``, checked.

    Args:
      get: ``get(field, default)`` reads ``config.task.<field>``.
      function_class: the task's class.
      task_kwargs: the class's kwargs (defaults filled in).
      noise_std: the label noise std.
      baselines: the configured baseline names.

    Returns:
      ``{family: kwargs}`` for ``nn_gd``, ``tree``, ``boosting``,
      ``bayes_fourier``, ``bayes_linear_mixture`` and ``bayes_class_mixture``.

    Raises:
      ConfigError: a non-positive or non-integer field, or a Bayes predictor
        configured for a class it is not the predictor of.
    """
    hidden = get("nn_hidden")
    if hidden is None:
        hidden = int(task_kwargs.get("hidden_size", 100))
    v = {}
    for field, value, kind in (
        ("nn_hidden", hidden, int), ("nn_steps", get("nn_steps", 100), int), ("nn_lr", get("nn_lr", 5e-3), float),
        ("boosting_estimators", get("boosting_estimators", 100), int),
        ("boosting_lr", get("boosting_lr", 0.1), float), ("boosting_depth", get("boosting_depth", 3), int),
    ):
        check_positive(f"config.task.{field}", value)
        if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"config.task.{field}={value!r} must be an int > 0")
        v[field] = kind(value)
    for name, classes in (("bayes_fourier", FOURIER_CLASSES), ("bayes_linear_mixture", ("linear_mixture",)),
                          ("bayes_class_mixture", ("class_mixture",))):
        if name in baselines and function_class not in classes:
            raise ConfigError(f"config.task.baselines has {name!r}, which needs function_class in "
                              f"{', '.join(classes)} (got {function_class!r})")
    kw = task_kwargs
    bayes_fourier = {}
    if function_class in FOURIER_CLASSES:
        lo = int(kw["min_freq"]) if function_class == "fourier_mixture" else int(kw["max_freq"])
        bayes_fourier = {"max_freqs": tuple(range(lo, int(kw["max_freq"]) + 1)),
                         "half_period": float(kw["half_period"]), "noise_std": float(noise_std)}
    bayes_linear = {}
    if function_class == "linear_mixture":
        bayes_linear = {"sparsity": int(kw["sparsity"]), "dense_prob": float(kw["dense_prob"]),
                        "noise_std": float(noise_std)}
    bayes_class = {}
    if function_class == "class_mixture":
        members, probs = class_mixture_members(kw)
        if "bayes_class_mixture" in baselines:
            other = [m for m in members if m not in icl_bayes_baselines.GAUSSIAN_MEMBERS]
            if other:
                raise ConfigError(
                    f"config.task.baselines has 'bayes_class_mixture', which needs every member with p_<member> > 0 "
                    f"in {', '.join(icl_bayes_baselines.GAUSSIAN_MEMBERS)} (got {', '.join(other)})")
        bayes_class = {"weights": dict(zip(members, probs)), "sparsity": int(kw["sparsity"]),
                       "noise_std": float(noise_std)}
    return {
        "nn_gd": {"hidden": v["nn_hidden"], "steps": v["nn_steps"], "lr": v["nn_lr"]},
        "tree": {},
        "boosting": {"n_estimators": v["boosting_estimators"], "learning_rate": v["boosting_lr"],
                     "max_depth": v["boosting_depth"]},
        "bayes_fourier": bayes_fourier,
        "bayes_linear_mixture": bayes_linear,
        "bayes_class_mixture": bayes_class,
    }
