"""Recall synthetics (MQAR, set disjointness): ``python -m experiments.mqar``.

With no flags it trains the CPU-scale MQAR run (a 2-layer transformer, 64
tokens, 4 key-value pairs) and prints the accuracy at the queries.
``--config=configs/mqar/mqar.py:model=...,seq_len=...,scale=...`` picks the
MQAR cell and ``--config=configs/mqar/set_disjointness.py:model=...,size_a=...,
size_b=...`` the set-disjointness one; ``--config.x=y`` overrides any field,
e.g. ``--config.task.num_kv_pairs=8``.
"""

import sys

from experiments import _flags


def _report():
    from seqjax.report import mqar

    return mqar.run_summary


if __name__ == "__main__":
    _flags.main(sys.argv, "experiments.mqar", __doc__, "configs/mqar/mqar.py:model=transformer,scale=cpu", _report)
