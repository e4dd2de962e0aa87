"""Writers of tiny archives in the exact formats of the official LRA sources (for tests).

- :func:`write_imdb_archive`: ``aclImdb_v1.tar.gz`` layout
  (``aclImdb/{train,test}/{pos,neg,unsup}/<id>_<rating>.txt`` plus the
  README / urls / vocab files that the builder must skip).
- :func:`aan_tsv` / :func:`write_aan_archive`: the LRA release's
  ``new_aan_pairs.*.tsv`` (5 tab-separated columns, no header, no quoting)
  inside a gzipped tar with other LRA members around them.
- :func:`write_cifar_python` / :func:`write_cifar_binary`: CIFAR-10 batches
  as Python 2 style pickles (``numpy.core.multiarray`` references, bytes
  keys) or as 3,073-byte binary records.

The real files hold 25,000 reviews per split, ~147k pairs, and 10,000
images per batch; these hold a handful.
"""

from __future__ import annotations

import io
import pickle
import socket
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def no_network(monkeypatch) -> None:
    """Makes any socket connection fail the test (the builders must never download)."""

    def refuse(*args, **kwargs):
        raise AssertionError("an LRA builder touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def write_imdb_archive(path, reviews: Sequence[tuple[str, str, int, int, bytes]]) -> None:
    """Writes an ``aclImdb_v1.tar.gz``-style archive.

    Args:
      path: output file.
      reviews: ``(split, "pos"|"neg", id, rating, text bytes)`` in archive order.
    """
    with tarfile.open(path, "w:gz") as tar:
        _add_dir(tar, "aclImdb")
        _add_file(tar, "aclImdb/README", b"Large Movie Review Dataset v1.0\n")
        _add_file(tar, "aclImdb/imdb.vocab", b"the\nand\n")
        for split in ("test", "train"):
            _add_dir(tar, f"aclImdb/{split}")
            _add_file(tar, f"aclImdb/{split}/urls_pos.txt", b"http://www.imdb.com/title/tt0000001/usercomments\n")
            _add_file(tar, f"aclImdb/{split}/labeledBow.feat", b"0 0:1 1:2\n")
            for label in ("neg", "pos"):
                _add_dir(tar, f"aclImdb/{split}/{label}")
                for s, lab, idx, rating, text in reviews:
                    if (s, lab) == (split, label):
                        _add_file(tar, f"aclImdb/{split}/{label}/{idx}_{rating}.txt", text)
        # Unlabelled reviews (rating 0) must be ignored.
        _add_dir(tar, "aclImdb/train/unsup")
        _add_file(tar, "aclImdb/train/unsup/0_0.txt", b"An unlabelled review.")
        _add_file(tar, "aclImdb/train/unsup/1_0.txt", b"Another one.")


def aan_tsv(rows: Iterable[tuple[str, str, str, bytes, bytes]], *, crlf_rows: Sequence[int] = ()) -> bytes:
    """The bytes of a ``new_aan_pairs.*.tsv`` file.

    Args:
      rows: ``(label field, id1, id2, text1, text2)``; the label is written
        verbatim (e.g. ``"1.0"``).
      crlf_rows: indices of rows to end with ``\\r\\n`` instead of ``\\n``.

    Returns:
      Tab-separated lines, no header, no quoting.
    """
    out = []
    for i, (label, id1, id2, text1, text2) in enumerate(rows):
        end = b"\r\n" if i in crlf_rows else b"\n"
        out.append(b"\t".join([label.encode(), id1.encode(), id2.encode(), text1, text2]) + end)
    return b"".join(out)


def write_aan_archive(path, tsvs: Mapping[str, bytes], prefix: str = "lra_release/lra_release/") -> None:
    """Writes an ``lra_release.gz``-style archive holding the AAN TSVs among other LRA members.

    Args:
      path: output file.
      tsvs: file split name (``"train"``, ``"eval"``, ``"test"``) → TSV bytes.
      prefix: folder that holds ``tsv_data/`` (as in LRA's setup scripts).
    """
    with tarfile.open(path, "w:gz") as tar:
        _add_dir(tar, prefix.rstrip("/"))
        _add_file(tar, prefix + "listops-1000/basic_train.tsv", b"Source\tTarget\n( [MAX 2 9 ] )\t9\n")
        _add_dir(tar, prefix + "tsv_data")
        # A macOS resource fork with a similar name must not be taken for the TSV.
        _add_file(tar, prefix + "tsv_data/._new_aan_pairs.train.tsv", b"\x00\x05\x16\x07junk")
        for split in ("test", "train", "eval"):
            _add_file(tar, prefix + f"tsv_data/new_aan_pairs.{split}.tsv", tsvs[split])
        _add_file(tar, prefix + "pathfinder32/curv_baseline/metadata/0.npy", b"\x93NUMPY")


def _py2_style_pickle(obj) -> bytes:
    # Protocol 2 as the (Python 2 cPickle) CIFAR files; they reference numpy's
    # array constructor under its numpy-1 module name.
    raw = pickle.dumps(obj, protocol=2)
    return raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def write_cifar_python(path, batches: Mapping[str, tuple[np.ndarray, Sequence[int]]]) -> None:
    """Writes a ``cifar-10-python.tar.gz``-style archive.

    Args:
      path: output file.
      batches: ``"data_batch_1"`` … ``"test_batch"`` → (uint8 ``[n, 3072]``, labels).
    """
    with tarfile.open(path, "w:gz") as tar:
        _add_dir(tar, "cifar-10-batches-py")
        _add_file(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
        meta = {b"label_names": [b"airplane", b"automobile"], b"num_cases_per_batch": 10000, b"num_vis": 3072}
        _add_file(tar, "cifar-10-batches-py/batches.meta", _py2_style_pickle(meta))
        for name, (data, labels) in batches.items():
            n = len(labels)
            batch = {b"batch_label": f"{name} of 5".encode(), b"labels": [int(v) for v in labels],
                     b"data": np.ascontiguousarray(data, dtype=np.uint8),
                     b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
            _add_file(tar, f"cifar-10-batches-py/{name}", _py2_style_pickle(batch))


def write_cifar_binary(path, batches: Mapping[str, tuple[np.ndarray, Sequence[int]]]) -> None:
    """Writes a ``cifar-10-binary.tar.gz``-style archive (records: label byte + 3,072 pixel bytes).

    Args:
      path: output file.
      batches: as :func:`write_cifar_python`; files get a ``.bin`` suffix.
    """
    with tarfile.open(path, "w:gz") as tar:
        _add_dir(tar, "cifar-10-batches-bin")
        _add_file(tar, "cifar-10-batches-bin/batches.meta.txt", b"airplane\nautomobile\n")
        for name, (data, labels) in batches.items():
            records = np.concatenate([np.asarray(labels, np.uint8)[:, None], np.asarray(data, np.uint8)], axis=1)
            _add_file(tar, f"cifar-10-batches-bin/{name}.bin", records.tobytes())
        _add_file(tar, "cifar-10-batches-bin/readme.html", b"<html></html>")
