"""TFDS builders; importing this package registers them with ``tensorflow_datasets``.

Builders are generated locally or from manual archives and prepare/load
without TensorFlow (array_record + ``as_data_source``).
"""

from seqjax.data.builders.regbench import Regbench, RegbenchConfig, make_config

__all__ = ["Regbench", "RegbenchConfig", "make_config"]
