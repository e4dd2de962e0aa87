"""TFDS builder ``lra_text``: LRA byte-level IMDB sentiment, read from the official archive.

Source: ``aclImdb_v1.tar.gz`` (Maas et al. 2011), placed unchanged in tfds'
manual folder (see :mod:`seqjax.data.builders._manual` and
``docs/lra_archives.md``). Members ``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``
are streamed from the archive; ``unsup`` and every other member are ignored.

Encoding (as LRA, which read tfds' ``imdb_reviews`` and applied a byte encoder):

- the review bytes are stripped of surrounding ASCII whitespace (tfds'
  ``imdb_reviews`` does ``read().strip()``) and then used as they are
  (UTF-8), id = byte + 1, pad 0, vocabulary 257;
- cut to ``max_length`` bytes (default 4,096: the LRA paper used 4,000, the
  public LRA config says 1,000, a known discrepancy; 4,096 covers the paper's
  length with a power of two). Stored unpadded; the loader pads.
- label: ``neg`` → 0, ``pos`` → 1.

Features: ``inputs`` int32 ``[None]`` (zlib-compressed on disk), ``label``
int32 scalar. Splits: ``train`` (25,000), ``test`` (25,000) and
``validation``, which is a second copy of ``test`` (LRA validates on the test
split; a real split keeps every tfds API and ``eval_splits=("validation",
"test")`` working, for ~1/3 more disk and one more pass over the archive).

Records are stored in tfds' hashed order (shuffling not disabled): the
archive lists all reviews of one class together, and grain gives each host a
contiguous range of record indices, so archive order would give a host a
single class.

Works without TensorFlow exactly as ``regbench`` (array_record,
``as_data_source``, ``code_path`` override, ``DatasetInfo`` built directly);
the only input is the manual archive, nothing is downloaded.
"""

from __future__ import annotations

import re

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from seqjax.data.builders import _manual
from seqjax.data.builders._base import (
    ByteLengthConfig,
    OfflineBuilder,
    byte_length_configs,
)

DEFAULT_MAX_LENGTH = 4096
VOCAB_SIZE = _manual.BYTE_VOCAB_SIZE
NUM_CLASSES = 2
LABELS = {"neg": 0, "pos": 1}
# LRA evaluates IMDB on its test split: the builder's "validation" split is a copy of "test".
VALIDATION_SOURCE = "test"

ARCHIVE = _manual.ManualFile(
    name="aclImdb_v1.tar.gz",
    url="https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
    # Size as recorded in tfds' own checksums for this URL.
    size="84,125,825 bytes, about 80.2 MiB",
)

# A labelled review: aclImdb/<split>/<pos|neg>/<id>_<rating>.txt (urls_*.txt, unsup/ etc. do not match).
_MEMBER = re.compile(r"(?:^|/)aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")


# One parameter (bytes kept per review); the default config is registered.
_DEFAULT_CONFIG, make_config = byte_length_configs(
    "lra_text", DEFAULT_MAX_LENGTH, lambda n: f"IMDB bytes cut to {n:,} (see module docstring)")
LraTextConfig = ByteLengthConfig


def member_split_label(name: str) -> tuple[str, int] | None:
    """Split and label of an archive member, or None for members that are not labelled reviews.

    Args:
      name: tar member name, e.g. ``"aclImdb/test/pos/200_8.txt"``.

    Returns:
      ``("test", 1)`` for that example; None for ``unsup``, ``urls_*.txt``,
      ``README`` and the rest.
    """
    m = _MEMBER.search(name)
    return None if m is None else (m.group(1), LABELS[m.group(2)])


class LraText(OfflineBuilder):
    """LRA Text: byte-level IMDB reviews from the manual ``aclImdb_v1.tar.gz``.

    Attributes:
      VERSION: dataset version.
      BUILDER_CONFIGS: the default config (``max_length`` 4,096).
      MANUAL_DOWNLOAD_INSTRUCTIONS: what to put in the manual folder.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [_DEFAULT_CONFIG]
    DEFAULT_BUILDER_CONFIG_NAME = str(DEFAULT_MAX_LENGTH)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Download {ARCHIVE.name} ({ARCHIVE.size}) from {ARCHIVE.url} and place it, not extracted, "
        "in the manual folder (default <data_dir>/downloads/manual). See docs/lra_archives.md."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="LRA Text: IMDB sentiment at byte level (ids = UTF-8 byte + 1, pad 0).",
            features=tfds.features.FeaturesDict({
                # zlib: byte ids stored as int32 compress ~10x; decoding is numpy-only.
                "inputs": tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding="zlib"),
                # encoding="bytes": decodes to an int32 array; the default decodes a
                # scalar to a Python int, which batches as int64.
                "label": tfds.features.Tensor(shape=(), dtype=np.int32, encoding="bytes"),
            }),
            supervised_keys=("inputs", "label"),
            homepage="https://ai.stanford.edu/~amaas/data/sentiment/",
            citation=("Maas et al. Learning Word Vectors for Sentiment Analysis. ACL 2011. "
                      "Tay et al. Long Range Arena. ICLR 2021."),
        )

    def _split_generators(self, dl_manager):
        archive = _manual.find_manual_file(dl_manager, "lra_text", [ARCHIVE])
        return {
            "train": self._generate_examples(archive, "train"),
            "validation": self._generate_examples(archive, VALIDATION_SOURCE),
            "test": self._generate_examples(archive, "test"),
        }

    def _generate_examples(self, archive: epath.Path, split: str):
        """Examples of the archive's ``split`` (``"train"`` or ``"test"``), keyed by member name."""
        max_length = self.builder_config.max_length

        def wanted(name: str) -> bool:
            found = member_split_label(name)
            return found is not None and found[0] == split

        count = 0
        with _manual.reading(archive, "lra_text", [ARCHIVE]):
            for name, f in _manual.iter_tar(archive, wanted):
                _, label = member_split_label(name)
                text = f.read().strip()  # as tfds' imdb_reviews, which LRA read
                yield name, {"inputs": _manual.encode_bytes(text, max_length), "label": np.int32(label)}
                count += 1
        if count == 0:
            raise ValueError(f"lra_text: {archive} has no aclImdb/{split}/{{pos,neg}}/<id>_<rating>.txt members; "
                             f"is it the official {ARCHIVE.name}?")
