"""Tests of seqjax.models: numerics against float64 NumPy, heads, causality, config errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import mixers, models
from seqjax.errors import ConfigError
from seqjax.models.backbone import Backbone, Block, channel_hidden
from seqjax.models.embeddings import sinusoidal_table
from tests.models import ref_block as ref
from tests.ops.utils import rel_err

# float32 runs of these tiny nets land near 2e-7 of the float64 reference; 2e-5 still
# catches e.g. the tanh GELU approximation (1.4e-4 on the block test).
RTOL = 2e-5
D = 16


def cfg(**overrides):
    """A tiny model config: 1 layer, d=16, vocab 13, mha with 2 heads."""
    c = models.default_config()
    c.num_layers = 1
    c.d_model = D
    c.vocab_size = 13
    c.mixer_kwargs = {"mha": {"num_heads": 2}}
    for k, v in overrides.items():
        c[k] = v
    return c


# Tests compile far more than they run: cheap XLA CPU options halve compile time.
_FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def fast_jit(f, *args):
    """``f`` jitted and compiled for ``args`` with cheap XLA options (falls back to plain jit)."""
    lowered = jax.jit(f).lower(*args)
    try:
        return lowered.compile(compiler_options=_FAST)
    except Exception:  # noqa: BLE001  an XLA without these options
        return lowered.compile()


def init(model, inputs):
    key = jax.random.PRNGKey(0)
    return nn.unbox(fast_jit(model.init, key, inputs)(key, inputs))


def apply(model, variables, x, **kwargs):
    """``model.apply(variables, x, **kwargs)``, jitted; array kwargs (and ``rngs``) are traced."""
    traced = {k: a for k, a in kwargs.items() if k == "rngs" or isinstance(a, (jax.Array, np.ndarray))}
    static = {k: a for k, a in kwargs.items() if k not in traced}

    def f(v, x, traced):
        return model.apply(v, x, **traced, **static)

    return fast_jit(f, variables, x, traced)(variables, x, traced)


def runner(model, variables, inputs, **kwargs):
    """``x -> model.apply(variables, x, **kwargs)`` compiled once for ``inputs``' shape."""
    def f(v, x):
        return model.apply(v, x, **kwargs)
    compiled = fast_jit(f, variables, inputs)
    return lambda x: compiled(variables, x)


def tokens(rng, b=2, l=8, vocab=13):
    return jnp.asarray(rng.integers(0, vocab, (b, l)), jnp.int32)


def params64(variables, *path):
    p = variables["params"]
    for key in path:
        p = p[key]
    return ref.f64(jax.tree_util.tree_map(np.asarray, p))


def mha_spec(causal=True, num_heads=2):
    return ("mha", tuple(sorted({"num_heads": num_heads, "positions": "none", "causal": causal}.items())))


# --- numerics against float64 NumPy -------------------------------------------------------------


@pytest.mark.parametrize("norm,channel", [("layernorm", "mlp"), ("rmsnorm", "glu"), ("layernorm", "none")])
def test_block_matches_reference(rng, norm, channel):
    block = Block(mha_spec(), channel=channel, mlp_ratio=2.0, norm=norm)
    x = rng.standard_normal((2, 7, D))
    v = init(block, jnp.asarray(x, jnp.float32))
    p = params64(v)
    # Fresh random norm parameters (init is ones/zeros, which would hide a swapped scale/bias).
    for key in ("mixer_norm", "channel_norm"):
        if key in p:
            p[key] = {k: rng.standard_normal(a.shape) for k, a in p[key].items()}
    v = {"params": jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), p)}
    y = apply(block, v, jnp.asarray(x, jnp.float32))
    expected = ref.block(x, p, lambda h, pm: ref.mha(h, pm, 2), norm, channel)
    assert y.dtype == jnp.float32
    # Compare the residual increments: the identity path would hide small branch errors.
    assert rel_err(np.asarray(y, np.float64) - x, expected - x) <= RTOL
    if channel == "glu":
        assert p["channel"]["wg"]["kernel"].shape == (D, channel_hidden("glu", D, 2.0)) == (D, 21)


