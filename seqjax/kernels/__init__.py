"""Pallas kernels for the ops' hot loops, joined to the ops as ``impl="pallas"``.

Each kernel module is laid out top to bottom as: kernel body (one per
platform where GPU and TPU need different layouts) -> ``pallas_call`` with its
BlockSpecs -> ``jax.custom_vjp`` -> the implementation registered with
:mod:`seqjax.ops.dispatch` (``register(op, "pallas")``) and its ``auto`` rows
(``add_rules``). The ops never import this package (``docs/architecture.md``);
``import seqjax`` imports it, so the kernels are registered before any op runs.

Where a kernel runs is decided when the call is lowered
(:func:`seqjax.kernels.common.on_platform`): Mosaic GPU on ``cuda``, Mosaic TPU
on ``tpu``, and on CPU the GPU kernel in Pallas interpret mode, so
``impl="pallas"`` works (slowly) everywhere and the tests check it on CPU.
See ``docs/kernels.md``.

Importing this package imports every module in it, so a new kernel file
registers itself without being listed here.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
