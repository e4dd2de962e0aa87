"""The mixer contract, checked for every registered mixer from one settings table.

Each row of :data:`SETTINGS` gives a small configuration of one mixer and a
bad field value; every test below runs over all rows. A new mixer adds one
row here (``test_every_mixer_has_a_row`` fails until it does), one docs row,
and its family test file keeps only its float64 oracles (paper equations,
init, gradients). What is checked (``docs/architecture.md``, the Mixer base):

* default construction from no arguments, width from the input;
* construction checks: a bad field and a bad ``impl`` raise one ConfigError
  naming ``<mixer>.<field>``;
* the declared SSM parameters exist;
* causal mixers: the ``step`` rollout equals ``__call__``; future inputs never
  change past outputs; ``state_size`` is the cache's bytes per sequence;
* packed sequences (``segment_ids``) equal separate runs;
* mixers linear in a projection of x: ``__call__`` equals the projection and
  output around the dense ``mixing_matrix``, which is lower triangular when
  causal and zero across segments;
* bfloat16 runs in bfloat16 and stays close to float32; no retrace under jit.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import mixers
from seqjax.errors import ConfigError
from tests.mixers import harness
from tests.ops.utils import rel_err


@dataclasses.dataclass(frozen=True)
class Case:
    """One mixer's row.

    Attributes:
      kwargs: a small configuration (width 16).
      bad: ``(field, value)`` that construction must refuse.
      repeat: the input repeats a pattern of this many positions (n-gram
        heads only attend where earlier contexts repeat exactly); 0: random.
      max_length: ``init_cache``'s ``max_length`` (KV caches, S4's C̃).
      rtol: tolerance of the step / segments / matrix checks.
    """

    kwargs: dict = dataclasses.field(default_factory=dict)
    bad: tuple = ("d_model", 0)
    repeat: int = 0
    max_length: int | None = None
    rtol: float = harness.RTOL


SETTINGS: dict[str, Case] = {
    # attention family
    "mha": Case(dict(num_heads=2), ("num_heads", 0), max_length=16),
    "sliding_window": Case(dict(num_heads=2, window=4), ("window", 0), max_length=16),
    "linear_attention": Case(dict(num_heads=2), ("eps", 0.0)),
    "performer": Case(dict(num_heads=2, num_features=8), ("num_features", 0)),
    "retnet": Case(dict(num_heads=2), ("value_factor", 0)),
    "gla": Case(dict(num_heads=2), ("gate_temperature", 0.0)),
    "deltanet": Case(dict(num_heads=2), ("d_conv", 0)),
    "gated_deltanet": Case(dict(num_heads=2), ("expand_v", 0)),
    "mom": Case(dict(num_heads=2, num_memories=3, top_k=2), ("top_k", 4)),
    "aaren": Case(dict(num_heads=2), ("num_heads", 0)),
    # Miras memories (miras.py): the exact recurrence, so the step equals the parallel form
    "moneta": Case(dict(num_heads=2, impl="sequential"), ("p", 1.5)),
    "yaad": Case(dict(num_heads=2, impl="sequential"), ("memory_expand", 0)),
    "memora": Case(dict(num_heads=2, impl="sequential"), ("chunk_size", 0)),
    # prefix 0 here (step from the empty cache, a lower-triangular matrix); the prefix in test_jrt.py
    "jrt": Case(dict(num_heads=2, feature_dim=4), ("prefix_length", -1)),
    "ngram": Case(dict(num_heads=2), ("n", 0), repeat=4, max_length=16),
    "relative_mha": Case(dict(num_heads=2, max_relative=4), ("max_relative", 0), max_length=16),
    "urpe": Case(dict(num_heads=2, max_relative=4), ("max_relative", 0), max_length=16),
    # factor 8: u = ⌈8 ln L⌉ >= L at these lengths, every query active (the sparse regime: test_probsparse.py)
    "probsparse": Case(dict(num_heads=2, factor=8.0), ("factor", 0.0), max_length=16),
    # block_size 4: three complete blocks at length 13, so earlier blocks are gated by landmarks
    "landmark": Case(dict(num_heads=2, block_size=4), ("block_size", 0), max_length=16),
    # top_k 16 >= L: c(n) = round(k·K/n) keeps every column, full causal attention, so float32 and bfloat16
    # pick the same keys (the sparse regime, K = 4 and k = 2, against its float64 reference: test_sea.py)
    "sea": Case(dict(num_heads=2, compressed_width=4, top_k=16, num_features=4, decoder_width=8),
                ("compressed_width", 0), max_length=16),
    # region_size 3: several rows and a partial last one at L = 13 (axial, the default; the other layouts: test_combiner.py)
    "combiner": Case(dict(num_heads=2, region_size=3), ("variant", "strided"), max_length=16),
    # balanced=False: the nearest-centroid form that step follows exactly (the balanced top-w
    # form is checked against its float64 reference in test_routing.py)
    "routing": Case(dict(num_clusters=3, window=4, balanced=False), ("num_clusters", 0), max_length=16),
    # vector-quantised keys: window 4 and 4 codes, so most of L = 13 is read through the per-code memory
    "longvq": Case(dict(qk_dim=8, ema_dim=4, codebook_size=4, window=4), ("codebook_size", 0)),
    # state-space family
    "lssl": Case(dict(d_state=4), ("d_state", 0)),
    "s4": Case(dict(d_state=4, l_max=16), ("d_state", 3), max_length=16),
    "s4d": Case(dict(d_state=4), ("a_init", "nope")),
    "s5": Case(dict(d_state=8), ("d_state", 3)),
    "lru": Case(dict(d_state=8), ("r_max", 2.0)),
    "lmu": Case(dict(d_state=8, theta=6.0, d_u=2), ("theta", 0.0)),
    "mamba": Case(dict(d_state=4), ("d_state", 0)),
    "mamba2": Case(dict(d_state=8, headdim=8), ("headdim", 5)),
    "hydra": Case(dict(d_state=8, headdim=8), ("d_conv", 4)),
    # frames of 2×2 pixels × 4 channels (width 16)
    "convs5": Case(dict(frame_height=2, frame_width=2, d_state=4), ("b_kernel_size", 2)),
    "convlstm": Case(dict(frame_height=2, frame_width=2), ("kernel_size", 2)),
    "hiss": Case(dict(chunk_size=3, low=4, high=4, dt_min=0.05, dt_max=0.5), ("chunk_size", 0)),
    # Hydra's structured matrix mixers (matrix_mixers.py)
    "toeplitz": Case(dict(headdim=8), ("d_conv", 4)),
    "vandermonde": Case(dict(headdim=8, qk_dim=4), ("max_length", 0)),
    "cauchy": Case(dict(headdim=8, qk_dim=4), ("qk_dim", 0)),
    "low_rank": Case(dict(headdim=8, qk_dim=4), ("expand", 0)),
    # recurrent family
    "lstm": Case(dict(num_heads=2), ("num_heads", 3)),
    "gru": Case(dict(num_heads=2), ("num_heads", 3)),
    "slstm": Case(dict(num_heads=2), ("num_heads", 3)),
    "mlstm": Case(dict(num_heads=2), ("chunk_size", 0)),
    "mlstm_block": Case(dict(num_heads=2), ("qkv_blocksize", 5)),
    "slstm_block": Case(dict(num_heads=2), ("proj_factor", 0.0)),
    # SSM + sparsely activated local attention (seqboat.py)
    "seqboat": Case(dict(d_state=2, z_dim=8, window=3, max_positions=8), ("window", 0)),
    # convolution + memory bank
    "gam": Case(dict(num_slots=8), ("num_slots", 0)),
    # pooling (pooling.py)
    "ponet": Case(dict(num_heads=2, segment_length=4), ("local_window", 2)),
    # FIT (fit.py): groups of 4 with 2 latents each, so the short test lengths have several groups
    "fit": Case(dict(num_heads=2, group_size=4, num_latents=2, mlp_ratio=1.0), ("group_size", 0)),
    # no mixing: a hybrid pattern's MLP layer (mlp.py)
    "mlp": Case(dict(mlp_ratio=2.0), ("activation", "tanh")),
}  # fmt: skip
WIDTH = 16
NAMES = sorted(SETTINGS)


def _module(name, **extra):
    return mixers.get(name)(**{**SETTINGS[name].kwargs, **extra})


def _input(name, rng, batch=2, length=13):
    x = harness.random_input(rng, batch, length, WIDTH)
    period = SETTINGS[name].repeat
    if period:
        x = jnp.concatenate([x[:, :period]] * -(-length // period), axis=1)[:, :length]
    return x


def _setup(name, rng, batch=2, length=13, **extra):
    m = _module(name, **extra)
    x = _input(name, rng, batch, length)
    return m, x, harness.perturb(harness.jit_init(m, x), rng)


def test_every_mixer_has_a_row_and_is_a_mixer():
    assert sorted(mixers.names()) == NAMES, "add a row to SETTINGS for every registered mixer"
    for name in NAMES:
        assert issubclass(mixers.get(name), mixers.Mixer), f"{name} is not a seqjax.mixers.Mixer"


@pytest.mark.parametrize("name", NAMES)
def test_default_construction(name, rng):
    m = mixers.get(name)()
    x = _input(name, rng, 2, 6)
    v = harness.jit_init(m, x)
    # Jitted: run eagerly, the cache and the step below compiled one program per primitive (90-146 a mixer).
    J = harness.Jitted(m)
    y = J.apply(v, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert np.isfinite(np.asarray(y)).all() and float(jnp.std(y)) > 0
    assert m.bind(v).width() == WIDTH
    if m.is_causal:  # the default configuration's first step agrees too (max_length: KV caches, S4's C̃)
        cache = J.apply(v, 2, 6, method="init_cache")
        y0, _ = J.apply(v, x[:, 0], cache, method="step")
        np.testing.assert_allclose(np.asarray(y0), np.asarray(y[:, 0]), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", NAMES)
def test_bad_fields_are_one_config_error(name):
    field, value = SETTINGS[name].bad
    with pytest.raises(ConfigError, match=rf"^{name}\.{field}={value!r}"):
        _module(name, **{field: value, "d_model": WIDTH})
    cls = mixers.get(name)
    with pytest.raises(ConfigError, match=rf"^{name}\.impl='nonsense'.*allowed: auto"):
        _module(name, impl="nonsense")
    if cls.ops:
        with pytest.raises(ConfigError, match=rf"^{name}\.impl names op 'nope'"):
            _module(name, impl={"nope": "auto"})
    if not cls.sequence_parallel:
        with pytest.raises(ConfigError, match=rf"^{name}\.sequence_axis='sequence'"):
            _module(name, sequence_axis="sequence")


@pytest.mark.parametrize("name", NAMES)
def test_declared_ssm_params_exist(name, rng):
    m, x, v = _setup(name, rng, 1, 4)
    params = jax.tree_util.tree_flatten_with_path(v["params"])[0]
    paths = {"/".join(str(k.key) for k in path if hasattr(k, "key")) for path, _ in params}
    for declared in type(m).ssm_params:
        assert declared in paths, f"{name} declares ssm param {declared!r}; params: {sorted(paths)}"


@pytest.mark.parametrize("name", [n for n in NAMES if mixers.get(n)().is_causal])
def test_step_matches_parallel(name, rng):
    m, x, v = _setup(name, rng)
    J = harness.Jitted(m)
    y = J.apply(v, x)
    cache = m.apply(v, x.shape[0], SETTINGS[name].max_length, method="init_cache")
    ys = []
    for t in range(x.shape[1]):
        y_t, cache = J.apply(v, x[:, t], cache, method="step")
        ys.append(y_t)
    err = rel_err(jnp.stack(ys, axis=1), y)
    assert err <= SETTINGS[name].rtol, f"step rollout vs parallel: relative error {err:.2e}"


@pytest.mark.parametrize("name", [n for n in NAMES if mixers.get(n)().is_causal])
def test_causal(name, rng):
    m, x, v = _setup(name, rng)
    harness.check_causal(harness.Jitted(m), v, x, rng)


@pytest.mark.parametrize("name", [n for n in NAMES if mixers.get(n)().is_causal])
def test_state_size_is_the_cache_per_sequence(name, rng):
    m, x, v = _setup(name, rng, 1, 4)
    bound = m.bind(v)
    size = bound.state_size(SETTINGS[name].max_length)
    cache = bound.init_cache(3, SETTINGS[name].max_length)
    per_batch = [leaf.nbytes for leaf in jax.tree.leaves(cache) if leaf.shape[:1] == (3,)]
    stateless = not jax.tree.leaves(cache)  # the MLP layer of hybrid patterns keeps nothing
    assert isinstance(size, int) and (size > 0 or stateless) and 3 * size == sum(per_batch)


@pytest.mark.parametrize("name", NAMES)
def test_segments(name, rng):
    m, x, v = _setup(name, rng, 1, 16)
    if SETTINGS[name].repeat:
        pieces = (4, 8, 4)  # whole periods, so each piece repeats on its own
    else:
        pieces = (5, 8, 3)
    harness.check_segments(harness.Jitted(m), v, rng, lengths=pieces, width=WIDTH, rtol=SETTINGS[name].rtol,
                           make=lambda n: _input(name, rng, 1, n))


@pytest.mark.parametrize("name", [n for n in NAMES if mixers.get(n).values_index is not None])
def test_mixing_matrix(name, rng):
    m, x, v = _setup(name, rng)
    J = harness.Jitted(m)
    M = harness.check_mixing_matrix(J, v, x, causal=m.is_causal, rtol=SETTINGS[name].rtol)
    seg = jnp.asarray([[0] * 4 + [1] * 9, [2] * 6 + [0] * 7])
    Ms = J.apply(v, x, segment_ids=seg, method="mixing_matrix")
    assert np.abs(np.asarray(Ms[0, :, 4:, :4])).max() == 0.0 and np.abs(np.asarray(Ms[0, :, :4, 4:])).max() == 0.0
    assert np.abs(np.asarray(Ms[1, :, 6:, :6])).max() == 0.0
    y_m = J.apply(v, x, Ms, segment_ids=seg, method="apply_mixing_matrix")
    assert rel_err(y_m, J.apply(v, x, segment_ids=seg)) <= SETTINGS[name].rtol
    assert M.shape[:1] == (2,) and M.shape[2:] == (13, 13)


@pytest.mark.parametrize("name", [n for n in NAMES if mixers.get(n).values_index is None])
def test_nonlinear_mixers_have_no_matrix(name, rng):
    m, x, v = _setup(name, rng, 1, 4)
    with pytest.raises(ValueError, match="no mixing matrix"):
        m.apply(v, x, method="mixing_matrix")


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16(name, rng):
    m32, x, v = _setup(name, rng, 2, 8)
    m16 = _module(name, dtype=jnp.bfloat16)
    y16 = jax.jit(m16.apply)(v, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    assert rel_err(y16.astype(jnp.float32), jax.jit(m32.apply)(v, x)) < 6e-2


@pytest.mark.parametrize("name", NAMES)
def test_no_retrace(name, rng):
    m, x, v = _setup(name, rng, 2, 8)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(v, x):
        return m.apply(v, x)

    run(v, x)
    run(v, _input(name, rng, 2, 8))  # same shapes: no second trace