def test_backbone_hybrid_matches_reference(rng):
    """2 layers (mamba then mha) + final RMSNorm; mamba's output from the module in float64."""
    mamba_kwargs = (("dtype", jnp.float32),)
    net = Backbone([("mamba", mamba_kwargs), mha_spec()], channel="glu", norm="rmsnorm")
    x = rng.standard_normal((2, 6, D))
    v = init(net, jnp.asarray(x, jnp.float32))
    y = apply(net, v, jnp.asarray(x, jnp.float32))
    p = params64(v)

    def mamba64(h, pm):
        with jax.enable_x64(True):
            m = mixers.get("mamba")(dtype=jnp.float64)
            return np.asarray(m.apply({"params": jax.tree_util.tree_map(jnp.asarray, pm)}, jnp.asarray(h)))

    h = ref.block(x, p["block_0"], mamba64, "rmsnorm", "glu")
    h = ref.block(h, p["block_1"], lambda z, pm: ref.mha(z, pm, 2), "rmsnorm", "glu")
    expected = ref.rmsnorm(h, p["final_norm"])
    assert rel_err(y, expected) <= RTOL


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_lm_model_matches_reference(rng, positions):
    """Tokens -> embedding + positions -> 2 mha blocks -> final norm -> untied logits."""
    c = cfg(num_layers=2, positions=positions, max_length=10, mixer_kwargs={"mha": {"num_heads": 2, "positions": "none"}})
    model = models.build(c)
    x = tokens(rng, 2, 9)
    v = init(model, x)
    logits = apply(model, v, x)
    p = params64(v)
    h = p["embed"]["embedding"][np.asarray(x)]
    pos = np.arange(9)
    h = h + (ref.sinusoidal(pos, D) if positions == "sinusoidal" else p["embed"]["positions"]["embedding"][pos])
    for i in range(2):
        h = ref.block(h, p["backbone"][f"block_{i}"], lambda z, pm: ref.mha(z, pm, 2))
    h = ref.layernorm(h, p["backbone"]["final_norm"])
    expected = h @ p["head"]["logits"]["kernel"]
    assert logits.shape == (2, 9, 13) and logits.dtype == jnp.float32
    assert rel_err(logits, expected) <= RTOL


def test_sinusoidal_table_matches_formula():
    pos = np.arange(11)
    for d in (8, 7):
        assert rel_err(sinusoidal_table(pos, d), ref.sinusoidal(pos, d)) <= 1e-5


# --- heads ---------------------------------------------------------------------------------------


def test_lm_and_regression_shapes(rng):
    model = models.build(cfg())
    x = tokens(rng)
    assert jax.eval_shape(lambda x: model.apply(model.init(jax.random.PRNGKey(0), x), x), x).shape == (2, 8, 13)
    model = models.build(cfg(input="continuous", input_dim=5, vocab_size=None, head="regression", output_dim=3))
    xc = jnp.asarray(rng.standard_normal((2, 8, 5)), jnp.float32)
    y = jax.eval_shape(lambda x: model.apply(model.init(jax.random.PRNGKey(0), x), x), xc)
    assert y.shape == (2, 8, 3) and y.dtype == jnp.float32


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_classification_masked_pooling(rng, pooling):
    """Logits = Dense(pool over unmasked backbone outputs), checked in NumPy."""
    model = models.build(cfg(head="classification", num_classes=3, pooling=pooling))
    x = tokens(rng, 3, 8)
    mask = np.ones((3, 8), bool)
    mask[0, 5:] = False
    mask[1, 2:] = False
    v = init(model, x)
    logits, state = apply(model, v, x, mask=jnp.asarray(mask), capture_intermediates=True)
    feats = np.asarray(state["intermediates"]["backbone"]["__call__"][0], np.float64)
    p = params64(v)
    expected = ref.pool(feats, pooling, mask) @ p["head"]["logits"]["kernel"] + p["head"]["logits"]["bias"]
    assert logits.shape == (3, 3)
    assert rel_err(logits, expected) <= RTOL
    # The mask matters: without it the pooled vector differs.
    assert rel_err(apply(model, v, x), expected) > 1e-3
    # Causal model + right padding: changing the padded tokens changes nothing.
    x2 = np.array(x)
    x2[~mask] = (x2[~mask] + 1) % 13
    assert rel_err(apply(model, v, jnp.asarray(x2), mask=jnp.asarray(mask)), logits) <= 1e-6


