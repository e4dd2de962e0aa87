"""Tests of the Moving Digits generator and the Moving MNIST reader (seqjax.data.moving_digits).

Seeds and digit images come from the per-test ``rng`` fixture; the expected
frames are rebuilt independently here (digit images padded into the canvas,
then a max), not by calling the module's composition code.
"""

import numpy as np
import pytest

from seqjax.data import moving_digits as md
from seqjax.errors import ConfigError


def _seed(rng) -> int:
    return int(rng.integers(0, 2**31))


def _placed(image: np.ndarray, corner, frame_size: int) -> np.ndarray:
    """``image`` alone on a zero canvas at ``corner`` (the reference for one digit)."""
    r, c = map(int, corner)
    canvas = np.zeros((frame_size, frame_size), np.float32)
    canvas[r:r + 8, c:c + 8] = image
    return canvas


def test_same_seed_same_videos_and_different_seeds_differ(rng):
    seed = _seed(rng)
    a = md.generate(seed, 4)
    assert a.shape == (4, 20, 16, 16) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.max() > 0.5
    np.testing.assert_array_equal(a, md.generate(seed, 4))
    b = md.generate(seed + 1, 4)
    assert all(not np.array_equal(a[i], b[i]) for i in range(4))
    # Videos of one stream differ from one another too.
    assert not np.array_equal(a[0], a[1])


def test_video_does_not_depend_on_the_call(rng):
    seed, n = _seed(rng), 6
    many = md.generate(seed, n, split="test", num_frames=7)
    for i in range(n):
        alone = md.generate(seed, 1, split="test", start=i, num_frames=7)
        np.testing.assert_array_equal(alone[0], many[i])
    tail = md.generate(seed, 3, split="test", start=3, num_frames=7)
    np.testing.assert_array_equal(tail, many[3:])


def test_hand_computed_trajectory_with_bounces(rng):
    # frame 16: corners in [0, 8]. From (7, 1) at (2, -2): both components would
    # leave at the first move (9, -1), so both reflect: (5, 3), (3, 5), (1, 7);
    # then (-1, 9) leaves again: reflect back to (3, 5).
    expected = np.array([[7, 1], [5, 3], [3, 5], [1, 7], [3, 5], [5, 3]])
    np.testing.assert_array_equal(md.trajectory((7, 1), (2, -2), 6, 16), expected)
    # One axis at a time, speed 1 on a 12-wide canvas (corners in [0, 4]).
    np.testing.assert_array_equal(md.trajectory((3, 0), (1, -1), 5, 12)[:, 0], [3, 4, 3, 2, 1])
    np.testing.assert_array_equal(md.trajectory((3, 0), (1, -1), 5, 12)[:, 1], [0, 1, 2, 3, 4])
    image = rng.uniform(0.1, 1.0, (1, 8, 8)).astype(np.float32)
    frames = md.render(image, [(7, 1)], [(2, -2)], 6, 16)
    for t, corner in enumerate(expected):
        np.testing.assert_array_equal(frames[t], _placed(image[0], corner, 16))


def test_generate_follows_the_documented_law(rng):
    """Video i of seed s: image, start, velocity drawn from default_rng([s, i]) in that order."""
    seed = _seed(rng)
    video = md.generate(seed, 3, num_digits=1, start=5, num_frames=9)[2]
    draws = np.random.default_rng([seed, 7])
    pool = md.digit_images("train")
    index = draws.integers(0, len(pool), size=1)
    start = draws.integers(0, 9, size=(1, 2))
    velocity = np.array([-2, -1, 1, 2])[draws.integers(0, 4, size=(1, 2))]
    corners = md.trajectory(start[0], velocity[0], 9, 16)
    for t in range(9):
        np.testing.assert_array_equal(video[t], _placed(pool[index[0]], corners[t], 16))


def test_pixels_are_the_max_of_the_placed_digits(rng):
    seed, k = _seed(rng), 3
    videos = md.generate(seed, 2, num_digits=k, frame_size=20, num_frames=8)
    pool = md.digit_images("train")
    for i, video in enumerate(videos):
        indices, starts, velocities = md.draw(np.random.default_rng([seed, i]), pool, num_digits=k, frame_size=20,
                                              max_speed=2)
        assert np.all(velocities != 0) and np.all(np.abs(velocities) <= 2)
        for t in range(8):
            layers = [_placed(pool[j], md.trajectory(s, v, 8, 20)[t], 20)
                      for j, s, v in zip(indices, starts, velocities)]
            np.testing.assert_array_equal(video[t], np.max(layers, axis=0))


def test_train_and_test_digit_images_are_disjoint():
    train, test = md.split_indices("train"), md.split_indices("test")
    assert len(train) + len(test) == 1797 and not set(train) & set(test)
    a, b = md.digit_images("train"), md.digit_images("test")
    assert a.shape == (1437, 8, 8) and b.shape == (360, 8, 8) and a.max() == 1.0 and a.min() == 0.0
    # No test image equals a train image pixel for pixel.
    train_rows = {row.tobytes() for row in a.reshape(len(a), -1)}
    assert not any(row.tobytes() in train_rows for row in b.reshape(len(b), -1))
    with pytest.raises(ConfigError, match="split='val'"):
        md.split_indices("val")


def test_bad_settings_raise_one_line_errors():
    with pytest.raises(ConfigError, match=r"^config\.task\.frame_size=11 is not allowed; allowed: an int >= 12"):
        md.validate(num_digits=2, frame_size=11, num_frames=20, max_speed=2, prefix="config.task.")
    with pytest.raises(ConfigError, match=r"^num_digits=0 is not allowed"):
        md.generate(0, 1, num_digits=0)


def test_load_moving_mnist_transposes_time_first_file(tmp_path, rng):
    raw = rng.integers(0, 256, size=(20, 3, 64, 64), dtype=np.uint8)
    np.save(tmp_path / "mnist_test_seq.npy", raw)
    videos = md.load_moving_mnist(tmp_path)
    assert videos.shape == (3, 20, 64, 64) and videos.dtype == np.float32
    for n in range(3):
        for t in (0, 7, 19):
            np.testing.assert_array_equal(videos[n, t], raw[t, n].astype(np.float32) / 255.0)


def test_load_moving_mnist_absent_file_names_it(tmp_path):
    with pytest.raises(ConfigError) as info:
        md.load_moving_mnist(tmp_path / "nowhere")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere" / "mnist_test_seq.npy") in message and "Srivastava" in message
