"""Experiment configs: ``get_config(arg)`` files, loaded by path (``seqjax.config.load_config``).

Config files import their helpers from ``seqjax.config``, never from this
package, so they load from any working directory; this ``__init__`` only lets
tools that import ``configs.tables.*`` from the repository root keep working.
"""
