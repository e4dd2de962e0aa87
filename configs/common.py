"""Kept for code that imports ``configs.common``: the helpers live in :mod:`seqjax.config`.

Config files import ``seqjax.config`` (the installed package) instead, so that
they load from any working directory without ``configs`` being importable.
"""

from seqjax.config import NGRAM_SUFFIX, PRESETS, apply_model_preset, base_config, model_names  # noqa: F401
