"""TFDS builder ``lra_image``: LRA grayscale CIFAR-10, read from the official archive.

Source, in tfds' manual folder (``docs/lra_archives.md``), one of

- ``cifar-10-python.tar.gz``: pickled batches ``data_batch_1`` … ``data_batch_5``
  and ``test_batch`` (in ``cifar-10-batches-py/``), each a dict with
  ``b"data"`` (N×3072 uint8: the R plane, then G, then B, each 32×32
  row-major) and ``b"labels"`` (N ints 0..9);
- ``cifar-10-binary.tar.gz``: ``data_batch_{1..5}.bin`` and ``test_batch.bin``
  (in ``cifar-10-batches-bin/``), records of 1 label byte + 3,072 pixel bytes
  in the same plane order.

Each real batch holds 10,000 images (50,000 train, 10,000 test). Members are
matched by file name. The pickles are read with a restricted unpickler that
only rebuilds numpy arrays (a pickle can run code; only the allow-listed
numpy/bytes constructors are resolved).

Pixels → tokens: grayscale ``0.2989 R + 0.5870 G + 0.1140 B`` in float64,
rounded half up (``floor(g + 0.5)``) to 0..255, flattened row-major to 1,024
tokens (:func:`grayscale`). Token models embed the 256 intensities; continuous
models use :func:`normalize_pixels` (x/255 normalised by mean 122.6/255, std
61.0/255).

Splits as LRA's ``tfds.load("cifar10", split="train[:90%]")`` /
``"train[90%:]"`` / ``"test"``: tfds' ``cifar10`` numbers the training images
0..49,999 in archive order (batches 1..5) and stores them sorted by
``md5(b"train" + str(index))``; ``train[:90%]`` is the first
``round(0.9 · 50,000) = 45,000`` images of that order (:func:`tfds_train_order`),
so ``train`` has 45,000 images and ``validation`` 5,000; ``test`` has 10,000.
Our ``train`` and ``test`` records are keyed by the same index, so their stored
order is also that of tfds' ``cifar10``.

Features: ``inputs`` int32 ``[1024]`` (0..255), ``label`` int32 (0..9).
Works without TensorFlow exactly as ``regbench``; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import io
import pickle

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from seqjax.data.builders import _manual
from seqjax.data.builders._base import OfflineBuilder

IMAGE_SIZE = 32
SEQ_LENGTH = IMAGE_SIZE * IMAGE_SIZE  # 1,024 tokens
VOCAB_SIZE = 256
NUM_CLASSES = 10
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # R, G, B
# Continuous models: x / 255 normalised with these (LRA / S4 practice).
PIXEL_MEAN = 122.6 / 255.0
PIXEL_STD = 61.0 / 255.0
TRAIN_FRACTION_PERCENT = 90

_TORONTO = "https://www.cs.toronto.edu/~kriz/"
ARCHIVES = (
    # Sizes: "163 MB" / "162 MB" as listed on the CIFAR page; the binary
    # archive's byte count is the one in tfds' own checksums.
    _manual.ManualFile(name="cifar-10-python.tar.gz", url=_TORONTO + "cifar-10-python.tar.gz",
                       size="163 MB, md5 c58f30108f718f92721af3b95e74349a"),
    _manual.ManualFile(name="cifar-10-binary.tar.gz", url=_TORONTO + "cifar-10-binary.tar.gz",
                       size="170,052,171 bytes, about 162 MiB"),
)
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
_RECORD_BYTES = 1 + 3 * SEQ_LENGTH  # binary format: label byte + 3 planes


def grayscale(data: np.ndarray) -> np.ndarray:
    """CIFAR rows (R plane, G plane, B plane) → grayscale tokens.

    Args:
      data: uint8 ``[n, 3072]`` as stored in the CIFAR batches.

    Returns:
      int32 ``[n, 1024]`` in 0..255: ``floor(0.2989 R + 0.5870 G + 0.1140 B + 0.5)``
      computed in float64, pixels in row-major order.
    """
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3 * SEQ_LENGTH:
        raise ValueError(f"lra_image: expected CIFAR rows of {3 * SEQ_LENGTH} bytes, got shape {data.shape}")
    planes = data.astype(np.float64).reshape(-1, 3, SEQ_LENGTH)
    r, g, b = GRAY_WEIGHTS
    gray = r * planes[:, 0] + g * planes[:, 1] + b * planes[:, 2]
    return np.clip(np.floor(gray + 0.5), 0, 255).astype(np.int32)


def normalize_pixels(tokens, dtype=None):
    """Grayscale tokens → the normalised inputs of continuous (non-embedding) models.

    ``(tokens / 255 − 122.6/255) / (61.0/255)``. Works on NumPy and JAX arrays
    alike (plain arithmetic, no conversion to NumPy), so it can run inside
    ``jit``.

    Args:
      tokens: integer intensities 0..255, any shape (e.g. ``[batch, 1024]``).
      dtype: optional result dtype (e.g. ``jnp.float32``); default: the
        array library's floating type for the division.

    Returns:
      Float array of the same shape, roughly zero mean and unit variance.
    """
    x = (tokens / 255.0 - PIXEL_MEAN) / PIXEL_STD
    return x if dtype is None else x.astype(dtype)


def tfds_train_order(num_examples: int, split: str = "train") -> np.ndarray:
    """Indices in the order tfds stores a split keyed by example index (``cifar10``'s keys).

    tfds sorts records by the 128-bit md5 of ``split name + str(key)``; LRA's
    ``train[:90%]`` slices that stored order.

    Args:
      num_examples: number of examples (keys ``0..num_examples-1``).
      split: the split name used as hash salt.

    Returns:
      int64 ``[num_examples]`` permutation: position → archive index.
    """
    salt = split.encode()
    keys = [int(hashlib.md5(salt + str(i).encode()).hexdigest(), 16) for i in range(num_examples)]
    return np.array(sorted(range(num_examples), key=keys.__getitem__), dtype=np.int64)


def train_count(num_train: int) -> int:
    """Size of ``train[:90%]`` as tfds rounds it (to the closest example).

    Args:
      num_train: images in the archive's training batches.

    Returns:
      ``round(90 · num_train / 100)`` (45,000 for 50,000).
    """
    return int(round(TRAIN_FRACTION_PERCENT * num_train / 100.0))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals that numpy arrays and bytes need."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"lra_image: refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def load_python_batch(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch → ``(data [n, 3072] uint8, labels [n] int32)``.

    Args:
      raw: the pickle's bytes (Python 2 pickles load with ``encoding="bytes"``).

    Returns:
      The images and labels.
    """
    batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int32)
    if data.ndim != 2 or data.shape != (labels.shape[0], 3 * SEQ_LENGTH):
        raise ValueError(f"lra_image: batch data {data.shape} does not match {labels.shape[0]} labels x 3072 bytes")
    return data, labels


