"""TFDS builder ``lra_listops``: Long Range Arena ListOps, generated locally or read from the release.

Features (both modes):

- ``inputs``: int32 ``[l]`` token ids (vocabulary :data:`seqjax.data.listops.VOCAB`,
  pad 0, unknown 1, 17 ids; no parentheses, no padding)
- ``label``: int32 scalar in 0..9, the value of the expression.

Configs:

- ``"generated"`` (default): LRA's recipe (see :mod:`seqjax.data.listops`),
  trees with 500 < length < 2000, splits ``train`` / ``validation`` /
  ``test`` = 96,000 / 2,000 / 2,000, seed 0. :func:`make_config` builds any
  other size / seed / length range / tree shape; its name encodes every
  parameter, so different settings never share a directory.
- ``"official"``: the LRA release files ``basic_train.tsv``,
  ``basic_val.tsv``, ``basic_test.tsv`` read from ``manual_dir`` (see
  :data:`MANUAL_INSTRUCTIONS`); nothing is downloaded.

Generation: example ``i`` of split ``s`` (train 0, validation 1, test 2) is
the first in-range tree from ``np.random.default_rng([seed, s, i])``.
Splits are deduplicated in the fixed order test → validation → train, each in
candidate order, drawing extra candidates when one is dropped. Test and
validation are generated eagerly in ``_split_generators``, so their contents
never depend on the train size or on the order in which tfds writes splits;
no example depends on the worker count (``num_workers``, a constructor
argument, not part of the config). Records are stored in that order
(``disable_shuffling``).

Working without TensorFlow (tfds 4.9.x), as in :mod:`seqjax.data.builders.regbench`:
``_info`` builds ``DatasetInfo`` directly, ``code_path`` is this file, the
file format is array_record, read with ``as_data_source(split)``;
``as_dataset`` (tf.data) is the one path that needs TF. The generated configs
never touch ``dl_manager``; the official config only reads
``dl_manager.manual_dir``.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from seqjax.data import listops as lo
from seqjax.data.builders import _manual
from seqjax.data.builders._base import OfflineBuilder
from seqjax.errors import ConfigError

_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
PAPER_SIZES = (96_000, 2_000, 2_000)
OFFICIAL_ARCHIVE_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
# The archive is a gzipped tar despite its name. The LRA repository's
# dataset_setup.sh takes ListOps from lra_release/lra_release/listops-1000/;
# other setups extract lra_release/listops-1000/ (the archive holds both).
_ARCHIVE_FOLDER = "listops-1000/ (lra_release/lra_release/listops-1000/ or lra_release/listops-1000/)"
MANUAL_INSTRUCTIONS = f"""\
The `official` config reads the ListOps files of the Long Range Arena release
archive `lra_release.gz` ({OFFICIAL_ARCHIVE_URL}; a gzipped tar: `tar -xzf lra_release.gz`).
Copy the three files of its folder {_ARCHIVE_FOLDER}
into the manual directory (by default `<data_dir>/downloads/manual/`, or pass
`download_config=tfds.download.DownloadConfig(manual_dir=...)`):

    {lo.OFFICIAL_FILES['train']}   (train)
    {lo.OFFICIAL_FILES['validation']}     (validation)
    {lo.OFFICIAL_FILES['test']}    (test)