def test_classification_cls_token(rng):
    model = models.build(cfg(head="classification", num_classes=4, pooling="cls", causal=False,
                             positions="learned", max_length=8))
    x = tokens(rng, 2, 8)
    v = init(model, x)
    logits, state = apply(model, v, x, capture_intermediates=True)
    feats = np.asarray(state["intermediates"]["backbone"]["__call__"][0], np.float64)
    assert feats.shape == (2, 9, D)  # CLS prepended
    p = params64(v)
    assert p["embed"]["cls"].shape == (D,)
    expected = feats[:, 0] @ p["head"]["logits"]["kernel"] + p["head"]["logits"]["bias"]
    assert rel_err(logits, expected) <= RTOL
    # The CLS token sees the whole (bidirectional) sequence: the last token moves the logits.
    x2 = np.array(x)
    x2[:, -1] = (x2[:, -1] + 1) % 13
    assert rel_err(apply(model, v, jnp.asarray(x2)), logits) > 1e-4


def test_pool_without_mask(rng):
    x = rng.standard_normal((2, 5, 3))
    for pooling in ("mean", "last", "cls"):
        assert rel_err(models.pool(jnp.asarray(x), pooling), ref.pool(x, pooling)) <= 1e-6


# --- causality and packed segments ---------------------------------------------------------------


def test_causal_hybrid_model(rng):
    model = models.build(cfg(mixers="gla,mha", num_layers=2, input="continuous", input_dim=4, vocab_size=None,
                             head="regression", output_dim=2))
    x = np.asarray(rng.standard_normal((2, 10, 4)), np.float32)
    v = init(model, jnp.asarray(x))
    run = runner(model, v, jnp.asarray(x))
    y1 = run(jnp.asarray(x))
    for k in (1, 4, 9):
        x2 = x.copy()
        x2[:, k:] = rng.standard_normal(x2[:, k:].shape)
        y2 = run(jnp.asarray(x2))
        assert rel_err(y2[:, :k], y1[:, :k]) <= 1e-6, f"outputs before {k} moved"
        assert rel_err(y2[:, k:], y1[:, k:]) > 1e-3


def test_packed_segments_equal_separate_runs(rng):
    """A packed row equals each segment run alone (learned positions restart per segment).

    The separate runs are batched as rows right-padded with random tokens: the
    model is causal (checked above), so a row's first ``n`` outputs are the
    segment's own run, and one compile serves all of them.
    """
    model = models.build(cfg(mixers="mamba,mha", num_layers=2, positions="learned", max_length=16))
    lengths = (5, 8, 3)
    packed = tokens(rng, 1, sum(lengths))
    ids = jnp.asarray(np.repeat(np.arange(3), lengths)[None], jnp.int32)
    v = init(model, packed)
    y = apply(model, v, packed, segment_ids=ids)
    rows = np.array(tokens(rng, len(lengths), max(lengths)))
    starts = np.cumsum((0,) + lengths[:-1])
    for i, (start, n) in enumerate(zip(starts, lengths)):
        rows[i, :n] = packed[0, start:start + n]
    separate = apply(model, v, jnp.asarray(rows))
    for i, (start, n) in enumerate(zip(starts, lengths)):
        assert rel_err(y[0, start:start + n], separate[i, :n]) <= RTOL, f"segment {i}"
    # Without segment ids the later segments see the earlier ones and differ.
    assert rel_err(apply(model, v, packed)[0, starts[1]:], y[0, starts[1]:]) > 1e-3


# --- every mixer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", mixers.names())
def test_every_mixer_builds_and_runs(rng, name):
    model = models.build(cfg(mixers=name, mixer_kwargs={}, causal=mixers.get(name).causality != "bidirectional",
                              max_length=8))
    x = tokens(rng)
    # One compile per mixer: init and forward in the same jitted function.
    key = jax.random.PRNGKey(0)
    y = fast_jit(lambda key, x: model.apply(model.init(key, x), x), key, x)(key, x)
    assert y.shape == (2, 8, 13) and y.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(y)))
    assert float(jnp.std(y)) > 0


def test_mixer_kwargs_resolution():
    c = cfg(mixers="mha,mamba,s4", num_layers=3, max_length=32, dtype="bfloat16",
            mixer_kwargs={"mha": {"num_heads": 2}, "s4": {"d_state": 8}})
    kw = models.mixer_kwargs(c, "mha")
    assert kw == {"num_heads": 2, "causal": True, "dtype": jnp.bfloat16, "max_length": 32}
    assert models.mixer_kwargs(c, "mamba") == {"dtype": jnp.bfloat16}
    assert models.mixer_kwargs(c, "s4") == {"d_state": 8, "causal": True, "dtype": jnp.bfloat16}
    model = models.build(c)
    assert [name for name, _ in model.layers] == ["mha", "mamba", "s4"]
    assert dict(model.layers[0][1])["num_heads"] == 2
    c.causal = False
    assert models.mixer_kwargs(c, "s4")["causal"] is False
    models.validate(c)  # mamba stays causal with causal=False: allowed