def load_binary_batch(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One binary CIFAR batch (records of 1 label byte + 3,072 pixel bytes) → ``(data, labels)``.

    Args:
      raw: the ``.bin`` file's bytes.

    Returns:
      uint8 ``[n, 3072]`` images and int32 ``[n]`` labels.
    """
    if len(raw) % _RECORD_BYTES:
        raise ValueError(f"lra_image: binary batch of {len(raw)} bytes is not a multiple of {_RECORD_BYTES}")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _RECORD_BYTES)
    return records[:, 1:].copy(), records[:, 0].astype(np.int32)


def read_archive(path: epath.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads the six batches of a CIFAR-10 archive (python or binary) in one pass.

    Args:
      path: ``cifar-10-python.tar.gz`` or ``cifar-10-binary.tar.gz``.

    Returns:
      batch name (``"data_batch_1"`` … ``"test_batch"``) → ``(grayscale uint8
      [n, 1024], labels int32 [n])``; grayscale is applied per batch so the
      colour arrays are not all held at once.

    Raises:
      ValueError: when a batch is missing or malformed.
      DamagedArchiveError: the archive is garbage or truncated.
    """
    binary = path.name.startswith("cifar-10-binary")
    suffix = ".bin" if binary else ""
    names = {name + suffix: name for name in (*TRAIN_BATCHES, TEST_BATCH)}
    loader = load_binary_batch if binary else load_python_batch
    batches = {}
    with _manual.reading(path, "lra_image", ARCHIVES):
        for member, f in _manual.iter_tar(path, lambda m: m.rsplit("/", 1)[-1] in names):
            data, labels = loader(f.read())
            if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
                raise ValueError(f"lra_image: {member} has labels outside 0..{NUM_CLASSES - 1}")
            # uint8 in memory (the 50,000 training images: 51 MB instead of 205 MB as int32).
            batches[names[member.rsplit("/", 1)[-1]]] = (grayscale(data).astype(np.uint8), labels)
    missing = [n for n in names.values() if n not in batches]
    if missing:
        raise ValueError(f"lra_image: {path} lacks {', '.join(missing)}; is it the official {path.name}?")
    return batches


class LraImage(OfflineBuilder):
    """LRA Image: grayscale CIFAR-10 as 1,024-token sequences, from the manual CIFAR archive.

    Attributes:
      VERSION: dataset version.
      MANUAL_DOWNLOAD_INSTRUCTIONS: what to put in the manual folder.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Download {ARCHIVES[0].name} ({ARCHIVES[0].size}) from {ARCHIVES[0].url} (or {ARCHIVES[1].name} "
        f"from {ARCHIVES[1].url}) and place it, not extracted, in the manual folder "
        "(default <data_dir>/downloads/manual). See docs/lra_archives.md."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="LRA Image: CIFAR-10 in grayscale, flattened row-major to 1,024 intensity tokens.",
            features=tfds.features.FeaturesDict({
                "inputs": tfds.features.Tensor(shape=(SEQ_LENGTH,), dtype=np.int32),
                # encoding="bytes": decodes to an int32 array; the default decodes a
                # scalar to a Python int, which batches as int64.
                "label": tfds.features.Tensor(shape=(), dtype=np.int32, encoding="bytes"),
            }),
            supervised_keys=("inputs", "label"),
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
            citation=("Krizhevsky. Learning Multiple Layers of Features from Tiny Images. 2009. "
                      "Tay et al. Long Range Arena. ICLR 2021."),
        )

    def _split_generators(self, dl_manager):
        archive = _manual.find_manual_file(dl_manager, "lra_image", ARCHIVES)
        batches = read_archive(archive)
        train_x = np.concatenate([batches[n][0] for n in TRAIN_BATCHES])
        train_y = np.concatenate([batches[n][1] for n in TRAIN_BATCHES])
        test_x, test_y = batches[TEST_BATCH]
        order = tfds_train_order(len(train_y))
        cut = train_count(len(train_y))
        return {
            "train": self._generate_examples(train_x, train_y, order[:cut]),
            "validation": self._generate_examples(train_x, train_y, order[cut:]),
            "test": self._generate_examples(test_x, test_y, np.arange(len(test_y))),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray):
        # Key = archive index (as tfds' cifar10), so tfds' hashed storage order matches cifar10's.
        for i in indices:
            i = int(i)
            yield i, {"inputs": images[i].astype(np.int32), "label": np.int32(labels[i])}
