"""ListOps (Long Range Arena): random expression trees, tokens, evaluation, TSV reader.

Pure NumPy; no JAX or TensorFlow. The builder in
:mod:`seqjax.data.builders.lra_listops` stores what this module generates.

Trees (Tay et al. 2020, Nangia & Bowman 2018). The root is at depth 1. A node
at depth < ``max_depth`` is a leaf with probability ``leaf_prob`` (0.75), else
an operator; a node at depth ``max_depth`` is always a leaf, so a tree has at
most ``max_depth`` levels (the LRA generator numbers its root 1 as well). A
leaf is a digit 0–9 (uniform); an operator is uniform over ``[MIN``, ``[MAX``,
``[MED`` (median, floored), ``[SM`` (sum mod 10) with a number of children
uniform in ``{min_args..max_args}`` = {2..10}.

Representation: a leaf is a Python ``int``; an operator node is a tuple
``(op, child, child, ...)`` whose ``op`` is the operator's token string, e.g.
``("[MAX", 2, ("[SM", 3, 9))`` ↔ ``[MAX 2 [SM 3 9 ] ]`` → 2. Nested tuples are
hashable and compare by value.

Length counts operators, digits and closing brackets (parentheses are not
tokens here), i.e. the number of tokens: LRA keeps trees with
500 < length < 2000.

Sampling is reproducible: random draws are taken from the ``Generator`` in
blocks (one uniform per decision; far faster than one numpy call per node),
so a seed fixes the tree. Dataset example ``i`` of split ``s`` uses
``np.random.default_rng([seed, s, i])`` and rejection-samples until its length
is in range, so an example never depends on how many workers generated it.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import multiprocessing
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from seqjax.errors import ConfigError

PAD, UNK = "<pad>", "<unk>"
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "]"
DIGITS = tuple(str(d) for d in range(10))
# Fixed list: ids are positions in this tuple and never depend on set order.
VOCAB = (PAD, UNK) + DIGITS + OPERATORS + (CLOSE,)
VOCAB_SIZE = len(VOCAB)  # 17
PAD_ID, UNK_ID = 0, 1
DIGIT_IDS = tuple(range(2, 12))  # id of digit d is d + 2
OP_IDS = tuple(range(12, 16))
CLOSE_ID = 16
NUM_CLASSES = 10
TOKEN_TO_ID = {tok: i for i, tok in enumerate(VOCAB)}
_DIGIT_VALUE = {tok: d for d, tok in enumerate(DIGITS)}

DEFAULT_LENGTH_RANGE = (500, 2000)
TREE_DEFAULTS = dict(max_depth=10, leaf_prob=0.75, min_args=2, max_args=10)
OFFICIAL_FILES = {"train": "basic_train.tsv", "validation": "basic_val.tsv", "test": "basic_test.tsv"}

# Most candidates per worker task: large enough to amortise pickling, small
# enough that a progress bar moves and extra rounds stay short.
_CHUNK = 256
# A hopeless length range (e.g. no tree has such a length) must fail, not spin.
_MAX_TRIES_PER_EXAMPLE = 1_000_000


# --------------------------------------------------------------------------- checks


def check_tree_params(*, max_depth: int, leaf_prob: float, min_args: int, max_args: int) -> None:
    """Raises :class:`ConfigError` unless the tree parameters are usable.

    Args:
      max_depth: deepest level (root = 1); an int >= 1.
      leaf_prob: probability that a node above ``max_depth`` is a leaf, in [0, 1].
      min_args: fewest children of an operator; an int >= 1.
      max_args: most children of an operator; an int >= ``min_args``.
    """
    if not _is_int(max_depth) or max_depth < 1:
        raise ConfigError(f"max_depth={max_depth!r} must be an integer >= 1")
    if not isinstance(leaf_prob, (int, float)) or isinstance(leaf_prob, bool) or not 0.0 <= leaf_prob <= 1.0:
        raise ConfigError(f"leaf_prob={leaf_prob!r} must be a number in [0, 1]")
    if not _is_int(min_args) or min_args < 1:
        raise ConfigError(f"min_args={min_args!r} must be an integer >= 1")
    if not _is_int(max_args) or max_args < min_args:
        raise ConfigError(f"max_args={max_args!r} must be an integer >= min_args={min_args!r}")


def check_length_range(min_length: int, max_length: int) -> None:
    """Raises :class:`ConfigError` unless some integer length lies strictly between the bounds.

    Args:
      min_length: exclusive lower bound; an int >= 0.
      max_length: exclusive upper bound; an int >= ``min_length + 2``.
    """
    if not _is_int(min_length) or min_length < 0:
        raise ConfigError(f"min_length={min_length!r} must be an integer >= 0")
    if not _is_int(max_length) or max_length < min_length + 2:
        raise ConfigError(f"max_length={max_length!r} must be an integer >= min_length + 2 = {min_length + 2}"
                          " (bounds are exclusive)")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# --------------------------------------------------------------------------- trees


class _Uniforms:
    """Uniform [0, 1) floats drawn from a numpy ``Generator`` in blocks.

    Attributes:
      rng: the source generator (advanced a block at a time).
    """

    __slots__ = ("rng", "_buf", "_pos")

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self._buf: list[float] = []
        self._pos = 0

    def __call__(self) -> float:
        if self._pos == len(self._buf):
            self._buf = self.rng.random(512).tolist()
            self._pos = 0
        u = self._buf[self._pos]
        self._pos += 1
        return u


class _TooLong(Exception):
    """Raised inside the sampler once a tree passes its token budget."""


def _grow(draw: _Uniforms, depth: int, p: dict, count: list, budget: float):
    # ``count[0]`` is the running token count, so a tree that can no longer
    # fit is abandoned early instead of being grown to thousands of nodes.
    if depth >= p["max_depth"] or draw() < p["leaf_prob"]:
        count[0] += 1
        if count[0] > budget:
            raise _TooLong
        return int(draw() * 10)
    op = OPERATORS[int(draw() * 4)]
    k = p["min_args"] + int(draw() * (p["max_args"] - p["min_args"] + 1))
    count[0] += 2  # the operator and its closing bracket
    if count[0] > budget:
        raise _TooLong
    return (op,) + tuple(_grow(draw, depth + 1, p, count, budget) for _ in range(k))


def sample_tree(rng: np.random.Generator, *, max_depth: int = 10, leaf_prob: float = 0.75, min_args: int = 2,
                max_args: int = 10):
    """Samples one ListOps tree (no length limit).

    Args:
      rng: numpy generator; it is advanced in blocks of uniforms, so later
        draws from it do not continue exactly where the tree stopped.
      max_depth: deepest level; the root is level 1 and level ``max_depth``
        holds leaves only.
      leaf_prob: probability that a node above ``max_depth`` is a leaf.
      min_args: fewest children of an operator.
      max_args: most children of an operator (uniform in between, inclusive).

    Returns:
      A tree: an ``int`` digit, or a tuple ``(op, child, ...)`` (see module docstring).
    """
    p = dict(max_depth=max_depth, leaf_prob=leaf_prob, min_args=min_args, max_args=max_args)
    check_tree_params(**p)
    return _grow(_Uniforms(rng), 1, p, [0], float("inf"))


def sample_tree_in_range(rng: np.random.Generator, *, min_length: int = 500, max_length: int = 2000,
                         max_depth: int = 10, leaf_prob: float = 0.75, min_args: int = 2, max_args: int = 10):
    """Rejection-samples a tree with ``min_length < length < max_length``.

    Args:
      rng: numpy generator (consumed in blocks).
      min_length: exclusive lower bound on the token count.
      max_length: exclusive upper bound on the token count.
      max_depth, leaf_prob, min_args, max_args: as in :func:`sample_tree`.

    Returns:
      A tree whose :func:`tree_length` is strictly between the bounds.
    """
    p = dict(max_depth=max_depth, leaf_prob=leaf_prob, min_args=min_args, max_args=max_args)
    check_tree_params(**p)
    check_length_range(min_length, max_length)
    draw = _Uniforms(rng)
    for _ in range(_MAX_TRIES_PER_EXAMPLE):
        count = [0]
        try:
            tree = _grow(draw, 1, p, count, max_length - 1)
        except _TooLong:
            continue
        if count[0] > min_length:
            return tree
    raise RuntimeError(f"no tree with {min_length} < length < {max_length} in {_MAX_TRIES_PER_EXAMPLE} tries "
                       f"(max_depth={max_depth}, min_args={min_args}, max_args={max_args}, leaf_prob={leaf_prob})")


def linearize(tree) -> list[str]:
    """The token strings of a tree in prefix order, e.g. ``['[MAX', '2', '9', ']']``.

    Args:
      tree: an ``int`` digit or ``(op, child, ...)`` tuple.

    Returns:
      List of token strings (no parentheses).
    """
    out: list[str] = []
    stack = [tree]
    # Iterative so deep (hand-made) trees cannot hit the recursion limit.
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            out.append(node[0])
            stack.append(CLOSE)
            stack.extend(reversed(node[1:]))
        elif isinstance(node, str):
            out.append(node)
        else:
            out.append(DIGITS[node])
    return out


def tree_to_ids(tree) -> np.ndarray:
    """The int32 token ids of a tree (``encode(linearize(tree))``)."""
    return encode(linearize(tree))


def tree_length(tree) -> int:
    """LRA length: operators + digits + closing brackets (= number of tokens).

    Args:
      tree: an ``int`` digit or ``(op, child, ...)`` tuple.

    Returns:
      The token count.
    """
    if isinstance(tree, tuple):
        return 2 + sum(tree_length(c) for c in tree[1:])
    return 1


# --------------------------------------------------------------------------- tokens


def encode(tokens) -> np.ndarray:
    """Token strings → int32 ids; strings outside :data:`VOCAB` map to ``UNK_ID``.

    Args:
      tokens: a sequence of token strings, or one space-separated string.

    Returns:
      int32 array of ids, same length as the token sequence.
    """
    if isinstance(tokens, str):
        tokens = tokens.split()
    return np.fromiter((TOKEN_TO_ID.get(t, UNK_ID) for t in tokens), dtype=np.int32, count=len(tokens))


def decode(ids, *, strip_pad: bool = False) -> list[str]:
    """Ids → token strings (inverse of :func:`encode` for in-vocabulary tokens).

    Args:
      ids: sequence or array of integer ids in ``[0, VOCAB_SIZE)``.
      strip_pad: drop ``PAD_ID`` entries.

    Returns:
      List of token strings.
    """
    arr = np.asarray(ids).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
        raise ConfigError(f"ids must lie in [0, {VOCAB_SIZE}); got min {arr.min()}, max {arr.max()}")
    return [VOCAB[i] for i in arr.tolist() if not (strip_pad and i == PAD_ID)]


def _reduce(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[SM":
        return sum(args) % 10
    s = sorted(args)
    n = len(s)
    # Median of an even count is the mean of the middle two, floored (digits
    # are >= 0, so // equals floor and int() truncation alike).
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2


def evaluate(tokens) -> int:
    """Evaluates a linear token sequence with a stack (no tree needed).

    Args:
      tokens: either token strings (a list, or one space-separated string;
        ``(``, ``)`` and ``<pad>`` are skipped, so raw LRA ``Source`` text
        works), or integer ids (a numpy integer array or a list of ints;
        ``PAD_ID`` entries are skipped, so padded model inputs work).

    Returns:
      The label, an int in 0..9.

    Raises:
      ConfigError: on an unknown token, an operator without arguments, an
        unbalanced bracket, or anything but exactly one top-level value.
    """
    if isinstance(tokens, str):
        tokens = tokens.split()
    is_ids = tokens.dtype.kind in "iu" if isinstance(tokens, np.ndarray) else (
        len(tokens) > 0 and not isinstance(tokens[0], str))
    if is_ids:
        ids = np.asarray(tokens).reshape(-1).tolist()
        if any(not 0 <= i < VOCAB_SIZE for i in ids):
            raise ConfigError(f"token ids must lie in [0, {VOCAB_SIZE})")
        tokens = [VOCAB[i] for i in ids if i != PAD_ID]
    frames: list[tuple[str, list[int]]] = []  # open operators with their values so far
    result: list[int] = []  # top-level values (a valid expression has exactly one)
    for pos, tok in enumerate(tokens):
        if tok in ("(", ")", PAD):
            continue
        if tok in _DIGIT_VALUE:
            (frames[-1][1] if frames else result).append(_DIGIT_VALUE[tok])
        elif tok in OPERATORS:
            frames.append((tok, []))
        elif tok == CLOSE:
            if not frames:
                raise ConfigError(f"unbalanced ']' at token {pos}")
            op, args = frames.pop()
            if not args:
                raise ConfigError(f"operator {op} closed without arguments at token {pos}")
            (frames[-1][1] if frames else result).append(_reduce(op, args))
        else:
            raise ConfigError(f"unknown token {tok!r} at position {pos}; allowed: {', '.join(VOCAB[2:])}, (, )")
    if frames:
        raise ConfigError(f"{len(frames)} operator(s) not closed")
    if len(result) != 1:
        raise ConfigError(f"expression has {len(result)} top-level values; expected exactly 1")
    return result[0]


def label_distribution(labels) -> np.ndarray:
    """Fraction of each label 0..9.

    Args:
      labels: integer labels in 0..9 (any shape, non-empty).

    Returns:
      float64 array of shape ``(10,)`` summing to 1.
    """
    arr = np.asarray(labels).reshape(-1)
    if arr.size == 0 or arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= NUM_CLASSES:
        raise ConfigError("labels must be a non-empty array of integers in 0..9")
    return np.bincount(arr, minlength=NUM_CLASSES) / arr.size


# --------------------------------------------------------------------------- datasets


def _key(ids: np.ndarray) -> bytes:
    # A 128-bit digest stands in for the token string: equal trees have equal
    # tokens (prefix notation is unambiguous), and a digest keeps the seen-set
    # small for 100k long sequences; a collision (p ~ 1e-29) is not a concern.
    return hashlib.blake2b(ids.astype(np.uint8).tobytes(), digest_size=16).digest()


def _mp_context():
    # fork is the only start method that works from a script without an
    # ``if __name__ == "__main__"`` guard, but forking a process that has
    # imported JAX (multithreaded) can deadlock: then spawn, which re-imports
    # the main module (the caller needs the guard; pytest and ``python -m``
    # entrypoints with the guard are fine). Either way the data are the same.
    if "jax" not in sys.modules and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _draw_chunk(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates ``start..stop-1`` of one split (top level so processes can pickle it)."""
    seed, split_id, start, stop, lengths, params = args
    flat, sizes, labels = [], [], []
    for i in range(start, stop):
        tree = sample_tree_in_range(np.random.default_rng([seed, split_id, i]), min_length=lengths[0],
                                    max_length=lengths[1], **params)
        tokens = linearize(tree)
        flat.append(encode(tokens).astype(np.uint8))  # vocab has 17 ids: uint8 halves pickling 4x
        sizes.append(len(tokens))
        labels.append(evaluate(tokens))
    return np.concatenate(flat), np.asarray(sizes, np.int64), np.asarray(labels, np.int32)


