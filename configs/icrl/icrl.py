"""In-context RL with resettable SSMs (Lu et al. 2023): PPO on a memory task and a meta-RL task.

Usage: ``--config=configs/icrl/icrl.py:model=s5,env=repeat_previous,scale=cpu``.

  * ``model``: ``s5`` (S5 whose state restarts at every episode end of the
    memory task / trial end of the meta task: the paper's resettable S5),
    ``s5_noreset`` (the same S5, never restarted inside a rollout: "S5 without
    resets"), ``lstm`` (the registry's LSTM, restarted like ``s5``).
  * ``env``: ``repeat_previous`` (POPGym's RepeatPrevious, Easy: one deck,
    ``k = 4``, 51 steps per episode) or ``meta_bandit`` (trials of 4 episodes of
    4 pulls of one Bernoulli bandit, arms ``(p, 1 − p)``, ``p ∈ {0.1, 0.9}``;
    ``seqjax/rl/envs.py``).
  * ``scale=cpu``: 1 layer of width 32 (S5 ``d_state`` 16; LSTM 2 heads), 8
    environments (memory) / 32 (meta) per update, rollouts of 2 episodes
    (memory, 102 steps) / 4 trials (meta, 64 steps), 4 epochs × 4 minibatches,
    1,500 (memory) / 500 (meta) updates,
    Adam 1e-3, γ 0.99, λ 0.95, clip 0.2, value 0.5, entropy 0.01, grad norm
    0.5; a few minutes on 2 CPU cores (``docs/icrl.md``).
  * ``scale=paper`` (not run here): the hyper-parameters of the authors'
    public code (``luchris429/popjaxrl``, ``run_popgym.py``): 4 layers,
    d_model 256, S5 state 256, 64 environments × 1,024 steps, 30 epochs × 8
    minibatches, lr 5e-5 (no annealing), γ 0.99, λ 1.0, clip 0.2, value 1.0,
    entropy 0, grad norm 0.5, 15M env steps. Not from the paper's text: the
    paper's own tables of hyper-parameters were not verified here.

Every field can be overridden, e.g. ``--config.ppo.num_updates=10`` or
``--config.env.k=2``.
"""

import ml_collections

from seqjax.config import parse_arg

DEFAULTS = {"model": "s5", "env": "repeat_previous", "scale": "cpu"}
MODELS = ["s5", "s5_noreset", "lstm"]
ENVS = ["repeat_previous", "meta_bandit"]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for ``arg`` (see the module docstring).

    Args:
      arg: ``"model=...,env=...,scale=..."`` (any subset; the rest default).

    Returns:
      The ConfigDict: ``name``, ``seed``, ``env``, ``model``, ``ppo``, ``eval``.
    """
    args = parse_arg(arg, {"model": MODELS, "env": ENVS, "scale": ["cpu", "paper"]}, DEFAULTS)
    paper = args["scale"] == "paper"
    c = ml_collections.ConfigDict()
    c.name = f"icrl-{args['env']}-{args['model']}-{args['scale']}"
    c.seed = 0
    if args["env"] == "repeat_previous":
        c.env = ml_collections.ConfigDict({"name": "repeat_previous", "num_decks": 1, "k": 4})
    else:
        c.env = ml_collections.ConfigDict({"name": "meta_bandit", "reward_prob": 0.1, "episode_length": 4,
                                           "num_episodes": 4})
    lstm = args["model"] == "lstm"
    d_model, d_state = (256, 256) if paper else (32, 16)
    mixer_kwargs = {"num_heads": 2} if lstm else {"d_state": d_state}
    c.model = ml_collections.ConfigDict({"name": args["model"], "d_model": d_model, "num_layers": 4 if paper else 1,
                                         "mixer_kwargs": mixer_kwargs})
    if paper:
        units = 1024 // (51 if args["env"] == "repeat_previous" else 16)  # about the authors' 1,024 steps
        c.ppo = ml_collections.ConfigDict(dict(
            num_envs=64, units_per_rollout=units, num_updates=15_000_000 // (64 * 1024), update_epochs=30,
            num_minibatches=8, gamma=0.99, gae_lambda=1.0, clip_eps=0.2, vf_coef=1.0, ent_coef=0.0, lr=5e-5,
            max_grad_norm=0.5, anneal_lr=False))
    else:
        meta = args["env"] == "meta_bandit"
        # Rollouts of several reset units (4 trials; 2 episodes), so that "without resets" carries a state
        # across a boundary inside the rollout; 816 / 2,048 env steps per update.
        c.ppo = ml_collections.ConfigDict(dict(
            num_envs=32 if meta else 8, units_per_rollout=4 if meta else 2, num_updates=500 if meta else 1500,
            update_epochs=4, num_minibatches=4, gamma=0.99, gae_lambda=0.95, clip_eps=0.2, vf_coef=0.5,
            ent_coef=0.01, lr=1e-3, max_grad_norm=0.5, anneal_lr=True))
    c.eval = ml_collections.ConfigDict({"num_envs": 256, "log_every": 5})
    return c
