"""A generated sensor-to-state task with known ground truth: planar IMU odometry (pure NumPy).

The stand-in for CSP-Bench's inertial sets (RoNIN, VECtor: accelerometer +
gyroscope at 50 Hz → position changes at 5 Hz; Bhirangi et al. 2024, HiSS):
a body moves in the plane, a noisy, biased IMU rides on it at a high rate,
and the target of chunk ``c`` is the body's displacement over that chunk in
the start frame. The displacement needs the heading, i.e. the integral of
the gyro over the whole history: a long-range dependence on a noisy stream.

The law of one sequence (``dt = 1 / rate``, ``k = chunk`` sensor samples per
target, ``C = num_chunks`` targets, ``L = C·k`` sensor samples), with the
draws taken from the sequence's generator in this order:

1. ``ε_a, ε_ω``: ``L`` standard normals each; ``bias``: 3 normals times
   ``bias_std``; ``noise``: ``(L, 3)`` normals times ``noise_std``.
2. Controls, AR(1) with ``ρ = exp(-dt / control_time)`` and stationary start::

       a_0 = σ_a ε_a[0],   a_t = ρ a_{t-1} + sqrt(1 - ρ²) σ_a ε_a[t]     (forward push, m/s²)
       ω_0 = σ_ω ε_ω[0],   ω_t = ρ ω_{t-1} + sqrt(1 - ρ²) σ_ω ε_ω[t]     (yaw rate, rad/s)

3. Motion (explicit Euler, from rest at the origin facing +x)::

       v_0 = 0,  v_{t+1} = v_t + (a_t - λ v_t) dt        (forward speed; λ = damping)
       θ_0 = 0,  θ_{t+1} = θ_t + ω_t dt
       p_0 = 0,  p_{t+1} = p_t + v_{t+1} dt (cos θ_{t+1}, sin θ_{t+1})

4. Sensors at sample ``t`` (body frame), ``(L, 3)``::

       [ (v_{t+1} - v_t)/dt,   v_t ω_t,   ω_t ] + bias + noise[t]
         forward accel.        centripetal  gyro

5. Targets, ``(C, 2)``: ``Δp_c = p_{(c+1)k} - p_{ck}``, the displacement over
   chunk ``c`` (sensor samples ``ck .. ck+k-1``), in the start frame.

Reproducibility: sequence ``i`` of ``split`` and seed ``s`` comes from
``np.random.default_rng([s, SPLIT_IDS[split], i])``, so it does not depend on
how many sequences one call makes; the train and test streams are disjoint
(different generator keys). :func:`statistics` gives the per-channel mean and
standard deviation (float64) of inputs and targets over train sequences, with
which the task standardises both.
"""

from __future__ import annotations

import math

import numpy as np

from seqjax.errors import ConfigError

SPLIT_IDS = {"train": 0, "test": 1}
INPUT_NAMES = ("accel_forward", "accel_lateral", "gyro_yaw")
TARGET_NAMES = ("dx", "dy")
DEFAULTS = dict(rate=50.0, chunk=10, num_chunks=32, accel_std=1.0, yaw_rate_std=0.5, control_time=1.0,
                damping=0.5, bias_std=0.05, noise_std=0.1)
"""The law's parameters: 50 Hz sensors, 5 Hz targets (as CSP-Bench's ``i50o5`` files), 6.4 s sequences."""


