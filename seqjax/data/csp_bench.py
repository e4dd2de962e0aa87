"""CSP-Bench (Bhirangi et al. 2024, HiSS) from a manual directory: the authors' resampled HDF5 files.

The layout, field names and targets below are read from the authors' public
code (github.com/raunaqbhirangi/hiss: ``create_dataset.py``,
``hiss/utils/data_utils.py``, ``hiss/tasks/*.py``, ``conf/data_env/*.yaml``,
``conf/dataset/*.yaml``); nothing is downloaded. Their pipeline
(``data_processing/process_*.py``, then ``create_dataset.py``) writes, per
dataset, one file ``<manual_dir>/<dir>/<dir>_<suffix>.h5`` holding, for every
modality ``m`` (resampled to a fixed rate by linear interpolation):

- ``m``: the samples of all episodes concatenated along axis 0, ``(N_m, ...)``;
- ``m_episode_ids``: episode boundaries, int ``(E + 1,)``, starting at 0
  (episode ``e`` is rows ``ids[e] .. ids[e+1] - 1``);
- ``m_timestamps``: ``(N_m,)`` seconds; ``m_frequency``: the rate (scalar).

Sensors run at 50 Hz and targets at 5 Hz in every file (the ``rs50kn5``,
``x50e5``, ``i50o5``, ``imu50p5`` suffixes), so one target falls on every 10
sensor samples. The datasets read here (``DATASETS``):

=================  ==================================  ==============================  ============
name               file                                inputs → targets                target form
=================  ==================================  ==============================  ============
marker_writing     marker_writing_hiss_dataset_rs50kn5 ``tactile`` → ``kinova[:, :2]``   differences
joystick_control   joystick_control_hiss_dataset_x50e5 ``xela`` (clipped ±1000) →      minus first
                                                       ``extreme3d[:, :3]``
ronin              ronin_i50o5 (+ ronin_i50o5_test)    ``acce``, ``gyro`` →            differences
                                                       ``tango_pose[:, :2]``
vector             vector_imu50p5                      ``acce``, ``gyro`` →            differences
                                                       ``pose[:, :3]``
=================  ==================================  ==============================  ============

"differences": target row ``j`` is ``y[j] - y[j-1]`` with a zero first row
(the authors' ``predict_diffs``); "minus first": ``y[j] - y[0]``. Not read
here: ``intrinsic_slip`` (its target is a pose change in the first frame
through quaternion algebra) and ``total_capture`` (13 IMUs of quaternions
turned into rotation-matrix columns); see ``docs/csp.md``.

Episodes: each episode's inputs are cut to ``10 · C`` samples, ``C = min(len
inputs // 10, len targets)``, so the sensors of target ``j`` are samples
``10 j .. 10 j + 9``.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from seqjax.errors import ConfigError

SOURCE = "github.com/raunaqbhirangi/hiss (CSP-Bench; data_processing/ then create_dataset.py)"
RATIO = 10
"""Sensor samples per target: 50 Hz / 5 Hz in every CSP-Bench file."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """How one CSP-Bench dataset's file is read.

    Attributes:
      dir: the folder under the manual directory (the authors' ``dataset_dir``).
      suffix: the file's suffix (``<dir>/<dir>_<suffix>.h5``).
      inputs: the input modalities, concatenated along the last axis.
      target: the target modality.
      columns: the target's columns kept.
      diffs: targets as differences (True) or minus the first row (False).
      clip: inputs clipped to ``[-clip, clip]`` (None: not clipped).
      test_suffix: suffix of a separate test file (None: split the file's episodes).
    """

    dir: str
    suffix: str
    inputs: tuple[str, ...]
    target: str
    columns: tuple[int, ...]
    diffs: bool
    clip: float | None = None
    test_suffix: str | None = None

    def path(self, manual_dir, test: bool = False) -> pathlib.Path:
        """The file's path under ``manual_dir`` (the test file's when ``test``)."""
        suffix = self.test_suffix if test else self.suffix
        return pathlib.Path(str(manual_dir)).expanduser() / self.dir / f"{self.dir}_{suffix}.h5"


DATASETS = {
    "marker_writing": Dataset("marker_writing_hiss_dataset", "rs50kn5", ("tactile",), "kinova", (0, 1), True),
    "joystick_control": Dataset("joystick_control_hiss_dataset", "x50e5", ("xela",), "extreme3d", (0, 1, 2), False,
                                clip=1000.0),
    "ronin": Dataset("ronin", "i50o5", ("acce", "gyro"), "tango_pose", (0, 1), True, test_suffix="i50o5_test"),
    "vector": Dataset("vector", "imu50p5", ("acce", "gyro"), "pose", (0, 1, 2), True),
}


def _h5py():
    try:
        import h5py
    except ImportError as e:  # an optional dependency: only this reader needs it
        raise ConfigError("reading CSP-Bench needs h5py (pip install h5py)") from e
    return h5py


def read_file(path, spec: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """The episodes of one CSP-Bench file as ``(inputs (10·C, d_in), targets (C, d_out))`` float64 pairs.

    Args:
      path: the ``.h5`` file.
      spec: how to read it (``DATASETS[name]``).

    Returns:
      One pair per episode with at least one target.

    Raises:
      ConfigError: the file is absent (naming it and where it comes from) or lacks a field.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"CSP-Bench file {path} not found; make it with the HiSS authors' scripts ({SOURCE}); "
                          "nothing is downloaded")
    h5py = _h5py()
    with h5py.File(path, "r") as f:
        need = [*spec.inputs, f"{spec.inputs[0]}_episode_ids", spec.target, f"{spec.target}_episode_ids"]
        missing = [k for k in need if k not in f]
        if missing:
            raise ConfigError(f"CSP-Bench file {path} has no field {missing[0]!r}; expected {', '.join(need)}")
        x = np.concatenate([np.asarray(f[m], np.float64).reshape(len(f[m]), -1) for m in spec.inputs], axis=-1)
        y = np.asarray(f[spec.target], np.float64)[:, list(spec.columns)]
        x_ids = np.asarray(f[f"{spec.inputs[0]}_episode_ids"], np.int64)
        y_ids = np.asarray(f[f"{spec.target}_episode_ids"], np.int64)
    if spec.clip is not None:
        x = np.clip(x, -spec.clip, spec.clip)
    episodes = []
    for e in range(min(len(x_ids), len(y_ids)) - 1):
        xe, ye = x[x_ids[e]:x_ids[e + 1]], y[y_ids[e]:y_ids[e + 1]]
        c = min(len(xe) // RATIO, len(ye))
        if c < 1:
            continue
        ye = ye[:c]
        target = np.concatenate([np.zeros_like(ye[:1]), np.diff(ye, axis=0)]) if spec.diffs else ye - ye[:1]
        episodes.append((xe[:RATIO * c], target))
    return episodes


def load(manual_dir, name: str) -> tuple[list, list | None]:
    """A CSP-Bench dataset's episodes: ``(episodes, test episodes or None)``.

    Args:
      manual_dir: the folder holding the datasets' folders (the authors' ``DATA_DIR``).
      name: a key of ``DATASETS``.

    Returns:
      The file's episodes, and the separate test file's (``ronin``) or None.

    Raises:
      ConfigError: an unknown name, or an absent file.
    """
    if name not in DATASETS:
        raise ConfigError(f"config.task.dataset={name!r} is not allowed; allowed: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    test = read_file(spec.path(manual_dir, test=True), spec) if spec.test_suffix else None
    return read_file(spec.path(manual_dir), spec), test


def pad(episodes: list, num_chunks: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Episodes padded with zeros to ``num_chunks`` targets: ``(inputs, targets, mask)``.

    Args:
      episodes: ``(inputs (10·C_e, d_in), targets (C_e, d_out))`` pairs.
      num_chunks: ``C`` (>= every ``C_e``); None: the longest episode's.

    Returns:
      float32 ``(E, 10·C, d_in)``, float32 ``(E, C, d_out)``, float32 ``(E, C)`` (1 on real targets).
    """
    c = num_chunks if num_chunks is not None else max(len(t) for _, t in episodes)
    d_in, d_out = episodes[0][0].shape[-1], episodes[0][1].shape[-1]
    x = np.zeros((len(episodes), RATIO * c, d_in), np.float32)
    y = np.zeros((len(episodes), c, d_out), np.float32)
    mask = np.zeros((len(episodes), c), np.float32)
    for i, (xe, ye) in enumerate(episodes):
        x[i, :len(xe)], y[i, :len(ye)], mask[i, :len(ye)] = xe, ye, 1.0
    return x, y, mask


__all__ = ["DATASETS", "Dataset", "RATIO", "SOURCE", "load", "pad", "read_file"]
