"""Finding and loading the ``results.json`` files that runs write."""

import json
import pathlib


def find_results(root) -> list[pathlib.Path]:
    """Every ``results.json`` under ``root`` (recursive), sorted by path.

    Args:
      root: a run folder or a folder of run folders.

    Returns:
      The paths; empty when there are none.
    """
    root = pathlib.Path(root)
    if (root / "results.json").is_file():
        return [root / "results.json"]
    return sorted(root.rglob("results.json"))


def load_results(root, *, finished_only: bool = True) -> list[dict]:
    """Loads every ``results.json`` under ``root``.

    Args:
      root: a run folder or a folder of run folders.
      finished_only: skip runs whose results do not say ``"finished": true``.

    Returns:
      The parsed dicts, each with ``"workdir"`` (its folder) added.
    """
    out = []
    for path in find_results(root):
        result = json.loads(path.read_text())
        if finished_only and not result.get("finished", False):
            continue
        result["workdir"] = str(path.parent)
        out.append(result)
    return out
