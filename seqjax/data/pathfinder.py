"""Pathfinder images (Linsley et al. 2018, as used by the Long Range Arena), generated offline.

An image shows curvy "snakes" on black and two bright circular markers; the
label is 1 when one snake connects the two markers and 0 when they sit on two
different snakes. Written from the paper's description (REFERENCES.md,
"Pathfinder / Path-X") and facts read in the public generator
(drewlinsley/pathfinder; no code taken); docs/lra_pathfinder.md has the
measured checks:

- A snake is a chain of ``contour_length`` straight "paddles" of
  ``paddle_length`` pixels that do not touch: the contour is dashed, as in the
  public generator the LRA images come from. Each paddle ``k`` hangs off an
  anchor (pivot) ``P_k``: it covers ``P_k + u_k * [margin, margin +
  paddle_length]`` for its direction ``u_k``, and the next anchor is
  ``P_{k+1} = P_k + (paddle_length + 2 * margin) * u_k``. So consecutive
  paddles are ``2 * margin * cos(dtheta / 2)`` apart (end to start), and a
  model has to group collinear dashes across the gaps. ``u_k`` is drawn from
  ``num_angles`` equally spaced directions (with a random rotation, so
  directions are continuous) with weight
  ``max(cos(min(|dtheta| * continuity, pi/2)), 0)**2``, where ``dtheta`` is the
  turn against ``u_{k-1}``. Directions whose paddle would leave the padded
  frame or come closer than the clearance to anything drawn (an occupancy
  test against every drawn paddle and gap) get weight 0. With no free
  direction the last paddle is taken back and redrawn (at most
  ``contour_length`` times per snake), then the snake is abandoned.
- Clearance (centre line to centre line) is ``2 * margin + thickness``: the
  original dilates every paddle's mask by the margin and rejects overlapping
  masks, which keeps stroke edges ``2 * margin`` apart; a dash of another
  snake is therefore never closer than the gaps inside a snake. It holds
  between different snakes and between non-neighbouring paddles of one snake
  (neighbours are kept apart by the anchor spacing). The gaps (end of one
  paddle to the start of the next) get the same clearance from other snakes.
  That is stricter than the original, where another snake's dash may poke
  into a gap; here the label is exact on the contours drawn with their gaps
  bridged.
- Two target snakes A and B of ``contour_length`` paddles start (their first
  paddles' outer ends, the marker sites) ``seed_distance`` apart; A's start
  is at least ``2 * seed_distance`` from the border, as in the original. B
  is retried ``_B_TRIES`` times before the pair is redrawn. Their four ends
  are kept free of the other target and of distractors by ``marker_radius +
  clearance``, and A and B rendered with their gaps bridged never touch
  (8-connectivity), so the label is decided by the markers alone.
- ``K // distractor_length`` distractor snakes of ``distractor_length =
  contour_length // 3`` paddles (K = 20 / 22 / 35 / 30 for sizes 32 / 64 / 128
  / 256) start at random free points. A distractor that cannot be placed in
  ``_DISTRACTOR_TRIES`` attempts is skipped (``info["num_distractors"]``).
  The LRA release adds no single-paddle distractors (its wrapper sets
  ``use_single_paddles=False``), so neither do we.
- Label 1: markers at both ends of A. Label 0: one marker at the far end of one
  target and one at the start of the other (random which), so both marker
  pairs are about one snake's end-to-end distance apart: the geometry is drawn
  before the markers and does not depend on the label.
- Paddles are rendered antialiased at ``antialias_scale`` = 2 with butt ends
  (like the original's PIL lines) and downsampled by averaging; snake
  intensity is ``clip(coverage * snake_contrast, 0, 1)``, markers are drawn at
  full intensity; the image is that times 255 as uint8.

Difficulty is the contour length: ``easy`` 6, ``intermediate`` 9, ``hard`` 14
(LRA uses ``hard``). :func:`tokens` flattens an image row-major to the int32
pixel intensities 0..255 that LRA feeds to models.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from seqjax.data import pathfinder_draw as draw
from seqjax.errors import ConfigError

SIZES = (32, 64, 128, 256)
DIFFICULTIES = {"easy": 6, "intermediate": 9, "hard": 14}
# Pixel threshold (0..255) at which an image is read as foreground by the
# flood-fill checks (tests, docs): above the faint antialiasing fringe.
FOREGROUND_THRESHOLD = 64
_PAIR_TRIES = 200
_DISTRACTOR_TRIES = 20
_B_TRIES = 4
_START_TRIES = 50
# Paddles a snake may take back at dead ends, per paddle of the snake (see _grow).
_BACKTRACKS = 1.0

# Size-specific settings of the LRA release (REFERENCES.md):
# padding, paddle margins, paddle length, thickness, seed distance,
# marker radius, continuity, snake contrast, distractor budget K.
_SIZE_SETTINGS = {
    32: dict(padding=1, margins=(1,), paddle_length=2, thickness=0.5, seed_distance=7, marker_radius=1.5,
             continuity=1.0, snake_contrast=2.0, distractor_budget=20),
    64: dict(padding=1, margins=(1,), paddle_length=5, thickness=1.0, seed_distance=12, marker_radius=2.5,
             continuity=1.8, snake_contrast=0.8, distractor_budget=22),
    128: dict(padding=1, margins=(2, 3), paddle_length=5, thickness=1.5, seed_distance=20, marker_radius=3.0,
              continuity=1.8, snake_contrast=0.9, distractor_budget=35),
    256: dict(padding=22, margins=(3,), paddle_length=5, thickness=2.0, seed_distance=27, marker_radius=5.0,
              continuity=1.8, snake_contrast=1.0, distractor_budget=30),
}


@dataclasses.dataclass(frozen=True)
class PathfinderConfig:
    """Generator settings for one image size and difficulty.

    Attributes:
      size: image side in pixels (32, 64, 128 or 256).
      difficulty: ``"easy"``, ``"intermediate"`` or ``"hard"``.
      contour_length: paddles per target snake (6 / 9 / 14 by difficulty).
      padding: pixels at each border that snakes never enter.
      margins: paddle margins; one is drawn per image. Anchors are
        ``paddle_length + 2 * margin`` apart (gaps of about ``2 * margin``
        between dashes); snakes keep ``2 * margin + thickness`` apart.
      paddle_length: length of a paddle (one dash) in pixels.
      thickness: stroke width in pixels.
      seed_distance: distance between the starts of the two target snakes.
      marker_radius: radius of the two marker discs.
      continuity: turn penalty of the direction prior (larger = straighter).
      snake_contrast: intensity gain of the snakes (clipped at white).
      distractor_budget: K; ``K // distractor_length`` distractors are drawn.
      antialias_scale: fine-canvas factor of the antialiasing.
      num_angles: candidate directions on the circle around a pivot.
    """

    size: int = 32
    difficulty: str = "hard"
    contour_length: int = 14
    padding: int = 1
    margins: tuple = (1,)
    paddle_length: float = 2.0
    thickness: float = 0.5
    seed_distance: float = 7.0
    marker_radius: float = 1.5
    continuity: float = 1.0
    snake_contrast: float = 2.0
    distractor_budget: int = 20
    antialias_scale: int = 2
    num_angles: int = 48

    @property
    def distractor_length(self) -> int:
        """Paddles per distractor snake: ``contour_length // 3``."""
        return max(1, self.contour_length // 3)

    @property
    def num_distractors(self) -> int:
        """Distractor snakes per image: ``distractor_budget // distractor_length``."""
        return self.distractor_budget // self.distractor_length

    @property
    def max_turn(self) -> float:
        """Largest turn (radians) with non-zero prior weight: ``pi / (2 * continuity)``."""
        return float(np.pi / (2 * self.continuity))


def get_config(size: int = 32, difficulty: str = "hard") -> PathfinderConfig:
    """The LRA release's settings for an image size and difficulty.

    Args:
      size: 32, 64, 128 or 256.
      difficulty: ``"easy"`` (contour 6), ``"intermediate"`` (9) or ``"hard"`` (14).

    Returns:
      The :class:`PathfinderConfig`.

    Raises:
      ConfigError: for an unknown size or difficulty.
    """
    if size not in _SIZE_SETTINGS:
        raise ConfigError(f"pathfinder size={size!r} is not allowed; allowed: {', '.join(map(str, SIZES))}")
    if difficulty not in DIFFICULTIES:
        raise ConfigError(f"pathfinder difficulty={difficulty!r} is not allowed; allowed: {', '.join(DIFFICULTIES)}")
    return PathfinderConfig(size=int(size), difficulty=difficulty, contour_length=DIFFICULTIES[difficulty],
                            **_SIZE_SETTINGS[size])


class _World:
    """Every paddle drawn so far, for the occupancy test of new paddles.

    One ``[9, capacity]`` float array ``seg`` with rows ``ax, ay`` (start),
    ``dx, dy`` (vector; 0 for a marker disc), ``inv_len2`` (``1/|d|**2``, 0
    for a disc), ``owner`` (snake id), ``index`` (paddle index in its snake,
    ``k + 0.5`` for the gap after paddle ``k``, -1 for a disc), ``extra``
    (added clearance: the marker radius for discs) and ``len`` (``|d|``).
    One array, because this test runs once per paddle and its cost
    is the number of NumPy calls, not their size.

    Attributes:
      seg: the ``[9, capacity]`` segment table.
      n: number of segments in use.
    """

    AX, AY, DX, DY, INV, OWNER, INDEX, EXTRA, LEN = range(9)

    def __init__(self, capacity: int = 96):
        self.seg = np.zeros((9, capacity))
        self.n = 0

    def add(self, a, b, owner: int, index: int, extra: float = 0.0) -> None:
        if self.n == self.seg.shape[1]:  # grow geometrically
            self.seg = np.concatenate([self.seg, np.zeros_like(self.seg)], axis=1)
        dx, dy = float(b[0] - a[0]), float(b[1] - a[1])
        len2 = dx * dx + dy * dy
        self.seg[:, self.n] = (a[0], a[1], dx, dy, 1.0 / len2 if len2 > 1e-12 else 0.0, owner, index, extra,
                               np.sqrt(len2))
        self.n += 1

    def required(self, owner: int, k: int, clearance: float) -> np.ndarray:
        """Clearance each drawn segment demands from paddle ``k`` of snake ``owner``."""
        seg = self.seg[:, : self.n]
        # The previous paddle of the same snake is kept apart by the anchor
        # spacing (about 2 * margin, less than the clearance on a turn), as in
        # the original, whose occupancy mask omits the snake's last paddle.
        # The gap before paddle k is added after it; a snake's own marker
        # discs (index -1) do not count either.
        mine = clearance * (seg[self.INDEX] >= 0) * (seg[self.INDEX] < k - 1)
        return np.where(seg[self.OWNER] == owner, mine, clearance + seg[self.EXTRA])

    def dist2(self, x: np.ndarray, y: np.ndarray, sel=None) -> np.ndarray:
        """Squared distances ``[..., m]`` of points ``(x, y) [...]`` to the (selected) segments."""
        seg = self.seg[:5, : self.n]
        if sel is not None:
            seg = seg[:, sel]
        ax, ay, dx, dy, inv = seg
        px, py = x[..., None] - ax, y[..., None] - ay
        t = np.clip((px * dx + py * dy) * inv, 0.0, 1.0)
        ex, ey = px - t * dx, py - t * dy
        return ex * ex + ey * ey

    def free(self, x: np.ndarray, y: np.ndarray, required: np.ndarray, centre=None, reach: float = 0.0) -> np.ndarray:
        """Points ``(x, y) [..., p]`` → bool ``[...]``: all p points clear of every segment.

        With ``centre`` (all points lie within ``reach`` of it) only segments
        whose start is close enough to matter are tested.
        """
        sel = None
        if centre is not None and self.n:
            seg = self.seg[:, : self.n]
            lim = reach + required + seg[self.LEN]
            sel = (seg[self.AX] - centre[0]) ** 2 + (seg[self.AY] - centre[1]) ** 2 < lim * lim
            required = required[sel]
        if required.size == 0:
            return np.ones(x.shape[:-1], bool)
        return (self.dist2(x, y, sel) >= required * required).all(axis=(-1, -2))


def _inside(x, y, cfg: PathfinderConfig) -> np.ndarray:
    lo, hi = cfg.padding, cfg.size - cfg.padding
    return (x >= lo) & (x <= hi) & (y >= lo) & (y <= hi)


def _grow(rng: np.random.Generator, world: _World, start, owner: int, n_paddles: int, cfg: PathfinderConfig,
          margin: float, clearance: float):
    """Grows one snake whose first paddle starts at ``start``; returns its anchors or None when stuck.

    Paddles are added to ``world`` as they are accepted (the caller resets
    ``world.n`` to undo a failed snake). At a dead end the last paddle is
    taken back and redrawn, up to ``n_paddles`` times per snake: dashed
    snakes are 1.4-2x longer than the frame is wide, and abandoning every
    stuck one (as the original does, retrying without limit) lost 94 % of
    64-px target snakes (54 % with the take-back). Turn statistics move by
    under 0.02 rad (docs/lra_pathfinder.md).

    Returns:
      ``[n_paddles + 1, 2]`` anchors ``P_k`` (see the module docstring;
      :func:`paddles` turns them into the drawn segments), or None.
    """
    n_ang, length = cfg.num_angles, float(cfg.paddle_length)
    pitch = length + 2 * margin
    # Sample points along a candidate paddle, both ends included, spaced well
    # under the clearance.
    n_pts = max(2, int(np.ceil(length / 0.75)))
    t = margin + np.arange(n_pts + 1) * (length / n_pts)
    step = 2 * np.pi / n_ang
    # Candidate turns relative to the previous direction, in [-pi, pi).
    base = np.arange(n_ang) * step - np.pi
    lo, hi = cfg.padding, cfg.size - cfg.padding
    sx, sy = float(start[0]), float(start[1])
    # Per accepted paddle: its anchor, direction, end point and world.n before it.
    anchors, thetas, ends, n_before = [], [], [], []
    backtracks = int(_BACKTRACKS * n_paddles)
    k = 0
    while k < n_paddles:
        turn = base + rng.uniform(0.0, step)
        if k == 0:  # first paddle: any direction; its anchor sits margin behind the start
            theta, w = turn, np.ones(n_ang)
            cx, cy = np.cos(theta), np.sin(theta)
            ax, ay = sx - margin * cx, sy - margin * cy  # one anchor per candidate
            centre = (sx, sy)
        else:
            prev = thetas[-1]
            theta = prev + turn
            w = np.cos(np.minimum(np.abs(turn) * cfg.continuity, np.pi / 2)) ** 2
            cx, cy = np.cos(theta), np.sin(theta)
            centre = (anchors[-1][0] + pitch * np.cos(prev), anchors[-1][1] + pitch * np.sin(prev))
            ax, ay = np.full(n_ang, centre[0]), np.full(n_ang, centre[1])
        bx, by = ax + margin * cx, ay + margin * cy  # paddle start
        ex, ey = ax + (margin + length) * cx, ay + (margin + length) * cy  # paddle end
        out = ((np.minimum(bx, ex) < lo) | (np.maximum(bx, ex) > hi)
               | (np.minimum(by, ey) < lo) | (np.maximum(by, ey) > hi))
        w[out | (w < 1e-12)] = 0.0
        cand = np.flatnonzero(w)
        if cand.size:
            req = world.required(owner, k, clearance)
            qx = ax[cand, None] + cx[cand, None] * t
            qy = ay[cand, None] + cy[cand, None] * t
            # Every candidate paddle lies within margin + length of the start
            # (first paddle) or of its anchor.
            blocked = ~world.free(qx, qy, req, centre, margin + length)
            w[cand[blocked]] = 0.0
        cdf = np.cumsum(w)
        if cdf[-1] <= 0:
            if k == 0 or backtracks == 0:
                return None
            backtracks -= 1
            world.n = n_before.pop()  # take paddle k - 1 (and its gap) back
            anchors.pop(), thetas.pop(), ends.pop()
            k -= 1
            continue
        # Inverse-CDF draw (rng.choice(p=...) validates p on every call: slow).
        j = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), n_ang - 1)
        n_before.append(world.n)
        world.add((bx[j], by[j]), (ex[j], ey[j]), owner, k)
        if k:  # the gap to the previous paddle: kept free of other snakes too
            world.add(ends[-1], (bx[j], by[j]), owner, k - 0.5)
        anchors.append((float(ax[j]), float(ay[j])))
        thetas.append(float(theta[j]))
        ends.append((float(ex[j]), float(ey[j])))
        k += 1
    last = anchors[-1][0] + pitch * np.cos(thetas[-1]), anchors[-1][1] + pitch * np.sin(thetas[-1])
    return np.asarray(anchors + [last])


