"""Samplers for in-context learning of function classes (pure JAX, jittable).

A prompt is ``n_points`` pairs ``(x_i, f(x_i))`` for one function ``f`` drawn
from a class; the model must predict ``y_i`` from ``x_i`` and the earlier
pairs (Garg et al. 2022, "What Can Transformers Learn In-Context?").

Function classes (``FUNCTION_CLASSES``); ``x ~ N(0, I_dim)`` with the
coordinates ``>= active_dim`` set to zero (Garg's curriculum) unless noted:

=======================  ==================================================
``linear``               ``y = w.x``, ``w ~ N(0, I)`` (Garg).
``noisy_linear``         ``y = w.x + noise_std * eps`` (Garg; Akyürek et al.).
``sparse_linear``        ``w`` with exactly ``sparsity`` (default 3, Garg)
                         nonzero coordinates among the active ones, no
                         rescaling (as Garg's public code).
``quadratic``            ``y = (x*x).w / sqrt(3)`` (Garg's renormalisation to
                         the linear scale).
``linear_classification`` ``y = sign(w.x)`` in ``{-1, +1}`` (no noise).
``relu2nn``              ``y = sqrt(2/h) * sum_k a_k relu(W_k.x)``, ``a, W``
                         standard normal, ``h = hidden_size`` (default 100,
                         Garg); ``Var y = active_dim`` like ``linear``.
``decision_tree``        depth ``depth`` (default 4, Garg) full binary tree;
                         each internal node tests ``x[c] > 0`` for a uniform
                         active coordinate ``c`` (right if true), leaves are
                         ``N(0, 1)``.
``fourier``              1-d Fourier series of ``u = x[0]`` (Panwar et al.,
                         "In-Context Learning through the Bayesian Prism"):
                         ``y = sum_{k=0..K} a_k cos(k pi u / L) +
                         sum_{k=1..K} b_k sin(k pi u / L)``, coefficients
                         ``N(0, 1)``, ``K = max_freq`` (default 10),
                         ``L = half_period`` (default 5); here x's active
                         coordinates are ``U(-L, L)`` instead of normal. Only
                         ``x[0]`` matters: use ``dim = 1`` as the paper does.
``fourier_mixture``      ``fourier`` with ``K`` uniform per prompt in
                         ``{min_freq..max_freq}`` (default 1..10;
                         Panwar et al.'s mixture), ``seqjax.data.icl_mixtures``;
                         the batch also holds each prompt's ``"freq"``.
``linear_mixture``       ``linear`` with probability ``dense_prob`` (0.5),
                         else ``sparse_linear`` (``sparsity`` 3) per prompt
                         (``seqjax.data.icl_mixtures``); the batch also
                         holds ``"w"`` and ``"dense"``.
``class_mixture``        per prompt, one of ``linear``, ``sparse_linear``,
                         ``quadratic``, ``relu2nn``, ``decision_tree`` drawn
                         with probability ``p_<member> / sum p`` (default
                         ``p_linear = p_decision_tree = 0.5``, Panwar et
                         al.'s DR + DT); the batch holds ``"member"``.
``sliding_window``       a sequential class ("Can Transformers Learn
                         Sequential Function Classes In Context?"): ``y_i =
                         sum_{j<window} w_j . x_{i-j}`` (``x_{<0} = 0``),
                         ``w_j ~ N(0, I/window)`` so ``Var y = active_dim``
                         once ``i >= window - 1``; default ``window = 3``.
=======================  ==================================================

``noise_std`` adds ``N(0, noise_std^2)`` to ``y`` of every regression class
(``noisy_linear`` is ``linear`` with the noise; the task checks it is > 0).
Defaults marked as Garg's are from the paper / its public code; the Fourier
and sliding-window details are our reading of those papers (see docs/icl.md).

``randomize_labels`` replaces a fraction of the in-context labels by other
prompts' (Campbell et al.'s randomised-label experiment; the task scores the
clean labels).

The model sees ``to_model_inputs(xs, ys)``: tokens ``x_0, (y_0, 0..0), x_1,
(y_1, 0..0), ...`` and its prediction of ``y_i`` is read at the ``x_i`` token
(even positions), so a causal model predicts ``y_i`` from ``x_i`` and the
pairs before it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from seqjax.data import icl_mixtures
from seqjax.errors import ConfigError, check_choice

FUNCTION_CLASSES = (
    "linear",
    "sparse_linear",
    "noisy_linear",
    "quadratic",
    "linear_classification",
    "relu2nn",
    "decision_tree",
    "fourier",
    "sliding_window",
    "fourier_mixture",
    "linear_mixture",
    "class_mixture",
)

# Per-class keyword arguments and their defaults (config.task.task_kwargs).
TASK_KWARGS: dict[str, dict[str, float | int]] = {
    "linear": {},
    "sparse_linear": {"sparsity": 3},
    "noisy_linear": {},
    "quadratic": {},
    "linear_classification": {},
    "relu2nn": {"hidden_size": 100},
    "decision_tree": {"depth": 4},
    "fourier": {"max_freq": 10, "half_period": 5.0},
    "sliding_window": {"window": 3},
    "fourier_mixture": {"min_freq": 1, "max_freq": 10, "half_period": 5.0},
    "linear_mixture": {"sparsity": 3, "dense_prob": 0.5},
    # p_<member>: the member's weight (>= 0, normalised); the members' own kwargs beside them.
    # Default: Panwar et al.'s DR + DT mixture, 0.5 each (their public config lr_dt.yaml).
    "class_mixture": {
        **{f"p_{m}": 0.0 for m in icl_mixtures.CLASS_MIXTURE_MEMBERS},
        "p_linear": 0.5, "p_decision_tree": 0.5,
        "sparsity": 3, "hidden_size": 100, "depth": 4,
    },
}

# Classes whose function is a linear weight vector; sample_batch returns it as "w".
LINEAR_WEIGHT_CLASSES = ("linear", "sparse_linear", "noisy_linear", "linear_classification")


def task_kwargs_with_defaults(task: str, task_kwargs: dict | None = None) -> dict:
    """The class's keyword arguments: defaults overridden by ``task_kwargs``.

    Args:
      task: a name in ``FUNCTION_CLASSES``.
      task_kwargs: overrides (keys must be the class's known kwargs).

    Returns:
      A new dict of all the class's kwargs.

    Raises:
      ConfigError: unknown class or unknown / non-positive kwarg.
    """
    check_choice("config.task.function_class", task, FUNCTION_CLASSES)
    allowed = TASK_KWARGS[task]
    out = dict(allowed)
    for name, value in dict(task_kwargs or {}).items():
        if name not in allowed:
            raise ConfigError(
                f"config.task.task_kwargs.{name} is not allowed for function_class={task!r}; "
                f"allowed: {', '.join(allowed) or '(none)'}"
            )
        weight = name.startswith("p_")  # a class_mixture weight may be 0 (member left out)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (value == 0 and not weight):
            raise ConfigError(f"config.task.task_kwargs.{name}={value!r} must be a number {'>= 0' if weight else '> 0'}")
        if isinstance(allowed[name], int) and value != int(value):  # a count: 2.7 would silently become 2
            raise ConfigError(f"config.task.task_kwargs.{name}={value!r} must be a whole number")
        out[name] = type(allowed[name])(value)
    if task == "fourier_mixture" and out["min_freq"] > out["max_freq"]:
        raise ConfigError(
            f"config.task.task_kwargs.min_freq={out['min_freq']} must be <= max_freq={out['max_freq']}"
        )
    if task == "linear_mixture" and out["dense_prob"] > 1:
        raise ConfigError(f"config.task.task_kwargs.dense_prob={out['dense_prob']} must be in (0, 1]")
    if task == "class_mixture":
        icl_mixtures.class_mixture_members(out)  # raises when every weight is 0
    return out


def _sample_x(key, batch_size, n_points, dim, active_mask, task, kw):
    if task in ("fourier", "fourier_mixture"):
        half = kw["half_period"]
        xs = jax.random.uniform(key, (batch_size, n_points, dim), minval=-half, maxval=half)
    else:
        xs = jax.random.normal(key, (batch_size, n_points, dim))
    return xs * active_mask


def _decision_tree(key, xs, active_dim, depth):
    b = xs.shape[0]
    k_coord, k_leaf = jax.random.split(key)
    n_internal = 2**depth - 1
    # randint's maxval may be traced: the active dimension can change per step.
    coords = jax.random.randint(k_coord, (b, n_internal), 0, active_dim)
    leaves = jax.random.normal(k_leaf, (b, 2**depth))
    node = jnp.zeros(xs.shape[:2], jnp.int32)
    for _ in range(depth):
        c = jnp.take_along_axis(coords, node, axis=1)  # (b, n)
        xc = jnp.take_along_axis(xs, c[..., None], axis=2)[..., 0]
        node = 2 * node + 1 + (xc > 0).astype(jnp.int32)
    return jnp.take_along_axis(leaves, node - n_internal, axis=1)


def _labels(task, k_f, xs, active_mask, active_dim, kw):
    """Noise-free labels of ``xs`` under one class; returns ``(ys, extras)`` (``w``, ``freq``, ...)."""
    batch_size, n_points, dim = xs.shape
    out = {}
    if task in ("linear", "noisy_linear", "linear_classification", "quadratic"):
        w = jax.random.normal(k_f, (batch_size, dim)) * active_mask
        feats = xs * xs if task == "quadratic" else xs
        ys = jnp.einsum("bnd,bd->bn", feats, w)
        if task == "quadratic":
            ys = ys / math.sqrt(3.0)  # E[x^2 x^2] = 3: back to the linear scale
        if task == "linear_classification":
            ys = jnp.where(ys >= 0, 1.0, -1.0)
        out["w"] = w
    elif task == "sparse_linear":
        k_w, k_perm = jax.random.split(k_f)
        w = jax.random.normal(k_w, (batch_size, dim))
        # A uniform k-subset of the active coordinates: top-k of uniform scores,
        # inactive coordinates scored below every active one.
        scores = jax.random.uniform(k_perm, (batch_size, dim))
        scores = jnp.where(active_mask > 0, scores, -1.0)
        k = min(int(kw["sparsity"]), dim)
        _, idx = jax.lax.top_k(scores, k)
        support = jnp.sum(jax.nn.one_hot(idx, dim), axis=1)
        w = w * support * active_mask
        ys = jnp.einsum("bnd,bd->bn", xs, w)
        out["w"] = w
    elif task == "relu2nn":
        h = int(kw["hidden_size"])
        k1, k2 = jax.random.split(k_f)
        w1 = jax.random.normal(k1, (batch_size, dim, h))
        w2 = jax.random.normal(k2, (batch_size, h))
        hidden = jax.nn.relu(jnp.einsum("bnd,bdh->bnh", xs, w1))
        ys = jnp.einsum("bnh,bh->bn", hidden, w2) * math.sqrt(2.0 / h)
    elif task == "decision_tree":
        ys = _decision_tree(k_f, xs, active_dim, int(kw["depth"]))
    elif task == "fourier":
        kmax = int(kw["max_freq"])
        k_a, k_b = jax.random.split(k_f)
        a = jax.random.normal(k_a, (batch_size, kmax + 1))
        bcoef = jax.random.normal(k_b, (batch_size, kmax))
        u = xs[..., 0:1] * (math.pi / kw["half_period"])  # (b, n, 1)
        freqs = jnp.arange(kmax + 1, dtype=jnp.float32)
        ys = jnp.einsum("bnk,bk->bn", jnp.cos(u * freqs), a)
        ys = ys + jnp.einsum("bnk,bk->bn", jnp.sin(u * freqs[1:]), bcoef)
    elif task == "fourier_mixture":
        ys, out["freq"] = icl_mixtures.sample_fourier_mixture(
            k_f, xs, int(kw["min_freq"]), int(kw["max_freq"]), kw["half_period"]
        )
    elif task == "linear_mixture":
        ys, out["w"], out["dense"] = icl_mixtures.sample_linear_mixture(
            k_f, xs, active_mask, int(kw["sparsity"]), kw["dense_prob"]
        )
    else:  # sliding_window
        window = int(kw["window"])
        w = jax.random.normal(k_f, (batch_size, window, dim)) * active_mask / math.sqrt(window)
        proj = jnp.einsum("bnd,bjd->bnj", xs, w)  # proj[b, i, j] = w_j . x_i
        ys = jnp.zeros((batch_size, n_points), jnp.float32)
        for j in range(min(window, n_points)):
            # lag j: y_i += w_j . x_{i-j}, nothing for i < j.
            ys = ys.at[:, j:].add(proj[:, : n_points - j, j])
        out["w"] = w

    return ys, out


def _class_mixture(key, xs, active_mask, active_dim, kw):
    """Each prompt's class drawn from the members with ``p_<class> > 0``; every member sampled, one kept.

    Sampling every member on the same ``xs`` and selecting per prompt keeps the
    batch one jittable computation (the members are static: those with a
    positive weight); at CPU sizes the extra members cost little.
    """
    members, probs = icl_mixtures.class_mixture_members(kw)
    k_sel, k_members = jax.random.split(key)
    choice = jax.random.categorical(k_sel, jnp.log(jnp.asarray(probs)), shape=(xs.shape[0],))
    ys = jnp.zeros(xs.shape[:2], jnp.float32)
    for j, name in enumerate(members):
        member_kw = {k: kw[k] for k in TASK_KWARGS[name]}
        ys_j, _ = _labels(name, jax.random.fold_in(k_members, j), xs, active_mask, active_dim, member_kw)
        ys = jnp.where((choice == j)[:, None], ys_j, ys)
    index = jnp.asarray([icl_mixtures.CLASS_MIXTURE_MEMBERS.index(m) for m in members], jnp.int32)
    return ys, {"member": index[choice]}


def sample_batch(
    key: jax.Array,
    task: str,
    batch_size: int,
    n_points: int,
    dim: int,
    *,
    active_dim: int | jax.Array | None = None,
    noise_std: float = 0.0,
    **task_kwargs,
) -> dict[str, jax.Array]:
    """Samples ``batch_size`` prompts of one function class.

    Jittable with ``task``, ``batch_size``, ``n_points``, ``dim`` and the task
    kwargs static; ``active_dim`` and ``noise_std`` may be traced (so a change
    of the curriculum's dimension does not recompile).

    Args:
      key: PRNG key; the batch is a deterministic function of it.
      task: a name in ``FUNCTION_CLASSES``.
      batch_size: prompts.
      n_points: pairs per prompt.
      dim: width of ``x``.
      active_dim: coordinates ``>= active_dim`` of ``x`` (and of ``w``) are
        zero; ``None`` means ``dim``.
      noise_std: std of Gaussian noise added to ``y`` (regression classes).
      **task_kwargs: class-specific, see ``TASK_KWARGS``.

    Returns:
      ``{"xs": (b, n, dim) float32, "ys": (b, n) float32}`` plus ``"w"``
      ``(b, dim)`` for the classes in ``LINEAR_WEIGHT_CLASSES`` and
      ``quadratic``, ``(b, window, dim)`` for ``sliding_window``; ``"freq"``
      ``(b,)`` int32 (each prompt's ``K``) for ``fourier_mixture``; ``"w"`` and
      ``"dense"`` ``(b,)`` bool for ``linear_mixture``; ``"member"`` ``(b,)``
      int32 (index into ``CLASS_MIXTURE_MEMBERS``) for ``class_mixture``.

    Raises:
      ConfigError: unknown class or kwarg, or ``active_dim > dim``.
    """
    kw = task_kwargs_with_defaults(task, task_kwargs)
    if active_dim is None:
        active_dim = dim
    if isinstance(active_dim, int) and not 0 < active_dim <= dim:
        raise ConfigError(f"active_dim={active_dim!r} must be in [1, dim={dim}]")
    k_x, k_f, k_noise = jax.random.split(key, 3)
    active_mask = (jnp.arange(dim) < active_dim).astype(jnp.float32)
    xs = _sample_x(k_x, batch_size, n_points, dim, active_mask, task, kw)
    if task == "class_mixture":
        ys, out = _class_mixture(k_f, xs, active_mask, active_dim, kw)
    else:
        ys, out = _labels(task, k_f, xs, active_mask, active_dim, kw)

    if task != "linear_classification":
        ys = ys + noise_std * jax.random.normal(k_noise, ys.shape)
    out["xs"] = xs.astype(jnp.float32)
    out["ys"] = ys.astype(jnp.float32)
    return out


def randomize_labels(key: jax.Array, ys: jax.Array, fraction: float) -> tuple[jax.Array, jax.Array]:
    """Randomised in-context labels (the label experiment of Campbell et al. 2023).

    Each label ``ys[b, i]`` is replaced, independently with probability
    ``fraction``, by the label at the same point of another prompt of the
    batch (``b' = (b + r) mod B``, ``r`` uniform in ``1..B-1``): a label of
    the right scale and marginal distribution that carries no information
    about prompt ``b``'s function. Only the tokens the model reads change;
    the task scores its predictions against the clean ``ys``.

    Args:
      key: PRNG key; the result is a deterministic function of it.
      ys: ``(B, n)`` clean labels, ``B >= 2``.
      fraction: replacement probability in ``[0, 1]`` (may be traced).

    Returns:
      ``(ys_context, replaced)``: the labels the model sees ``(B, n)`` and the
      bool mask of replaced labels.
    """
    b, n = ys.shape
    if b < 2:
        raise ConfigError(f"randomized labels need a batch of >= 2 prompts (got {b})")
    k_mask, k_src = jax.random.split(key)
    replaced = jax.random.uniform(k_mask, (b, n)) < fraction
    src = (jnp.arange(b)[:, None] + jax.random.randint(k_src, (b, n), 1, b)) % b
    other = jnp.take_along_axis(ys, src, axis=0)
    return jnp.where(replaced, other, ys), replaced


# fold_in of a batch's key that draws its randomised labels (independent of the prompts' own draws).
LABEL_NOISE_STREAM = 7


def context_labels(key: jax.Array, ys: jax.Array, fraction: float) -> tuple[jax.Array, jax.Array]:
    """The labels the model reads: ``ys`` with a ``fraction`` randomised (none when 0).

    Args:
      key: the batch's key; the labels are drawn from ``fold_in(key, LABEL_NOISE_STREAM)``.
      ys: ``(B, n)`` clean labels.
      fraction: static replacement probability in ``[0, 1]``.

    Returns:
      ``(ys_context, replaced)`` as :func:`randomize_labels`.
    """
    if fraction == 0:
        return ys, jnp.zeros(ys.shape, bool)
    return randomize_labels(jax.random.fold_in(key, LABEL_NOISE_STREAM), ys, fraction)


def to_model_inputs(xs: jax.Array, ys: jax.Array) -> jax.Array:
    """Interleaves a prompt into model tokens.

    Args:
      xs: ``(b, n, dim)``.
      ys: ``(b, n)``.

    Returns:
      ``(b, 2n, dim)``: token ``2i`` is ``x_i``, token ``2i+1`` is
      ``(y_i, 0, ..., 0)``. The prediction of ``y_i`` is read at token ``2i``.
    """
    b, n, d = xs.shape
    y_tok = jnp.zeros_like(xs).at[..., 0].set(ys.astype(xs.dtype))
    return jnp.stack([xs, y_tok], axis=2).reshape(b, 2 * n, d)


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """Garg et al.'s curriculum: the problem grows in steps of ``interval``.

    At step ``s``, with ``k = s // interval``: ``active_dim = min(dim_start +
    k * dim_inc, dim_end)`` and ``n_points = min(points_start + k *
    points_inc, points_end)``. The defaults are Garg's: d 5 -> 20 (+1) and
    points 11 -> 41 (+2), every 2000 steps.

    Attributes:
      dim_start: active dimension at step 0.
      dim_end: largest active dimension.
      dim_inc: added to the active dimension every ``interval`` steps.
      points_start: points per prompt at step 0.
      points_end: largest number of points.
      points_inc: added to the points every ``interval`` steps.
      interval: steps per curriculum stage.
    """

    dim_start: int = 5
    dim_end: int = 20
    dim_inc: int = 1
    points_start: int = 11
    points_end: int = 41
    points_inc: int = 2
    interval: int = 2000

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            zero_ok = f.name in ("dim_inc", "points_inc")
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero_ok else 1):
                bound = ">= 0" if zero_ok else "> 0"
                raise ConfigError(f"config.task.curriculum.{f.name}={value!r} must be an int {bound}")
        if self.dim_start > self.dim_end:
            raise ConfigError(
                f"config.task.curriculum.dim_start={self.dim_start} must be <= dim_end={self.dim_end}"
            )
        if self.points_start > self.points_end:
            raise ConfigError(
                f"config.task.curriculum.points_start={self.points_start} must be <= "
                f"points_end={self.points_end}"
            )

    def at(self, step: int) -> tuple[int, int]:
        """The stage at a training step.

        Args:
          step: the training step (0-based).

        Returns:
          ``(active_dim, n_points)``.
        """
        k = int(step) // self.interval
        return (
            min(self.dim_start + k * self.dim_inc, self.dim_end),
            min(self.points_start + k * self.points_inc, self.points_end),
        )
