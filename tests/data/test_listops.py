"""ListOps (LRA): trees, vocabulary, stack evaluator, dataset sampling, TSV reader and the tfds builder."""

import inspect
import math
import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

import seqjax.data.builders  # noqa: F401  (registers the builders with tfds)
from seqjax.data import listops as lo
from seqjax.data.builders import lra_listops as bl
from seqjax.errors import ConfigError

# --------------------------------------------------------------------------- helpers


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("lra_listops builder touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _value(tree):
    """Recursive evaluation of the nested structure, written from the task's definition."""
    if not isinstance(tree, tuple):
        return tree
    op, args = tree[0], [_value(c) for c in tree[1:]]
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        return int(math.floor(np.median(args)))
    assert op == "[SM"
    return sum(args) % 10


def _depth(tree):
    return 1 + max(map(_depth, tree[1:])) if isinstance(tree, tuple) else 1


def _nodes(tree):
    yield tree
    if isinstance(tree, tuple):
        for c in tree[1:]:
            yield from _nodes(c)


# --------------------------------------------------------------------------- vocabulary


def test_vocabulary_fixed_and_round_trips():
    assert lo.VOCAB == ("<pad>", "<unk>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
                        "[MIN", "[MAX", "[MED", "[SM", "]")
    assert lo.VOCAB_SIZE == 17 and lo.PAD_ID == 0 and lo.UNK_ID == 1 and lo.CLOSE_ID == 16
    assert [lo.TOKEN_TO_ID[d] for d in "0123456789"] == list(lo.DIGIT_IDS)
    assert [lo.TOKEN_TO_ID[o] for o in lo.OPERATORS] == list(lo.OP_IDS)
    ids = lo.encode("[MAX 2 [SM 3 9 ] ]")
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [13, 4, 15, 5, 11, 16, 16])
    assert lo.decode(ids) == ["[MAX", "2", "[SM", "3", "9", "]", "]"]
    np.testing.assert_array_equal(lo.encode(lo.decode(np.arange(17))), np.arange(17))
    np.testing.assert_array_equal(lo.encode(["(", "[MIN", "x", "]"]), [1, 12, 1, 16])  # unknown -> 1
    assert lo.decode([13, 2, 16, 0, 0], strip_pad=True) == ["[MAX", "0", "]"]
    with pytest.raises(ConfigError):
        lo.decode([17])


# --------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("expr, label", [
    ("7", 7),
    ("[MIN 3 1 4 ]", 1),
    ("[MAX 3 1 4 ]", 4),
    ("[MED 3 1 4 ]", 3),
    ("[MED 1 2 ]", 1),  # 1.5 floored
    ("[MED 9 8 1 2 ]", 5),  # (2 + 8) / 2
    ("[MED 4 1 1 4 ]", 2),  # 2.5 floored
    ("[MED 0 9 ]", 4),  # 4.5 floored
    ("[SM 9 8 7 ]", 4),  # 24 mod 10
    ("[SM 5 5 ]", 0),
    ("[MAX 2 [SM 3 9 ] ]", 2),
    ("[MIN [MAX 1 7 ] [MED 9 9 0 ] 8 ]", 7),
    ("[SM [SM [SM 9 9 ] 9 ] 9 ]", 6),
    ("[MED [MIN 5 6 ] [MAX 0 3 ] [SM 4 4 ] 1 ]", 4),  # MED(5, 3, 8, 1) = (3 + 5) / 2
    ("( ( [MAX 2 9 ] ) )", 9),  # LRA Source text: parentheses skipped
])
def test_evaluate_table(expr, label):
    assert lo.evaluate(expr) == label
    assert lo.evaluate(expr.split()) == label
    ids = lo.encode([t for t in expr.split() if t not in "()"])
    assert lo.evaluate(ids) == label
    assert lo.evaluate(ids.tolist()) == label
    assert lo.evaluate(np.concatenate([ids, np.zeros(5, np.int32)])) == label  # padded model input


@pytest.mark.parametrize("bad", ["[MAX 1 2", "[MAX ]", "1 2", "]", "[FOO 1 ]", "", "[SM 1 ] ]"])
def test_evaluate_rejects_malformed(bad):
    with pytest.raises(ConfigError):
        lo.evaluate(bad)


