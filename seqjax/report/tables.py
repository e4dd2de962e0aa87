"""Markdown tables from rows of values."""

from collections.abc import Sequence


def _fmt(value, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], *, digits: int = 3) -> str:
    """A GitHub-markdown table.

    Args:
      header: column titles.
      rows: one sequence of cells per row (floats are formatted with ``digits``
        decimals, None as "–").
      digits: decimals for floats.

    Returns:
      The table as a string (no trailing newline).
    """
    lines = ["| " + " | ".join(map(str, header)) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_fmt(c, digits) for c in row) + " |" for row in rows]
    return "\n".join(lines)
