"""Generalised advantage estimation (Schulman et al. 2016) over rollouts with episode ends inside.

For a rollout ``(batch, T)`` of rewards ``r_t``, values ``V_t = V(s_t)`` and
``done_t`` (the step ``t`` ended a reset unit: no bootstrap across it)::

    δ_t = r_t + γ V_{t+1} (1 − done_t) − V_t
    A_t = δ_t + γ λ (1 − done_t) A_{t+1}
    R_t = A_t + V_t                      (the value target)

with ``V_T`` the value of the state after the rollout (``last_value``).
"""

import jax
import jax.numpy as jnp


def gae(rewards: jax.Array, values: jax.Array, dones: jax.Array, last_value: jax.Array, *, gamma: float,
        lam: float) -> tuple[jax.Array, jax.Array]:
    """Advantages and value targets of a batch-first rollout.

    Args:
      rewards: ``(batch, T)`` rewards ``r_t``.
      values: ``(batch, T)`` values ``V(s_t)``.
      dones: ``(batch, T)`` booleans: step ``t`` ended an episode (or trial).
      last_value: ``(batch,)`` ``V(s_T)``, the bootstrap after the last step.
      gamma: discount ``γ``.
      lam: GAE's ``λ``.

    Returns:
      ``(advantages, targets)``, both ``(batch, T)`` float32.
    """
    rewards, values = rewards.astype(jnp.float32), values.astype(jnp.float32)
    cont = 1.0 - dones.astype(jnp.float32)
    next_values = jnp.concatenate([values[:, 1:], last_value.astype(jnp.float32)[:, None]], axis=1)
    deltas = rewards + gamma * next_values * cont - values

    def body(carry, inputs):
        delta, c = inputs
        carry = delta + gamma * lam * c * carry
        return carry, carry

    # Backwards over time (time-major scan, reversed).
    _, adv = jax.lax.scan(body, jnp.zeros_like(last_value, jnp.float32), (deltas.T, cont.T), reverse=True)
    adv = adv.T
    return adv, adv + values


__all__ = ["gae"]