def iter_dataset(num_examples: int, *, seed: int = 0, split_id: int = 0, min_length: int = 500,
                 max_length: int = 2000, max_depth: int = 10, leaf_prob: float = 0.75, min_args: int = 2,
                 max_args: int = 10, seen: set | None = None, num_workers: int = 1, progress: bool = False,
                 desc: str = "listops") -> Iterator[tuple[int, np.ndarray, int]]:
    """Yields the first ``num_examples`` unique trees of a split, in candidate order.

    Candidate ``i`` is the first in-range tree from ``np.random.default_rng([seed,
    split_id, i])``; a candidate whose tokens equal an earlier kept one (or one
    in ``seen``) is skipped and more candidates are drawn. The output depends
    only on the arguments and ``seen``, never on ``num_workers``.

    Args:
      num_examples: how many unique trees to yield (>= 0).
      seed: dataset seed.
      split_id: stream id of the split (the builder uses train 0, validation 1, test 2).
      min_length, max_length: exclusive bounds on the token count.
      max_depth, leaf_prob, min_args, max_args: as in :func:`sample_tree`.
      seen: keys of trees to exclude; updated in place with the yielded trees'
        keys (use one set across splits to keep them disjoint).
      num_workers: processes; <= 1 generates in this process. With JAX
        imported, workers are spawned, so a calling script needs an
        ``if __name__ == "__main__":`` guard.
      progress: show a tqdm bar.
      desc: the bar's label.

    Yields:
      ``(candidate_index, ids, label)``: int candidate index, int32 ids, int label.
    """
    params = dict(max_depth=max_depth, leaf_prob=leaf_prob, min_args=min_args, max_args=max_args)
    check_tree_params(**params)
    check_length_range(min_length, max_length)
    if not _is_int(num_examples) or num_examples < 0:
        raise ConfigError(f"num_examples={num_examples!r} must be an integer >= 0")
    seen = set() if seen is None else seen
    if num_examples == 0:
        return
    from tqdm import tqdm

    workers = max(1, int(num_workers))
    # Small requests get small chunks (a chunk of default-length trees takes
    # ~1 s); chunking never changes the data, since candidate i is seeded by i.
    chunk = min(_CHUNK, -(-num_examples // workers))

    def task(c: int):
        return (seed, split_id, c * chunk, (c + 1) * chunk, (min_length, max_length), params)

    executor = None
    if workers > 1:
        executor = cf.ProcessPoolExecutor(workers, mp_context=_mp_context())
    window: deque = deque()
    next_chunk, kept, drawn = 0, 0, 0
    bar = tqdm(total=num_examples, desc=desc, unit="tree", disable=not progress)
    try:
        while kept < num_examples:
            # Keep the pool busy a few chunks ahead (but not far past the
            # request: replacements for duplicates are rare); consume in order.
            while executor is not None and len(window) < 2 * workers and (
                    next_chunk * chunk < num_examples or not window):
                window.append(executor.submit(_draw_chunk, task(next_chunk)))
                next_chunk += 1
            if executor is None:
                flat, sizes, labels = _draw_chunk(task(next_chunk))
                first = next_chunk * chunk
                next_chunk += 1
            else:
                first = (next_chunk - len(window)) * chunk
                flat, sizes, labels = window.popleft().result()
            offsets = np.concatenate([[0], np.cumsum(sizes)])
            for j in range(len(sizes)):
                ids = flat[offsets[j]:offsets[j + 1]]
                key = _key(ids)
                drawn += 1
                if key in seen:
                    continue
                seen.add(key)
                kept += 1
                bar.update(1)
                yield first + j, ids.astype(np.int32), int(labels[j])
                if kept == num_examples:
                    break
            if kept < num_examples and drawn > 10 * num_examples + 10_000:
                raise RuntimeError(f"only {kept} unique trees among {drawn} candidates; the length range "
                                   f"({min_length}, {max_length}) admits too few distinct trees")
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def sample_dataset(num_examples: int, *, seed: int = 0, split_id: int = 0, min_length: int = 500,
                   max_length: int = 2000, max_depth: int = 10, leaf_prob: float = 0.75, min_args: int = 2,
                   max_args: int = 10, seen: set | None = None, num_workers: int = 1,
                   progress: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    """Draws ``num_examples`` unique in-range trees (see :func:`iter_dataset`).

    Args:
      num_examples: how many trees.
      seed: dataset seed.
      split_id: stream id of the split.
      min_length, max_length: exclusive bounds on the token count (LRA: 500, 2000).
      max_depth, leaf_prob, min_args, max_args: as in :func:`sample_tree`.
      seen: keys to exclude, updated in place.
      num_workers: processes (the result does not depend on it).
      progress: show a tqdm bar.

    Returns:
      ``(inputs, labels)``: a list of int32 id arrays and an int32 array of labels.
    """
    rows = list(iter_dataset(num_examples, seed=seed, split_id=split_id, min_length=min_length,
                             max_length=max_length, max_depth=max_depth, leaf_prob=leaf_prob, min_args=min_args,
                             max_args=max_args, seen=seen, num_workers=num_workers, progress=progress))
    return [r[1] for r in rows], np.asarray([r[2] for r in rows], np.int32)


# --------------------------------------------------------------------------- official release


def read_official_tsv(path) -> tuple[list[np.ndarray], np.ndarray]:
    """Reads one LRA release ListOps file (``basic_{train,val,test}.tsv``).

    The file has a header row ``Source<TAB>Target``; ``Source`` is the
    space-separated expression with parentheses (``( ( [MAX 2 9 ] ) )``),
    which are dropped; ``Target`` is the label.

    Args:
      path: path of the TSV file.

    Returns:
      ``(inputs, labels)``: int32 id arrays (in file order) and int32 labels.

    Raises:
      ConfigError: on a row without exactly two tab-separated fields or a
        label outside 0..9 (message names file and line).
    """
    path = Path(path)
    inputs, labels = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise ConfigError(f"{path}:{lineno}: expected 2 tab-separated fields (Source, Target), "
                                  f"got {len(fields)}")
            if lineno == 1 and fields[0].strip() == "Source":
                continue  # header row
            try:
                label = int(fields[1].strip())
            except ValueError:
                label = -1
            if not 0 <= label < NUM_CLASSES:
                raise ConfigError(f"{path}:{lineno}: Target={fields[1]!r} must be an integer in 0..9")
            inputs.append(encode([t for t in fields[0].split() if t not in ("(", ")")]))
            labels.append(label)
    return inputs, np.asarray(labels, np.int32)


def missing_official_files(directory) -> list[str]:
    """Names of the official TSVs absent from ``directory`` (all three when it does not exist)."""
    directory = Path(directory)
    return [name for name in OFFICIAL_FILES.values() if not (directory / name).is_file()]
