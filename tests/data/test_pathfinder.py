"""Pathfinder: the generator (labels agree with connectivity of the dashed
contours, dashes and clearances of the original geometry, continuity prior,
determinism) and the tfds ``lra_pathfinder`` builder (offline prepare, worker
independence, the LRA release read from a manual folder)."""

import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

import seqjax.data.builders  # noqa: F401  (registers the builders with tfds)
from seqjax.data import pathfinder as pf
from seqjax.data.builders import lra_pathfinder as lp
from seqjax.data import pathfinder_draw as draw
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


def _bridged_targets(info):
    """Mask of targets A and B drawn as continuous lines through their dashes (gaps bridged)."""
    cfg = info["config"]
    s = cfg.antialias_scale
    canvas = np.zeros((cfg.size * s, cfg.size * s), np.float32)
    for p in info["paths"]:
        line = pf.paddles(p, cfg.paddle_length).reshape(-1, 2)  # start0, end0, start1, ...
        draw.draw_segments(canvas, np.stack([line[:-1], line[1:]], 1), cfg.thickness, s)
    return draw.downsample(canvas, s) > 0


def _flood_fill_stats(size, difficulty, n, seed):
    """Counts of (bridged-contour agreement, label-1 pixel connection, label-0 pixel connection) over n images."""
    agree = pix1 = pix0 = n0 = 0
    for i in range(n):
        image, label, info = pf.sample(np.random.default_rng([seed, size, i]), size, difficulty, label=i % 2)
        p, q = info["markers"]
        agree += connected(_bridged_targets(info), p, q) == bool(label)
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
    # On the targets drawn with their gaps bridged the label is exact. The
    # image itself is dashed: a pixel flood fill rarely joins a label-1 pair
    # (it always did when snakes were continuous polylines; at 32 px a snake
    # whose ends meet joins through its marker discs, 7 % of hard images),
    # and a label-0 pair almost never.
    assert agree == n
    assert pix1 <= (n - n0) // 3, f"{pix1}/{n - n0} label-1 images pixel-connected"
    assert pix0 <= 1, f"{pix0}/{n0} label-0 images pixel-connected"
    print(f"\n{size} {difficulty}: label-0 pixel-connected {pix0}/{n0}")


@pytest.mark.slow
def test_flood_fill_rates_many_images():
    for size in (32, 64):
        for difficulty in pf.DIFFICULTIES:
            agree, pix1, pix0, n0 = _flood_fill_stats(size, difficulty, 400, seed=12)
            assert agree == 400 and pix1 / (400 - n0) < 0.15
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
        cfg = pf.get_config(size, "hard")
        # Markers sit on the outer ends of the first / last paddle of a target.
        pads = [pf.paddles(p, cfg.paddle_length) for p in info["paths"]]
        ends = {tuple(np.round(q[[0, -1], [0, 1]][k], 6)) for q in pads for k in (0, 1)}
        for r, c in info["markers"]:
            assert (round(c, 6), round(r, 6)) in ends
        assert [len(p) for p in info["paths"]] == [cfg.contour_length + 1] * 2
        assert all(len(d) == cfg.distractor_length + 1 for d in info["distractors"])
        assert info["num_distractors"] >= cfg.num_distractors - 1
        assert info["margin"] in cfg.margins
        # Anchors are paddle_length + 2 margin apart; paddles have the
        # configured length and stay in the padded frame.
        for p in info["paths"] + info["distractors"]:
            spacing = cfg.paddle_length + 2 * info["margin"]
            np.testing.assert_allclose(np.linalg.norm(np.diff(p, axis=0), axis=1), spacing, rtol=1e-9)
            q = pf.paddles(p, cfg.paddle_length)
            np.testing.assert_allclose(np.linalg.norm(q[:, 1] - q[:, 0], axis=1), cfg.paddle_length, rtol=1e-9)
            assert q.min() >= cfg.padding and q.max() <= size - cfg.padding
        # The two target starts (marker sites) are seed_distance apart.
        assert np.linalg.norm(pads[0][0, 0] - pads[1][0, 0]) == pytest.approx(cfg.seed_distance)


def _lit_fraction(image, anchors, markers, cfg, step=0.25):
    """Share of points (every ``step`` px along the anchor polyline) whose pixel is foreground.

    Points within ``marker_radius + 1`` of a marker are left out: the discs
    light up the ends whatever the snake looks like.
    """
    pts = []
    for a, b in zip(anchors[:-1], anchors[1:]):
        n = int(np.ceil(np.linalg.norm(b - a) / step))
        pts.append(a + ((np.arange(n) + 0.5) / n)[:, None] * (b - a))
    pts = np.concatenate(pts)
    dist = np.linalg.norm(pts[:, None, :] - markers[None, :, ::-1], axis=-1)
    pts = pts[(dist > cfg.marker_radius + 1.0).all(1)]
    r = np.clip(pts[:, 1].astype(int), 0, cfg.size - 1)
    c = np.clip(pts[:, 0].astype(int), 0, cfg.size - 1)
    return float((image[r, c] >= pf.FOREGROUND_THRESHOLD).mean())


