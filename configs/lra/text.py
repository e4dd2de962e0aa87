"""LRA text: ``--config=configs/lra/text.py:model=s4d,scale=cpu`` (settings: ``configs/lra/_base.py``)."""

from configs.lra._base import make


def get_config(arg: str | None = None):
    """The LRA text config for ``arg`` (``model=...,scale=cpu|paper``)."""
    return make("text", arg)