def paddles(anchors: np.ndarray, paddle_length: float) -> np.ndarray:
    """The drawn paddles of a snake from its anchors.

    Paddle ``k`` lies on the segment from anchor ``k`` to anchor ``k + 1``
    (of length ``paddle_length + 2 * margin``), centred on it, so the margin
    is read back from the anchor spacing.

    Args:
      anchors: ``[n + 1, 2]`` anchors ``(x, y)`` (``info["paths"]``, ``info["distractors"]``).
      paddle_length: the configuration's ``paddle_length``.

    Returns:
      ``[n, 2, 2]`` paddle start and end points ``(x, y)``. ``paddles[0, 0]``
      and ``paddles[-1, 1]`` are the snake's two ends (the marker sites);
      ``paddles.reshape(-1, 2)`` is the contour with its gaps bridged.
    """
    anchors = np.asarray(anchors, np.float64)
    d = np.diff(anchors, axis=0)
    span = np.linalg.norm(d, axis=1, keepdims=True)
    margin = (span - paddle_length) / 2
    lo, hi = anchors[:-1] + d * (margin / span), anchors[:-1] + d * ((margin + paddle_length) / span)
    return np.stack([lo, hi], 1)


def _random_start(rng, world: _World, cfg: PathfinderConfig, clearance: float):
    """A uniform random point in the padded frame that is clear of every drawn segment, or None."""
    lo, hi = cfg.padding, cfg.size - cfg.padding
    pts = rng.uniform(lo, hi, size=(_START_TRIES, 2))
    req = clearance + world.seg[world.EXTRA, : world.n]
    free = np.flatnonzero(world.free(pts[:, :1], pts[:, 1:], req))
    return pts[free[0]] if free.size else None


