"""Tests of the generated IMU odometry task (seqjax.data.imu_odometry).

Hand-computed paths for tiny cases, the law re-derived here step by step from
the module docstring (an independent float64 loop), seed reproducibility and
the standardisation against NumPy.
"""

import math

import numpy as np
import pytest

from seqjax.data import imu_odometry as imu
from seqjax.errors import ConfigError


def test_straight_line_by_hand():
    # a = 1, ω = 0, λ = 0, dt = 0.5: v = 0, .5, 1, 1.5, 2; p_x = 0, .25, .75, 1.5, 2.5.
    sensors, targets, pos = imu.simulate(np.ones(4), np.zeros(4), dt=0.5, damping=0.0, chunk=2)
    np.testing.assert_allclose(pos[:, 0], [0, 0.25, 0.75, 1.5, 2.5])
    np.testing.assert_allclose(pos[:, 1], 0.0)
    np.testing.assert_allclose(targets, [[0.75, 0.0], [1.75, 0.0]])
    np.testing.assert_allclose(sensors, [[1, 0, 0]] * 4)


def test_turning_path_by_hand():
    # dt = 1, λ = 0, a = (1, 0), ω = π/2: v_1 = v_2 = 1, θ_1 = π/2, θ_2 = π;
    # p_1 = (0, 1), p_2 = (-1, 1). Sensors: forward (1, 0), centripetal v_t ω_t = (0, π/2), gyro π/2.
    sensors, targets, pos = imu.simulate([1.0, 0.0], [math.pi / 2] * 2, dt=1.0, damping=0.0, chunk=1,
                                         bias=(0.1, -0.2, 0.3))
    np.testing.assert_allclose(pos, [[0, 0], [0, 1], [-1, 1]], atol=1e-12)
    np.testing.assert_allclose(targets, [[0, 1], [-1, 0]], atol=1e-12)
    np.testing.assert_allclose(sensors, [[1.1, -0.2, math.pi / 2 + 0.3], [0.1, math.pi / 2 - 0.2, math.pi / 2 + 0.3]])


def test_damping_by_hand():
    # λ = 1, dt = 0.5, a = (2, 0): v_1 = 1, v_2 = (1 - 0.5)·1 = 0.5; forward accel = (2, -1).
    sensors, targets, _ = imu.simulate([2.0, 0.0], [0.0, 0.0], dt=0.5, damping=1.0, chunk=2)
    np.testing.assert_allclose(sensors[:, 0], [2.0, -1.0])
    np.testing.assert_allclose(targets, [[0.5 * 1 + 0.5 * 0.5, 0.0]])


def _reference(seed, split_id, i, law):
    """The module docstring's law, drawn and integrated here one sample at a time (float64)."""
    rng = np.random.default_rng([seed, split_id, i])
    k, c = law["chunk"], law["num_chunks"]
    n, dt = k * c, 1.0 / law["rate"]
    ea, ew = rng.standard_normal(n), rng.standard_normal(n)
    bias = rng.standard_normal(3) * law["bias_std"]
    noise = rng.standard_normal((n, 3)) * law["noise_std"]
    rho = math.exp(-dt / law["control_time"])
    s = math.sqrt(1 - rho**2)
    a = w = v = th = 0.0
    px = py = 0.0
    sens, path = [], [(0.0, 0.0)]
    for t in range(n):
        a = law["accel_std"] * ea[0] if t == 0 else rho * a + s * law["accel_std"] * ea[t]
        w = law["yaw_rate_std"] * ew[0] if t == 0 else rho * w + s * law["yaw_rate_std"] * ew[t]
        v_next = v + (a - law["damping"] * v) * dt
        sens.append([(v_next - v) / dt + bias[0] + noise[t, 0], v * w + bias[1] + noise[t, 1],
                     w + bias[2] + noise[t, 2]])
        th += w * dt
        px += v_next * dt * math.cos(th)
        py += v_next * dt * math.sin(th)
        v = v_next
        path.append((px, py))
    path = np.array(path)
    return np.array(sens), np.array([path[(j + 1) * k] - path[j * k] for j in range(c)])


def test_generate_follows_the_documented_law(rng):
    seed = int(rng.integers(0, 2**31))
    law = imu.validate(chunk=3, num_chunks=4, rate=20.0, damping=0.7, bias_std=0.2, noise_std=0.3)
    x, y = imu.generate(seed, 3, split="test", start=2, **{k: law[k] for k in ("chunk", "num_chunks", "rate",
                                                                                "damping", "bias_std", "noise_std")})
    assert x.shape == (3, 12, 3) and y.shape == (3, 4, 2) and x.dtype == y.dtype == np.float32
    for row in range(3):
        sens, tgt = _reference(seed, 1, 2 + row, law)
        np.testing.assert_allclose(x[row], sens, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y[row], tgt, rtol=1e-5, atol=1e-6)


def test_reproducible_per_seed_and_index(rng):
    seed = int(rng.integers(0, 2**31))
    x, y = imu.generate(seed, 5, chunk=4, num_chunks=3)
    x2, y2 = imu.generate(seed, 5, chunk=4, num_chunks=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    xs, ys = imu.generate(seed, 2, start=3, chunk=4, num_chunks=3)
    np.testing.assert_array_equal(xs, x[3:])
    np.testing.assert_array_equal(ys, y[3:])
    xt, _ = imu.generate(seed, 5, split="test", chunk=4, num_chunks=3)
    xo, _ = imu.generate(seed + 1, 5, chunk=4, num_chunks=3)
    assert all(not np.array_equal(x[i], xt[i]) and not np.array_equal(x[i], xo[i]) for i in range(5))


def test_statistics_and_standardisation_match_numpy(rng):
    x = rng.normal(2.0, 3.0, (4, 7, 3)).astype(np.float32)
    y = rng.normal(-1.0, 0.5, (4, 2, 2)).astype(np.float32)
    s = imu.statistics(x, y)
    flat = x.astype(np.float64).reshape(-1, 3)
    np.testing.assert_allclose(s["input_mean"], flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s["input_std"], np.sqrt(((flat - flat.mean(0)) ** 2).mean(0)), rtol=1e-12)
    np.testing.assert_allclose(s["target_std"], y.astype(np.float64).reshape(-1, 2).std(0), rtol=1e-12)
    z = imu.standardise(y, s["target_mean"], s["target_std"])
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.reshape(-1, 2).mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(z.reshape(-1, 2).std(0), 1.0, rtol=1e-5)


@pytest.mark.parametrize("law, field", [({"chunk": 0}, "chunk"), ({"rate": -1.0}, "rate"),
                                        ({"noise_std": -0.1}, "noise_std"), ({"nonsense": 1}, "nonsense"),
                                        ({"num_chunks": 2.5}, "num_chunks")])
def test_bad_law_is_one_line(law, field):
    with pytest.raises(ConfigError, match=f"config.task.{field}") as e:
        imu.validate("config.task.", **law)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="split"):
        imu.generate(0, 1, split="val")