def validate(prefix: str = "", **law) -> dict:
    """The full law (``DEFAULTS`` updated by ``law``), checked.

    Args:
      prefix: put before each name in an error (``"config.task."``).
      **law: any of ``DEFAULTS``' keys.

    Returns:
      The law as a dict with every key of ``DEFAULTS``.

    Raises:
      ConfigError: an unknown key or a value out of range (one line).
    """
    unknown = sorted(set(law) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]} is not a parameter of the IMU law; allowed: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **law}
    for name in ("chunk", "num_chunks"):
        v = out[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{prefix}{name}={v!r} is not allowed; allowed: an int >= 1")
    for name in ("rate", "control_time"):
        v = out[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ConfigError(f"{prefix}{name}={v!r} is not allowed; allowed: a number > 0")
    for name in ("accel_std", "yaw_rate_std", "damping", "bias_std", "noise_std"):
        v = out[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ConfigError(f"{prefix}{name}={v!r} is not allowed; allowed: a number >= 0")
    return out


def simulate(accel: np.ndarray, yaw_rate: np.ndarray, *, dt: float, damping: float, chunk: int,
             bias=(0.0, 0.0, 0.0), noise: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 3–5 of the law for given controls: sensors, targets and the path.

    Args:
      accel: ``(L,)`` forward pushes ``a_t``.
      yaw_rate: ``(L,)`` yaw rates ``ω_t``.
      dt: sample period.
      damping: ``λ``.
      chunk: ``k``; ``L`` must be a multiple of it.
      bias: the 3 sensor biases.
      noise: ``(L, 3)`` additive sensor noise (None: none).

    Returns:
      ``(sensors (L, 3), targets (L/k, 2), positions (L+1, 2))``, float64.
    """
    a, w = np.asarray(accel, np.float64), np.asarray(yaw_rate, np.float64)
    n = len(a)
    if n % chunk:
        raise ValueError(f"{n} samples are not whole chunks of {chunk}")
    # v_{t+1} = (1 - λ dt) v_t + a_t dt: a first-order linear recursion, written as a loop
    # over t because it is short (hundreds of samples) and exact in float64.
    v = np.zeros(n + 1)
    decay = 1.0 - damping * dt
    for t in range(n):
        v[t + 1] = decay * v[t] + a[t] * dt
    theta = np.concatenate([[0.0], np.cumsum(w * dt)])
    step = v[1:, None] * dt * np.stack([np.cos(theta[1:]), np.sin(theta[1:])], axis=-1)
    pos = np.concatenate([np.zeros((1, 2)), np.cumsum(step, axis=0)])
    sensors = np.stack([(v[1:] - v[:-1]) / dt, v[:-1] * w, w], axis=-1) + np.asarray(bias, np.float64)
    if noise is not None:
        sensors = sensors + np.asarray(noise, np.float64)
    targets = pos[chunk::chunk] - pos[:-1:chunk]
    return sensors, targets, pos


def _ar1(eps: np.ndarray, rho: float, std: float) -> np.ndarray:
    """The stationary AR(1) of step 2: ``x_0 = std ε_0``, ``x_t = ρ x_{t-1} + sqrt(1-ρ²) std ε_t``."""
    out = np.empty_like(eps)
    scale = math.sqrt(1.0 - rho * rho) * std
    out[0] = std * eps[0]
    for t in range(1, len(eps)):
        out[t] = rho * out[t - 1] + scale * eps[t]
    return out


def draw(rng: np.random.Generator, law: dict) -> tuple[np.ndarray, np.ndarray]:
    """One sequence from ``rng`` (steps 1–5 of the law).

    Args:
      rng: the sequence's generator.
      law: a validated law (:func:`validate`).

    Returns:
      ``(sensors (L, 3), targets (C, 2))``, float64.
    """
    n = law["chunk"] * law["num_chunks"]
    dt = 1.0 / law["rate"]
    eps_a, eps_w = rng.standard_normal(n), rng.standard_normal(n)
    bias = rng.standard_normal(3) * law["bias_std"]
    noise = rng.standard_normal((n, 3)) * law["noise_std"]
    rho = math.exp(-dt / law["control_time"])
    accel, yaw = _ar1(eps_a, rho, law["accel_std"]), _ar1(eps_w, rho, law["yaw_rate_std"])
    sensors, targets, _ = simulate(accel, yaw, dt=dt, damping=law["damping"], chunk=law["chunk"], bias=bias,
                                   noise=noise)
    return sensors, targets


def generate(seed: int, n: int, *, split: str = "train", start: int = 0, **law) -> tuple[np.ndarray, np.ndarray]:
    """Raw (unstandardised) sequences ``start .. start + n - 1`` of ``split``'s stream for ``seed``.

    Args:
      seed: an int >= 0.
      n: number of sequences.
      split: ``"train"`` or ``"test"``.
      start: index of the first sequence.
      **law: the law's parameters (``DEFAULTS``).

    Returns:
      ``(inputs float32 (n, L, 3), targets float32 (n, C, 2))``.
    """
    if split not in SPLIT_IDS:
        raise ConfigError(f"split={split!r} is not allowed; allowed: {', '.join(SPLIT_IDS)}")
    law = validate(**law)
    length = law["chunk"] * law["num_chunks"]
    inputs = np.empty((n, length, 3), np.float32)
    targets = np.empty((n, law["num_chunks"], 2), np.float32)
    for row in range(n):
        rng = np.random.default_rng([int(seed), SPLIT_IDS[split], int(start) + row])
        inputs[row], targets[row] = draw(rng, law)
    return inputs, targets


def statistics(inputs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel mean and standard deviation (float64; std floored at 1e-8) over every row and position.

    Args:
      inputs: ``(n, L, d_in)``.
      targets: ``(n, C, d_out)``.

    Returns:
      ``{"input_mean", "input_std", "target_mean", "target_std"}``.
    """
    x = np.asarray(inputs, np.float64).reshape(-1, inputs.shape[-1])
    y = np.asarray(targets, np.float64).reshape(-1, targets.shape[-1])
    return {"input_mean": x.mean(0), "input_std": np.maximum(x.std(0), 1e-8),
            "target_mean": y.mean(0), "target_std": np.maximum(y.std(0), 1e-8)}


def standardise(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(values - mean) / std`` per channel, as float32."""
    return ((np.asarray(values, np.float64) - mean) / std).astype(np.float32)


__all__ = ["DEFAULTS", "INPUT_NAMES", "SPLIT_IDS", "TARGET_NAMES", "draw", "generate", "simulate", "standardise",
           "statistics", "validate"]
