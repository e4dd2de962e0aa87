"""The actor-critic's parallel form over a multi-episode rollout equals its step-by-step run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.rl.agent import ActorCritic

KW = {"s5": (("d_state", 8), ("dt_min", 0.05), ("dt_max", 0.5)), "lstm": (("num_heads", 2),)}


def _rollout_inputs(rng, batch=3, T=13, obs_dim=4):
    obs = jnp.asarray(rng.normal(size=(batch, T, obs_dim)), jnp.float32)
    starts = rng.random((batch, T)) < 0.25
    starts[:, 0] = True
    starts[0, 4] = starts[1, 7] = True
    starts[2, 1:] = False
    return obs, jnp.asarray(starts)


def _step_loop(net, v, obs, starts):
    cache = net.apply(v, obs.shape[0], method="init_cache")
    step = jax.jit(lambda v, o, c, r: net.apply(v, o, c, r, method="step"))
    outs = []
    for t in range(obs.shape[1]):
        logits, value, cache = step(v, obs[:, t], cache, starts[:, t])
        outs.append((logits, value))
    return jnp.stack([o[0] for o in outs], 1), jnp.stack([o[1] for o in outs], 1)


# The LSTM's step-with-reset vs segments is also in tests/mixers/test_reset.py (default run); here it is slow.
@pytest.mark.parametrize("mixer,resets", [("s5", True), ("s5", False),
                                          pytest.param("lstm", True, marks=pytest.mark.slow)])
def test_parallel_form_equals_step_loop(mixer, resets, rng):
    net = ActorCritic(mixer=mixer, num_actions=3, d_model=16, num_layers=2, mixer_kwargs=KW[mixer], resets=resets)
    obs, starts = _rollout_inputs(rng)
    v = net.init(jax.random.PRNGKey(0), obs, starts)
    # Random (not initial) parameters everywhere, so the heads are not near zero.
    v = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(1), p.shape, p.dtype), v)
    logits_par, values_par = jax.jit(net.apply)(v, obs, starts)
    logits_step, values_step = _step_loop(net, v, obs, starts)
    scale = float(jnp.abs(logits_par).max())
    np.testing.assert_allclose(logits_step, logits_par, atol=2e-5 * max(scale, 1.0), rtol=2e-5)
    np.testing.assert_allclose(values_step, values_par, atol=2e-5 * max(1.0, float(jnp.abs(values_par).max())),
                               rtol=2e-5)
    # The resets matter (or, without resets, are ignored): compare with the run that never restarts.
    never = jnp.zeros_like(starts).at[:, 0].set(True)
    logits_never, _ = net.apply(v, obs, never)
    differs = float(jnp.abs(logits_never[0, 4:] - logits_par[0, 4:]).max()) > 1e-4
    assert differs == resets


def test_resets_need_a_resettable_mixer():
    net = ActorCritic(mixer="gru", num_actions=2, d_model=8, mixer_kwargs=(("num_heads", 2),))
    with pytest.raises(ConfigError, match="config.model.mixer='gru' cannot reset"):
        net.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 4)))
