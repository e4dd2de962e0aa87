"""The TPU kernels compiled by libtpu on the CPU machine (``tests/kernels/lowering.compile_for_tpu``).

With libtpu installed (``pip install -e ".[tpu-compile]"``; ``.ci/run``'s TPU
step), every lowering test's ``lower(fn, args, "tpu")`` also compiles ``fn``
for a TPU v5e topology without a TPU, so Mosaic TPU's compiler passes judge
each kernel. Here: that the compile is real, i.e. it rejects a kernel that
lowers (JAX's side) but that Mosaic cannot compile. Skipped without libtpu.
"""

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tests.kernels.lowering import compile_for_tpu, compiles_for_tpu, lower, specs

pytestmark = pytest.mark.skipif(not compiles_for_tpu(),
                                reason='libtpu not installed (pip install -e ".[tpu-compile]")')


def _dynamic_lane_slice(i_ref, x_ref, o_ref):
    # One column at a runtime offset: fine for JAX's lowering, but Mosaic TPU
    # cannot prove the lane offset a multiple of 128.
    o_ref[...] = jnp.broadcast_to(x_ref[:, pl.ds(i_ref[0], 1)], o_ref.shape)


def _dynamic_row(i_ref, x_ref, o_ref):
    # One float32 row read and written at a runtime offset, as the scan
    # kernels walk their positions: compiles.
    row = pl.ds(i_ref[0], 1)
    o_ref[row, :] = 2 * x_ref[row, :]


def _call(kernel):
    return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
                          in_specs=[pl.BlockSpec(memory_space=pltpu.SMEM), pl.BlockSpec(memory_space=pltpu.VMEM)])


def test_compile_rejects_what_lowering_accepts(monkeypatch):
    args = specs(((1,), jnp.int32), ((16, 256), jnp.float32))
    bad = _call(_dynamic_lane_slice)
    compile_for_tpu(_call(_dynamic_row), specs(((1,), jnp.int32), ((16, 128), jnp.float32)))
    with pytest.raises(Exception, match="Mosaic failed to compile TPU kernel"):
        compile_for_tpu(bad, args)
    # lower() compiles too while libtpu is here; with the compile off it lowers the bad kernel.
    with pytest.raises(Exception, match="Mosaic failed to compile TPU kernel"):
        lower(bad, args, "tpu")
    monkeypatch.setenv("SEQJAX_COMPILE_TPU", "0")
    assert "tpu_custom_call" in lower(bad, args, "tpu").as_text()
