"""The archive-backed LRA builders (``lra_text``, ``lra_retrieval``, ``lra_image``).

Each builder is prepared offline (network blocked) from a tiny archive in the
exact format of the official one (written by :mod:`tests.data.lra_fixtures`),
loaded through ``as_data_source`` and through the grain loader, and checked
against encodings computed here independently of the builders.
"""

from __future__ import annotations

import collections
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import hashing

import seqjax.data.builders  # noqa: F401  (registers the builders with tfds)
from seqjax.data.builders import _manual, lra_image, lra_retrieval, lra_text
from seqjax.data.pipeline import make_loader
from seqjax.errors import ConfigError
from tests.data import lra_fixtures as fx

# ---------------------------------------------------------------------------- helpers


def _prepare(name, data_dir, manual_dir=None, config=None):
    """Prepares builder ``name`` offline; ``manual_dir=None`` uses tfds' default folder."""
    mp = pytest.MonkeyPatch()
    fx.no_network(mp)
    try:
        tfds.disable_progress_bar()
        kwargs = {} if config is None else {"config": config}
        builder = tfds.builder(name, data_dir=str(data_dir), **kwargs)
        dl_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir)) if manual_dir else None
        builder.download_and_prepare(file_format="array_record", download_config=dl_config)
    finally:
        mp.undo()
    return builder


def _records(source):
    return [source[i] for i in range(len(source))]


def _multiset(rows):
    """Order-free comparison key of examples (tfds stores records in hashed order)."""
    return collections.Counter(tuple(tuple(np.asarray(v).ravel().tolist()) for v in row) for row in rows)


def _byte_ids(data: bytes, length: int) -> list[int]:
    # Independent of the builder: Python ints, byte value + 1.
    return [b + 1 for b in data[:length]]


def _load_all(source, pad_to, features, keep=("label",)):
    """Every example once through the grain loader, as one batch."""
    loader = make_loader(source, batch_size=len(source), seed=0, shuffle=True, pad_to=pad_to, features=features,
                         keep=keep, num_epochs=1, shard=(0, 1), read_threads=1, prefetch=8)
    batches = list(loader)
    assert len(batches) == 1
    assert all(v.dtype == np.int32 for v in batches[0].values())  # labels too, not int64
    return batches[0]


# ---------------------------------------------------------------------------- lra_text

TEXT_LEN = 40
REVIEWS = [
    ("train", "pos", 0, 9, "Great film.<br /><br />Loved it: café ☕ naïve 😀".encode()),
    ("train", "neg", 1, 2, b"  Terrible.  \n"),
    ("train", "pos", 2, 10, b"y" * 100),  # longer than TEXT_LEN
    ("train", "neg", 3, 1, ("Cut inside a character: " + "é" * 20).encode()),
    ("test", "pos", 200, 8, b"\tFine \"quoted\" review\r\n"),
    ("test", "neg", 201, 3, "Ünïcödé ünd ümläüts".encode()),
    ("test", "neg", 202, 4, b"Bad."),
]


def _text_expected(split):
    return [(_byte_ids(text.strip(), TEXT_LEN), int(lab == "pos")) for s, lab, _, _, text in REVIEWS if s == split]


@pytest.fixture(scope="module")
def text_builder(tmp_path_factory):
    manual = tmp_path_factory.mktemp("manual_text")
    fx.write_imdb_archive(manual / "aclImdb_v1.tar.gz", REVIEWS)
    return _prepare("lra_text", tmp_path_factory.mktemp("tfds_text"), manual, lra_text.make_config(TEXT_LEN))