@pytest.mark.parametrize("size,n", [(32, 8), (128, 3)])
def test_target_contours_are_dashed(size, n):
    # Linsley et al.'s snakes are dashed: along a target's anchor polyline
    # about paddle_length / (paddle_length + 2 margin) is lit (0.5 at 32,
    # 0.45-0.56 at 128, plus the antialiased ends). A continuous polyline,
    # the old drawing, measured 0.99 at 32 and 1.00 at 128.
    fractions = []
    for i in range(n):
        image, _, info = pf.sample(np.random.default_rng([21, size, i]), size, "hard", label=i % 2)
        fractions += [_lit_fraction(image, p, info["markers"], info["config"]) for p in info["paths"]]
    print(f"\n{size}: lit fraction mean {np.mean(fractions):.3f}, range {min(fractions):.3f}-{max(fractions):.3f}")
    assert 0.3 <= np.mean(fractions) <= 0.7
    assert max(fractions) <= 0.8


def _segment_distance(p, q):
    """Exact distances ``[n, m]`` between segments ``p [n, 2, 2]`` and ``q [m, 2, 2]``."""
    psd = draw.point_segment_distance
    # Apart, the closest pair involves an end point of one of the segments.
    d = np.minimum.reduce([psd(p[:, 0], q[:, 0], q[:, 1]), psd(p[:, 1], q[:, 0], q[:, 1]),
                           psd(q[:, 0], p[:, 0], p[:, 1]).T, psd(q[:, 1], p[:, 0], p[:, 1]).T])

    def side(a, b, c):  # sign of the cross product (b - a) x (c - a)
        u, v = b - a, c - a
        return np.sign(u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0])

    a, b = p[:, None, 0], p[:, None, 1]
    c, e = q[None, :, 0], q[None, :, 1]
    cross = (side(a, b, c) * side(a, b, e) < 0) & (side(c, e, a) * side(c, e, b) < 0)
    return np.where(cross, 0.0, d)


@pytest.mark.parametrize("size", [32, 128])
def test_paddles_do_not_touch_and_snakes_keep_clearance(size):
    for i in range(3):
        image, _, info = pf.sample(np.random.default_rng([22, size, i]), size, "hard", label=i % 2)
        cfg, margin = info["config"], info["margin"]
        clearance = 2 * margin + cfg.thickness
        snakes = [pf.paddles(p, cfg.paddle_length) for p in info["paths"] + info["distractors"]]
        s = cfg.antialias_scale
        for q in snakes:
            # End of one paddle to the start of the next: 2 margin cos(turn / 2),
            # at least margin for turns up to 90 degrees.
            assert (np.linalg.norm(q[1:, 0] - q[:-1, 1], axis=1) >= margin).all()
            # Drawn alone, consecutive paddles share no foreground pixel (and at
            # 128 px are not even 8-neighbours; 2-px gaps at 32 px can be).
            masks = []
            for seg in q:
                canvas = np.zeros((size * s, size * s), np.float32)
                draw.draw_segments(canvas, seg[None], cfg.thickness, s, caps="butt")
                value = np.clip(draw.downsample(canvas, s) * cfg.snake_contrast, 0, 1) * 255
                masks.append(value >= pf.FOREGROUND_THRESHOLD)
            for m0, m1 in zip(masks[:-1], masks[1:]):
                assert not (m0 & m1).any()
                if size >= 64:
                    assert not pf._touch(m0, m1)
            # Non-neighbouring paddles of one snake keep the clearance (up to
            # the generator's 0.75-px sampling of a candidate paddle).
            d = _segment_distance(q, q)
            far = np.abs(np.arange(len(q))[:, None] - np.arange(len(q))[None, :]) >= 2
            assert (d[far] >= clearance - 0.03).all()
        for j, qa in enumerate(snakes):
            for qb in snakes[j + 1:]:
                assert _segment_distance(qa, qb).min() >= clearance - 0.03


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
    # Never beyond the prior's support; mean near the prior's and far below a
    # uniform turn's pi/2. Fitting a dashed snake (1.4-2x longer than the
    # frame is wide) into the frame selects curvier ones: plain rejection
    # sampling, as in the original, gives 1.2x (32 px) and 1.4x (64 px) the
    # prior's mean turn, our backtracking 1.26x and 1.45x.
    assert turns.max() <= cfg.max_turn + 1e-9
    prior = _PRIOR_MEAN_TURN / cfg.continuity
    assert 0.8 * prior < turns.mean() < 1.7 * prior
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
    # 2.0.0 = dashed snakes: caches of the continuous 1.0.0 images are not reused.
    assert str(b.version) == "2.0.0" and str(lp.make_config(32, "easy", num_examples=30).version) == "2.0.0"


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