def _target_pair(rng, world: _World, cfg: PathfinderConfig, margin: float, clearance: float):
    """Draws target snakes A (owner 0) and B (owner 1); returns their anchors or None."""
    n = cfg.contour_length
    # As in the original, A starts at least 2 * seed_distance from the
    # border: long dashed snakes started near it mostly run into the frame.
    lo = max(cfg.padding, 2 * cfg.seed_distance)
    hi = cfg.size - lo
    if hi <= lo:  # custom configs too small for that band: the padded frame
        lo, hi = cfg.padding, cfg.size - cfg.padding
    start_a = rng.uniform(lo, hi, size=2)
    path_a = _grow(rng, world, start_a, 0, n, cfg, margin, clearance)
    if path_a is None:
        return None
    ends_a = paddles(path_a, cfg.paddle_length)[[0, -1], [0, 1]]
    for end in ends_a:  # keep A's marker sites clear of B
        world.add(end, end, 0, -1, cfg.marker_radius)
    # B starts on the circle of radius seed_distance around A's start.
    theta = rng.uniform(0, 2 * np.pi) + np.arange(cfg.num_angles) * (2 * np.pi / cfg.num_angles)
    ring = start_a + cfg.seed_distance * np.stack([np.cos(theta), np.sin(theta)], -1)
    req = world.required(1, 0, clearance) + cfg.marker_radius
    ok = _inside(ring[:, 0], ring[:, 1], cfg) & world.free(ring[:, :1], ring[:, 1:], req)
    if not ok.any():
        return None
    a_only = np.flatnonzero(world.seg[world.OWNER, : world.n] == 0)  # A's paddles and discs
    n0 = world.n
    # B is retried from fresh ring points before A is given up: a long,
    # straight snake often runs into the frame, and A is the costlier half.
    for _ in range(_B_TRIES):
        world.n = n0
        start_b = ring[rng.choice(np.flatnonzero(ok))]
        path_b = _grow(rng, world, start_b, 1, n, cfg, margin, clearance)
        if path_b is None:
            continue
        ends_b = paddles(path_b, cfg.paddle_length)[[0, -1], [0, 1]]
        # B's far end must also leave room for a marker next to A.
        d2 = world.dist2(np.asarray(ends_b[1, 0]), np.asarray(ends_b[1, 1]), a_only)
        if (d2 >= (clearance + cfg.marker_radius + world.seg[world.EXTRA, :n0][a_only]) ** 2).all():
            break
    else:
        return None
    for end in ends_b:
        world.add(end, end, 1, -1, cfg.marker_radius)
    return path_a, path_b


