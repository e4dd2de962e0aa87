"""LRA pathx: ``--config=configs/lra/pathx.py:model=s4d,scale=cpu`` (settings: ``configs/lra/_base.py``)."""

from configs.lra._base import make


def get_config(arg: str | None = None):
    """The LRA pathx config for ``arg`` (``model=...,scale=cpu|paper``)."""
    return make("pathx", arg)
