"""PPO with a recurrent actor-critic: rollouts, updates, the loop, ``results.json`` and ``metrics.jsonl``.

One update (PureJaxRL's recurrent PPO, as Lu et al. 2023 use it):

1. rollout: ``num_envs`` fresh environments run ``T = units_per_rollout ·
   env.reset_length`` steps (whole episodes / trials, so the rollout ends at a
   reset and never needs a bootstrap), acting with :meth:`ActorCritic.step`
   from the empty state, ``reset`` = the previous step's ``done``;
2. GAE over the rollout (:func:`seqjax.rl.gae.gae`, cut at ``done``);
3. ``update_epochs`` passes over ``num_minibatches`` minibatches of whole
   rollout rows (sequences, never split in time); the network runs its
   parallel form over each row with segment ids from the resets
   (:meth:`ActorCritic.__call__`) and takes one Adam step on the clipped PPO
   loss (:func:`seqjax.rl.ppo.ppo_loss`).

The record: ``metrics.jsonl`` (one line per ``log_every`` updates:
``{"step", "split": "train", "env_steps", "mean_return", ...losses}``, the
learning curve) and ``results.json`` (``status``/``finished``, the config, the
final evaluation: ``final_return`` of the trained policy and ``random_return``
of a uniform policy on the same evaluation environments, the return per episode
index of a trial, the curve, the wall time), as ``seqjax.train`` writes them.
"""

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqjax.errors import ConfigError
from seqjax.rl import envs as rl_envs
from seqjax.rl.agent import MODELS, ActorCritic
from seqjax.rl.gae import gae
from seqjax.rl.ppo import PPOBatch, ppo_loss
from seqjax.train.results import run_record, write_json_atomic
from seqjax.train.writers import MetricWriter

PPO_FIELDS = {"num_envs": int, "units_per_rollout": int, "num_updates": int, "update_epochs": int,
              "num_minibatches": int, "gamma": float, "gae_lambda": float, "clip_eps": float, "vf_coef": float,
              "ent_coef": float, "lr": float, "max_grad_norm": float, "anneal_lr": bool}
