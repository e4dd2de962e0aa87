"""The optimiser: per-group Adam(W), the learning-rate schedule and clipping.

Every parameter is in one of three groups; which one is decided by the model
(:mod:`seqjax.models.param_groups`: the mixers declare their SSM dynamics),
and this module only receives the labels:

``"ssm"``
  SSM dynamics: their own learning rate (``config.optim.ssm_learning_rate``,
  ``None`` = the base rate) and no weight decay. S4, S4D and S5 train Λ, Δ
  and B with a smaller rate and no decay, and decaying ``A_log``/``dt_bias``
  would pull Mamba's decay rates towards a fixed value instead of towards
  "no memory".
``"no_decay"``
  Norm scales, biases, embedding tables and every other parameter of rank
  <= 1: base learning rate, no weight decay.
``"decay"``
  Everything else: base learning rate and weight decay.

The schedule is a linear warm-up followed by a cosine decay to
``min_lr_ratio * learning_rate`` at ``config.train.steps`` (or a constant rate
after warm-up). The whole update is: global-norm clipping (``clip_norm``,
0 = off) → per-group Adam(W).
"""

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from seqjax.errors import ConfigError, check_choice, check_positive
from seqjax.models.param_groups import GROUPS

OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "constant")


def make_schedule(
    learning_rate: float, *, steps: int, warmup_steps: int = 0, schedule: str = "cosine", min_lr_ratio: float = 0.0
) -> Callable[[Any], jax.Array]:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * learning_rate`` (or constant).

    With ``t`` the number of updates already applied (optax's ``count``):
    ``lr(t) = learning_rate * (t + 1) / warmup_steps`` for ``t < warmup_steps``
    (the first update already moves: no wasted step at rate 0); after that
    ``min + (learning_rate - min) * (1 + cos(pi * (t - warmup) / (steps - warmup))) / 2``
    for ``"cosine"`` (held at ``min`` past ``steps``) or ``learning_rate`` for ``"constant"``.

    Args:
      learning_rate: peak rate.
      steps: total number of updates (end of the cosine).
      warmup_steps: length of the linear warm-up.
      schedule: ``"cosine"`` or ``"constant"``.
      min_lr_ratio: final rate of the cosine as a fraction of the peak.

    Returns:
      ``count -> lr`` (jittable, float32).
    """
    check_choice("config.optim.schedule", schedule, SCHEDULES)
    peak, floor = float(learning_rate), float(learning_rate) * float(min_lr_ratio)
    decay_steps = max(int(steps) - int(warmup_steps), 0)

    def fn(count):
        t = jnp.asarray(count, jnp.float32)
        if warmup_steps > 0:
            warm = peak * (t + 1.0) / warmup_steps
        else:
            warm = jnp.float32(peak)
        if schedule == "constant" or decay_steps == 0:
            after = jnp.float32(peak)
        else:
            frac = jnp.clip((t - warmup_steps) / decay_steps, 0.0, 1.0)
            after = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(math.pi * frac))
        return jnp.where(t < warmup_steps, warm, after).astype(jnp.float32)

    return fn


def validate(optim: Mapping, steps: int) -> None:
    """Checks ``config.optim`` (needs ``config.train.steps`` for the warm-up bound).

    Raises:
      ConfigError: naming the first bad field.
    """
    check_choice("config.optim.optimizer", optim.get("optimizer"), OPTIMIZERS)
    check_choice("config.optim.schedule", optim.get("schedule"), SCHEDULES)
    check_positive("config.optim.learning_rate", optim.get("learning_rate"))
    if optim.get("ssm_learning_rate") is not None:
        # 0 is allowed: it freezes the SSM dynamics (an ablation the S5 code also offers).
        check_positive("config.optim.ssm_learning_rate", optim.get("ssm_learning_rate"), allow_zero=True)
    check_positive("config.optim.weight_decay", optim.get("weight_decay"), allow_zero=True)
    for field in ("b1", "b2"):
        value = optim.get(field)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1):
            raise ConfigError(f"config.optim.{field}={value!r} must be a number in [0, 1)")
    check_positive("config.optim.eps", optim.get("eps"))
    warmup = optim.get("warmup_steps")
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ConfigError(f"config.optim.warmup_steps={warmup!r} must be an int >= 0")
    if isinstance(steps, int) and warmup > steps:
        raise ConfigError(f"config.optim.warmup_steps={warmup!r} must be <= config.train.steps={steps}")
    ratio = optim.get("min_lr_ratio")
    if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0 <= ratio <= 1):
        raise ConfigError(f"config.optim.min_lr_ratio={ratio!r} must be a number in [0, 1]")
    check_positive("config.optim.clip_norm", optim.get("clip_norm"), allow_zero=True)


def _group_transform(optimizer: str, lr, weight_decay: float, b1: float, b2: float, eps: float):
    """Adam(W) for one group; ``adam`` with decay adds an L2 term to the gradient (PyTorch Adam)."""
    if optimizer == "adamw" and weight_decay > 0:
        return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=None)
    tx = optax.adam(lr, b1=b1, b2=b2, eps=eps)
    if optimizer == "adam" and weight_decay > 0:
        return optax.chain(optax.add_decayed_weights(weight_decay), tx)
    return tx


def make_optimizer(
    optim: Mapping, steps: int, labels: Any | Callable[[Any], Any]
) -> tuple[optax.GradientTransformation, dict[str, Callable]]:
    """The full optimiser from ``config.optim``.

    Args:
      optim: ``config.optim`` (fields in docs/training.md).
      steps: ``config.train.steps`` (length of the cosine).
      labels: the group (one of :data:`GROUPS`) of every parameter leaf: a
        tree like the params, or a function of the params returning one
        (``seqjax.models.param_groups.labeler(config.model)``).

    Returns:
      ``(tx, schedules)``: the optax transformation and
      ``{"lr": ..., "ssm_lr": ...}`` schedules for logging.

    Raises:
      ConfigError: a bad ``config.optim`` field.
    """
    validate(optim, steps)
    kw = dict(steps=steps, warmup_steps=optim["warmup_steps"], schedule=optim["schedule"],
              min_lr_ratio=optim["min_lr_ratio"])
    ssm_rate = optim.get("ssm_learning_rate")
    lr = make_schedule(optim["learning_rate"], **kw)
    ssm_lr = lr if ssm_rate is None else make_schedule(ssm_rate, **kw)
    adam = dict(b1=float(optim["b1"]), b2=float(optim["b2"]), eps=float(optim["eps"]))
    name = optim["optimizer"]
    groups = {
        "decay": _group_transform(name, lr, float(optim["weight_decay"]), **adam),
        "no_decay": _group_transform(name, lr, 0.0, **adam),
        "ssm": _group_transform(name, ssm_lr, 0.0, **adam),
    }
    parts = []
    if optim["clip_norm"] > 0:
        # Clip the global norm over all groups together, before the groups split.
        parts.append(optax.clip_by_global_norm(float(optim["clip_norm"])))
    parts.append(optax.multi_transform(groups, labels))
    return optax.chain(*parts), {"lr": lr, "ssm_lr": ssm_lr}


__all__ = ["GROUPS", "make_schedule", "make_optimizer", "validate"]
