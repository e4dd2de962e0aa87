"""Pathfinder: the generator (labels agree with connectivity, continuity prior,
determinism) and the tfds ``lra_pathfinder`` builder (offline prepare, worker
independence, the LRA release read from a manual folder)."""

import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

import seqjax.data.builders  # noqa: F401  (registers the builders with tfds)
from seqjax.data import pathfinder as pf
from seqjax.data.builders import lra_pathfinder as lp
from seqjax.data.pathfinder_draw import connected
from seqjax.errors import ConfigError

# E|dtheta| under the prior alone: density cos(c x)^2 on |x| < pi / (2c) gives
# E|x| = (pi^2/16 - 1/4) / (pi/4) / c = 0.4671 / c.
_PRIOR_MEAN_TURN = (np.pi**2 / 16 - 0.25) / (np.pi / 4)


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("lra_pathfinder builder touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _flood_fill_stats(size, difficulty, n, seed):
    """Counts of (mask agreement, label-1 pixel connection, label-0 pixel connection) over n images."""
    agree = pix1 = pix0 = n0 = 0
    for i in range(n):
        image, label, info = pf.sample(np.random.default_rng([seed, size, i]), size, difficulty, label=i % 2)
        p, q = info["markers"]
        targets = info["path_masks"].any(0)
        agree += connected(targets, p, q) == bool(label)
        fg = connected(image >= pf.FOREGROUND_THRESHOLD, p, q)
        if label == 1:
            pix1 += fg
        else:
            pix0 += fg
            n0 += 1
    return agree, pix1, pix0, n0


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("difficulty", ["easy", "intermediate", "hard"])
def test_label_agrees_with_flood_fill(size, difficulty):
    n = 12
    agree, pix1, pix0, n0 = _flood_fill_stats(size, difficulty, n, seed=11)
    # On the rendered target masks the label is exact; in the thresholded
    # image a label-1 path always connects, and a label-0 pair almost never.
    assert agree == n
    assert pix1 == n - n0
    assert pix0 <= 1, f"{pix0}/{n0} label-0 images pixel-connected"
    print(f"\n{size} {difficulty}: label-0 pixel-connected {pix0}/{n0}")


@pytest.mark.slow
def test_flood_fill_rates_many_images():
    for size in (32, 64):
        for difficulty in pf.DIFFICULTIES:
            agree, pix1, pix0, n0 = _flood_fill_stats(size, difficulty, 400, seed=12)
            assert agree == 400 and pix1 == 400 - n0
            assert pix0 / n0 < 0.02
            print(f"\n{size} {difficulty}: label-0 pixel-connected {pix0}/{n0}")


def test_sample_contract_and_markers(rng):
    for size in pf.SIZES:
        label = int(rng.integers(2))
        image, got, info = pf.sample(rng, size, "hard", label=label)
        assert got == label and image.shape == (size, size) and image.dtype == np.uint8
        assert info["path_masks"].shape == (2, size, size) and info["path_masks"].dtype == bool
        # Markers are drawn at full brightness on the ends of one / two targets.
        for r, c in info["markers"]:
            assert image[int(r), int(c)] >= 200
        owners = info["marker_snakes"]
        assert (owners[0] == owners[1]) == bool(label)
        ends = {tuple(np.round(p[[0, -1]][k], 6)) for p in info["paths"] for k in (0, 1)}
        for r, c in info["markers"]:
            assert (round(c, 6), round(r, 6)) in ends
        cfg = pf.get_config(size, "hard")
        assert [len(p) for p in info["paths"]] == [cfg.contour_length + 1] * 2
        assert all(len(d) == cfg.distractor_length + 1 for d in info["distractors"])
        assert info["num_distractors"] >= cfg.num_distractors - 1
        # Paddles have the configured length and stay in the padded frame.
        for p in info["paths"] + info["distractors"]:
            np.testing.assert_allclose(np.linalg.norm(np.diff(p, axis=0), axis=1), cfg.paddle_length, rtol=1e-9)
            assert p.min() >= cfg.padding and p.max() <= size - cfg.padding
        # The two target starts are seed_distance apart.
        a, b = info["paths"]
        assert np.linalg.norm(a[0] - b[0]) == pytest.approx(cfg.seed_distance)


def test_tokens_row_major(rng):
    image, _, _ = pf.sample(rng, 32, "easy")
    toks = pf.tokens(image)
    assert toks.dtype == np.int32 and toks.shape == (1024,)
    r, c = 7, 19
    assert toks[r * 32 + c] == image[r, c] and toks.min() >= 0 and toks.max() <= 255 and toks.max() > 0


@pytest.mark.parametrize("size", [32, 64])
def test_continuity_prior_concentrates_turns(size):
    cfg = pf.get_config(size, "hard")
    turns = []
    for i in range(8):
        _, _, info = pf.sample(np.random.default_rng([3, i]), size, "hard")
        turns += [np.abs(pf.turning_angles(p)) for p in info["paths"] + info["distractors"]]
    turns = np.concatenate(turns)
    assert turns.size > 200
    # Never beyond the prior's support; mean near the prior's (obstacle
    # avoidance adds a little) and far below a uniform turn's pi/2.
    assert turns.max() <= cfg.max_turn + 1e-9
    prior = _PRIOR_MEAN_TURN / cfg.continuity
    assert 0.8 * prior < turns.mean() < 1.4 * prior
    assert turns.mean() < 0.35 * np.pi


def test_deterministic_by_seed():
    a = pf.sample(np.random.default_rng([1, 2, 3]), 64, "intermediate")
    b = pf.sample(np.random.default_rng([1, 2, 3]), 64, "intermediate")
    c = pf.sample(np.random.default_rng([1, 2, 4]), 64, "intermediate")
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    np.testing.assert_array_equal(a[2]["markers"], b[2]["markers"])
    assert not np.array_equal(a[0], c[0])
    # generate(): an index's image does not depend on the other indices.
    full = pf.generate(5, 1, range(6), size=32, difficulty="easy")
    part = pf.generate(5, 1, [4, 1], size=32, difficulty="easy")
    np.testing.assert_array_equal(part[0][1], full[4][1])
    np.testing.assert_array_equal(part[1][1], full[1][1])
    assert [lab for _, _, lab in full] == [0, 1, 0, 1, 0, 1]


def test_generation_independent_of_worker_count():
    cfg = pf.get_config(32, "easy")
    serial = list(lp._generate_chunks(9, 0, 70, cfg, num_workers=1, desc="t"))
    pooled = list(lp._generate_chunks(9, 0, 70, cfg, num_workers=2, desc="t"))  # 2 chunks of 64 + 6
    assert [i for i, _, _ in pooled] == list(range(70))
    for (i, x, lx), (j, y, ly) in zip(serial, pooled):
        assert i == j and lx == ly
        np.testing.assert_array_equal(x, y)


def test_bad_parameters_raise_config_error(rng):
    with pytest.raises(ConfigError, match="size"):
        pf.get_config(48)
    with pytest.raises(ConfigError, match="difficulty"):
        pf.sample(rng, 32, "medium")
    with pytest.raises(ConfigError, match="label"):
        pf.sample(rng, 32, "hard", label=2)
    with pytest.raises(ConfigError, match="num_examples"):
        lp.make_config(32, "hard", num_examples=2)


def test_registered_configs(tmp_path):
    assert "lra_pathfinder" in tfds.list_builders(with_community_datasets=False)
    names = [c.name for c in lp.LraPathfinder.BUILDER_CONFIGS]
    for size in (32, 64, 128, 256):
        for diff in ("easy", "intermediate", "hard"):
            assert f"{size}_{diff}" in names and f"{size}_{diff}_manual" in names
    assert lp.LraPathfinder.DEFAULT_BUILDER_CONFIG_NAME == "32_hard"
    assert lp.make_config(128, "hard") is lp.make_config(128, "hard")  # registered object
    assert lp.make_config(32, "hard", seed=1).name == "32_hard_n200000_s1"
    assert lp.split_sizes(200_000) == {"train": 160_000, "validation": 20_000, "test": 20_000}
    b = lp.LraPathfinder(config=lp.make_config(128, "hard"), data_dir=str(tmp_path))
    assert b.info.features["inputs"].shape == (128 * 128,)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    _no_network(mp)
    try:
        tfds.disable_progress_bar()
        config = lp.make_config(32, "hard", num_examples=20, seed=4)
        builder = tfds.builder("lra_pathfinder", config=config, data_dir=str(tmp_path_factory.mktemp("tfds")),
                               num_workers=1)
        builder.download_and_prepare(file_format="array_record")
    finally:
        mp.undo()
    return builder, config


def test_builder_prepares_offline_and_loads(prepared):
    builder, config = prepared
    sizes = {s: len(builder.as_data_source(s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 16, "validation": 2, "test": 2}
    for split, split_id in (("train", 0), ("validation", 1), ("test", 2)):
        src = builder.as_data_source(split)
        rows = [src[i] for i in range(len(src))]
        for ex in rows:
            assert set(ex) == {"inputs", "label"}
            assert ex["inputs"].dtype == np.int32 and ex["inputs"].shape == (1024,)
            assert ex["label"].dtype == np.int32 and ex["label"].shape == ()
            assert 0 <= ex["inputs"].min() and ex["inputs"].max() <= 255
        # Exactly balanced, and the stored images are the seeded ones (in hashed order).
        labels = [int(ex["label"]) for ex in rows]
        assert sum(labels) == len(labels) // 2
        expected = {t.tobytes(): lab for _, t, lab in pf.generate(4, split_id, range(len(rows)), 32, "hard")}
        assert {ex["inputs"].tobytes(): int(ex["label"]) for ex in rows} == expected


def _write_release(root, size=32, folder="curv_contour_length_14", rng=None):
    """A tiny LRA-release-style folder: 2 metadata files (text and real .npy) of 5 PNGs each."""
    from PIL import Image

    base = root / "lra_release" / f"pathfinder{size}" / folder
    (base / "metadata").mkdir(parents=True)
    truth = {}
    for k in range(2):
        (base / "imgs" / str(k)).mkdir(parents=True)
        rows = []
        for n in range(5):
            img = rng.integers(0, 256, (size, size), dtype=np.uint8)
            Image.fromarray(img).save(base / "imgs" / str(k) / f"sample_{n}.png")
            label = int(rng.integers(2))
            rows.append([f"imgs/{k}", f"sample_{n}.png", str(n), str(label), "0.2", "14", "2"])
            truth[lp.pf.tokens(img).tobytes()] = label
        if k == 0:  # the release's own format: text lines despite the .npy name
            (base / "metadata" / "0.npy").write_text("".join(" ".join(r) + "\n" for r in rows))
        else:  # a genuine NumPy string array with the same columns
            np.save(base / "metadata" / "1.npy", np.asarray(rows))
    return truth


def test_manual_release_is_read(tmp_path, monkeypatch, rng):
    _no_network(monkeypatch)
    tfds.disable_progress_bar()
    truth = _write_release(tmp_path / "manual", rng=rng)
    builder = tfds.builder("lra_pathfinder/32_hard_manual", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(file_format="array_record",
                                 download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
    seen = {}
    for split, n in (("train", 8), ("validation", 1), ("test", 1)):
        src = builder.as_data_source(split)
        assert len(src) == n
        for i in range(n):
            seen[src[i]["inputs"].tobytes()] = int(src[i]["label"])
    assert seen == truth


def test_manual_release_missing_names_folder(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("not the release")
    for manual in ("empty", "absent"):
        builder = tfds.builder("lra_pathfinder/64_easy_manual", data_dir=str(tmp_path / f"tfds_{manual}"))
        with pytest.raises(FileNotFoundError, match=r"lra_release/pathfinder64/curv_baseline.*lra_release\.gz"):
            builder.download_and_prepare(
                file_format="array_record",
                download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / manual)))