def test_evaluate_matches_recursive_value_on_random_trees(rng):
    for _ in range(1500):
        tree = lo.sample_tree(rng)
        tokens = lo.linearize(tree)
        assert lo.tree_length(tree) == len(tokens)
        assert lo.evaluate(tokens) == _value(tree)
        assert lo.evaluate(lo.tree_to_ids(tree)) == _value(tree)
    # Big in-range trees too (many nested levels).
    for _ in range(20):
        tree = lo.sample_tree_in_range(rng, min_length=100, max_length=400)
        assert lo.evaluate(lo.tree_to_ids(tree)) == _value(tree)


def test_sample_tree_shape(rng):
    trees = [lo.sample_tree(rng) for _ in range(3000)]
    # A root (depth 1 < 10) is a leaf with probability 0.75: 3000 draws, sd 0.008.
    root_leaf = np.mean([isinstance(t, int) for t in trees])
    assert abs(root_leaf - 0.75) < 0.035
    ops, arity = [], []
    for t in trees:
        assert _depth(t) <= 10
        for n in _nodes(t):
            if isinstance(n, tuple):
                ops.append(n[0])
                arity.append(len(n) - 1)
            else:
                assert 0 <= n <= 9
    assert set(ops) == set(lo.OPERATORS) and min(arity) == 2 and max(arity) == 10
    counts = np.bincount(arity, minlength=11)[2:]
    assert counts.min() > 0.7 * counts.mean()  # k uniform on {2..10}
    # A shallow limit forces leaves at max depth.
    shallow = [lo.sample_tree(rng, max_depth=3, leaf_prob=0.0, min_args=2, max_args=3) for _ in range(50)]
    assert all(_depth(t) == 3 for t in shallow)


# --------------------------------------------------------------------------- datasets


def test_length_bounds():
    for fn in (lo.sample_dataset, lo.iter_dataset, lo.sample_tree_in_range, bl.make_config):
        sig = inspect.signature(fn).parameters
        assert (sig["min_length"].default, sig["max_length"].default) == (500, 2000)
    assert lo.DEFAULT_LENGTH_RANGE == (500, 2000)
    c = bl.make_config()
    assert c is bl.GENERATED_CONFIG
    assert (c.min_length, c.max_length, c.num_train, c.num_validation, c.num_test) == (500, 2000, 96_000, 2_000, 2_000)
    inputs, labels = lo.sample_dataset(120, seed=1, min_length=20, max_length=80)
    lengths = np.array([len(x) for x in inputs])
    assert lengths.min() > 20 and lengths.max() < 80
    assert lengths.max() > 60  # the bound does not just happen to be far above every tree
    for ids, label in zip(inputs, labels):
        assert ids.dtype == np.int32 and lo.evaluate(ids) == label


def test_default_bounds_tree(rng):
    for _ in range(2):
        n = lo.tree_length(lo.sample_tree_in_range(rng))
        assert 500 < n < 2000


def test_deterministic_by_seed_and_independent_of_workers():
    kw = dict(seed=3, min_length=20, max_length=80)
    a_in, a_lab = lo.sample_dataset(300, **kw)
    b_in, b_lab = lo.sample_dataset(300, **kw, num_workers=2)
    assert len(a_in) == len(b_in) == 300
    for x, y in zip(a_in, b_in):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a_lab, b_lab)
    # Example i is candidate i of its own stream: a smaller set is a prefix.
    c_in, _ = lo.sample_dataset(50, **kw)
    assert all(np.array_equal(x, y) for x, y in zip(c_in, a_in[:50]))
    d_in, _ = lo.sample_dataset(50, seed=4, min_length=20, max_length=80)
    assert sum(np.array_equal(x, y) for x, y in zip(c_in, d_in)) < 5
    e_in, _ = lo.sample_dataset(50, seed=3, split_id=1, min_length=20, max_length=80)
    assert sum(np.array_equal(x, y) for x, y in zip(c_in, e_in)) < 5


