"""Shared helpers of the archive-backed LRA builders (``lra_text``, ``lra_retrieval``, ``lra_image``).

These builders read official archives that the user places in tfds' manual
folder (``dl_manager.manual_dir``; by default ``<data_dir>/downloads/manual``,
or ``tfds.download.DownloadConfig(manual_dir=...)``). Nothing is ever
downloaded. This module holds what the three share:

- :class:`ManualFile`: one accepted file (name, download address, confirmed size).
- :func:`find_manual_file`: the first accepted file present in the manual
  folder, or a :class:`MissingArchiveError` whose one-line message names the
  file, its size (only where confirmed), where to download it and which folder
  to put it in.
- :func:`iter_tar`: streams selected members of a (gzipped) tar archive
  without extracting it to disk.
- :func:`reading`: turns the errors of a garbage or truncated archive into a
  :class:`DamagedArchiveError` naming the file, its size on disk, the size of
  the real one and the manual folder.

Both errors are also :class:`~seqjax.errors.ConfigError` (a bad input), so an
entrypoint prints their one line and exits with status 2.
- :func:`encode_bytes`: the LRA byte-level encoding (id = byte + 1, pad 0).
- :func:`check_length`: validates a length parameter of a builder config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import IO

import numpy as np
from etils import epath

from seqjax.errors import ConfigError

# Byte-level vocabulary shared by lra_text and lra_retrieval: pad 0, byte b -> b + 1.
PAD_ID = 0
BYTE_VOCAB_SIZE = 257


@dataclasses.dataclass(frozen=True)
class ManualFile:
    """A file that a builder accepts in the manual folder.

    Attributes:
      name: the file name expected in the manual folder.
      url: where to download it.
      size: its size, human-readable, only where confirmed (``None`` otherwise:
        the error message then states no size rather than a guess).
      note: optional extra line for the error message.
    """

    name: str
    url: str
    size: str | None = None
    note: str = ""


class MissingArchiveError(FileNotFoundError, ConfigError):
    """A required archive is not in the manual folder.

    The message (one line) names the file, its size (where confirmed), where
    to download it and the manual folder to put it in.

    Attributes:
      folder: the manual folder that was searched.
      candidates: the accepted files (any one of them is enough).
    """

    def __init__(self, message: str, folder: epath.Path | None, candidates: Sequence[ManualFile]):
        super().__init__(message)
        self.folder = folder
        self.candidates = tuple(candidates)


def manual_folder(dl_manager) -> epath.Path | None:
    """The manual folder of ``dl_manager``, whether or not it exists yet.

    tfds' ``dl_manager.manual_dir`` raises a bare ``AssertionError`` when the
    folder is missing or empty; we want the folder's path for our own message
    instead, so fall back to the (private) configured path.

    Args:
      dl_manager: the ``tfds.download.DownloadManager`` given to
        ``_split_generators``.

    Returns:
      The manual folder, or ``None`` when the download manager has none.
    """
    try:
        return epath.Path(dl_manager.manual_dir)
    except AssertionError:
        path = getattr(dl_manager, "_manual_dir", None)
        return None if path is None else epath.Path(path)


class DamagedArchiveError(ConfigError):
    """An archive in the manual folder is not a readable (gzipped) tar: garbage or truncated.

    Attributes:
      path: the archive.
    """

    def __init__(self, message: str, path: epath.Path):
        super().__init__(message)
        self.path = path


def _folder_text(folder: epath.Path | None) -> str:
    return str(folder) if folder is not None else "<data_dir>/downloads/manual"


def missing_message(dataset: str, candidates: Sequence[ManualFile], folder: epath.Path | None,
                    alternative: str = "") -> str:
    """The one-line text of a :class:`MissingArchiveError`.

    Args:
      dataset: the tfds builder name, e.g. ``"lra_text"``.
      candidates: the accepted files (any one is enough).
      folder: the manual folder searched.
      alternative: optional extra sentence (another accepted layout).

    Returns:
      What is missing, where to get it, where to put it, on one line.
    """
    files = []
    for c in candidates:
        size = f" ({c.size})" if c.size else ""
        files.append(f"{c.name}{size} from {c.url}" + (f" ({c.note})" if c.note else ""))
    which = files[0] if len(files) == 1 else "one of: " + "; ".join(files)
    extra = f" {alternative.rstrip('.')}." if alternative else ""
    return (f"{dataset}: no archive in the manual folder {_folder_text(folder)}; download {which}, and put it "
            f"there unchanged and not extracted.{extra} Another folder: config.task.manual_dir, or "
            "tfds.download.DownloadConfig(manual_dir=...); see docs/lra_archives.md")


# What a garbage or truncated (gzipped) tar raises while it is streamed.
_DAMAGED = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


@contextlib.contextmanager
def reading(path: epath.PathLike, dataset: str, candidates: Sequence[ManualFile]) -> Iterator[None]:
    """Reads of the archive ``path`` inside this block raise :class:`DamagedArchiveError` when it is damaged.

    Args:
      path: the archive (from :func:`find_manual_file`).
      dataset: the tfds builder name, for the message.
      candidates: the accepted files; the one named like ``path`` gives the
        expected size and the download address.

    Raises:
      DamagedArchiveError: one line naming the file, its size on disk, the
        real archive's size (or that it is not recorded here) and the manual
        folder.
    """
    try:
        yield
    except _DAMAGED as e:
        path = epath.Path(path)
        known = next((c for c in candidates if c.name == path.name), None)
        expected = known.size if known is not None and known.size else "not recorded here"
        url = f" from {known.url}" if known is not None else ""
        reason = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {reason[0]}" if reason else type(e).__name__
        raise DamagedArchiveError(
            f"{dataset}: the archive {path} is damaged or incomplete ({reason}); it has "
            f"{path.stat().length:,} bytes, the real one: {expected}. Download it again{url} into the manual "
            f"folder {path.parent}, unchanged and not extracted", path) from None


def find_manual_file(dl_manager, dataset: str, candidates: Sequence[ManualFile], *,
                     alternative: str = "") -> epath.Path:
    """The first of ``candidates`` present in the manual folder.

    Args:
      dl_manager: the download manager given to ``_split_generators``.
      dataset: the tfds builder name (for the error message).
      candidates: accepted files in order of preference.
      alternative: extra sentence for the error message.

    Returns:
      Path of the file found.

    Raises:
      MissingArchiveError: when none of the files is there.
    """
    folder = manual_folder(dl_manager)
    if folder is not None:
        for c in candidates:
            path = folder / c.name
            if path.is_file():
                return path
    raise MissingArchiveError(missing_message(dataset, candidates, folder, alternative), folder, candidates)


def iter_tar(path: epath.PathLike, select: Callable[[str], bool]) -> Iterator[tuple[str, IO[bytes]]]:
    """Streams the regular-file members of a tar archive whose name passes ``select``.

    Stream mode (``r|*``) reads the (gzipped) archive once, front to back,
    without seeking and without extracting anything to disk. Each yielded
    file object is valid only until the next member is requested.

    Args:
      path: the archive (``.tar``, ``.tar.gz``; compression auto-detected).
      select: predicate on the member name (e.g. ``"aclImdb/train/pos/0_9.txt"``).

    Yields:
      ``(member name, readable binary file object)``.
    """
    with epath.Path(path).open("rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and select(member.name):
                f = tar.extractfile(member)
                if f is not None:
                    yield member.name, f


def encode_bytes(data: bytes, max_length: int) -> np.ndarray:
    """LRA byte-level encoding: id = byte + 1 (so 0 stays padding), cut to ``max_length``.

    The bytes are used as they are (for UTF-8 text: its UTF-8 bytes), so no
    decoding can fail and non-ASCII characters become several tokens, as in
    LRA's ``ByteTextEncoder``.

    Args:
      data: raw bytes.
      max_length: keep at most this many bytes (the first ones).

    Returns:
      int32 ids in ``1..256``, unpadded, length ``min(len(data), max_length)``.
    """
    return np.frombuffer(data[:max_length], dtype=np.uint8).astype(np.int32) + 1


def check_length(field: str, value) -> int:
    """Validates a length parameter of a builder config.

    Args:
      field: the parameter's name for the message, e.g. ``"lra_text.max_length"``.
      value: the configured value.

    Returns:
      ``value`` as an int.

    Raises:
      ConfigError: unless ``value`` is an int >= 1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{field}={value!r} is not allowed; allowed: an int >= 1")
    return int(value)
