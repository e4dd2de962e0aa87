"""seqjax: sequence mixers in JAX/Flax and the experiments that compare them.

Layers (imports point downward only, no cycle; see ``docs/architecture.md``):
``train`` > ``tasks`` > ``data`` / ``models`` > ``mixers`` > ``parallel`` >
``kernels`` > ``ops``.
"""

__version__ = "0.1.0"

# Registers the Pallas kernels with the ops' front door (kernels import ops,
# never the other way round), so impl="pallas" and its auto rows exist
# whichever part of the package is imported first.
import seqjax.kernels  # noqa: E402,F401