def test_uniqueness_with_collisions():
    # 1 < length < 5 admits only "[OP d d ]": 400 trees, so collisions are frequent.
    kw = dict(seed=0, min_length=1, max_length=5)
    rows = list(lo.iter_dataset(150, **kw))
    keys = [tuple(r[1]) for r in rows]
    assert len(set(keys)) == 150 and all(len(k) == 4 for k in keys)
    assert rows[-1][0] > 149  # some candidates were dropped and replaced
    # Same result as deduplicating candidate streams by hand, in index order.
    expected, seen, i = [], set(), 0
    while len(expected) < 150:
        t = tuple(lo.tree_to_ids(lo.sample_tree_in_range(np.random.default_rng([0, 0, i]), min_length=1,
                                                         max_length=5)))
        if t not in seen:
            seen.add(t)
            expected.append((i, t))
        i += 1
    assert [(r[0], tuple(r[1])) for r in rows] == expected
    # Replacements drawn through a process pool (other chunking) give the same rows.
    pooled = list(lo.iter_dataset(150, **kw, num_workers=2))
    assert [(r[0], tuple(r[1]), r[2]) for r in pooled] == [(r[0], tuple(r[1]), r[2]) for r in rows]
    # A shared seen-set keeps splits disjoint.
    shared: set = set()
    first, _ = lo.sample_dataset(100, **kw, split_id=2, seen=shared)
    second, _ = lo.sample_dataset(100, **kw, split_id=0, seen=shared)
    assert len({tuple(x) for x in first} | {tuple(x) for x in second}) == 200
    with pytest.raises(RuntimeError, match="unique"):  # 0 < length < 2: ten one-digit trees
        lo.sample_dataset(11, seed=0, min_length=0, max_length=2)


