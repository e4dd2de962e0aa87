"""The clipped PPO objective (Schulman et al. 2017) with value clipping and an entropy bonus.

For a minibatch of steps with old log-probabilities ``log π_old(a|s)``, old
values ``V_old``, advantages ``A`` (normalised over the minibatch) and value
targets ``R``::

    ρ = exp(log π(a|s) − log π_old(a|s))
    L_π = −mean(min(ρ A, clip(ρ, 1 − ε, 1 + ε) A))
    V_c = V_old + clip(V − V_old, −ε, ε)
    L_V = ½ mean(max((V − R)², (V_c − R)²))
    L = L_π + c_V L_V − c_H mean(H[π(·|s)])

(the value clipping and per-minibatch advantage normalisation as in the PPO
baselines and PureJaxRL, which Lu et al. 2023 build on).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class PPOBatch(NamedTuple):
    """What the loss needs of the rollout, any leading shape.

    Attributes:
      actions: int actions taken.
      log_probs: ``log π_old(a|s)`` at acting time.
      values: ``V_old(s)`` at acting time.
      advantages: GAE advantages.
      targets: value targets ``A + V_old``.
    """

    actions: jax.Array
    log_probs: jax.Array
    values: jax.Array
    advantages: jax.Array
    targets: jax.Array


def ppo_loss(logits: jax.Array, values: jax.Array, batch: PPOBatch, *, clip_eps: float, vf_coef: float,
             ent_coef: float, normalize_advantages: bool = True) -> tuple[jax.Array, dict]:
    """The clipped PPO loss of the module docstring.

    Args:
      logits: ``(..., num_actions)`` policy logits under the current parameters.
      values: ``(...)`` values under the current parameters.
      batch: the rollout's :class:`PPOBatch` of the same leading shape.
      clip_eps: ``ε``, for the ratio and the value.
      vf_coef: ``c_V``.
      ent_coef: ``c_H``.
      normalize_advantages: normalise ``A`` to mean 0, std 1 over the minibatch.

    Returns:
      ``(loss, aux)``: the scalar loss and ``policy_loss``, ``value_loss``, ``entropy``,
      ``approx_kl``, ``clip_frac``.
    """
    logits = logits.astype(jnp.float32)
    log_pi = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(log_pi, batch.actions[..., None].astype(jnp.int32), axis=-1)[..., 0]
    adv = batch.advantages.astype(jnp.float32)
    if normalize_advantages:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    log_ratio = logp - batch.log_probs
    ratio = jnp.exp(log_ratio)
    policy_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv).mean()
    values = values.astype(jnp.float32)
    clipped = batch.values + jnp.clip(values - batch.values, -clip_eps, clip_eps)
    value_loss = 0.5 * jnp.maximum((values - batch.targets) ** 2, (clipped - batch.targets) ** 2).mean()
    entropy = -(jnp.exp(log_pi) * log_pi).sum(-1).mean()
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy
    aux = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
           "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
           "clip_frac": (jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32).mean()}
    return loss, aux


__all__ = ["PPOBatch", "ppo_loss"]
