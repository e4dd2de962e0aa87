"""Draws a gallery of generated Pathfinder images (docs/pathfinder_gallery.png).

One row per image size (32, 64, 128, 256), ``--per_label`` images of label 0
then of label 1, all at the chosen difficulty (LRA uses ``hard``). Each image
``j`` of a row is sampled with ``np.random.default_rng([seed, size, j])``.

Usage::

    python scripts/pathfinder_gallery.py [--out docs/pathfinder_gallery.png]
        [--difficulty hard] [--per_label 3] [--seed 0]
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from seqjax.data import pathfinder as pf  # noqa: E402


def main(argv=None) -> None:
    """Parses flags and writes the gallery PNG.

    Args:
      argv: command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/pathfinder_gallery.png")
    parser.add_argument("--difficulty", default="hard", choices=list(pf.DIFFICULTIES))
    parser.add_argument("--per_label", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    cols = 2 * args.per_label
    fig, axes = plt.subplots(len(pf.SIZES), cols, figsize=(2.0 * cols, 2.15 * len(pf.SIZES)), squeeze=False)
    for r, size in enumerate(pf.SIZES):
        for c in range(cols):
            label = c // args.per_label
            image, _, info = pf.sample(np.random.default_rng([args.seed, size, c]), size, args.difficulty, label)
            ax = axes[r, c]
            # nearest: show the real pixels (LRA feeds them one token each).
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"{size}px  label {label}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Pathfinder ({args.difficulty}: contour length {pf.DIFFICULTIES[args.difficulty]}); "
                 "label 1 = one snake joins the two dots", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
