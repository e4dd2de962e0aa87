"""LRA pathfinder: ``--config=configs/lra/pathfinder.py:model=s4d,scale=cpu`` (settings: ``configs/lra/_base.py``)."""

import pathlib

from seqjax.config import load_module

# The shared LRA settings, loaded by path: config files need no importable ``configs`` package.
make = load_module(pathlib.Path(__file__).with_name("_base.py")).make


def get_config(arg: str | None = None):
    """The LRA pathfinder config for ``arg`` (``model=...,scale=cpu|paper``)."""
    return make("pathfinder", arg)