"""


class LraListopsConfig(tfds.core.BuilderConfig):
    """Parameters of one ListOps dataset.

    Attributes:
      num_train, num_validation, num_test: examples per split (generated configs).
      seed: seed of all splits.
      min_length, max_length: exclusive bounds on the token count.
      max_depth, leaf_prob, min_args, max_args: tree shape, as in
        :func:`seqjax.data.listops.sample_tree`.
      official: read the LRA release TSVs from ``manual_dir`` instead of generating.
    """

    def __init__(self, *, num_train: int = PAPER_SIZES[0], num_validation: int = PAPER_SIZES[1],
                 num_test: int = PAPER_SIZES[2], seed: int = 0, min_length: int = 500, max_length: int = 2000,
                 max_depth: int = 10, leaf_prob: float = 0.75, min_args: int = 2, max_args: int = 10,
                 official: bool = False, **kwargs):
        kwargs.setdefault("version", tfds.core.Version("1.0.0"))
        super().__init__(**kwargs)
        self.num_train = int(num_train)
        self.num_validation = int(num_validation)
        self.num_test = int(num_test)
        self.seed = int(seed)
        self.min_length = int(min_length)
        self.max_length = int(max_length)
        self.max_depth = int(max_depth)
        self.leaf_prob = float(leaf_prob)
        self.min_args = int(min_args)
        self.max_args = int(max_args)
        self.official = bool(official)

    def tree_params(self) -> dict:
        """Keyword arguments for :func:`seqjax.data.listops.iter_dataset`'s tree shape and lengths."""
        return dict(min_length=self.min_length, max_length=self.max_length, max_depth=self.max_depth,
                    leaf_prob=self.leaf_prob, min_args=self.min_args, max_args=self.max_args)


_PAPER_DEFAULTS = dict(num_train=PAPER_SIZES[0], num_validation=PAPER_SIZES[1], num_test=PAPER_SIZES[2], seed=0,
                       min_length=500, max_length=2000, max_depth=10, leaf_prob=0.75, min_args=2, max_args=10)
# Registered configs are singletons: tfds rejects a config object that has
# the name of a registered one unless it IS that object.
GENERATED_CONFIG = LraListopsConfig(name="generated", description="ListOps generated locally with LRA's recipe.",
                                    **_PAPER_DEFAULTS)
OFFICIAL_CONFIG = LraListopsConfig(name="official", official=True,
                                   description="ListOps of the LRA release (manual download).")


