"""Geometry and rasterisation helpers of the Pathfinder generator (NumPy only).

Coordinates are continuous ``(x, y) = (column, row)`` in output pixels: pixel
``(r, c)`` covers ``[c, c + 1) x [r, r + 1)`` and its centre is
``(c + 0.5, r + 0.5)``.

Antialiasing follows Linsley et al. (2018): shapes are drawn on a canvas
``scale`` times finer than the output and the canvas is downsampled by
averaging ``scale x scale`` blocks. On the fine canvas a subpixel's value is a
one-subpixel linear ramp of its distance to the shape's edge,
``clip(halfwidth + 0.5 - d, 0, 1)``, so even strokes thinner than a subpixel
(Pathfinder-32 uses thickness 0.5 at scale 2) stay continuous.
"""

from __future__ import annotations

import numpy as np


def point_segment_distance(q: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance of every point to every segment.

    Args:
      q: points ``[..., 2]``.
      a: segment starts ``[n, 2]``.
      b: segment ends ``[n, 2]`` (``a == b`` gives a point, i.e. a disc centre).

    Returns:
      distances ``[..., n]``.
    """
    ab = b - a  # [n, 2]
    len2 = np.maximum((ab * ab).sum(-1), 1e-12)
    aq = q[..., None, :] - a  # [..., n, 2]
    t = np.clip((aq * ab).sum(-1) / len2, 0.0, 1.0)
    d = aq - t[..., None] * ab
    return np.sqrt((d * d).sum(-1))


def _stamp(canvas: np.ndarray, origins: np.ndarray, values: np.ndarray) -> None:
    """Max-composites equal-sized windows ``values[i]`` at integer ``origins[i]`` (row, col), clipped."""
    h, w = canvas.shape
    win = values.shape[1]
    rows = origins[:, 0, None, None] + np.arange(win)[None, :, None]
    cols = origins[:, 1, None, None] + np.arange(win)[None, None, :]
    rows, cols = np.broadcast_to(rows, values.shape), np.broadcast_to(cols, values.shape)
    keep = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w) & (values > 0)
    # Overlapping windows (neighbouring strokes, markers on paddles) must keep
    # the maximum, not the last write: np.maximum.at is the unbuffered max-scatter.
    np.maximum.at(canvas, (rows[keep], cols[keep]), values[keep])


def draw_segments(canvas: np.ndarray, segments: np.ndarray, thickness: float, scale: int,
                  caps: str = "round") -> None:
    """Draws antialiased line segments onto a fine canvas (in place, max-composited).

    Args:
      canvas: float32 ``[size * scale, size * scale]`` fine canvas.
      segments: ``[n, 2, 2]`` segment end points in output coordinates.
      thickness: stroke width in output pixels.
      scale: antialiasing factor (fine subpixels per output pixel).
      caps: ``"round"`` (the stroke is every point within ``thickness / 2`` of
        the segment) or ``"butt"`` (a rectangle that ends exactly at the end
        points, as the original generator's PIL lines do, so that the gap
        between two paddles is the full distance between their ends).
    """
    if len(segments) == 0:
        return
    seg = np.asarray(segments, np.float64) * scale
    a, b = seg[:, 0], seg[:, 1]
    reach = thickness * scale / 2 + 1.0  # half-width plus the one-subpixel ramp
    lo = np.floor(np.minimum(a, b) - reach).astype(np.int64)  # (x, y)
    hi = np.ceil(np.maximum(a, b) + reach).astype(np.int64)
    win = int((hi - lo).max()) + 1
    offs = np.arange(win) + 0.5
    # Subpixel centres of each window: [n, win(rows), win(cols), 2] as (x, y).
    xs = lo[:, 0, None, None] + offs[None, None, :]
    ys = lo[:, 1, None, None] + offs[None, :, None]
    q = np.stack(np.broadcast_arrays(xs, ys), -1)
    ab = b - a
    len2 = np.maximum((ab * ab).sum(-1), 1e-12)[:, None, None]
    aq = q - a[:, None, None, :]
    t = np.clip((aq * ab[:, None, None, :]).sum(-1) / len2, 0.0, 1.0)
    d = aq - t[..., None] * ab[:, None, None, :]
    dist = np.sqrt((d * d).sum(-1))
    values = np.clip(thickness * scale / 2 + 0.5 - dist, 0.0, 1.0)
    if caps == "butt":
        # Position along the axis (unclipped) with the same one-subpixel ramp
        # at both ends: the lit length stays the segment's length.
        along = (aq * ab[:, None, None, :]).sum(-1) / np.sqrt(len2)
        values = values * np.clip(np.minimum(along, np.sqrt(len2) - along) + 0.5, 0.0, 1.0)
    elif caps != "round":
        raise ValueError(f"caps={caps!r}; allowed: 'round', 'butt'")
    values = values.astype(np.float32)
    _stamp(canvas, lo[:, ::-1], values)


def draw_discs(canvas: np.ndarray, centres: np.ndarray, radius: float, scale: int) -> None:
    """Draws antialiased filled discs onto a fine canvas (in place, max-composited).

    Args:
      canvas: float32 fine canvas.
      centres: ``[n, 2]`` disc centres ``(x, y)`` in output coordinates.
      radius: disc radius in output pixels.
      scale: antialiasing factor.
    """
    c = np.asarray(centres, np.float64).reshape(-1, 2)
    seg = np.stack([c, c], 1)
    # A disc is a zero-length segment whose half-width is the radius.
    draw_segments(canvas, seg, 2 * radius, scale)


def downsample(canvas: np.ndarray, scale: int) -> np.ndarray:
    """Averages ``scale x scale`` blocks of a fine canvas.

    Args:
      canvas: ``[h * scale, w * scale]`` array.
      scale: block size.

    Returns:
      float32 ``[h, w]`` block means.
    """
    h, w = canvas.shape[0] // scale, canvas.shape[1] // scale
    return canvas.reshape(h, scale, w, scale).mean(axis=(1, 3), dtype=np.float32)


def connected(binary: np.ndarray, p, q, *, connectivity: int = 8) -> bool:
    """Whether pixels ``p`` and ``q`` lie in the same connected component of ``binary``.

    Args:
      binary: bool ``[h, w]`` foreground.
      p: ``(row, col)`` of the first pixel (integers, or floats that are floored).
      q: ``(row, col)`` of the second pixel.
      connectivity: 4 or 8 (diagonal neighbours count).

    Returns:
      True when a flood fill from ``p`` over foreground pixels reaches ``q``
      (False when either pixel is background).
    """
    from scipy import ndimage  # scipy ships with jax; imported lazily to keep workers light

    structure = np.ones((3, 3), bool) if connectivity == 8 else None
    labels, _ = ndimage.label(binary, structure=structure)
    pr, pc = (int(np.floor(v)) for v in p)
    qr, qc = (int(np.floor(v)) for v in q)
    return bool(labels[pr, pc] != 0 and labels[pr, pc] == labels[qr, qc])
