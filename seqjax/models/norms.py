"""The norms of the model (residual blocks, final norm, distilling layers): LayerNorm or RMSNorm, float32."""

import flax.linen as nn
import jax.numpy as jnp

NORM_EPS = 1e-5
NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, name: str) -> nn.Module:
    """A float32 LayerNorm or RMSNorm over the last axis, with ``embed``-named params.

    Args:
      kind: ``"layernorm"`` or ``"rmsnorm"``.
      name: submodule name.

    Returns:
      The (unbound) norm module.
    """
    scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",))
    if kind == "layernorm":
        bias_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",))
        return nn.LayerNorm(epsilon=NORM_EPS, dtype=jnp.float32, param_dtype=jnp.float32,
                            scale_init=scale_init, bias_init=bias_init, name=name)
    if kind == "rmsnorm":
        return nn.RMSNorm(epsilon=NORM_EPS, dtype=jnp.float32, param_dtype=jnp.float32,
                          scale_init=scale_init, name=name)
    raise ValueError(f"norm={kind!r}; allowed: {', '.join(NORMS)}")


__all__ = ["NORM_EPS", "NORMS", "make_norm"]
