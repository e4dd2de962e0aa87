"""In-context RL with resettable SSMs (Lu et al. 2023): ``python -m experiments.icrl``.

With no flags it trains the CPU-scale resettable S5 with PPO on POPGym's
RepeatPrevious (Easy) for a few minutes and prints the final mean episode
return beside a uniformly random policy's on the same evaluation episodes.
``--config=configs/icrl/icrl.py:model=s5|s5_noreset|lstm,env=repeat_previous|meta_bandit,scale=cpu|paper``
picks the run; ``--config.x=y`` overrides any field, e.g. ``--config.ppo.num_updates=50``.
"""

import sys

from experiments import _flags


def _summary():
    from seqjax.rl.command import summary

    return summary


def _command():
    from seqjax.rl.command import command

    return command


if __name__ == "__main__":
    _flags.main(sys.argv, "experiments.icrl", __doc__, "configs/icrl/icrl.py:model=s5,env=repeat_previous,scale=cpu",
                _summary, command=_command)
