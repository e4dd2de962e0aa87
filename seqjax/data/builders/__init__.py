"""TFDS builders; importing this package registers them with ``tensorflow_datasets``.

Builders are generated locally or from manual archives and prepare/load
without TensorFlow (array_record + ``as_data_source``).
"""

from seqjax.data.builders.lra_image import LraImage
from seqjax.data.builders.lra_listops import LraListops, LraListopsConfig
from seqjax.data.builders.lra_pathfinder import LraPathfinder, LraPathfinderConfig
from seqjax.data.builders.lra_retrieval import LraRetrieval, LraRetrievalConfig
from seqjax.data.builders.lra_text import LraText, LraTextConfig
from seqjax.data.builders.regbench import Regbench, RegbenchConfig, make_config

__all__ = ["LraListops", "LraListopsConfig", "Regbench", "RegbenchConfig", "make_config",
           "LraText", "LraTextConfig", "LraRetrieval", "LraRetrievalConfig", "LraImage",
           "LraPathfinder", "LraPathfinderConfig"]
