"""Exactness of the in-context RL environments: steps against hand-computed transitions.

RepeatPrevious follows POPGym's definition (``popgym/envs/repeat_previous.py``);
MetaBandit gymnax's BernoulliBandit-misc arms, as a multi-episode trial
(``seqjax/rl/envs.py``). Each test writes the expected observation, reward and
flags out by hand from the definition.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.rl import envs


def _rp_state(suits, dealt):
    return envs.RepeatPreviousState(jnp.asarray(suits, jnp.int32), jnp.asarray(dealt, jnp.int32))


def test_repeat_previous_hand_computed_steps():
    env = envs.RepeatPrevious(num_decks=1, k=2)
    suits = np.arange(52) % 4
    suits[:5] = [3, 1, 1, 0, 2]
    state = _rp_state(suits, 1)
    scale = 1.0 / 50.0  # 1 / (N - k)
    key = jax.random.PRNGKey(0)
    # Step 1: one card dealt < k = 2: no score; deal card 1 (suit 1).
    obs, state, r, done, ep = env.step(key, state, jnp.asarray(0))
    assert float(r) == 0.0 and not bool(done) and not bool(ep)
    np.testing.assert_array_equal(obs, [0, 1, 0, 0])
    assert int(state.dealt) == 2
    # Step 2: hand = [3, 1]; hand[-2] = 3. Right answer: +1/50.
    obs, state, r, done, _ = env.step(key, state, jnp.asarray(3))
    assert float(r) == pytest.approx(scale) and not bool(done)
    np.testing.assert_array_equal(obs, [0, 1, 0, 0])  # card 2 has suit 1
    # Step 3: hand = [3, 1, 1]; hand[-2] = 1. Wrong answer 0: -1/50.
    obs, state, r, _, _ = env.step(key, state, jnp.asarray(0))
    assert float(r) == pytest.approx(-scale)
    np.testing.assert_array_equal(obs, [1, 0, 0, 0])  # card 3 has suit 0
    # Step 4: hand = [3, 1, 1, 0]; hand[-2] = 1: right.
    _, state, r, _, _ = env.step(key, state, jnp.asarray(1))
    assert float(r) == pytest.approx(scale) and int(state.dealt) == 5


def test_repeat_previous_last_step_resets():
    env = envs.RepeatPrevious(num_decks=1, k=4)
    suits = np.arange(52) % 4  # card i has suit i % 4
    key = jax.random.PRNGKey(3)
    # 51 cards dealt, one left: this step is the last; hand[-4] is card 47 (suit 3).
    obs, state, r, done, ep = env.step(key, _rp_state(suits, 51), jnp.asarray(3))
    assert bool(done) and bool(ep) and float(r) == pytest.approx(1.0 / 48)
    obs_reset, state_reset = env.reset(key)
    np.testing.assert_array_equal(obs, obs_reset)
    np.testing.assert_array_equal(state.suits, state_reset.suits)
    assert int(state.dealt) == 1
    # One step earlier is not the last.
    _, _, _, done, _ = env.step(key, _rp_state(suits, 50), jnp.asarray(0))
    assert not bool(done)


def test_repeat_previous_reset_and_episode_under_vmap():
    env = envs.RepeatPrevious(num_decks=1, k=4)
    batch = 3
    keys = jax.random.split(jax.random.PRNGKey(1), batch)
    obs, state = jax.vmap(env.reset)(keys)
    for b in range(batch):  # a deck: 13 cards of each suit, the first one observed
        np.testing.assert_array_equal(np.bincount(np.asarray(state.suits[b]), minlength=4), [13] * 4)
        np.testing.assert_array_equal(obs[b], np.eye(4)[int(state.suits[b, 0])])
    suits0 = np.asarray(state.suits)
    step = jax.jit(jax.vmap(env.step))
    rng = np.random.default_rng(0)
    rewards, dones = [], []
    for t in range(51):
        actions = rng.integers(0, 4, batch)
        # The reward by hand: scored from the k-th step on, against the card k back.
        expect = [0.0 if t + 1 < 4 else (1 if actions[b] == suits0[b, t + 1 - 4] else -1) / 48 for b in range(batch)]
        obs, state, r, done, _ = step(jax.random.split(jax.random.PRNGKey(t + 10), batch), state, jnp.asarray(actions))
        np.testing.assert_allclose(r, expect, rtol=1e-6)
        rewards.append(np.asarray(r))
        dones.append(np.asarray(done))
    dones = np.stack(dones)
    assert dones[-1].all() and not dones[:-1].any()  # 51 steps per episode, N - 1
    # 48 scored steps of size 1/48: |return| <= 1, and every scored step is +-1/48.
    assert np.allclose(np.abs(np.stack(rewards)[3:]), 1 / 48)
    assert not np.array_equal(np.asarray(state.suits), suits0)  # a fresh deck after the reset


def test_meta_bandit_hand_computed_trial():
    # reward_prob = 0: arms pay 0 or 1 with certainty, so every reward is known by hand.
    env = envs.MetaBandit(reward_prob=0.0, episode_length=2, num_episodes=2)
    key = jax.random.PRNGKey(0)
    obs, state = env.reset(key)
    np.testing.assert_array_equal(obs, [0, 0, 0, -1])  # no pull yet, time -1
    good = int(np.argmax(np.asarray(state.probs)))
    assert sorted(np.asarray(state.probs).tolist()) == [0.0, 1.0]
    bad = 1 - good
    # Episode 0, pull 1: the bad arm, reward 0; the observation shows it, time 2·1/2 − 1 = 0.
    obs, state, r, done, ep = env.step(jax.random.PRNGKey(1), state, jnp.asarray(bad))
    assert float(r) == 0.0 and not bool(done) and not bool(ep)
    np.testing.assert_array_equal(obs, [0, *np.eye(2)[bad], 0])
    # Pull 2: the good arm, reward 1; the episode ends: the observation restarts (time -1, no pull).
    obs, state, r, done, ep = env.step(jax.random.PRNGKey(2), state, jnp.asarray(good))
    assert float(r) == 1.0 and bool(ep) and not bool(done)
    np.testing.assert_array_equal(obs, [0, 0, 0, -1])
    assert int(state.episode) == 1 and int(state.t) == 0
    probs = np.asarray(state.probs)
    # Episode 1: the arms are the trial's (same probabilities).
    obs, state, r, done, ep = env.step(jax.random.PRNGKey(3), state, jnp.asarray(good))
    assert float(r) == 1.0 and not bool(ep)
    np.testing.assert_array_equal(obs, [1, *np.eye(2)[good], 0])
    np.testing.assert_array_equal(state.probs, probs)
    # Last pull of the trial: done, and the next trial starts from reset(k_reset).
    k = jax.random.PRNGKey(4)
    obs, state, r, done, ep = env.step(k, state, jnp.asarray(bad))
    assert float(r) == 0.0 and bool(done) and bool(ep)
    obs_reset, state_reset = env.reset(jax.random.split(k)[1])
    np.testing.assert_array_equal(obs, obs_reset)
    np.testing.assert_array_equal(state.probs, state_reset.probs)
    assert int(state.episode) == 0 and int(state.last_action) == -1


def test_meta_bandit_rewards_and_arms_statistics():
    env = envs.MetaBandit(reward_prob=0.1, episode_length=3, num_episodes=2)
    n = 4000
    _, state = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), n))
    p = np.asarray(state.probs)
    assert set(np.round(p[:, 0].astype(float), 6).tolist()) == {0.1, 0.9} and np.allclose(p.sum(1), 1)
    assert abs((p[:, 0] == np.float32(0.1)).mean() - 0.5) < 0.05
    _, _, r, _, _ = jax.vmap(env.step)(jax.random.split(jax.random.PRNGKey(1), n), state, jnp.zeros(n, jnp.int32))
    # Pulling arm 0 pays with probability p[:, 0]: 0.1 or 0.9 (binomial error ~ 0.007 per group).
    r = np.asarray(r)
    assert abs(r[p[:, 0] > 0.5].mean() - 0.9) < 0.03 and abs(r[p[:, 0] < 0.5].mean() - 0.1) < 0.03


def test_make_and_config_errors():
    assert envs.make("meta_bandit", episode_length=3).reset_length == 12
    assert envs.make("repeat_previous").episode_length == 51
    with pytest.raises(ConfigError, match="config.env.name='maze' .* allowed: meta_bandit, repeat_previous"):
        envs.make("maze")
    with pytest.raises(ConfigError, match="config.env.kk is not a field"):
        envs.make("repeat_previous", kk=3)
    with pytest.raises(ConfigError, match=r"config.env.k=0 must be an int in \[1, 51\]"):
        envs.RepeatPrevious(k=0)
    with pytest.raises(ConfigError, match="config.env.num_episodes=0"):
        envs.MetaBandit(num_episodes=0)
