"""TFDS builders; ``import seqjax.data.builders`` registers them with ``tensorflow_datasets``.

Registration is explicit: ``import seqjax.data`` alone does not do it. After
this import, ``tfds.builder("regbench")`` and ``tfds.builder("lra_listops")``
(``lra_text``, ``lra_retrieval``, ``lra_image``, ``lra_pathfinder``) find them.
Importing one builder module (``seqjax.data.builders.regbench``) runs this
package first, so it registers all six as well.

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