"""The fields of ``config.ppo`` and their types."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """A checked config, built.

    Attributes:
      env: the environment.
      net: the actor-critic.
      ppo: ``config.ppo`` as a dict.
      T: rollout length.
      episodes_per_unit: episodes per reset unit (1, or a trial's episodes).
    """

    env: object
    net: ActorCritic
    ppo: dict
    T: int
    episodes_per_unit: int


def build(config) -> Setup:
    """Checks ``config`` (env, model, ppo, eval sections) and builds the environment and network.

    Args:
      config: the experiment config (``configs/icrl/icrl.py``).

    Returns:
      A :class:`Setup`.

    Raises:
      ConfigError: one line naming the first bad field.
    """
    for section in ("env", "model", "ppo", "eval"):
        if config.get(section) is None:
            raise ConfigError(f"config.{section} is missing")
    env_fields = {k: v for k, v in config.env.to_dict().items() if k != "name"}
    env = rl_envs.make(config.env.get("name"), **env_fields)
    m = config.model
    if m.get("name") not in MODELS:
        raise ConfigError(f"config.model.name={m.get('name')!r} is not allowed; allowed: {', '.join(MODELS)}")
    mixer, resets = MODELS[m.name]
    for field in ("d_model", "num_layers"):
        if not isinstance(m.get(field), int) or m.get(field) < 1:
            raise ConfigError(f"config.model.{field}={m.get(field)!r} must be a positive int")
    kwargs = tuple(sorted((m.get("mixer_kwargs") or {}).items()))
    net = ActorCritic(mixer=mixer, num_actions=env.num_actions, d_model=m.d_model, num_layers=m.num_layers,
                      mixer_kwargs=kwargs, resets=resets)
    ppo = config.ppo.to_dict()
    for field, kind in PPO_FIELDS.items():
        value = ppo.get(field)
        if not isinstance(value, (int, float) if kind is float else kind) or isinstance(value, bool) != (kind is bool):
            raise ConfigError(f"config.ppo.{field}={value!r} must be a {kind.__name__}")
        if kind is int and value < 1:
            raise ConfigError(f"config.ppo.{field}={value!r} must be a positive int")
    if ppo["num_envs"] % ppo["num_minibatches"]:
        raise ConfigError(f"config.ppo.num_minibatches={ppo['num_minibatches']} must divide "
                          f"config.ppo.num_envs={ppo['num_envs']}")
    for field in ("num_envs", "log_every"):
        if not isinstance(config.eval.get(field), int) or config.eval.get(field) < 1:
            raise ConfigError(f"config.eval.{field}={config.eval.get(field)!r} must be a positive int")
    # Abstract init: a bad mixer field fails here, before any folder is made.
    try:
        jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, env.obs_dim))))
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"config.model.mixer_kwargs: {str(e).splitlines()[0]}") from None
    return Setup(env, net, ppo, ppo["units_per_rollout"] * env.reset_length, getattr(env, "num_episodes", 1))


def rollout(setup: Setup, params, key: jax.Array, num_envs: int, *, random_policy: bool = False) -> dict:
    """Runs ``num_envs`` fresh environments for ``T`` steps, acting step by step.

    Args:
      setup: from :func:`build`.
      params: the network's variables.
      key: PRNG key.
      num_envs: rows.
      random_policy: act uniformly at random instead (the baseline); values are still the network's.

    Returns:
      Batch-first arrays ``obs (b, T, obs_dim)``, ``starts``, ``actions``, ``log_probs``, ``values``,
      ``rewards``, ``dones``, ``episode_ends`` (``(b, T)``).
    """
    env, net = setup.env, setup.net
    k_reset, k_steps = jax.random.split(key)
    obs, state = jax.vmap(env.reset)(jax.random.split(k_reset, num_envs))
    cache = net.apply(params, num_envs, method="init_cache")

    def body(carry, k):
        obs, state, cache, start = carry
        k_act, k_env = jax.random.split(k)
        logits, value, cache = net.apply(params, obs, cache, start, method="step")
        if random_policy:
            logits = jnp.zeros_like(logits)
        action = jax.random.categorical(k_act, logits)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
        next_obs, state, reward, done, episode_end = jax.vmap(env.step)(jax.random.split(k_env, num_envs), state,
                                                                        action)
        out = {"obs": obs, "starts": start, "actions": action, "log_probs": log_prob, "values": value,
               "rewards": reward, "dones": done, "episode_ends": episode_end}
        return (next_obs, state, cache, done), out

    start = jnp.ones((num_envs,), bool)  # the empty state: a reset at t = 0 changes nothing
    _, traj = jax.lax.scan(body, (obs, state, cache, start), jax.random.split(k_steps, setup.T))
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), traj)


def episode_returns(setup: Setup, rewards: jax.Array) -> jax.Array:
    """Return of every episode of a rollout, ``(b, units, episodes_per_unit)`` (rollouts hold whole units)."""
    b = rewards.shape[0]
    units = setup.ppo["units_per_rollout"]
    return rewards.reshape(b, units, setup.episodes_per_unit, -1).sum(-1)


def make_update(setup: Setup, tx: optax.GradientTransformation):
    """The jitted update ``(params, opt_state, key) -> (params, opt_state, metrics)`` of the module docstring."""
    ppo, net = setup.ppo, setup.net
    n_mb = ppo["num_minibatches"]

    def loss_fn(params, mb):
        logits, values = net.apply(params, mb["obs"], mb["starts"])
        batch = PPOBatch(mb["actions"], mb["log_probs"], mb["values"], mb["advantages"], mb["targets"])
        return ppo_loss(logits, values, batch, clip_eps=ppo["clip_eps"], vf_coef=ppo["vf_coef"],
                        ent_coef=ppo["ent_coef"])

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @jax.jit
    def update(params, opt_state, key):
        k_roll, k_perm = jax.random.split(key)
        traj = rollout(setup, params, k_roll, ppo["num_envs"])
        last_value = jnp.zeros((ppo["num_envs"],), jnp.float32)  # the rollout ends at a reset (done)
        adv, targets = gae(traj["rewards"], traj["values"], traj["dones"], last_value, gamma=ppo["gamma"],
                           lam=ppo["gae_lambda"])
        data = {k: traj[k] for k in ("obs", "starts", "actions", "log_probs", "values")}
        data.update(advantages=adv, targets=targets)

        def epoch(carry, k):
            params, opt_state = carry
            perm = jax.random.permutation(k, ppo["num_envs"])
            # Minibatches of whole rows: each keeps its sequences (and their resets) intact.
            mbs = jax.tree.map(lambda a: a[perm].reshape(n_mb, -1, *a.shape[1:]), data)

            def minibatch(carry, mb):
                params, opt_state = carry
                (loss, aux), grads = grad_fn(params, mb)
                updates, opt_state = tx.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), {"loss": loss, **aux}

            return jax.lax.scan(minibatch, (params, opt_state), mbs)

        (params, opt_state), aux = jax.lax.scan(epoch, (params, opt_state),
                                                jax.random.split(k_perm, ppo["update_epochs"]))
        metrics = jax.tree.map(jnp.mean, aux)
        metrics["mean_return"] = episode_returns(setup, traj["rewards"]).mean()
        return params, opt_state, metrics

    return update


def evaluate(setup: Setup, params, key: jax.Array, num_envs: int, *, random_policy: bool = False) -> np.ndarray:
    """Mean return per episode index of a unit (``(episodes_per_unit,)``) over ``num_envs`` fresh rollouts."""
    traj = jax.jit(lambda p, k: rollout(setup, p, k, num_envs, random_policy=random_policy))(params, key)
    return np.asarray(episode_returns(setup, traj["rewards"]).mean(axis=(0, 1)), np.float64)


def run(config, workdir: str | Path) -> dict:
    """Trains ``config`` with PPO in ``workdir`` and writes its records (see the module docstring).

    A folder whose ``results.json`` holds a finished run of the same number of
    updates is reported, not rerun.

    Args:
      config: the experiment config.
      workdir: the run folder (created after every check has passed).

    Returns:
      The ``results.json`` contents.
    """
    setup = build(config)
    workdir = Path(workdir)
    path = workdir / "results.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("finished") and previous.get("train", {}).get("steps") == setup.ppo["num_updates"]:
            return previous
    start_time = time.time()
    ppo = setup.ppo
    key = jax.random.PRNGKey(int(config.seed))
    k_init, k_train, k_eval = jax.random.split(key, 3)
    params = setup.net.init(k_init, jnp.zeros((1, 2, setup.env.obs_dim)))
    minibatch_updates = ppo["num_updates"] * ppo["update_epochs"] * ppo["num_minibatches"]
    lr = optax.linear_schedule(ppo["lr"], 0.0, minibatch_updates) if ppo["anneal_lr"] else ppo["lr"]
    tx = optax.chain(optax.clip_by_global_norm(ppo["max_grad_norm"]), optax.adam(lr, eps=1e-5))
    opt_state = tx.init(params)
    update = make_update(setup, tx)
    steps_per_update = ppo["num_envs"] * setup.T
    curve_steps, curve_returns = [], []
    with MetricWriter(workdir) as writer:
        writer.message(f"start: {config.name}, {ppo['num_updates']} updates of {steps_per_update} env steps")
        for i, k in enumerate(jax.random.split(k_train, ppo["num_updates"])):
            params, opt_state, metrics = update(params, opt_state, k)
            if (i + 1) % config.eval.log_every == 0 or i + 1 == ppo["num_updates"]:
                metrics = {name: float(v) for name, v in metrics.items()}
                if not np.isfinite(metrics["loss"]):
                    raise FloatingPointError(f"PPO loss is not finite at update {i + 1}")
                env_steps = (i + 1) * steps_per_update
                writer.write(i + 1, "train", {"env_steps": env_steps, **metrics})
                curve_steps.append(env_steps)
                curve_returns.append(metrics["mean_return"])
        per_episode = evaluate(setup, params, k_eval, config.eval.num_envs)
        random = evaluate(setup, params, k_eval, config.eval.num_envs, random_policy=True)
        wall = time.time() - start_time
        results = {
            **run_record(config, {"devices": 1}, "single", wall, workdir),
            "status": "finished", "finished": True, "train": {"steps": ppo["num_updates"]},
            "metrics": {"final_return": float(per_episode.mean()), "random_return": float(random.mean()),
                        "final_return_per_episode": per_episode.tolist(),
                        "random_return_per_episode": random.tolist(),
                        "env_steps": ppo["num_updates"] * steps_per_update,
                        "curve_env_steps": curve_steps, "curve_return": curve_returns,
                        "eval_episodes": int(config.eval.num_envs * ppo["units_per_rollout"]
                                             * setup.episodes_per_unit)},
        }
        write_json_atomic(path, results)
        writer.message(f"end: final return {per_episode.mean():.4f}, random policy {random.mean():.4f}, "
                       f"{wall:.0f} s")
    return results


__all__ = ["PPO_FIELDS", "Setup", "build", "rollout", "episode_returns", "make_update", "evaluate", "run"]
