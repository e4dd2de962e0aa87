"""In-context learning of function classes: ``python -m experiments.icl``.

With no flags it runs the README's default: linear regression at CPU scale,
then prints the transformer's error per number of examples beside least
squares, 3-NN and averaging. ``--config=configs/icl/regression.py:fc=...,
model=...,scale=...`` picks the experiment and ``--config.x=y`` overrides any
field, e.g. ``--config.train.steps=500``, ``--config.task.ilwd_batch_size=0``
or (with ``fc=sliding_window``) ``--config.task.task_kwargs.window=5``.
"""

import sys

from experiments import _flags


def _report():
    from seqjax.report import icl

    return icl.run_summary


if __name__ == "__main__":
    _flags.main(sys.argv, "experiments.icl", __doc__, "configs/icl/regression.py:fc=linear,model=transformer,scale=cpu",
                _report)