def test_hybrid_pattern_repeats():
    assert models.layer_mixers(cfg(mixers="mamba,mha", num_layers=4)) == ["mamba", "mha", "mamba", "mha"]
    assert models.layer_mixers(cfg(mixers=" gla ", num_layers=3)) == ["gla"] * 3
    model = models.build(cfg(mixers="mamba,mha", num_layers=4))
    assert [name for name, _ in model.layers] == ["mamba", "mha", "mamba", "mha"]


# --- misc: dtype, dropout, partitioning, defaults -------------------------------------------------


def test_bfloat16_compute_close_to_float32(rng):
    x = tokens(rng)
    m32 = models.build(cfg(channel="glu"))
    v = init(m32, x)
    m16 = models.build(cfg(channel="glu", dtype="bfloat16"))
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(jax.eval_shape(m16.init, jax.random.PRNGKey(0), x)))
    y16, y32 = fast_jit(lambda v, x: (m16.apply(v, x), m32.apply(v, x)), v, x)(v, x)
    assert y16.dtype == jnp.float32
    assert 0 < rel_err(y16, y32) <= 5e-2


def test_dropout(rng):
    model = models.build(cfg(dropout=0.5))
    x = tokens(rng)
    v = init(model, x)
    def f(v, x):
        drop = [model.apply(v, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(i)}) for i in (1, 2)]
        return model.apply(v, x), model.apply(v, x, deterministic=True), *drop

    y, y_det, yd1, yd2 = fast_jit(f, v, x)(v, x)
    assert rel_err(y_det, y) == 0
    assert rel_err(yd1, y) > 1e-3 and rel_err(yd1, yd2) > 1e-3


def test_logical_axis_names(rng):
    model = models.build(cfg(positions="learned", max_length=8))
    x = tokens(rng)
    specs = nn.get_partition_spec(jax.eval_shape(model.init, jax.random.PRNGKey(0), x))["params"]
    assert tuple(specs["embed"]["embedding"]) == ("vocab", "embed")
    assert tuple(specs["head"]["logits"]["kernel"]) == ("embed", "vocab")
    assert tuple(specs["backbone"]["block_0"]["channel"]["wi"]["kernel"]) == ("embed", "mlp")
    assert tuple(specs["backbone"]["final_norm"]["scale"]) == ("embed",)


def test_default_config_fields():
    c = models.default_config()
    assert set(c.keys()) == {
        "architecture", "mixers", "num_layers", "d_model", "mixer_kwargs", "causal", "channel", "mlp_ratio", "norm",
        "dropout", "input", "vocab_size", "input_dim", "positions", "max_length", "head", "output_dim", "num_classes",
        "pooling", "pooling_heads", "pooling_rank", "dtype", "sequence_axis", "distil", "conv_embed", "spiking"}
    assert (c.architecture, c.mixers, c.num_layers, c.d_model, c.causal, c.head) == (
        "sequence", "mha", 2, 64, True, "lm")
    with pytest.raises(ConfigError, match="config.model.vocab_size"):
        models.build(c)  # tokens need a vocabulary


# --- config errors -------------------------------------------------------------------------------

