"""The flags every entrypoint shares: ``--config`` (with ``--config.x=y``) and ``--workdir``."""

import re
import sys

from absl import flags
from ml_collections import config_flags

from seqjax.errors import ConfigError


def define(default_config: str):
    """Defines ``--config`` (default ``default_config``) and ``--workdir``; returns both holders."""
    config = config_flags.DEFINE_config_file("config", default_config, "path/to/config.py:arg", lock_config=False)
    workdir = flags.DEFINE_string("workdir", None, "run folder (default: runs/<config.name>)")
    return config, workdir


def parse(argv: list[str]) -> None:
    """Parses flags; a bad config prints one ``error:`` line and exits with status 2."""
    try:
        flags.FLAGS(argv)
    except flags.Error as e:
        # config_flags re-raises errors from get_config as text with the traceback
        # inside; a ConfigError's own line is all the user needs.
        found = re.findall(rf"{ConfigError.__name__}: (.*)", str(e))
        print(f"error: {found[-1] if found else str(e).strip().splitlines()[-1]}", file=sys.stderr)
        sys.exit(2)
