"""Building blocks shared by the mixers: projections with logical axis names.

Parameters carry logical axis names (``embed``, ``heads``, ``mlp``, ``state``,
...) so that ``seqjax.parallel`` can map them to mesh axes; without a mesh the
names are inert metadata.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


def dense(
    features: int,
    axes: Sequence[str | None],
    *,
    use_bias: bool = False,
    dtype=jnp.float32,
    name: str | None = None,
    kernel_init=nn.initializers.lecun_normal(),
) -> nn.Dense:
    """A float32-parameter ``nn.Dense`` whose kernel carries logical axis names.

    Args:
      features: output width.
      axes: logical names of the kernel's (input, output) axes.
      use_bias: add a bias (named after the output axis).
      dtype: compute dtype.
      name: submodule name.
      kernel_init: initializer of the kernel.

    Returns:
      The Dense module (not yet bound).
    """
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(kernel_init, tuple(axes)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],)),
        name=name,
    )