def _render(paths, cfg: PathfinderConfig, bridged: bool = False) -> np.ndarray:
    """Coverage in [0, 1] of the paddles of a list of anchor arrays, ``[size, size]`` float32.

    ``bridged`` draws each snake as one continuous line through its dashes
    (for the contact check of the two targets), not the image's dashes.
    """
    s = cfg.antialias_scale
    canvas = np.zeros((cfg.size * s, cfg.size * s), np.float32)
    segs = [paddles(p, cfg.paddle_length) for p in paths if len(p) > 1]
    if bridged:
        lines = [q.reshape(-1, 2) for q in segs]
        segs = [np.stack([q[:-1], q[1:]], 1) for q in lines]
    if segs:
        draw.draw_segments(canvas, np.concatenate(segs), cfg.thickness, s, caps="round" if bridged else "butt")
    return draw.downsample(canvas, s)


def _touch(mask_a: np.ndarray, mask_b: np.ndarray) -> bool:
    """Whether two masks overlap or are 8-neighbours somewhere."""
    grown = mask_a.copy()
    grown[1:] |= mask_a[:-1]
    grown[:-1] |= mask_a[1:]
    g2 = grown.copy()
    g2[:, 1:] |= grown[:, :-1]
    g2[:, :-1] |= grown[:, 1:]
    return bool((g2 & mask_b).any())


