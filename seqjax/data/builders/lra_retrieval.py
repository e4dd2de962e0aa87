"""TFDS builder ``lra_retrieval``: LRA document matching on AAN pairs, read from the LRA release.

Source, in tfds' manual folder (``docs/lra_archives.md``), either

- the three TSVs ``new_aan_pairs.train.tsv``, ``new_aan_pairs.eval.tsv``,
  ``new_aan_pairs.test.tsv`` placed directly in the folder, or
- the LRA release archive ``lra_release.gz`` (a gzipped tar, also accepted as
  ``lra_release.tar.gz``, the name LRA's setup script saves it under), whose
  TSVs sit in a ``tsv_data/`` folder (``lra_release/lra_release/tsv_data/`` in
  the LRA setup scripts). Members are matched by file name, so the exact
  nesting does not matter. The archive is large (it also holds ListOps and
  Pathfinder), so it is streamed once, the three TSVs are copied out
  (only those) to ``<download_dir>/lra_retrieval_tsv/`` and the stream stops
  as soon as all three are found.

TSV format (LRA's ``make_csv_dataset(field_delim="\\t", use_quote_delim=False,
header=False)``): one pair per line, 5 tab-separated columns ``label, id1,
id2, text1, text2``; no header; quotes are ordinary characters (``"`` never
starts a quoted field). Lines are split on ``\\n`` only (a trailing ``\\r``
is dropped), so other Unicode line breaks inside a text stay in the text.
The label is parsed as a number (``"1"``, ``"1.0"``, ``"0.0"`` all work, as
LRA's float32 column) and must be 0 or 1.

Encoding: each text's bytes as they are, id = byte + 1, pad 0 (vocabulary
257), cut to ``max_length`` bytes per document (default 4,000, as LRA).
Features: ``inputs1``, ``inputs2`` int32 ``[None]`` (unpadded,
zlib-compressed on disk), ``label`` int32. Splits: ``train``,
``validation`` (from ``eval``), ``test``. Records are stored in tfds' hashed
order (classes mixed for grain's contiguous per-host shards).

Works without TensorFlow exactly as ``regbench``; nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from seqjax.data.builders import _manual
from seqjax.data.builders._base import (
    ByteLengthConfig,
    OfflineBuilder,
    byte_length_configs,
)

DEFAULT_MAX_LENGTH = 4000
VOCAB_SIZE = _manual.BYTE_VOCAB_SIZE
NUM_CLASSES = 2
# Our split name -> the LRA file's split name.
SPLIT_FILES = {"train": "train", "validation": "eval", "test": "test"}
TSV_NAMES = {split: f"new_aan_pairs.{name}.tsv" for split, name in SPLIT_FILES.items()}
NUM_COLUMNS = 5

_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
# Size not stated: not confirmed from an offline source.
ARCHIVES = (
    _manual.ManualFile(name="lra_release.gz", url=_URL, note="the LRA release archive (a .tar.gz)"),
    _manual.ManualFile(name="lra_release.tar.gz", url=_URL, note="the same archive saved under this name"),
)
_ALTERNATIVE = ("Or put the three TSVs " + ", ".join(TSV_NAMES.values())
                + " (from lra_release/.../tsv_data/ in that archive) directly into the folder.")


# One parameter (bytes kept per document); the default config is registered.
_DEFAULT_CONFIG, make_config = byte_length_configs(
    "lra_retrieval", DEFAULT_MAX_LENGTH, lambda n: f"AAN pairs, bytes cut to {n:,} per document")
LraRetrievalConfig = ByteLengthConfig


def parse_label(field: bytes, where: str) -> int:
    """A 0/1 label from its TSV field (``"1"``, ``"1.0"``, ``" 0.0 "``).

    Args:
      field: the raw label column.
      where: ``file:line`` for the error message.

    Returns:
      0 or 1.

    Raises:
      ValueError: for anything that is not the number 0 or 1.
    """
    try:
        value = float(field.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        value = None
    if value not in (0.0, 1.0):
        raise ValueError(f"lra_retrieval: {where}: label {field!r} is not 0 or 1")
    return int(value)


def parse_line(line: bytes, where: str) -> tuple[int, bytes, bytes, bytes, bytes] | None:
    """One TSV line → ``(label, id1, id2, text1, text2)``; None for a blank line.

    Args:
      line: raw bytes of one line (with or without its ``\\n``/``\\r\\n``).
      where: ``file:line`` for error messages.

    Returns:
      The parsed row, or None when the line is empty.

    Raises:
      ValueError: when the line does not have exactly 5 tab-separated fields
        (LRA's CSV reader fails on such a line too) or the label is bad.
    """
    line = line.rstrip(b"\n")
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line:
        return None
    # Plain split: no quote handling (a '"' is an ordinary character).
    fields = line.split(b"\t")
    if len(fields) != NUM_COLUMNS:
        raise ValueError(f"lra_retrieval: {where}: expected {NUM_COLUMNS} tab-separated fields "
                         f"(label, id1, id2, text1, text2), found {len(fields)}")
    label, id1, id2, text1, text2 = fields
    return parse_label(label, where), id1, id2, text1, text2


def _tsvs_in(folder: epath.Path | None) -> dict[str, epath.Path] | None:
    """The three TSVs in ``folder`` if all are there."""
    if folder is None:
        return None
    paths = {split: folder / name for split, name in TSV_NAMES.items()}
    return paths if all(p.is_file() for p in paths.values()) else None


def copy_tsvs_from_archive(archive: epath.Path, dest: epath.Path) -> dict[str, epath.Path]:
    """Copies the three AAN TSVs (only those) out of the LRA release archive.

    Streams the archive once and stops when all three are found. Each file is
    written under a temporary name and renamed, so a crash never leaves a
    partial TSV that a later run would trust.

    Args:
      archive: ``lra_release.gz``.
      dest: folder for the TSVs (created).

    Returns:
      split → path of its TSV in ``dest``.

    Raises:
      ValueError: when the archive lacks one of the TSVs.
      DamagedArchiveError: the archive is garbage or truncated.
    """
    dest = epath.Path(dest)
    paths = {split: dest / name for split, name in TSV_NAMES.items()}
    if all(p.is_file() for p in paths.values()):
        return paths  # copied by an earlier run
    dest.mkdir(parents=True, exist_ok=True)
    by_name = {name: split for split, name in TSV_NAMES.items()}
    missing = set(by_name)

    def wanted(member: str) -> bool:
        base = member.rsplit("/", 1)[-1]
        # Skip macOS resource forks ("._new_aan_pairs...") by the exact-name match.
        return base in missing

    stream = _manual.iter_tar(archive, wanted)
    try:
        with _manual.reading(archive, "lra_retrieval", ARCHIVES):
            for member, f in stream:
                base = member.rsplit("/", 1)[-1]
                target = paths[by_name[base]]
                tmp = epath.Path(f"{target}.tmp")
                with tmp.open("wb") as out:
                    shutil.copyfileobj(f, out, length=1 << 20)
                os.replace(tmp, target)
                missing.discard(base)
                if not missing:
                    break  # the rest of a multi-GB archive is not needed
    finally:
        stream.close()
    if missing:
        raise ValueError(f"lra_retrieval: {archive} has no member named {', '.join(sorted(missing))}; "
                         "is it the LRA release archive?")
    return paths


class LraRetrieval(OfflineBuilder):
    """LRA Retrieval: byte-level AAN citation pairs from the LRA release TSVs.

    Attributes:
      VERSION: dataset version.
      BUILDER_CONFIGS: the default config (``max_length`` 4,000).
      MANUAL_DOWNLOAD_INSTRUCTIONS: what to put in the manual folder.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [_DEFAULT_CONFIG]
    DEFAULT_BUILDER_CONFIG_NAME = str(DEFAULT_MAX_LENGTH)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Download lra_release.gz from {_URL} and place it, not extracted, in the manual folder "
        "(default <data_dir>/downloads/manual); or place the three TSVs " + ", ".join(TSV_NAMES.values())
        + " there. See docs/lra_archives.md."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        tokens = lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding="zlib")  # noqa: E731
        return tfds.core.DatasetInfo(
            builder=self,
            description="LRA Retrieval: do two AAN papers cite each other? Byte level (ids = byte + 1, pad 0).",
            features=tfds.features.FeaturesDict({
                "inputs1": tokens(),
                "inputs2": tokens(),
                # encoding="bytes": decodes to an int32 array; the default decodes a
                # scalar to a Python int, which batches as int64.
                "label": tfds.features.Tensor(shape=(), dtype=np.int32, encoding="bytes"),
            }),
            homepage="https://github.com/google-research/long-range-arena",
            citation=("Radev et al. The ACL Anthology Network Corpus. 2013. "
                      "Tay et al. Long Range Arena. ICLR 2021."),
        )

    def _split_generators(self, dl_manager):
        tsvs = _tsvs_in(_manual.manual_folder(dl_manager))
        if tsvs is None:
            archive = _manual.find_manual_file(dl_manager, "lra_retrieval", ARCHIVES, alternative=_ALTERNATIVE)
            tsvs = copy_tsvs_from_archive(archive, epath.Path(dl_manager.download_dir) / "lra_retrieval_tsv")
        return {split: self._generate_examples(tsvs[split]) for split in SPLIT_FILES}

    def _generate_examples(self, path: epath.Path):
        max_length = self.builder_config.max_length
        with epath.Path(path).open("rb") as f:
            # Iterating a binary file splits on b"\n" only.
            for lineno, line in enumerate(f, start=1):
                row = parse_line(line, f"{path.name}:{lineno}")
                if row is None:
                    continue
                label, _, _, text1, text2 = row
                yield lineno, {
                    "inputs1": _manual.encode_bytes(text1, max_length),
                    "inputs2": _manual.encode_bytes(text2, max_length),
                    "label": np.int32(label),
                }