def test_text_splits_and_features(text_builder):
    assert set(text_builder.info.splits) == {"train", "validation", "test"}
    sizes = {s: len(text_builder.as_data_source(s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 4, "validation": 3, "test": 3}
    ex = text_builder.as_data_source("train")[0]
    assert set(ex) == {"inputs", "label"}
    assert ex["inputs"].dtype == np.int32 and ex["inputs"].ndim == 1 and ex["label"].dtype == np.int32


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_text_contents_match_independent_encoding(text_builder, split):
    got = [(r["inputs"], r["label"]) for r in _records(text_builder.as_data_source(split))]
    expected = _text_expected("test" if split == "validation" else split)  # validation = test, as LRA
    assert _multiset(got) == _multiset(expected)
    for ids, _ in got:
        assert len(ids) <= TEXT_LEN and ids.min() >= 1 and ids.max() <= 256
    # Non-ASCII characters became their UTF-8 bytes (ids > 128); long reviews were cut at TEXT_LEN bytes.
    assert any((ids > 0x80).any() for ids, _ in got)
    assert max(len(ids) for ids, _ in got) == (TEXT_LEN if split == "train" else 27)


def test_text_through_grain_loader(text_builder):
    batch = _load_all(text_builder.as_data_source("train"), pad_to=48, features=("inputs",))
    assert batch["inputs"].shape == (4, 48) and batch["label"].shape == (4,)
    expected = [(ids + [0] * (48 - len(ids)), lab) for ids, lab in _text_expected("train")]
    assert _multiset(zip(batch["inputs"], batch["label"])) == _multiset(expected)


def test_text_configs():
    assert "lra_text" in tfds.list_builders(with_community_datasets=False)
    assert lra_text.LraText.DEFAULT_BUILDER_CONFIG_NAME == "4096"
    assert lra_text.make_config() is lra_text.LraText.BUILDER_CONFIGS[0]
    assert lra_text.make_config(1000).name == "1000" and lra_text.make_config(1000).max_length == 1000
    assert lra_text.member_split_label("aclImdb/test/pos/200_8.txt") == ("test", 1)
    assert lra_text.member_split_label("aclImdb/train/unsup/0_0.txt") is None
    assert lra_text.member_split_label("aclImdb/train/urls_pos.txt") is None


@pytest.mark.parametrize("bad", [0, -3, 2.5, "4096", True, None])
def test_bad_lengths_raise_config_error(bad):
    with pytest.raises(ConfigError, match="max_length"):
        lra_text.make_config(bad)
    with pytest.raises(ConfigError, match="lra_retrieval.max_length"):
        lra_retrieval.make_config(bad)


# ---------------------------------------------------------------------------- lra_retrieval

RETR_LEN = 30
AAN = {
    "train": [
        ("1.0", "P01-1001", "P02-2002", b'He said "hello" and left', "naïve café résumé".encode()),
        ("0", "A00-0001", "B00-0002", b'"unbalanced quote at the start', b"x" * 50),
        ("0.0", "C", "D", "line\u2028separator\u0085kept".encode(), b"'single' and \"double\""),
        ("1", "E", "F", b"crlf row", b"ends with CR LF"),
    ],
    "eval": [("1.0", "G", "H", b"eval one", b"eval two"), ("0.0", "I", "J", b"e" * 31, b"")],
    "test": [("0", "K", "L", b"test, with comma", b'"'), ("1.0", "M", "N", b"last", "😀".encode())],
}


def _aan_bytes():
    return {"train": fx.aan_tsv(AAN["train"], crlf_rows=(3,)), "eval": fx.aan_tsv(AAN["eval"]),
            "test": fx.aan_tsv(AAN["test"]) + b"\n"}  # a trailing blank line is skipped


def _aan_expected(file_split, length):
    return [(_byte_ids(t1, length), _byte_ids(t2, length), int(float(lab))) for lab, _, _, t1, t2 in AAN[file_split]]


@pytest.fixture(scope="module")
def retrieval_builder(tmp_path_factory):
    manual = tmp_path_factory.mktemp("manual_retr")
    fx.write_aan_archive(manual / "lra_release.gz", _aan_bytes())
    return _prepare("lra_retrieval", tmp_path_factory.mktemp("tfds_retr"), manual,
                    lra_retrieval.make_config(RETR_LEN))


@pytest.mark.parametrize("split,file_split", [("train", "train"), ("validation", "eval"), ("test", "test")])
def test_retrieval_contents_from_archive(retrieval_builder, split, file_split):
    src = retrieval_builder.as_data_source(split)
    assert len(src) == len(AAN[file_split])
    rows = _records(src)
    assert set(rows[0]) == {"inputs1", "inputs2", "label"}
    assert all(r[k].dtype == np.int32 for r in rows for k in r)
    got = [(r["inputs1"], r["inputs2"], r["label"]) for r in rows]
    assert _multiset(got) == _multiset(_aan_expected(file_split, RETR_LEN))


def test_retrieval_through_grain_loader(retrieval_builder):
    batch = _load_all(retrieval_builder.as_data_source("train"), pad_to=RETR_LEN, features=("inputs1", "inputs2"))
    assert batch["inputs1"].shape == batch["inputs2"].shape == (4, RETR_LEN)
    pad = lambda ids: ids + [0] * (RETR_LEN - len(ids))  # noqa: E731
    expected = [(pad(a), pad(b), lab) for a, b, lab in _aan_expected("train", RETR_LEN)]
    assert _multiset(zip(batch["inputs1"], batch["inputs2"], batch["label"])) == _multiset(expected)
    # The quote characters were kept as bytes (no CSV quote handling).
    assert (batch["inputs1"] == ord('"') + 1).any()


def test_retrieval_from_tsvs_in_manual_folder(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    for name, data in _aan_bytes().items():
        (manual / f"new_aan_pairs.{name}.tsv").write_bytes(data)
    builder = _prepare("lra_retrieval", tmp_path / "tfds", manual)  # default config: 4,000 bytes
    assert builder.builder_config.max_length == 4000
    got = [(r["inputs1"], r["inputs2"], r["label"]) for r in _records(builder.as_data_source("validation"))]
    assert _multiset(got) == _multiset(_aan_expected("eval", 4000))


def test_retrieval_line_parsing():
    assert lra_retrieval.parse_line(b'1.0\ta\tb\t"x\ty"\n', "f:1") == (1, b"a", b"b", b'"x', b'y"')
    assert lra_retrieval.parse_line(b"0\ta\tb\tc\td\r\n", "f:2") == (0, b"a", b"b", b"c", b"d")
    assert lra_retrieval.parse_line(b"\n", "f:3") is None
    with pytest.raises(ValueError, match="f:4.*5 tab-separated"):
        lra_retrieval.parse_line(b"1\ta\tb\tc\n", "f:4")
    for bad in (b"2.0", b"0.5", b"yes", b"nan"):
        with pytest.raises(ValueError, match="not 0 or 1"):
            lra_retrieval.parse_label(bad, "f:5")


# ---------------------------------------------------------------------------- lra_image

PER_BATCH, TEST_N = 4, 5


@pytest.fixture(scope="module")
def cifar_batches():
    rng = np.random.default_rng(7)
    batches = {}
    for name in (*lra_image.TRAIN_BATCHES, lra_image.TEST_BATCH):
        n = TEST_N if name == lra_image.TEST_BATCH else PER_BATCH
        batches[name] = (rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, size=n).tolist())
    first = batches["data_batch_1"][0]
    first[0] = 255  # a white image: grayscale 255 (weights sum to 0.9999)
    first[1] = 0
    return batches


def _gray_independent(data):
    # Via an HWC image (not the planes view the builder uses), formula in float64, rounded half up.
    img = np.asarray(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float64)
    gray = 0.2989 * img[..., 0] + 0.5870 * img[..., 1] + 0.1140 * img[..., 2]
    return np.floor(gray + 0.5).astype(np.int64).reshape(len(img), 32 * 32)


@pytest.fixture(scope="module")
def image_builders(tmp_path_factory, cifar_batches):
    manual = tmp_path_factory.mktemp("manual_img")
    fx.write_cifar_python(manual / "cifar-10-python.tar.gz", cifar_batches)
    from_python = _prepare("lra_image", tmp_path_factory.mktemp("tfds_img_py"), manual)
    # The binary archive, in tfds' default manual folder <data_dir>/downloads/manual.
    data_dir = tmp_path_factory.mktemp("tfds_img_bin")
    (data_dir / "downloads" / "manual").mkdir(parents=True)
    fx.write_cifar_binary(data_dir / "downloads" / "manual" / "cifar-10-binary.tar.gz", cifar_batches)
    from_binary = _prepare("lra_image", data_dir)
    return from_python, from_binary


def test_image_splits_90_10_in_tfds_cifar10_order(image_builders, cifar_batches):
    builder = image_builders[0]
    train_x = np.concatenate([cifar_batches[n][0] for n in lra_image.TRAIN_BATCHES])
    train_y = sum((cifar_batches[n][1] for n in lra_image.TRAIN_BATCHES), [])
    gray = _gray_independent(train_x)
    # tfds' cifar10 stores train examples (keys 0..n-1) sorted by its salted key hash; train[:90%] slices that.
    hasher = hashing.Hasher("train")
    order = sorted(range(len(train_y)), key=hasher.hash_key)
    n_train = 18  # round(0.9 * 20)
    sizes = {s: len(builder.as_data_source(s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": n_train, "validation": 20 - n_train, "test": TEST_N}
    train = _records(builder.as_data_source("train"))
    # Same stored order as tfds' cifar10 train[:90%].
    for rec, i in zip(train, order[:n_train]):
        np.testing.assert_array_equal(rec["inputs"], gray[i])
        assert rec["label"] == train_y[i]
    val = [(r["inputs"], r["label"]) for r in _records(builder.as_data_source("validation"))]
    assert _multiset(val) == _multiset([(gray[i], train_y[i]) for i in order[n_train:]])
    np.testing.assert_array_equal(lra_image.tfds_train_order(len(train_y)), order)


def test_image_test_split_and_features(image_builders, cifar_batches):
    builder = image_builders[0]
    data, labels = cifar_batches[lra_image.TEST_BATCH]
    rows = _records(builder.as_data_source("test"))
    for r in rows:
        assert r["inputs"].dtype == np.int32 and r["inputs"].shape == (1024,) and r["label"].dtype == np.int32
        assert 0 <= r["inputs"].min() and r["inputs"].max() <= 255
    assert _multiset([(r["inputs"], r["label"]) for r in rows]) == _multiset(list(zip(_gray_independent(data), labels)))
    white = _records(builder.as_data_source("train")) + _records(builder.as_data_source("validation"))
    assert any((r["inputs"] == 255).all() for r in white) and any((r["inputs"] == 0).all() for r in white)


def test_image_binary_archive_gives_same_records(image_builders):
    from_python, from_binary = image_builders
    for split in ("train", "validation", "test"):
        a, b = _records(from_python.as_data_source(split)), _records(from_binary.as_data_source(split))
        assert len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x["inputs"], y["inputs"])
            assert x["label"] == y["label"]


def test_image_through_grain_loader(image_builders):
    src = image_builders[0].as_data_source("test")
    batch = _load_all(src, pad_to=1024, features=("inputs",))
    assert batch["inputs"].shape == (TEST_N, 1024) and batch["inputs"].dtype == np.int32
    expected = [(r["inputs"], r["label"]) for r in _records(src)]
    assert _multiset(zip(batch["inputs"], batch["label"])) == _multiset(expected)


def test_normalize_pixels_numpy_and_jax():
    import jax
    import jax.numpy as jnp

    tokens = np.array([[0, 61, 122, 255]])
    expected = (tokens.astype(np.float64) / 255 - 122.6 / 255) / (61.0 / 255)
    np.testing.assert_allclose(lra_image.normalize_pixels(tokens), expected, rtol=1e-12)
    got = jax.jit(lambda t: lra_image.normalize_pixels(t, jnp.float32))(jnp.asarray(tokens, jnp.int32))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


def test_cifar_unpickler_refuses_other_globals():
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        lra_image.load_python_batch(pickle.dumps({b"data": Evil()}, protocol=2))


# ---------------------------------------------------------------------------- missing archive

MISSING = {
    "lra_text": ["aclImdb_v1.tar.gz", "84,125,825 bytes", "https://ai.stanford.edu/~amaas/data/sentiment/"],
    "lra_retrieval": ["lra_release.gz", "https://storage.googleapis.com/long-range-arena/lra_release.gz",
                      "new_aan_pairs.train.tsv"],
    "lra_image": ["cifar-10-python.tar.gz", "163 MB", "cifar-10-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/"],
}


@pytest.mark.parametrize("name", sorted(MISSING))
@pytest.mark.parametrize("folder_state", ["empty", "missing", "other_file"])
def test_missing_archive_message(tmp_path, monkeypatch, name, folder_state):
    fx.no_network(monkeypatch)
    manual = tmp_path / "my_manual"
    if folder_state != "missing":
        manual.mkdir()
    if folder_state == "other_file":
        (manual / "unrelated.txt").write_text("x")
    builder = tfds.builder(name, data_dir=str(tmp_path / "tfds"))
    with pytest.raises(_manual.MissingArchiveError) as err:
        builder.download_and_prepare(file_format="array_record",
                                     download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for part in [*MISSING[name], str(manual), "manual folder"]:
        assert part in message, (part, message)
    assert not builder.is_prepared()