ERRORS = [
    (dict(mixers="mha,nope"), "config.model.mixers"),
    (dict(mixers="mamba,mha", num_layers=3), "config.model.mixers"),
    (dict(mixers="mamba,,mha", num_layers=3), "config.model.mixers"),
    (dict(num_layers=0), "config.model.num_layers"),
    (dict(d_model=-4), "config.model.d_model"),
    (dict(channel="ffn"), "config.model.channel"),
    (dict(norm="batchnorm"), "config.model.norm"),
    (dict(input="image"), "config.model.input"),
    (dict(positions="rope"), "config.model.positions"),
    (dict(head="seq2seq"), "config.model.head"),
    (dict(head="classification", num_classes=2, pooling="max"), "config.model.pooling"),
    (dict(dtype="float16"), "config.model.dtype"),
    (dict(vocab_size=None), "config.model.vocab_size"),
    (dict(input="continuous", head="regression", vocab_size=None), "config.model.input_dim"),
    (dict(positions="learned"), "config.model.max_length"),
    (dict(head="classification"), "config.model.num_classes"),
    (dict(dropout=1.0), "config.model.dropout"),
    (dict(dropout=-0.1), "config.model.dropout"),
    (dict(mlp_ratio=0.0), "config.model.mlp_ratio"),
    (dict(mixers="hydra"), "config.model.causal"),
    (dict(head="classification", num_classes=2, pooling="cls"), "config.model.pooling"),
    (dict(mixers="mamba", causal=False, head="classification", num_classes=2, pooling="cls"), "config.model.pooling"),
    (dict(mixer_kwargs={"mha": {"heads": 2}}), "config.model.mixer_kwargs.mha.heads"),
    (dict(mixer_kwargs={"mha": {"causal": False}}), "config.model.mixer_kwargs.mha.causal"),
    (dict(mixer_kwargs={"mha": {"d_model": 8}}), "config.model.mixer_kwargs.mha.d_model"),
    (dict(mixer_kwargs={"bogus": {}}), "config.model.mixer_kwargs"),
    (dict(mixer_kwargs={"mha": 3}), "config.model.mixer_kwargs.mha"),
    (dict(mixer_kwargs={"mha": {"positions": "learned"}}), "config.model.max_length"),
    (dict(mixer_kwargs={"mha": {"dtype": "float16"}}), "config.model.mixer_kwargs.mha.dtype"),
    (dict(max_length=0), "config.model.max_length"),
    (dict(pooling="max"), "config.model.pooling"),
    (dict(causal=1), "config.model.causal"),
    (dict(mixers="s4", mixer_kwargs={"s4": {"bidirectional": True}}), "config.model.mixer_kwargs.s4.bidirectional"),
]


@pytest.mark.parametrize("overrides,field", ERRORS, ids=[f"{i}-{e[1].split('.')[-1]}" for i, e in enumerate(ERRORS)])
def test_config_errors(overrides, field):
    c = {**cfg().to_dict(), **overrides}  # a plain mapping: ConfigDict would refuse some bad types
    with pytest.raises(ConfigError) as info:
        models.build(c)
    msg = str(info.value)
    assert "\n" not in msg and field in msg, msg


def test_unknown_field_and_mixer_listing():
    with pytest.raises(ConfigError, match=r"config.model.num_layer\b") as info:
        models.validate({**cfg().to_dict(), "num_layer": 2})
    with pytest.raises(ConfigError) as info:
        models.build(cfg(mixers="nope"))
    assert all(name in str(info.value) for name in mixers.names())


def test_check_length():
    c = cfg(positions="learned", max_length=16)
    models.check_length(c, 16, "config.task.max_length")
    with pytest.raises(ConfigError, match="config.task.max_length=17: sequence longer than the model allows"):
        models.check_length(c, 17, "config.task.max_length")
    models.check_length(cfg(), 10_000, "task.max_length")  # no limit: rope, no table
    c = cfg(mixers="s4", mixer_kwargs={"s4": {"l_max": 8}})
    models.check_length(c, 8, "f")
    with pytest.raises(ConfigError, match="l_max=8"):
        models.check_length(c, 9, "f")
    # mha's own learned table gets max_length + 1 with a CLS token, so 12 still fits.
    c = cfg(head="classification", num_classes=2, pooling="cls", causal=False, max_length=12,
            mixer_kwargs={"mha": {"positions": "learned"}})
    models.check_length(c, 12, "f")
    with pytest.raises(ConfigError, match="max_length=13"):
        models.check_length(c, 13, "f")


def test_input_shape_errors(rng):
    model = models.build(cfg())
    x = tokens(rng)
    v = init(model, x)
    with pytest.raises(ConfigError, match="inputs"):
        model.apply(v, jnp.asarray(rng.standard_normal((2, 8)), jnp.float32))
    with pytest.raises(ConfigError, match="segment_ids"):
        model.apply(v, x, segment_ids=jnp.zeros((2, 7), jnp.int32))
    learned = models.build(cfg(positions="learned", max_length=8))
    v = init(learned, x)
    with pytest.raises(ConfigError, match="longer than the model allows"):
        learned.apply(v, tokens(rng, 2, 9))
