"""Environments for in-context RL, pure JAX: ``reset(key)`` / ``step(key, state, action)``.

Every environment here is a small frozen dataclass whose two methods are pure
functions of arrays, so they ``jax.vmap`` over a batch of environments and
``jax.jit`` / ``lax.scan`` without retracing. ``step`` resets automatically:
when a step ends a *reset unit* (an episode of the memory task, a trial of the
meta-RL task) it returns the first observation of a fresh one, as gymnax's
``step`` does.

``step`` returns ``(obs, state, reward, done, episode_end)``:

* ``done``: the step ended the unit after which the agent's memory must start
  afresh (the ``reset`` of the recurrent policy at the next step, Lu et al.
  2023); for the memory task an episode, for the meta task a trial;
* ``episode_end``: the step ended an episode (returns are summed per episode);
  for the meta task several episodes make one trial.

Environments (definitions followed, not code):

* :class:`RepeatPrevious`: POPGym's RepeatPrevious (Morad et al. 2023,
  ``popgym/envs/repeat_previous.py``): a shuffled deck of ``52 · num_decks``
  cards is dealt one card per step; the observation is the suit of the newest
  card (one-hot, 4); the action (4) names the suit of the card ``k`` cards back
  counting the newest as 1 (``hand[-k]``); once ``k`` cards are dealt each
  step scores ``±1 / (N − k)`` (right / wrong), so an episode's return lies in
  ``[−1, 1]``; the episode ends after ``N − 1`` steps (when one card is left).
  POPGym's Easy is ``num_decks=1, k=4``.
* :class:`MetaBandit`: a trial of ``num_episodes`` episodes of
  ``episode_length`` pulls of one two-armed Bernoulli bandit, whose arm
  probabilities are gymnax's ``BernoulliBandit-misc`` (Wang et al. 2017):
  ``(p, 1 − p)`` with ``p`` drawn from ``{reward_prob, 1 − reward_prob}`` per
  trial. The observation is gymnax's ``[last reward, one-hot last action,
  normalised time]``, but episode-local: at an episode start the last action and
  reward are zeros (no pull yet) and the time is the step in the episode
  (``2 t / episode_length − 1``, gymnax's normalisation with ``t_max =
  episode_length``). What was learnt about the arms in earlier episodes of the
  trial survives only in the agent's memory, which must persist across the
  episodes of a trial and restart between trials (the paper's meta-RL setting,
  here as a bandit instead of its projected continuous-control tasks).
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError

SUITS = 4
"""Suits of a card deck (POPGym's RepeatPrevious observes and names suits)."""


class RepeatPreviousState(NamedTuple):
    """State of :class:`RepeatPrevious`.

    Attributes:
      suits: ``(N,)`` int32, the suit of each card of the shuffled deck in dealing order.
      dealt: int32, cards dealt so far (the hand size).
    """

    suits: jax.Array
    dealt: jax.Array


@dataclasses.dataclass(frozen=True)
class RepeatPrevious:
    """POPGym's RepeatPrevious (see the module docstring).

    Attributes:
      num_decks: decks shuffled together (``N = 52 · num_decks`` cards).
      k: the agent names the suit of the card ``k`` back (newest = 1).
    """

    num_decks: int = 1
    k: int = 4

    def __post_init__(self):
        if not isinstance(self.num_decks, int) or self.num_decks < 1:
            raise ConfigError(f"config.env.num_decks={self.num_decks!r} must be a positive int")
        if not isinstance(self.k, int) or not 1 <= self.k < self.num_cards:
            raise ConfigError(f"config.env.k={self.k!r} must be an int in [1, {self.num_cards - 1}]")

    @property
    def num_cards(self) -> int:
        """Cards in the deck, ``52 · num_decks``."""
        return 52 * self.num_decks

    @property
    def obs_dim(self) -> int:
        """Width of the observation vector (one-hot suit)."""
        return SUITS

    @property
    def num_actions(self) -> int:
        """Discrete actions (the suits)."""
        return SUITS

    @property
    def episode_length(self) -> int:
        """Steps per episode, ``N − 1``."""
        return self.num_cards - 1

    @property
    def reset_length(self) -> int:
        """Steps between two memory resets (one episode)."""
        return self.episode_length

    @property
    def reward_scale(self) -> float:
        """The size of each scored step's reward, ``1 / (N − k)``."""
        return 1.0 / (self.num_cards - self.k)

    def _obs(self, state: RepeatPreviousState) -> jax.Array:
        return jax.nn.one_hot(state.suits[state.dealt - 1], SUITS, dtype=jnp.float32)

    def reset(self, key: jax.Array) -> tuple[jax.Array, RepeatPreviousState]:
        """A new shuffled deck with one card dealt.

        Args:
          key: PRNG key.

        Returns:
          ``(obs (4,), state)``.
        """
        suits = jax.random.permutation(key, jnp.arange(self.num_cards, dtype=jnp.int32) % SUITS)
        state = RepeatPreviousState(suits, jnp.asarray(1, jnp.int32))
        return self._obs(state), state

    def step(self, key: jax.Array, state: RepeatPreviousState, action: jax.Array):
        """Scores ``action`` against the suit ``k`` cards back, deals a card; resets after the last step.

        Args:
          key: PRNG key (used only by the automatic reset).
          state: from :meth:`reset` or a previous step.
          action: int, a suit.

        Returns:
          ``(obs, state, reward, done, episode_end)``; ``done = episode_end``.
        """
        n = state.dealt
        target = state.suits[jnp.maximum(n - self.k, 0)]
        scored = n >= self.k
        sign = jnp.where(action == target, 1.0, -1.0)
        reward = jnp.where(scored, sign * self.reward_scale, 0.0).astype(jnp.float32)
        done = n == self.num_cards - 1  # one card left in the deck: this is the last step
        stepped = RepeatPreviousState(state.suits, n + 1)
        obs_reset, state_reset = self.reset(key)
        new_state = jax.tree.map(lambda a, b: jnp.where(done, a, b), state_reset, stepped)
        obs = jnp.where(done, obs_reset, self._obs(stepped))
        return obs, new_state, reward, done, done


class MetaBanditState(NamedTuple):
    """State of :class:`MetaBandit`.

    Attributes:
      probs: ``(2,)`` float32 reward probabilities of the arms (fixed for the trial).
      t: int32, pulls made in the current episode.
      episode: int32, index of the current episode in the trial.
      last_action: int32, the episode's last pull (−1 at an episode start).
      last_reward: float32, its reward (0 at an episode start).
    """

    probs: jax.Array
    t: jax.Array
    episode: jax.Array
    last_action: jax.Array
    last_reward: jax.Array


@dataclasses.dataclass(frozen=True)
class MetaBandit:
    """A multi-episode two-armed Bernoulli bandit trial (see the module docstring).

    Attributes:
      reward_prob: ``p`` is drawn from ``{reward_prob, 1 − reward_prob}`` per trial (gymnax default 0.1).
      episode_length: pulls per episode.
      num_episodes: episodes per trial.
    """

    reward_prob: float = 0.1
    episode_length: int = 4
    num_episodes: int = 4

    def __post_init__(self):
        if not isinstance(self.reward_prob, (int, float)) or not 0.0 <= self.reward_prob <= 1.0:
            raise ConfigError(f"config.env.reward_prob={self.reward_prob!r} must be a number in [0, 1]")
        for field in ("episode_length", "num_episodes"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"config.env.{field}={value!r} must be a positive int")

    num_actions = 2
    obs_dim = 4

    @property
    def reset_length(self) -> int:
        """Steps between two memory resets (one trial)."""
        return self.episode_length * self.num_episodes

    def _obs(self, state: MetaBanditState) -> jax.Array:
        time = 2.0 * state.t.astype(jnp.float32) / self.episode_length - 1.0
        action = jax.nn.one_hot(state.last_action, 2, dtype=jnp.float32)  # zeros for −1
        return jnp.concatenate([state.last_reward[None], action, time[None]]).astype(jnp.float32)

    def reset(self, key: jax.Array) -> tuple[jax.Array, MetaBanditState]:
        """A new trial: arm probabilities ``(p, 1 − p)``, ``p`` from ``{reward_prob, 1 − reward_prob}``.

        Args:
          key: PRNG key.

        Returns:
          ``(obs (4,), state)``.
        """
        p = jnp.where(jax.random.bernoulli(key), self.reward_prob, 1.0 - self.reward_prob)
        state = MetaBanditState(jnp.stack([p, 1.0 - p]).astype(jnp.float32), jnp.asarray(0, jnp.int32),
                                jnp.asarray(0, jnp.int32), jnp.asarray(-1, jnp.int32), jnp.asarray(0.0, jnp.float32))
        return self._obs(state), state

    def step(self, key: jax.Array, state: MetaBanditState, action: jax.Array):
        """Pulls arm ``action``; ends the episode after ``episode_length`` pulls, the trial after ``num_episodes``.

        Args:
          key: PRNG key (the Bernoulli reward, and the next trial's arms).
          state: from :meth:`reset` or a previous step.
          action: int, 0 or 1.

        Returns:
          ``(obs, state, reward, done, episode_end)``; ``done`` ends a trial.
        """
        k_reward, k_reset = jax.random.split(key)
        reward = jax.random.bernoulli(k_reward, state.probs[action]).astype(jnp.float32)
        t = state.t + 1
        episode_end = t == self.episode_length
        done = episode_end & (state.episode == self.num_episodes - 1)
        # An episode end clears what the observation shows of the episode (pulls, time).
        stepped = MetaBanditState(
            state.probs, jnp.where(episode_end, 0, t), state.episode + episode_end.astype(jnp.int32),
            jnp.where(episode_end, -1, jnp.asarray(action, jnp.int32)), jnp.where(episode_end, 0.0, reward))
        obs_reset, state_reset = self.reset(k_reset)
        new_state = jax.tree.map(lambda a, b: jnp.where(done, a, b), state_reset, stepped)
        obs = jnp.where(done, obs_reset, self._obs(stepped))
        return obs, new_state, reward, done, episode_end


ENVS = {"repeat_previous": RepeatPrevious, "meta_bandit": MetaBandit}
"""Environment name → class (``config.env.name``)."""


def make(name: str, **kwargs: Any):
    """The environment ``name`` with fields ``kwargs``.

    Args:
      name: a key of :data:`ENVS`.
      **kwargs: the environment's fields.

    Returns:
      The environment.

    Raises:
      ConfigError: an unknown name or field.
    """
    if name not in ENVS:
        raise ConfigError(f"config.env.name={name!r} is not an environment; allowed: {', '.join(sorted(ENVS))}")
    cls = ENVS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in kwargs:
        if key not in fields:
            raise ConfigError(f"config.env.{key} is not a field of {name}; allowed: {', '.join(sorted(fields))}")
    return cls(**kwargs)


__all__ = ["RepeatPrevious", "RepeatPreviousState", "MetaBandit", "MetaBanditState", "ENVS", "make", "SUITS"]