def sample(rng: np.random.Generator, size: int = 32, difficulty: str = "hard", label: int | None = None,
           config: PathfinderConfig | None = None):
    """Draws one Pathfinder image.

    Args:
      rng: NumPy generator (the only source of randomness).
      size: image side, 32 / 64 / 128 / 256 (ignored when ``config`` is given).
      difficulty: ``"easy"``, ``"intermediate"`` or ``"hard"`` (ignored with ``config``).
      label: 1 (markers on one snake) or 0 (on two snakes); drawn from ``rng`` when None.
      config: explicit settings (default: :func:`get_config(size, difficulty)`).

    Returns:
      ``(image, label, info)``: ``image`` uint8 ``[size, size]``; ``label`` int;
      ``info`` a dict with ``markers`` (float ``[2, 2]`` marker centres as
      ``(row, col)``), ``marker_snakes`` (which target, 0 = A or 1 = B, each
      marker sits on), ``path_masks`` (bool ``[2, size, size]``: pixels where
      target A / B is drawn, i.e. its own rendered intensity is > 0),
      ``paths`` (anchors ``(x, y)`` of A and B, ``[contour_length + 1, 2]``;
      :func:`paddles` gives the drawn dashes), ``distractors`` (their
      anchors), ``num_distractors``, ``margin`` (of this image: the anchor
      spacing is ``paddle_length + 2 * margin``) and ``config``.

    Raises:
      ConfigError: for a bad size, difficulty or label.
      RuntimeError: when no target pair fits in ``_PAIR_TRIES`` attempts.
    """
    cfg = config if config is not None else get_config(size, difficulty)
    if label is None:
        label = int(rng.integers(2))
    if label not in (0, 1):
        raise ConfigError(f"pathfinder label={label!r} is not allowed; allowed: 0, 1, None")
    margin = float(rng.choice(np.asarray(cfg.margins, np.float64)))
    clearance = 2 * margin + cfg.thickness
    for _ in range(_PAIR_TRIES):
        world = _World()
        pair = _target_pair(rng, world, cfg, margin, clearance)
        if pair is None:
            continue
        # A and B with their gaps bridged must not touch: then the label is
        # the connectivity of the two contours, whatever else is drawn.
        if not _touch(_render(pair[:1], cfg, bridged=True) > 0, _render(pair[1:], cfg, bridged=True) > 0):
            break
    else:
        raise RuntimeError(f"pathfinder: no target pair fits after {_PAIR_TRIES} tries ({cfg})")
    path_a, path_b = pair
    cover_a, cover_b = _render([path_a], cfg), _render([path_b], cfg)

    distractors = []
    for d in range(cfg.num_distractors):
        for _ in range(_DISTRACTOR_TRIES):
            start = _random_start(rng, world, cfg, clearance)
            if start is None:
                continue
            n0 = world.n
            path = _grow(rng, world, start, 2 + d, cfg.distractor_length, cfg, margin, clearance)
            if path is not None:
                distractors.append(path)
                break
            world.n = n0  # undo the stuck snake

    # Markers: label 1 on both ends of A; label 0 on the far end of one target
    # and the start of the other (both starts are seed_distance apart).
    (a0, a1), (b0, b1) = (paddles(p, cfg.paddle_length)[[0, -1], [0, 1]] for p in (path_a, path_b))
    if label == 1:
        ends, owners = [a0, a1], [0, 0]
    elif rng.integers(2) == 0:
        ends, owners = [a1, b0], [0, 1]
    else:
        ends, owners = [a0, b1], [0, 1]

    s = cfg.antialias_scale
    snakes = np.maximum(np.maximum(cover_a, cover_b), _render(distractors, cfg))
    marker_canvas = np.zeros((cfg.size * s, cfg.size * s), np.float32)
    draw.draw_discs(marker_canvas, np.stack(ends), cfg.marker_radius, s)
    value = np.maximum(np.clip(snakes * cfg.snake_contrast, 0.0, 1.0), draw.downsample(marker_canvas, s))
    image = np.round(value * 255).astype(np.uint8)
    info = {
        "markers": np.stack(ends)[:, ::-1].copy(),
        "marker_snakes": np.asarray(owners),
        "path_masks": np.stack([cover_a > 0, cover_b > 0]),
        "paths": [path_a, path_b],
        "distractors": distractors,
        "num_distractors": len(distractors),
        "margin": margin,
        "config": cfg,
    }
    return image, label, info


