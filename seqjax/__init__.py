"""seqjax: sequence mixers in JAX/Flax and the experiments that compare them.

Layers (imports point downward only, no cycle; see ``docs/architecture.md``):
``train`` > ``tasks`` > ``data`` / ``models`` > ``mixers`` > ``parallel`` >
``kernels`` > ``ops``.
"""

__version__ = "0.1.0"
