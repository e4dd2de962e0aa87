"""Leaky integrate-and-fire (LIF) neurons over the sequence: the activation of spiking models.

Spiking LMUFormer (Liu, Datta, Li & Beerel 2024, "LMUFormer: Low Complexity
Yet Powerful Spiking Model With Legendre Memory Units") replaces the ReLU/GELU
activations of its convolutional patch embedding and channel MLP by
multi-step LIF neurons that integrate over the sequence positions (the
authors' code: SpikingJelly's ``MultiStepLIFNode(tau=2.0,
detach_reset=True)``, threshold 1, hard reset to 0). Per channel, with input
``x_t``::

    v_t = u_{t-1} + (x_t - u_{t-1}) / tau          (charge; u_{-1} = 0)
    s_t = H(v_t - threshold)                        (fire: a 0/1 spike)
    u_t = v_t (1 - s_t)                             (hard reset to 0)

The Heaviside step has no useful derivative; training uses a surrogate: the
backward pass takes ``dH(z)/dz`` as the derivative of ``sigmoid(alpha z)``
(SpikingJelly's default surrogate, ``alpha = 4``). ``detach_reset``: the reset
``u_t = v_t (1 - s_t)`` treats ``s_t`` as a constant in the backward pass.

The recurrence is nonlinear, so it runs as a ``lax.scan`` over positions
(float32 state); a new packed segment starts from ``u = 0``.
"""

import functools

import jax
import jax.numpy as jnp

from seqjax.ops.common import segment_runs
from seqjax.types import SegmentIds

TAU, THRESHOLD, ALPHA = 2.0, 1.0, 4.0


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def heaviside(z: jax.Array, alpha: float = ALPHA) -> jax.Array:
    """``1.0`` where ``z >= 0`` else ``0.0``, with the sigmoid surrogate gradient.

    Args:
      z: membrane potential minus the threshold.
      alpha: steepness of the surrogate ``sigmoid(alpha z)``.

    Returns:
      Spikes (0/1) in ``z``'s dtype.
    """
    return (z >= 0).astype(z.dtype)


def _heaviside_fwd(z, alpha):
    return heaviside(z, alpha), z


def _heaviside_bwd(alpha, z, g):
    s = jax.nn.sigmoid(alpha * z)
    return (g * alpha * s * (1 - s),)


heaviside.defvjp(_heaviside_fwd, _heaviside_bwd)


def lif(x: jax.Array, segment_ids: SegmentIds | None = None, *, tau: float = TAU, threshold: float = THRESHOLD,
        alpha: float = ALPHA) -> jax.Array:
    """Multi-step LIF neurons along axis 1 (positions), one neuron per channel.

    Args:
      x: ``(b, l, ...)`` input currents.
      segment_ids: optional ``(b, l)`` packed-segment ids: the membrane
        restarts from 0 at each segment start.
      tau: membrane time constant (> 1: the leak ``1 - 1/tau`` per step).
      threshold: firing threshold.
      alpha: surrogate-gradient steepness.

    Returns:
      ``(b, l, ...)`` spikes (0.0 / 1.0) in ``x``'s dtype; the membrane runs in
      float32.
    """
    dtype = x.dtype
    xs = jnp.moveaxis(x.astype(jnp.float32), 1, 0)
    batch, length = x.shape[:2]
    if segment_ids is None:
        keep = jnp.ones((length, batch), jnp.float32)
    else:
        run = segment_runs(jnp.asarray(segment_ids))
        same = jnp.concatenate([jnp.ones((batch, 1), bool), run[:, 1:] == run[:, :-1]], axis=1)
        keep = jnp.moveaxis(same.astype(jnp.float32), 1, 0)
    keep = keep.reshape(keep.shape + (1,) * (x.ndim - 2))

    def step(u, inputs):
        x_t, keep_t = inputs
        u = u * keep_t  # a segment start: from rest
        v = u + (x_t - u) / tau
        s = heaviside(v - threshold, alpha)
        return v * (1 - jax.lax.stop_gradient(s)), s

    _, spikes = jax.lax.scan(step, jnp.zeros(xs.shape[1:], jnp.float32), (xs, keep))
    return jnp.moveaxis(spikes, 0, 1).astype(dtype)


__all__ = ["lif", "heaviside", "TAU", "THRESHOLD", "ALPHA"]