@pytest.mark.parametrize("kwargs, field", [
    (dict(max_depth=0), "max_depth"),
    (dict(leaf_prob=1.5), "leaf_prob"),
    (dict(min_args=0), "min_args"),
    (dict(min_args=4, max_args=3), "max_args"),
    (dict(min_length=10, max_length=11), "max_length"),
    (dict(min_length=-1), "min_length"),
])
def test_bad_parameters_raise_config_error(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        lo.sample_dataset(1, **kwargs)
    with pytest.raises(ConfigError, match=field):
        bl.make_config(**kwargs)


def test_label_distribution():
    dist = lo.label_distribution(np.array([0, 0, 9, 3], np.int32))
    np.testing.assert_allclose(dist, [0.5, 0, 0, 0.25, 0, 0, 0, 0, 0, 0.25])
    with pytest.raises(ConfigError):
        lo.label_distribution([10])
    with pytest.raises(ConfigError):
        lo.label_distribution([])


# --------------------------------------------------------------------------- official TSVs

_ROWS = [("( ( [MAX 2 9 ] ) )", 9), ("( [SM ( [MIN 3 5 ] ) 8 ] )", 1), ("[MED 1 2 3 4 ]", 2)]


def _write_tsv(path, rows):
    path.write_text("Source\tTarget\n" + "".join(f"{src}\t{label}\n" for src, label in rows))


def test_read_official_tsv(tmp_path):
    _write_tsv(tmp_path / "basic_val.tsv", _ROWS)
    inputs, labels = lo.read_official_tsv(tmp_path / "basic_val.tsv")
    np.testing.assert_array_equal(labels, [9, 1, 2])
    np.testing.assert_array_equal(inputs[1], lo.encode("[SM [MIN 3 5 ] 8 ]"))
    assert [lo.evaluate(x) for x in inputs] == labels.tolist()
    (tmp_path / "bad.tsv").write_text("Source\tTarget\n[MAX 1 2 ]\n")
    with pytest.raises(ConfigError, match="bad.tsv:2"):
        lo.read_official_tsv(tmp_path / "bad.tsv")


def test_official_config_from_manual_dir(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    manual = tmp_path / "manual"
    manual.mkdir()
    _write_tsv(manual / "basic_train.tsv", _ROWS + [("( [MIN 7 8 ] )", 7)])
    _write_tsv(manual / "basic_val.tsv", _ROWS[:1])
    _write_tsv(manual / "basic_test.tsv", _ROWS[1:])
    builder = tfds.builder("lra_listops", config="official", data_dir=str(tmp_path / "tfds"), progress=False)
    builder.download_and_prepare(file_format="array_record",
                                 download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    sizes = {s: len(builder.as_data_source(s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 4, "validation": 1, "test": 2}
    src = builder.as_data_source("train")
    for i, (text, label) in enumerate(_ROWS + [("( [MIN 7 8 ] )", 7)]):
        ex = src[i]
        # tfds' data source decodes a scalar feature to a Python int (stored as int32).
        assert ex["inputs"].dtype == np.int32 and isinstance(ex["label"], (int, np.integer))
        np.testing.assert_array_equal(ex["inputs"], lo.encode([t for t in text.split() if t not in "()"]))
        assert int(ex["label"]) == label == lo.evaluate(ex["inputs"])


@pytest.mark.parametrize("present", [(), ("basic_train.tsv",)])
def test_official_missing_files_error(tmp_path, monkeypatch, present):
    _no_network(monkeypatch)
    manual = tmp_path / "manual"
    if present:
        manual.mkdir()
        for name in present:
            _write_tsv(manual / name, _ROWS)
    builder = tfds.builder("lra_listops", config="official", data_dir=str(tmp_path / "tfds"), progress=False)
    with pytest.raises(FileNotFoundError) as err:
        builder.download_and_prepare(file_format="array_record",
                                     download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    first = str(err.value).splitlines()[0]
    for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
        assert (name in first) == (name not in present)
    assert "lra_release.gz" in first and "listops-1000/" in first


# --------------------------------------------------------------------------- generated builder

TINY = dict(seed=7, min_length=10, max_length=60)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    _no_network(mp)
    try:
        tfds.disable_progress_bar()
        config = bl.make_config(40, 5, 5, **TINY)
        builder = tfds.builder("lra_listops", config=config, data_dir=str(tmp_path_factory.mktemp("tfds")),
                               num_workers=1, progress=False)
        builder.download_and_prepare(file_format="array_record")
    finally:
        mp.undo()
    return builder


def test_registered_configs(tmp_path):
    assert "lra_listops" in tfds.list_builders(with_community_datasets=False)
    assert [c.name for c in bl.LraListops.BUILDER_CONFIGS] == ["generated", "official"]
    assert bl.LraListops.DEFAULT_BUILDER_CONFIG_NAME == "generated"
    name = bl.make_config(40, 5, 5, **TINY).name
    assert name == "n40-5-5_s7_l10-60_d10_p0p75_a2-10"
    assert bl.make_config(seed=1).name != "generated" and bl.make_config(leaf_prob=0.7).name != name
    assert bl.LraListops(data_dir=str(tmp_path)).builder_config.name == "generated"


def test_builder_features_and_splits(prepared):
    builder = prepared
    info = builder.info
    assert info.features["inputs"].np_dtype == np.int32 and info.features["inputs"].shape == (None,)
    assert info.features["label"].np_dtype == np.int32 and info.features["label"].shape == ()
    sizes = {s: len(builder.as_data_source(s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 40, "validation": 5, "test": 5}
    keys = set()
    for split in ("train", "validation", "test"):
        src = builder.as_data_source(split)
        for i in range(len(src)):
            ex = src[i]
            assert set(ex) == {"inputs", "label"}
            assert ex["inputs"].dtype == np.int32 and ex["inputs"].ndim == 1
            assert isinstance(ex["label"], (int, np.integer)) and 0 <= ex["label"] <= 9
            assert 10 < len(ex["inputs"]) < 60
            assert lo.evaluate(ex["inputs"]) == int(ex["label"])
            keys.add(ex["inputs"].tobytes())
    assert len(keys) == 50  # unique across splits


def test_builder_matches_documented_streams(prepared):
    # test first, then validation, then train, each the first unique candidates of its stream.
    seen: set = set()
    params = dict(seed=7, min_length=10, max_length=60)
    for split, sid, n in (("test", 2, 5), ("validation", 1, 5), ("train", 0, 40)):
        inputs, labels = lo.sample_dataset(n, split_id=sid, seen=seen, **params)
        src = prepared.as_data_source(split)
        for i in range(n):
            np.testing.assert_array_equal(src[i]["inputs"], inputs[i])
            assert int(src[i]["label"]) == labels[i]
