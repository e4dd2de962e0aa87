"""The registry contract of issue 3, checked across every mixer at once.

Per-family files test each mixer against its float64 reference; this file
checks what outside code relies on for all of them: the exact names, default
construction, the ``step`` / ``mixing_matrix`` / ``state_size`` interface and
the docs table.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import mixers
from tests.mixers import harness

EXPECTED = {
    # attention family
    "mha", "sliding_window", "linear_attention", "performer", "retnet", "gla", "aaren", "ngram",
    # state-space family
    "lssl", "s4", "s4d", "s5", "lru", "mamba", "mamba2", "hydra",
    # recurrent family
    "lstm", "gru", "slstm", "mlstm",
}  # fmt: skip
BIDIRECTIONAL_ONLY = {"hydra"}
DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "mixers.md"


def test_names_are_exactly_the_issue_names():
    assert set(mixers.names()) == EXPECTED
    assert mixers.names() == sorted(mixers.names())


def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match=r"unknown mixer 'mamba3'.*allowed: .*mamba2"):
        mixers.get("mamba3")


def test_docs_have_one_row_per_mixer():
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith("| `")]
    documented = [line.split("`")[1] for line in rows]
    assert sorted(documented) == sorted(EXPECTED), "docs/mixers.md rows differ from the registry"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_default_construction_and_interface(name, rng):
    """No-argument construction works; width comes from the input; step agrees."""
    cls = mixers.get(name)
    m = cls()
    x = harness.random_input(rng, 2, 6, 16)
    if name == "ngram":
        # n-gram heads attend only where earlier contexts repeat exactly.
        x = jnp.concatenate([x[:, :2]] * 3, axis=1)
    v = m.init(jax.random.PRNGKey(0), x)
    y = jax.jit(m.apply)(v, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert np.isfinite(np.asarray(y)).all() and float(jnp.std(y)) > 0
    size = m.bind(v).state_size(6)
    assert isinstance(size, int) and size > 0
    causal = getattr(m, "causal", name not in BIDIRECTIONAL_ONLY)
    if causal:
        cache = m.apply(v, 2, 6, method="init_cache")  # max_length: KV caches, S4's C̃
        y0, cache = m.apply(v, x[:, 0], cache, method="step")
        np.testing.assert_allclose(np.asarray(y0), np.asarray(y[:, 0]), rtol=2e-4, atol=2e-5)
    else:
        assert name in BIDIRECTIONAL_ONLY