def make_config(num_train: int = PAPER_SIZES[0], num_validation: int = PAPER_SIZES[1],
                num_test: int = PAPER_SIZES[2], *, seed: int = 0, min_length: int = 500, max_length: int = 2000,
                max_depth: int = 10, leaf_prob: float = 0.75, min_args: int = 2,
                max_args: int = 10) -> LraListopsConfig:
    """A generated config for any settings; LRA's settings give the ``"generated"`` config.

    Args:
      num_train, num_validation, num_test: examples per split (ints >= 0).
      seed: data seed.
      min_length, max_length: exclusive bounds on the token count.
      max_depth, leaf_prob, min_args, max_args: tree shape (see
        :func:`seqjax.data.listops.sample_tree`).

    Returns:
      A :class:`LraListopsConfig` whose name encodes every parameter (for
      LRA's settings: the registered ``"generated"`` config object itself).

    Raises:
      ConfigError: on a negative size or unusable tree / length parameters.
    """
    for field, value in (("num_train", num_train), ("num_validation", num_validation), ("num_test", num_test),
                         ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{field}={value!r} must be an integer >= 0")
    lo.check_tree_params(max_depth=max_depth, leaf_prob=leaf_prob, min_args=min_args, max_args=max_args)
    lo.check_length_range(min_length, max_length)
    params = dict(num_train=int(num_train), num_validation=int(num_validation), num_test=int(num_test),
                  seed=int(seed), min_length=int(min_length), max_length=int(max_length), max_depth=int(max_depth),
                  leaf_prob=float(leaf_prob), min_args=int(min_args), max_args=int(max_args))
    if params == _PAPER_DEFAULTS:
        return GENERATED_CONFIG
    # '.' is replaced: tfds parses "name/config:1.0.0" specs and a dot would be ambiguous.
    p = repr(params["leaf_prob"]).replace(".", "p")
    name = (f"n{params['num_train']}-{params['num_validation']}-{params['num_test']}_s{params['seed']}"
            f"_l{params['min_length']}-{params['max_length']}_d{params['max_depth']}_p{p}"
            f"_a{params['min_args']}-{params['max_args']}")
    return LraListopsConfig(name=name, description="ListOps generated locally (see module docstring).", **params)


class LraListops(OfflineBuilder):
    """Long Range Arena ListOps (Tay et al. 2020): generated locally, or the release's TSVs.

    Attributes:
      VERSION: dataset version.
      BUILDER_CONFIGS: ``generated`` (LRA's recipe, 96k/2k/2k) and ``official`` (manual TSVs).
      DEFAULT_BUILDER_CONFIG_NAME: ``"generated"``.
      MANUAL_DOWNLOAD_INSTRUCTIONS: where the official files come from.
      num_workers: generation processes (does not change the data).
      progress: show tqdm bars while generating.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [GENERATED_CONFIG, OFFICIAL_CONFIG]
    DEFAULT_BUILDER_CONFIG_NAME = "generated"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS

    def __init__(self, *args, file_format=None, num_workers: int | None = None, progress: bool = True, **kwargs):
        super().__init__(*args, file_format=file_format, **kwargs)
        self.num_workers = int(num_workers) if num_workers is not None else (os.cpu_count() or 1)
        self.progress = bool(progress)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="ListOps (Long Range Arena): evaluate nested MIN/MAX/MED/SM expressions over digits.",
            features=tfds.features.FeaturesDict({
                "inputs": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "label": tfds.features.Tensor(shape=(), dtype=np.int32),
            }),
            supervised_keys=("inputs", "label"),
            # Keep generation order: record i is the i-th kept candidate.
            disable_shuffling=True,
            homepage="https://github.com/google-research/long-range-arena",
            citation="Tay et al. Long Range Arena: A Benchmark for Efficient Transformers. ICLR 2021.",
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        if c.official:
            return self._official_splits(dl_manager)
        del dl_manager  # generated locally: nothing to download
        seen: set = set()
        # Eval splits first and eagerly: their contents must not depend on the
        # train size or on the order in which tfds consumes the generators.
        test = list(self._iter_split("test", c.num_test, seen))
        validation = list(self._iter_split("validation", c.num_validation, seen))
        return {
            "train": self._generate_examples(self._iter_split("train", c.num_train, seen)),
            "validation": self._generate_examples(validation),
            "test": self._generate_examples(test),
        }

    def _iter_split(self, split: str, n: int, seen: set):
        c = self.builder_config
        for _, ids, label in lo.iter_dataset(n, seed=c.seed, split_id=_SPLIT_IDS[split], seen=seen,
                                             num_workers=self.num_workers, progress=self.progress,
                                             desc=f"lra_listops {split}", **c.tree_params()):
            yield ids, label

    def _official_splits(self, dl_manager):
        files = list(lo.OFFICIAL_FILES.values())
        # A MissingArchiveError is also a ConfigError: the command line prints its first line, exit 2.
        try:
            manual_dir = epath.Path(dl_manager.manual_dir)
        except AssertionError as e:  # tfds: manual dir missing or empty
            raise _manual.MissingArchiveError(_missing_message(files, str(e).splitlines()[0]),
                                              _manual.manual_folder(dl_manager), ()) from e
        missing = lo.missing_official_files(manual_dir)
        if missing:
            raise _manual.MissingArchiveError(_missing_message(missing, f"Manual directory {manual_dir}"),
                                              manual_dir, ())
        return {split: self._generate_examples(zip(*lo.read_official_tsv(manual_dir / name)))
                for split, name in lo.OFFICIAL_FILES.items()}

    def _generate_examples(self, rows):
        for i, (ids, label) in enumerate(rows):
            yield i, {"inputs": np.asarray(ids, np.int32), "label": np.int32(label)}


def _missing_message(missing: list[str], where: str) -> str:
    return (f"lra_listops/official: missing {', '.join(missing)} ({where}). These files come from the LRA release "
            f"archive lra_release.gz ({OFFICIAL_ARCHIVE_URL}), folder {_ARCHIVE_FOLDER}.\n" + MANUAL_INSTRUCTIONS)
