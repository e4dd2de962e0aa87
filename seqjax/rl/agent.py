"""The recurrent actor-critic: embedding → residual mixer layers → policy and value heads.

One network, two ways to run it (Lu et al. 2023):

* acting, one step at a time: :meth:`ActorCritic.step` calls every mixer's
  ``step(x_t, cache, reset)``; ``reset[b]`` (the previous step ended an episode
  or trial of row ``b``) restarts that row's state from the empty cache;
* learning, the whole rollout at once: :meth:`ActorCritic.__call__` runs the
  mixers' parallel form with ``segment_ids`` (a new id where a reset is), which
  equals the step loop with the same resets (``tests/rl/test_agent.py``).

Where the state comes from at the start of a rollout: every rollout here starts
from fresh environments and the empty state (``seqjax.rl.train``), and its
length is a whole number of reset units, so the parallel form over the rollout
starts from the same (empty) state as the step loop did, and no state has to be
carried into it. (Lu et al. carry the hidden state across rollouts and pass it
in as the scan's initial state; the registry mixers' parallel form has no
initial-state argument, and restarting at rollout boundaries that are also
episode/trial boundaries loses nothing for the fixed-length tasks here.)

``resets=False`` (the "S5 without resets" of the paper): the state is never
restarted inside a rollout; acting passes ``reset=None`` and learning no
segment ids.

Layer ``l``: ``h ← h + mixer_l(LayerNorm(h))``; the embedding is a Dense
read-in of the observation; the heads are ``Dense(d) → tanh → Dense`` on the
final LayerNorm's output.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax import mixers as mixer_registry
from seqjax.errors import ConfigError


class ActorCritic(nn.Module):
    """Recurrent actor-critic over a registry mixer (see the module docstring).

    Attributes:
      mixer: a registry mixer name whose class is causal and (with ``resets``) resettable.
      num_actions: discrete actions.
      d_model: the width.
      num_layers: mixer layers.
      mixer_kwargs: the mixer's fields (besides ``d_model``).
      resets: restart the state at episode/trial ends (False: never inside a rollout).
    """

    mixer: str
    num_actions: int
    d_model: int = 32
    num_layers: int = 1
    mixer_kwargs: tuple[tuple[str, Any], ...] = ()
    resets: bool = True

    def setup(self):
        if self.mixer not in mixer_registry.names():
            raise ConfigError(f"config.model.mixer={self.mixer!r} is not a registry mixer")
        cls = mixer_registry.get(self.mixer)
        if self.resets and not cls.resettable:
            raise ConfigError(f"config.model.mixer={self.mixer!r} cannot reset its state per row; use a resettable "
                              "mixer (s5, lru, lstm, ...) or config.model.resets=False")
        self.embed = nn.Dense(self.d_model, name="embed")
        self.norms = [nn.LayerNorm(name=f"norm_{i}") for i in range(self.num_layers)]
        self.layers = [cls(d_model=self.d_model, **dict(self.mixer_kwargs), name=f"mixer_{i}")
                       for i in range(self.num_layers)]
        self.final_norm = nn.LayerNorm(name="final_norm")
        self.pi_hidden = nn.Dense(self.d_model, name="pi_hidden")
        self.pi_out = nn.Dense(self.num_actions, kernel_init=nn.initializers.orthogonal(0.01), name="pi_out")
        self.v_hidden = nn.Dense(self.d_model, name="v_hidden")
        self.v_out = nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0), name="v_out")

    def _heads(self, h):
        h = self.final_norm(h)
        logits = self.pi_out(jnp.tanh(self.pi_hidden(h)))
        value = self.v_out(jnp.tanh(self.v_hidden(h)))[..., 0]
        return logits, value

    def __call__(self, obs: jax.Array, starts: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """The parallel form over a rollout.

        Args:
          obs: ``(batch, T, obs_dim)`` observations.
          starts: ``(batch, T)`` booleans, the state restarts before step ``t``
            (ignored when ``resets`` is False).

        Returns:
          ``(logits (batch, T, num_actions), values (batch, T))``.
        """
        segment_ids = None
        if self.resets and starts is not None:
            segment_ids = jnp.cumsum(starts.astype(jnp.int32), axis=1)
        h = self.embed(obs)
        for norm, layer in zip(self.norms, self.layers):
            h = h + layer(norm(h), segment_ids=segment_ids)
        return self._heads(h)

    def init_cache(self, batch_size: int) -> list:
        """The empty state of every layer for ``batch_size`` rows."""
        return [layer.init_cache(batch_size) for layer in self.layers]

    def step(self, obs_t: jax.Array, cache: list, reset: jax.Array | None = None):
        """One step of acting.

        Args:
          obs_t: ``(batch, obs_dim)``.
          cache: from :meth:`init_cache` or the previous step.
          reset: ``(batch,)`` booleans: restart these rows' state first (ignored when ``resets`` is False).

        Returns:
          ``(logits (batch, num_actions), value (batch,), cache)``.
        """
        h = self.embed(obs_t)
        new_cache = []
        for norm, layer, c in zip(self.norms, self.layers, cache):
            y, c = layer.step(norm(h), c, reset if self.resets else None)
            h = h + y
            new_cache.append(c)
        logits, value = self._heads(h)
        return logits, value, new_cache


MODELS = {"s5": ("s5", True), "s5_noreset": ("s5", False), "lstm": ("lstm", True)}
"""The paper's comparison: ``model`` → ``(mixer, resets)``."""


__all__ = ["ActorCritic", "MODELS"]