def tokens(image: np.ndarray) -> np.ndarray:
    """LRA's input sequence of an image: row-major pixel intensities.

    Args:
      image: uint8 ``[size, size]``.

    Returns:
      int32 ``[size * size]`` with values 0..255.
    """
    return np.asarray(image).reshape(-1).astype(np.int32)


def turning_angles(path: np.ndarray) -> np.ndarray:
    """Turns (radians, in [-pi, pi]) between consecutive paddles of a snake.

    Args:
      path: ``[n + 1, 2]`` anchors (``info["paths"]``; consecutive anchors lie along a paddle).

    Returns:
      ``[n - 1]`` signed turning angles.
    """
    d = np.diff(np.asarray(path), axis=0)
    ang = np.arctan2(d[:, 1], d[:, 0])
    return (np.diff(ang) + np.pi) % (2 * np.pi) - np.pi


def generate(seed: int, split_id: int, indices, size: int = 32, difficulty: str = "hard",
             config: PathfinderConfig | None = None) -> list:
    """Examples ``indices`` of a split: each seeded by ``default_rng([seed, split_id, i])``, label ``i % 2``.

    The result for an index never depends on which other indices are
    generated or in which process: a builder can split the work freely.

    Args:
      seed: data seed.
      split_id: 0 train, 1 validation, 2 test.
      indices: example indices.
      size: image side.
      difficulty: difficulty name.
      config: explicit settings (overrides size and difficulty).

    Returns:
      list of ``(index, tokens int32 [size*size], label)``.
    """
    cfg = config if config is not None else get_config(size, difficulty)
    out = []
    for i in indices:
        rng = np.random.default_rng([int(seed), int(split_id), int(i)])
        image, label, _ = sample(rng, label=int(i) % 2, config=cfg)
        out.append((int(i), tokens(image), label))
    return out
