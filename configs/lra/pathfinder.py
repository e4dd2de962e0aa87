"""LRA pathfinder: ``--config=configs/lra/pathfinder.py:model=s4d,scale=cpu`` (settings: ``configs/lra/_base.py``)."""

from configs.lra._base import make


def get_config(arg: str | None = None):
    """The LRA pathfinder config for ``arg`` (``model=...,scale=cpu|paper``)."""
    return make("pathfinder", arg)
