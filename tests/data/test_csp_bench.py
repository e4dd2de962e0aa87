"""Tests of the CSP-Bench reader (seqjax.data.csp_bench) on tiny files written here in the authors' layout.

The files follow ``create_dataset.py`` of github.com/raunaqbhirangi/hiss: per
modality ``m``, the concatenated samples ``m``, ``m_episode_ids`` (boundaries
from 0), ``m_timestamps`` and ``m_frequency``. The expected episodes are cut
and differenced here by hand.
"""

import numpy as np
import pytest

from seqjax.data import csp_bench
from seqjax.errors import ConfigError

h5py = pytest.importorskip("h5py")


def _write(path, modalities: dict[str, list[np.ndarray]], rates: dict[str, float]) -> None:
    """One file in the authors' layout: every modality's episodes concatenated, with their boundaries."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for m, episodes in modalities.items():
            ids = np.concatenate([[0], np.cumsum([len(e) for e in episodes])])
            f.create_dataset(m, data=np.concatenate(episodes))
            f.create_dataset(f"{m}_episode_ids", data=ids)
            f.create_dataset(f"{m}_timestamps", data=np.arange(ids[-1]) / rates[m])
            f.create_dataset(f"{m}_frequency", data=rates[m])


def test_ronin_layout_round_trip(tmp_path, rng):
    # Two episodes: 25 sensor rows / 3 targets (→ 2 targets, 20 rows) and 40 rows / 4 targets.
    acce = [rng.normal(size=(25, 3)), rng.normal(size=(40, 3))]
    gyro = [rng.normal(size=(25, 3)), rng.normal(size=(40, 3))]
    pose = [rng.normal(size=(3, 7)), rng.normal(size=(4, 7))]
    rates = {"acce": 50.0, "gyro": 50.0, "tango_pose": 5.0}
    spec = csp_bench.DATASETS["ronin"]
    _write(spec.path(tmp_path), {"acce": acce, "gyro": gyro, "tango_pose": pose}, rates)
    test_pose = [rng.normal(size=(2, 7))]
    _write(spec.path(tmp_path, test=True), {"acce": [acce[0][:20]], "gyro": [gyro[0][:20]],
                                            "tango_pose": test_pose}, rates)
    train, test = csp_bench.load(tmp_path, "ronin")
    assert spec.path(tmp_path).name == "ronin_i50o5.h5" and len(train) == 2 and len(test) == 1
    for (x, y), a, g, p, c in zip(train, acce, gyro, pose, (2, 4)):
        np.testing.assert_array_equal(x, np.concatenate([a[:10 * c], g[:10 * c]], axis=1))
        expected = np.stack([np.zeros(2)] + [p[j, :2] - p[j - 1, :2] for j in range(1, c)])
        np.testing.assert_allclose(y, expected, rtol=1e-12)
    np.testing.assert_allclose(test[0][1], [[0, 0], test_pose[0][1, :2] - test_pose[0][0, :2]], rtol=1e-12)
    xs, ys, mask = csp_bench.pad(train)
    assert xs.shape == (2, 40, 6) and ys.shape == (2, 4, 2) and xs.dtype == np.float32
    np.testing.assert_array_equal(mask, [[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(xs[0, 20:], 0.0)


def test_joystick_clips_and_subtracts_the_first_target(tmp_path, rng):
    xela = [rng.normal(0, 800, size=(30, 5))]
    stick = [rng.normal(size=(3, 6))]
    spec = csp_bench.DATASETS["joystick_control"]
    _write(spec.path(tmp_path), {"xela": xela, "extreme3d": stick}, {"xela": 50.0, "extreme3d": 5.0})
    (x, y), = csp_bench.load(tmp_path, "joystick_control")[0]
    np.testing.assert_array_equal(x, np.clip(xela[0], -1000, 1000))
    assert np.abs(xela[0]).max() > 1000  # the clip did something
    np.testing.assert_allclose(y, stick[0][:, :3] - stick[0][:1, :3], rtol=1e-12)


def test_missing_file_and_field_are_one_line(tmp_path, rng):
    with pytest.raises(ConfigError, match="marker_writing_hiss_dataset_rs50kn5.h5 not found.*raunaqbhirangi/hiss") as e:
        csp_bench.load(tmp_path, "marker_writing")
    assert "\n" not in str(e.value)
    spec = csp_bench.DATASETS["marker_writing"]
    _write(spec.path(tmp_path), {"tactile": [rng.normal(size=(20, 15))]}, {"tactile": 50.0})
    with pytest.raises(ConfigError, match="no field 'kinova'"):
        csp_bench.load(tmp_path, "marker_writing")
    with pytest.raises(ConfigError, match="config.task.dataset='slip'"):
        csp_bench.load(tmp_path, "slip")
