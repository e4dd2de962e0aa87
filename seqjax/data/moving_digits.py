"""Moving Digits videos (pure NumPy) and the Moving MNIST test file reader.

Moving Digits is a small, offline stand-in for Moving MNIST (Srivastava,
Mansimov & Salakhutdinov 2015): the digits are the 8×8 images that
scikit-learn ships (``sklearn.datasets.load_digits``: 1,797 images, values
0..16, scaled here to [0, 1] by ``/ 16``), so nothing is downloaded.

The law of one video (``num_digits`` digits, ``num_frames`` frames of
``frame_size × frame_size``):

- each digit is an image drawn uniformly (with replacement) from the split's
  pool (below);
- its top-left corner starts at an integer position ``(row, col)``, each
  component uniform on ``{0, ..., frame_size - 8}`` (the digit is always
  wholly inside the canvas);
- its velocity ``(v_row, v_col)`` has each component uniform on
  ``{-max_speed, ..., max_speed} \\ {0}`` (default ``max_speed = 2``);
- bounce rule, per axis, per step: if ``p + v`` would leave
  ``[0, frame_size - 8]`` the velocity component is negated first, then the
  digit moves ``p <- p + v``. Frame 0 shows the start positions; frame ``t``
  the positions after ``t`` moves. ``frame_size >= 8 + 2 · max_speed`` is
  required, so the reflected move always lands inside the canvas;
- the frame is the pixel-wise maximum of the placed digit images over a zero
  canvas (as Moving MNIST composes its digits).

Reproducibility: video ``i`` of seed ``s`` is drawn from its own generator
``np.random.default_rng([s, i])`` (digit images, then positions, then
velocities), so its content does not depend on how many videos one call
makes, nor on which call makes it (:func:`generate` takes the first index).

Splits: the train pool is the first 80 % of sklearn's digit images (indices
``0 .. 1436``), the test pool the last 20 % (``1437 .. 1796``): disjoint
images (and, as sklearn orders its images by writer block, largely disjoint
writers).

:func:`load_moving_mnist` reads the standard ``mnist_test_seq.npy`` (uint8,
``(20, 10000, 64, 64)``, time first) from a manual directory; it never
downloads.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np

from seqjax.errors import ConfigError

DIGIT_SIZE = 8
"""Side of sklearn's digit images."""
SPLITS = ("train", "test")
TRAIN_FRACTION = 0.8
"""The train pool is the first ``floor(0.8 · 1797) = 1437`` images, the test pool the rest."""
MOVING_MNIST_FILE = "mnist_test_seq.npy"
MOVING_MNIST_URL = "https://www.cs.toronto.edu/~nitish/unsupervised_video/"


@functools.lru_cache(maxsize=1)
def _all_digits() -> np.ndarray:
    """sklearn's 1,797 digit images as float32 ``(1797, 8, 8)`` in [0, 1] (read once)."""
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    images = load_digits().images.astype(np.float32) / 16.0
    images.setflags(write=False)
    return images


def split_indices(split: str) -> np.ndarray:
    """Indices into sklearn's digit images of ``split``'s pool.

    Args:
      split: ``"train"`` (first 80 %) or ``"test"`` (last 20 %).

    Returns:
      int64 indices, ascending.

    Raises:
      ConfigError: an unknown split.
    """
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not allowed; allowed: {', '.join(SPLITS)}")
    n = len(_all_digits())
    cut = int(TRAIN_FRACTION * n)
    return np.arange(0, cut) if split == "train" else np.arange(cut, n)


def digit_images(split: str) -> np.ndarray:
    """The digit images of ``split``'s pool, float32 ``(n, 8, 8)`` in [0, 1] (read-only)."""
    return _all_digits()[split_indices(split)]


