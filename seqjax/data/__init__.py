"""Data: dataset builders and samplers (see ARCHITECTURE.md)."""

# Registers the TFDS builders (``tfds.builder("regbench")``) on ``import seqjax.data``.
from seqjax.data import builders  # noqa: E402,F401
