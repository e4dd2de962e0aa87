"""TFDS builder ``lra_pathfinder``: LRA Pathfinder images, generated locally or read from the LRA release.

Features (one example = one image):

- ``inputs``: int32 ``[size * size]``, the row-major pixel intensities 0..255
  (what LRA feeds to sequence models; stored zlib-compressed, since images
  are mostly black: Pathfinder-128 would otherwise take 13 GB per 200k).
- ``label``: int32, 1 when one path joins the two markers.

Configs:

- ``"{size}_{difficulty}"`` for size 32 / 64 / 128 / 256 and difficulty
  ``easy`` / ``intermediate`` / ``hard`` (contour length 6 / 9 / 14; LRA's
  Pathfinder is ``32_hard``, Path-X is ``128_hard``): 200,000 images made by
  :mod:`seqjax.data.pathfinder` with seed 0, split 80 / 10 / 10 into
  ``train`` / ``validation`` / ``test``. Default ``32_hard``.
  :func:`make_config` builds any other count or seed (the name encodes them).
  Image ``i`` of split ``s`` is ``sample(np.random.default_rng([seed, s, i]),
  label=i % 2)`` (s = 0 / 1 / 2), so classes are balanced exactly (to one
  image) and an image never depends on how many others are generated or on
  the number of worker processes. Records are stored in tfds' key-hash
  shuffled order, so any prefix of a split is a random, balanced sample.
- ``"{size}_{difficulty}_manual"``: the official images from the LRA release
  archive (``lra_release.gz``), read from ``manual_dir`` (see
  ``MANUAL_DOWNLOAD_INSTRUCTIONS``).

Generation runs in ``num_workers`` processes (constructor argument; default
``os.cpu_count()``; 1 = in this process) over chunks of indices, with a
tqdm progress bar (silenced by ``tfds.disable_progress_bar()``). Workers are
started with ``spawn``: the parent may hold JAX threads, which ``fork`` does
not survive safely; as with any ``spawn`` pool, a script that prepares with
``num_workers > 1`` needs an ``if __name__ == "__main__":`` guard.

Working without TensorFlow follows :mod:`seqjax.data.builders.regbench`:
``DatasetInfo`` built directly, array_record files, ``as_data_source`` to
read, ``code_path`` overridden, ``dl_manager`` used only for ``manual_dir``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
from collections import deque

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from seqjax.data import pathfinder as pf
from seqjax.data.builders import _manual
from seqjax.data.builders._base import OfflineBuilder
from seqjax.errors import ConfigError, check_positive

PAPER_NUM_EXAMPLES = 200_000
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
_SPLITS = ("train", "validation", "test")
# Folder of each difficulty inside lra_release/pathfinder{size}/.
RELEASE_FOLDERS = {"easy": "curv_baseline", "intermediate": "curv_contour_length_9",
                   "hard": "curv_contour_length_14"}
_CHUNK = 64
# Dataset version of every config. 2.0.0: generated images draw dashed snakes
# (the original's anchor spacing and clearance), so caches of 1.0.0 (one
# continuous polyline per snake) must not be reused.
DATASET_VERSION = "2.0.0"
_log = logging.getLogger(__name__)


class LraPathfinderConfig(tfds.core.BuilderConfig):
    """Parameters of one Pathfinder dataset.

    Attributes:
      size: image side (32, 64, 128 or 256).
      difficulty: ``"easy"``, ``"intermediate"`` or ``"hard"``.
      num_examples: images over all splits (generated configs).
      seed: data seed (generated configs).
      manual: read the LRA release images from ``manual_dir`` instead of generating.
    """

    def __init__(self, *, size: int = 32, difficulty: str = "hard", num_examples: int = PAPER_NUM_EXAMPLES,
                 seed: int = 0, manual: bool = False, **kwargs):
        kwargs.setdefault("version", tfds.core.Version(DATASET_VERSION))
        super().__init__(**kwargs)
        self.size = int(size)
        self.difficulty = difficulty
        self.num_examples = int(num_examples)
        self.seed = int(seed)
        self.manual = bool(manual)

    @property
    def generator_config(self) -> pf.PathfinderConfig:
        """The :class:`seqjax.data.pathfinder.PathfinderConfig` of this size and difficulty."""
        return pf.get_config(self.size, self.difficulty)


def split_sizes(num_examples: int) -> dict[str, int]:
    """Train / validation / test sizes of ``num_examples`` (80 / 10 / 10, rounding into train).

    Args:
      num_examples: total number of images.

    Returns:
      ``{"train": ..., "validation": ..., "test": ...}`` summing to ``num_examples``.
    """
    val = int(round(num_examples * SPLIT_FRACTIONS[1]))
    test = int(round(num_examples * SPLIT_FRACTIONS[2]))
    return {"train": num_examples - val - test, "validation": val, "test": test}


_REGISTERED: dict[str, LraPathfinderConfig] = {}


def make_config(size: int = 32, difficulty: str = "hard", *, num_examples: int = PAPER_NUM_EXAMPLES, seed: int = 0,
                manual: bool = False) -> LraPathfinderConfig:
    """A config for any size, difficulty, count and seed; LRA's settings get the registered object.

    Args:
      size: 32, 64, 128 or 256.
      difficulty: ``"easy"``, ``"intermediate"`` or ``"hard"``.
      num_examples: images over all splits (at least 3; ignored when ``manual``).
      seed: data seed (ignored when ``manual``).
      manual: read the LRA release from ``manual_dir``.

    Returns:
      An :class:`LraPathfinderConfig` named ``"{size}_{difficulty}"`` (LRA
      count and seed 0), ``"{size}_{difficulty}_manual"``, or
      ``"{size}_{difficulty}_n{num_examples}_s{seed}"``.

    Raises:
      ConfigError: for a bad size, difficulty or count.
    """
    pf.get_config(size, difficulty)  # validates size and difficulty
    check_positive("lra_pathfinder.num_examples", num_examples)
    if not manual and int(num_examples) < 3:
        raise ConfigError(f"lra_pathfinder.num_examples={num_examples!r} must be >= 3 (one per split)")
    base = f"{int(size)}_{difficulty}"
    if manual:
        name, params = f"{base}_manual", dict(manual=True)
    elif int(num_examples) == PAPER_NUM_EXAMPLES and int(seed) == 0:
        name, params = base, {}
    else:
        return LraPathfinderConfig(name=f"{base}_n{int(num_examples)}_s{int(seed)}", size=size, difficulty=difficulty,
                                   num_examples=num_examples, seed=seed,
                                   description="Pathfinder (see module docstring)")
    # Registered configs are singletons: tfds accepts a config object with a
    # registered name only if it IS the registered object.
    if name not in _REGISTERED:
        _REGISTERED[name] = LraPathfinderConfig(name=name, size=size, difficulty=difficulty,
                                                description="Pathfinder (see module docstring)", **params)
    return _REGISTERED[name]


def _generate_chunks(seed: int, split_id: int, count: int, cfg: pf.PathfinderConfig, num_workers: int,
                     desc: str):
    """Yields ``(index, tokens, label)`` for indices ``0..count-1`` in order, generated in worker processes."""
    # tfds' tqdm wrapper: a real tqdm bar unless tfds.disable_progress_bar() was called.
    from tensorflow_datasets.core.utils.tqdm_utils import tqdm

    chunks = [range(s, min(s + _CHUNK, count)) for s in range(0, count, _CHUNK)]
    with tqdm(total=count, desc=desc, unit="img", leave=False) as bar:
        if num_workers <= 1:
            for chunk in chunks:
                for item in pf.generate(seed, split_id, chunk, config=cfg):
                    bar.update(1)
                    yield item
            return
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx) as pool:
            # A bounded window of chunks in flight: results are yielded in
            # index order without holding a whole split in memory.
            pending = deque()
            todo = iter(chunks)
            for chunk in todo:
                pending.append(pool.submit(pf.generate, seed, split_id, chunk, config=cfg))
                if len(pending) >= 4 * num_workers:
                    break
            while pending:
                items = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(pf.generate, seed, split_id, nxt, config=cfg))
                for item in items:
                    bar.update(1)
                    yield item


def read_metadata(path) -> list[list[str]]:
    """Rows of one LRA release metadata file ``metadata/<k>.npy``.

    The release's files are plain text despite the ``.npy`` suffix: one image
    per line, fields separated by single spaces, ``[0]`` the image folder
    relative to the difficulty folder (e.g. ``imgs/0``), ``[1]`` the file name
    (e.g. ``sample_0.png``), ``[3]`` the label (this is how LRA's own tfds
    builder reads them). A real NumPy file (``np.save`` of a 2-D string array
    with the same columns) is accepted too.

    Args:
      path: the metadata file.

    Returns:
      list of rows, each a list of strings.
    """
    raw = epath.Path(path).read_bytes()
    if raw.startswith(b"\x93NUMPY"):
        import io

        arr = np.load(io.BytesIO(raw), allow_pickle=False)
        return [[str(v) for v in row] for row in np.atleast_2d(arr)]
    return [line.split() for line in raw.decode("utf-8").splitlines() if line.strip()]


def release_folder(manual_dir, size: int, difficulty: str) -> epath.Path:
    """The LRA release folder of one size and difficulty under ``manual_dir``.

    Accepts ``manual_dir/lra_release/pathfinder{size}/<folder>`` (the archive
    extracted as is) and ``manual_dir/pathfinder{size}/<folder>``.

    Args:
      manual_dir: tfds manual directory.
      size: image side.
      difficulty: difficulty name.

    Returns:
      The folder holding ``imgs/`` and ``metadata/``.

    Raises:
      MissingArchiveError: (a FileNotFoundError) naming the expected folder when neither exists.
    """
    rel = epath.Path(f"pathfinder{size}") / RELEASE_FOLDERS[difficulty]
    root = epath.Path(manual_dir)
    for cand in (root / "lra_release" / rel, root / rel):
        if (cand / "metadata").is_dir():
            return cand
    # A MissingArchiveError is a FileNotFoundError and a ConfigError (the command line: one line, exit 2).
    raise _manual.MissingArchiveError(
        f"lra_pathfinder: expected the folder {root / 'lra_release' / rel} with metadata/<k>.npy and "
        f"imgs/<k>/sample_<n>.png; it comes from the LRA release archive lra_release.gz "
        f"(extract it into the tfds manual_dir {root})", root, ())


def _read_png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


class LraPathfinder(OfflineBuilder):
    """Pathfinder (Linsley et al. 2018) as in the Long Range Arena: generated, or the official release.

    Attributes:
      VERSION: dataset version.
      BUILDER_CONFIGS: ``{size}_{difficulty}`` (generated) and ``{size}_{difficulty}_manual``.
      DEFAULT_BUILDER_CONFIG_NAME: ``"32_hard"``.
      MANUAL_DOWNLOAD_INSTRUCTIONS: where the ``_manual`` configs look for the release.
      num_workers: processes that generate images.
    """

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "2.0.0": "Generated images: dashed snakes with the original generator's anchor spacing (paddle_length + "
                 "2 * margin) and clearance (2 * margin + thickness); the release (_manual) reader is unchanged.",
    }
    BUILDER_CONFIGS = [make_config(s, d, manual=m) for m in (False, True) for s in pf.SIZES for d in pf.DIFFICULTIES]
    DEFAULT_BUILDER_CONFIG_NAME = "32_hard"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Only for the *_manual configs: extract the LRA release archive lra_release.gz into the manual_dir so "
        "that it holds lra_release/pathfinder{32,64,128,256}/{curv_baseline,curv_contour_length_9,"
        "curv_contour_length_14}/{imgs/<k>/sample_<n>.png, metadata/<k>.npy}.")

    def __init__(self, *args, file_format=None, num_workers: int | None = None, **kwargs):
        super().__init__(*args, file_format=file_format, **kwargs)
        self.num_workers = int(num_workers) if num_workers is not None else (os.cpu_count() or 1)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.size
        return tfds.core.DatasetInfo(
            builder=self,
            description="Pathfinder: is there a path between the two dots? Pixels as a sequence (Long Range Arena).",
            features=tfds.features.FeaturesDict({
                "inputs": tfds.features.Tensor(shape=(size * size,), dtype=np.int32, encoding="zlib"),
                # encoding="bytes" so a scalar decodes to an np.int32 (as lra_image), not a Python int.
                "label": tfds.features.Tensor(shape=(), dtype=np.int32, encoding="bytes"),
            }),
            supervised_keys=("inputs", "label"),
            homepage="https://arxiv.org/abs/2011.04006",
            citation=("Linsley, Kim, Veerabadran, Windolf, Serre. Learning long-range spatial dependencies with "
                      "horizontal gated recurrent units. NeurIPS 2018. Tay et al. Long Range Arena. ICLR 2021."),
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        if not c.manual:
            # Local generation only: dl_manager is deliberately unused.
            del dl_manager
            sizes = split_sizes(c.num_examples)
            return {s: self._generate_examples(s, sizes[s]) for s in _SPLITS}
        try:
            manual_dir = dl_manager.manual_dir
        except AssertionError:  # tfds: "Manual directory ... does not exist or is empty"
            # Fall through to our own error, which names the folder expected inside it.
            manual_dir = getattr(dl_manager, "_manual_dir", None)
            if manual_dir is None:
                raise
        folder = release_folder(manual_dir, c.size, c.difficulty)
        rows = []
        files = sorted(folder.glob("metadata/*.npy"), key=lambda p: (len(p.stem), p.stem))
        for meta in files:
            rows.extend(read_metadata(meta))
        if not rows:
            raise _manual.MissingArchiveError(
                f"lra_pathfinder: no metadata rows in {folder / 'metadata'} (from lra_release.gz)", folder, ())
        # Contiguous 80/10/10 over the metadata order, as LRA's
        # split="hard[:80%]" / "[80%:90%]" / "[90%:]".
        sizes = split_sizes(len(rows))
        bounds = np.cumsum([0] + [sizes[s] for s in _SPLITS])
        return {s: self._release_examples(folder, rows[bounds[i]:bounds[i + 1]]) for i, s in enumerate(_SPLITS)}

    def _generate_examples(self, split: str, count: int):
        c = self.builder_config
        stream = _generate_chunks(c.seed, _SPLITS.index(split), count, c.generator_config, self.num_workers,
                                  desc=f"lra_pathfinder/{c.name} {split}")
        for i, toks, label in stream:
            yield i, {"inputs": toks, "label": np.int32(label)}

    def _release_examples(self, folder: epath.Path, rows):
        size = self.builder_config.size
        skipped = 0
        for i, row in enumerate(rows):
            path = folder / row[0] / row[1]
            try:
                image = _read_png(path)
            except (OSError, SyntaxError, ValueError):  # unreadable PNGs exist in the Path-X release
                skipped += 1
                continue
            if image.shape != (size, size):
                raise ValueError(f"lra_pathfinder: {path} is {image.shape}, expected ({size}, {size})")
            yield i, {"inputs": pf.tokens(image), "label": np.int32(int(row[3]))}
        if skipped:
            _log.warning("lra_pathfinder: skipped %d unreadable images in %s", skipped, folder)