def validate(*, num_digits: int, frame_size: int, num_frames: int, max_speed: int, prefix: str = "") -> None:
    """Raises a one-line :class:`ConfigError` for settings the generator cannot draw.

    Args:
      num_digits, frame_size, num_frames, max_speed: as :func:`generate`.
      prefix: put before each name in the message (``"config.task."`` for a task field).
    """
    for name, value, low in (("num_digits", num_digits, 1), ("num_frames", num_frames, 1),
                             ("max_speed", max_speed, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{prefix}{name}={value!r} is not allowed; allowed: an int >= {low}")
    low = DIGIT_SIZE + 2 * max_speed
    if isinstance(frame_size, bool) or not isinstance(frame_size, int) or frame_size < low:
        raise ConfigError(f"{prefix}frame_size={frame_size!r} is not allowed; allowed: an int >= {low} "
                          f"(8 + 2·max_speed, so a bounce lands inside the canvas)")


def trajectory(start, velocity, num_frames: int, frame_size: int) -> np.ndarray:
    """Top-left corners of one digit over ``num_frames`` frames (the bounce rule of the module docstring).

    Args:
      start: ``(row, col)`` ints in ``[0, frame_size - 8]``.
      velocity: ``(v_row, v_col)`` ints with ``|v| <= (frame_size - 8) / 2``.
      num_frames: frames to trace.
      frame_size: canvas side.

    Returns:
      int64 ``(num_frames, 2)``: row 0 is ``start``.
    """
    high = frame_size - DIGIT_SIZE
    p, v = np.array(start, np.int64), np.array(velocity, np.int64)
    out = np.empty((num_frames, 2), np.int64)
    for t in range(num_frames):
        out[t] = p
        nxt = p + v
        v = np.where((nxt < 0) | (nxt > high), -v, v)  # reflect first, then move
        p = p + v
    return out


def compose(images: np.ndarray, corners: np.ndarray, frame_size: int) -> np.ndarray:
    """Frames of digits placed at their corners, composed by pixel-wise max.

    Args:
      images: ``(k, 8, 8)`` digit images.
      corners: ``(num_frames, k, 2)`` top-left corners (inside the canvas).
      frame_size: canvas side.

    Returns:
      float32 ``(num_frames, frame_size, frame_size)``.
    """
    frames = np.zeros((corners.shape[0], frame_size, frame_size), np.float32)
    for t in range(corners.shape[0]):
        for image, (r, c) in zip(images, corners[t]):
            window = frames[t, r:r + DIGIT_SIZE, c:c + DIGIT_SIZE]
            np.maximum(window, image, out=window)
    return frames


def render(images: np.ndarray, starts, velocities, num_frames: int, frame_size: int) -> np.ndarray:
    """One video from its digits, starts and velocities (:func:`trajectory` per digit, then :func:`compose`).

    Args:
      images: ``(k, 8, 8)`` digit images.
      starts: ``(k, 2)`` top-left corners of frame 0.
      velocities: ``(k, 2)`` initial velocities.
      num_frames: frames of the video.
      frame_size: canvas side.

    Returns:
      float32 ``(num_frames, frame_size, frame_size)``.
    """
    corners = np.stack([trajectory(s, v, num_frames, frame_size) for s, v in zip(starts, velocities)], axis=1)
    return compose(np.asarray(images), corners, frame_size)


def draw(rng: np.random.Generator, pool: np.ndarray, *, num_digits: int, frame_size: int, max_speed: int):
    """One video's random choices from ``rng``: image indices into ``pool``, starts and velocities.

    Args:
      rng: the video's generator.
      pool: ``(n, 8, 8)`` digit images to draw from.
      num_digits, frame_size, max_speed: as :func:`generate`.

    Returns:
      ``(indices (k,), starts (k, 2), velocities (k, 2))``, int64.
    """
    indices = rng.integers(0, len(pool), size=num_digits)
    starts = rng.integers(0, frame_size - DIGIT_SIZE + 1, size=(num_digits, 2))
    speeds = np.concatenate([np.arange(-max_speed, 0), np.arange(1, max_speed + 1)])
    velocities = speeds[rng.integers(0, len(speeds), size=(num_digits, 2))]
    return indices, starts, velocities


def generate(seed: int, n: int, *, split: str = "train", start: int = 0, num_digits: int = 2,
             frame_size: int = 16, num_frames: int = 20, max_speed: int = 2) -> np.ndarray:
    """Videos ``start .. start + n - 1`` of ``seed``'s Moving Digits stream over ``split``'s digit pool.

    Args:
      seed: an int >= 0; video ``i`` is drawn from ``np.random.default_rng([seed, i])``.
      n: number of videos.
      split: ``"train"`` or ``"test"`` (disjoint digit images, see the module docstring).
      start: index of the first video.
      num_digits: digits per video.
      frame_size: canvas side (>= 8 + 2·max_speed).
      num_frames: frames per video.
      max_speed: largest velocity component (in pixels per frame; 0 never drawn).

    Returns:
      float32 ``(n, num_frames, frame_size, frame_size)`` in [0, 1].
    """
    validate(num_digits=num_digits, frame_size=frame_size, num_frames=num_frames, max_speed=max_speed)
    pool = digit_images(split)
    out = np.empty((n, num_frames, frame_size, frame_size), np.float32)
    for row in range(n):
        rng = np.random.default_rng([int(seed), int(start) + row])
        indices, starts, velocities = draw(rng, pool, num_digits=num_digits, frame_size=frame_size,
                                           max_speed=max_speed)
        out[row] = render(pool[indices], starts, velocities, num_frames, frame_size)
    return out


def load_moving_mnist(manual_dir) -> np.ndarray:
    """The standard Moving MNIST file, batch first: float32 ``(n, 20, 64, 64)`` in [0, 1].

    Args:
      manual_dir: folder holding ``mnist_test_seq.npy`` (uint8 ``(20, n, 64, 64)``,
        time first, from the Moving MNIST page of Srivastava et al. 2015).

    Returns:
      The videos, ``/ 255``, with time moved after the batch axis.

    Raises:
      ConfigError: the file is absent, or is not a uint8 array of 4 dimensions.
    """
    path = pathlib.Path(str(manual_dir)).expanduser() / MOVING_MNIST_FILE
    if not path.is_file():
        raise ConfigError(f"Moving MNIST file {path} not found; put {MOVING_MNIST_FILE} there, from the Moving MNIST "
                          f"page of Srivastava et al. 2015 ({MOVING_MNIST_URL}); nothing is downloaded")
    raw = np.load(path)
    if raw.dtype != np.uint8 or raw.ndim != 4:
        raise ConfigError(f"Moving MNIST file {path} holds {raw.dtype} {raw.shape}; expected uint8 "
                          "(frames, videos, height, width), time first")
    return np.ascontiguousarray(raw.transpose(1, 0, 2, 3)).astype(np.float32) / 255.0


__all__ = ["DIGIT_SIZE", "MOVING_MNIST_FILE", "SPLITS", "compose", "digit_images", "draw", "generate",
           "load_moving_mnist", "render", "split_indices", "trajectory", "validate"]
