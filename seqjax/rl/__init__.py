"""In-context reinforcement learning: environments, PPO and recurrent actor-critics (Lu et al. 2023).

``envs`` (pure-JAX environments that vmap and auto-reset), ``gae`` (generalised
advantage estimation), ``ppo`` (the clipped PPO loss), ``agent`` (the recurrent
actor-critic over registry mixers, step by step while acting and in parallel
form while learning), ``train`` (rollouts, updates, the loop and its records).
"""
