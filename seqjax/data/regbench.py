"""RegBench: random regular languages for in-context language learning (numpy only).

Akyürek et al. 2024, "In-Context Language Learning: Architectures and
Algorithms". Each example is one prompt of strings from one random DFA; a
model must infer the language from the prompt and predict legal next letters.

Vocabulary (20 tokens, fixed ids): pad ``"."`` = 0, letters ``a``..``r`` =
1..18, separator ``"|"`` = 19.

DFAs (:class:`DFA`) are transition tables ``int32 [num_states, 20]`` with −1
where there is no edge; state 0 is the start and every state accepts, so a
string is in the language iff its walk from state 0 never hits a missing
edge. :func:`sample_dfa` draws the paper's random graph, then minimises
(Moore partition refinement, missing edges going to an implicit dead state),
trims unreachable states and renumbers states canonically (BFS from 0,
letters in id order). Minimal DFAs are unique up to renaming of states, so
after canonical renumbering two DFAs accept the same language iff their
tables are equal: :meth:`DFA.key` is the dedup key.

Every sampled state has 1–3 outgoing edges into real states and
minimisation keeps at least one edge per state, so walks on sampled DFAs
never get stuck; :func:`sample_prompt` still stops a string early at a state
without outgoing edges (possible in hand-made DFAs) and documents it.

Metrics (:func:`dfa_metrics`), shared by the ICLL task and the n-gram
baselines: at each position whose target is a letter ("scored"), the legal
next letters are those with an edge from the DFA state reached by the
letters since the last ``"|"`` (state 0 right after ``"|"``).
accuracy = the greedy (argmax) token is legal; TVD = ½ Σ_v |p(v) − p_DFA(v)|
over all 20 tokens, p_DFA uniform over the legal letters.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from seqjax.errors import ConfigError

PAD = 0
SEP = 19
LETTERS = "abcdefghijklmnopqr"
VOCAB = (".",) + tuple(LETTERS) + ("|",)
VOCAB_SIZE = len(VOCAB)  # 20
LETTER_IDS = np.arange(1, 1 + len(LETTERS), dtype=np.int32)  # 1..18
_TOKEN_ID = {ch: i for i, ch in enumerate(VOCAB)}


def encode(text: str) -> np.ndarray:
    """Characters → int32 token ids (e.g. ``"ab|c"`` → ``[1, 2, 19, 3]``).

    Args:
      text: characters from ``VOCAB``.

    Returns:
      int32 ``[len(text)]``.
    """
    try:
        return np.array([_TOKEN_ID[ch] for ch in text], dtype=np.int32)
    except KeyError as e:
        raise ConfigError(f"text={text!r} has character {e.args[0]!r}; allowed: {''.join(VOCAB)}") from None


def decode(tokens) -> str:
    """Token ids → characters (inverse of :func:`encode`).

    Args:
      tokens: 1-D ints in ``[0, 20)``.

    Returns:
      The string.
    """
    return "".join(VOCAB[int(t)] for t in np.asarray(tokens).reshape(-1))


def is_letter(tokens) -> np.ndarray:
    """Boolean mask of letter tokens (ids 1..18).

    Args:
      tokens: any int array.

    Returns:
      bool array of the same shape.
    """
    tokens = np.asarray(tokens)
    return (tokens >= 1) & (tokens <= len(LETTERS))


@dataclasses.dataclass(frozen=True, eq=False)
class DFA:
    """A deterministic finite automaton over the RegBench vocabulary; all states accept.

    Equality and hashing are by transition table, so after canonicalisation
    (what :func:`sample_dfa` returns) equal DFAs mean equal languages.

    Attributes:
      transitions: int32 ``[num_states, 20]``; ``transitions[s, v]`` is the
        next state on token ``v`` or −1 when there is no edge. Only letter
        columns (1..18) may hold edges. State 0 is the start. Stored as a
        read-only copy.
    """

    transitions: np.ndarray

    def __post_init__(self):
        t = np.array(self.transitions, dtype=np.int32, copy=True)
        if t.ndim != 2 or t.shape[1] != VOCAB_SIZE or t.shape[0] < 1:
            raise ConfigError(f"dfa.transitions has shape {t.shape}; allowed: [num_states >= 1, {VOCAB_SIZE}]")
        if (t < -1).any() or (t >= t.shape[0]).any():
            raise ConfigError(f"dfa.transitions has targets outside [-1, {t.shape[0]}); allowed: -1 or a state id")
        if (t[:, [PAD, SEP]] != -1).any():
            raise ConfigError("dfa.transitions has edges on pad/separator; allowed: edges on letters 1..18 only")
        t.flags.writeable = False
        object.__setattr__(self, "transitions", t)

    @property
    def num_states(self) -> int:
        """Number of states."""
        return int(self.transitions.shape[0])

    @property
    def alphabet(self) -> np.ndarray:
        """Sorted letter ids that label at least one edge."""
        return np.flatnonzero((self.transitions >= 0).any(axis=0)).astype(np.int32)

    def key(self) -> bytes:
        """Hashable identity of the table (the dedup key for canonical DFAs)."""
        return self.transitions.tobytes()

    def __eq__(self, other):
        return isinstance(other, DFA) and self.transitions.shape == other.transitions.shape and self.key() == other.key()

    def __hash__(self):
        return hash(self.key())

    def accepts(self, tokens) -> bool:
        """Whether a string of letters is in the language (walk from 0 never misses an edge).

        Args:
          tokens: 1-D letter ids.

        Returns:
          True iff every step has an edge.
        """
        state = 0
        for v in np.asarray(tokens).reshape(-1):
            state = int(self.transitions[state, int(v)])
            if state < 0:
                return False
        return True


def _check_range(field: str, value, lo_min: int, hi_max: int | None = None) -> tuple[int, int]:
    """Validates an inclusive ``(lo, hi)`` range; returns it as ints."""
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field}={value!r} must be a pair (lo, hi) of ints") from None
    bound = f"{lo_min} <= lo <= hi" + (f" <= {hi_max}" if hi_max is not None else "")
    if lo < lo_min or hi < lo or (hi_max is not None and hi > hi_max):
        raise ConfigError(f"{field}={value!r} is not allowed; allowed: {bound}")
    return lo, hi


def trim(transitions: np.ndarray) -> np.ndarray:
    """Drops states unreachable from state 0 (keeps relative order; 0 stays 0).

    Args:
      transitions: int32 ``[num_states, 20]``, −1 = no edge.

    Returns:
      The table restricted to reachable states, targets renumbered.
    """
    t = np.asarray(transitions)
    seen = np.zeros(t.shape[0], bool)
    seen[0] = True
    stack = [0]
    while stack:
        s = stack.pop()
        for nxt in t[s][t[s] >= 0]:
            if not seen[nxt]:
                seen[nxt] = True
                stack.append(int(nxt))
    keep = np.flatnonzero(seen)
    new_id = np.full(t.shape[0] + 1, -1, np.int32)  # index −1 maps to −1
    new_id[keep] = np.arange(len(keep), dtype=np.int32)
    return new_id[t[keep]]


def minimize(transitions: np.ndarray) -> np.ndarray:
    """Moore partition refinement; all states accepting, missing edges → dead state.

    The partial table is completed with a dead, rejecting state (index n,
    looping to itself on every token). The dead state is the only rejecting
    one, so it never merges with a real state; classes other than the dead
    one become the states of the minimal DFA. States are then renumbered
    canonically (:func:`canonicalize`). The input should be trimmed.

    Args:
      transitions: int32 ``[n, 20]``, −1 = no edge.

    Returns:
      The canonical minimal table.
    """
    t = np.asarray(transitions)
    n = t.shape[0]
    full = np.where(t >= 0, t, n)
    full = np.concatenate([full, np.full((1, t.shape[1]), n, full.dtype)], axis=0)
    cls = np.zeros(n + 1, np.int64)
    cls[n] = 1  # accepting vs rejecting
    num = 2
    while True:
        # A state's signature: its class and the classes of its successors.
        sig = np.concatenate([cls[:, None], cls[full]], axis=1)
        _, new_cls = np.unique(sig, axis=0, return_inverse=True)
        new_cls = new_cls.reshape(-1)
        new_num = int(new_cls.max()) + 1
        cls = new_cls
        if new_num == num:
            break
        num = new_num
    dead = cls[n]
    # Quotient: the representative's edges, dead class → −1.
    quotient = np.full((num, t.shape[1]), -1, np.int64)
    for s in range(n):
        row = cls[full[s]]
        quotient[cls[s]] = np.where(row == dead, -1, row)
    # Drop the dead class and renumber the rest.
    keep = np.array([c for c in range(num) if c != dead])
    remap = np.full(num + 1, -1, np.int64)
    remap[keep] = np.arange(len(keep))
    q = remap[quotient[keep]]
    start = remap[cls[0]]
    return canonicalize(q, start=int(start))


def canonicalize(transitions: np.ndarray, start: int = 0) -> np.ndarray:
    """Renumbers states in BFS order from ``start``, exploring letters in id order.

    Unreachable states are dropped. Two tables that differ only by a renaming
    of states map to the same table.

    Args:
      transitions: ``[n, 20]`` ints, −1 = no edge.
      start: the start state.

    Returns:
      int32 ``[m, 20]`` with the start state as 0.
    """
    t = np.asarray(transitions)
    order = {start: 0}
    queue = collections.deque([start])
    while queue:
        s = queue.popleft()
        for v in range(t.shape[1]):
            nxt = int(t[s, v])
            if nxt >= 0 and nxt not in order:
                order[nxt] = len(order)
                queue.append(nxt)
    old = sorted(order, key=order.get)
    out = np.full((len(old), t.shape[1]), -1, np.int32)
    for s in old:
        row = t[s]
        out[order[s]] = [order[int(x)] if x >= 0 else -1 for x in row]
    return out


def sample_graph(rng: np.random.Generator, *, num_states=(4, 12), alphabet_size=(4, 18),
                 out_edges=(1, 3)) -> tuple[np.ndarray, np.ndarray]:
    """The paper's random transition graph, before minimisation.

    Args:
      rng: numpy generator.
      num_states: inclusive range of the number of states.
      alphabet_size: inclusive range of the alphabet size (letters drawn
        without replacement from the 18).
      out_edges: inclusive range of outgoing edges per state; each state's
        edges use distinct letters and go to distinct other states (no self
        loops), so the count is capped at min(alphabet, num_states − 1).

    Returns:
      ``(transitions int32 [n, 20], alphabet int32 [size])``.
    """
    s_lo, s_hi = _check_range("num_states", num_states, 2)
    a_lo, a_hi = _check_range("alphabet_size", alphabet_size, 1, len(LETTERS))
    e_lo, e_hi = _check_range("out_edges", out_edges, 1)
    n = int(rng.integers(s_lo, s_hi + 1))
    size = int(rng.integers(a_lo, a_hi + 1))
    alphabet = np.sort(rng.choice(LETTER_IDS, size=size, replace=False)).astype(np.int32)
    t = np.full((n, VOCAB_SIZE), -1, np.int32)
    for s in range(n):
        k = min(int(rng.integers(e_lo, e_hi + 1)), size, n - 1)
        letters = rng.choice(alphabet, size=k, replace=False)
        others = np.array([x for x in range(n) if x != s])
        t[s, letters] = rng.choice(others, size=k, replace=False)
    return t, alphabet


def sample_dfa(rng: np.random.Generator, *, num_states=(4, 12), alphabet_size=(4, 18), out_edges=(1, 3)) -> DFA:
    """Samples a random DFA as in the paper, then minimises, trims and canonicalises it.

    Args:
      rng: numpy generator.
      num_states, alphabet_size, out_edges: ranges of :func:`sample_graph`.

    Returns:
      The canonical minimal :class:`DFA` (often fewer states than sampled).
    """
    t, _ = sample_graph(rng, num_states=num_states, alphabet_size=alphabet_size, out_edges=out_edges)
    return DFA(minimize(trim(t)))


def sample_prompt(dfa: DFA, rng: np.random.Generator, *, num_strings=(10, 19), string_length=(1, 49),
                  max_chars: int = 4096) -> np.ndarray:
    """Samples a prompt: random walks from state 0 joined by ``"|"``.

    Each string has a length drawn uniformly from ``string_length``; each step
    picks uniformly among the current state's outgoing letters. A walk that
    reaches a state with no outgoing edge stops early (cannot happen for DFAs
    from :func:`sample_dfa`, see the module docstring). The joined prompt is
    cut to ``max_chars`` tokens (the paper's 4,096-character cap), which may
    end it mid-string.

    Args:
      dfa: the language.
      rng: numpy generator.
      num_strings: inclusive range of the number of strings.
      string_length: inclusive range of each string's length.
      max_chars: cap on the prompt length in tokens (separators count).

    Returns:
      int32 ``[prompt_length]`` token ids.
    """
    m_lo, m_hi = _check_range("num_strings", num_strings, 1)
    l_lo, l_hi = _check_range("string_length", string_length, 1)
    if not isinstance(max_chars, (int, np.integer)) or max_chars < 1:
        raise ConfigError(f"max_chars={max_chars!r} must be an int >= 1")
    t = dfa.transitions
    out = []
    for i in range(int(rng.integers(m_lo, m_hi + 1))):
        if i:
            out.append(SEP)
        state = 0
        for _ in range(int(rng.integers(l_lo, l_hi + 1))):
            legal = np.flatnonzero(t[state] >= 0)
            if len(legal) == 0:
                break
            v = int(legal[rng.integers(len(legal))])
            out.append(v)
            state = int(t[state, v])
        if len(out) >= max_chars:
            break
    return np.asarray(out[:max_chars], dtype=np.int32)


def states_after(transitions: np.ndarray, tokens) -> np.ndarray:
    """The DFA state after each prefix ``tokens[:i+1]`` (−1 where undefined).

    The state restarts at 0 after ``"|"``; after a missing edge or a pad the
    state is −1 until the next ``"|"``.

    Args:
      transitions: ``[num_states, 20]`` table.
      tokens: 1-D token ids.

    Returns:
      int32 ``[len(tokens)]``.
    """
    t = np.asarray(transitions)
    tokens = np.asarray(tokens).reshape(-1)
    out = np.empty(len(tokens), np.int32)
    state = 0
    for i, v in enumerate(tokens):
        v = int(v)
        if v == SEP:
            state = 0
        elif v == PAD or state < 0:
            state = -1
        else:
            state = int(t[state, v])
        out[i] = state
    return out


def legal_next(dfa, tokens) -> np.ndarray:
    """Mask of the letters legal after each prefix ``tokens[:i+1]``.

    Args:
      dfa: a :class:`DFA` or its transition table.
      tokens: 1-D token ids (a prompt or a model input).

    Returns:
      bool ``[len(tokens), 20]``; only letter columns can be True; all False
      where the state is undefined (after a pad or an illegal letter).
    """
    t = dfa.transitions if isinstance(dfa, DFA) else np.asarray(dfa)
    st = states_after(t, tokens)
    mask = np.zeros((len(st), VOCAB_SIZE), bool)
    ok = st >= 0
    mask[ok] = t[st[ok]] >= 0
    return mask


def scored(targets) -> np.ndarray:
    """Which targets are scored: letters only (not ``"|"``, not pad).

    Args:
      targets: int array.

    Returns:
      bool array of the same shape.
    """
    return is_letter(targets)


def dfa_metrics(probs, inputs, targets, transitions, *, renormalize_letters: bool = False) -> dict:
    """Sums of DFA accuracy and TVD over the scored positions of ONE example.

    Args:
      probs: float ``[l, 20]`` next-token distributions (row i predicts
        ``targets[i]`` from ``inputs[:i+1]``); rows need not be normalised
        over letters: the model's full softmax is used as is.
      inputs: int ``[l]`` (may be padded; padded positions are not scored).
      targets: int ``[l]``.
      transitions: the example's DFA table ``[num_states, 20]``.
      renormalize_letters: compare the distribution restricted to letters
        and renormalised (off by default: mass on ``"|"``/pad counts as error).

    Returns:
      ``{"correct": float, "tvd": float, "count": int}`` sums over scored
      positions (divide by ``count`` for means).
    """
    probs = np.asarray(probs, np.float64)
    inputs = np.asarray(inputs).reshape(-1)
    targets = np.asarray(targets).reshape(-1)
    l = min(len(inputs), len(targets), len(probs))
    probs, inputs, targets = probs[:l], inputs[:l], targets[:l]
    legal = legal_next(transitions, inputs)
    # A scored target must itself be legal; an unscorable row (no legal
    # letter, only if the data and table disagree) is skipped.
    use = scored(targets) & legal.any(axis=1)
    if not use.any():
        return {"correct": 0.0, "tvd": 0.0, "count": 0}
    p = probs[use]
    lg = legal[use]
    if renormalize_letters:
        p = p * is_letter(np.arange(VOCAB_SIZE))[None]
        p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
    p_dfa = lg / lg.sum(axis=1, keepdims=True)
    tvd = 0.5 * np.abs(p - p_dfa).sum(axis=1)
    greedy = p.argmax(axis=1)  # ties → lowest id
    correct = lg[np.arange(len(greedy)), greedy]
    return {"correct": float(correct.sum()), "tvd": float(tvd.sum()), "count": int(use.sum())}


def make_dfas(seed: int, num_train: int, num_eval: int = 500, *, max_attempts: int | None = None,
              **sample_kwargs) -> tuple[list[DFA], list[DFA], list[DFA]]:
    """Disjoint, deduplicated train / validation / test DFA lists.

    The eval DFAs are drawn FIRST from the seed's stream, so for a fixed seed
    the validation/test sets are the same whatever ``num_train`` is, and a
    smaller train set is a prefix of a larger one (the paper's train-size
    sweep compares on one held-out set). ``num_eval`` is split in half:
    validation gets ``num_eval // 2``, test the rest.

    Args:
      seed: generator seed.
      num_train: number of distinct training DFAs.
      num_eval: number of distinct held-out DFAs (validation + test).
      max_attempts: cap on samples (default 50 × total + 1000).
      **sample_kwargs: ranges for :func:`sample_dfa`.

    Returns:
      ``(train, validation, test)`` lists of canonical DFAs, pairwise disjoint.

    Raises:
      ConfigError: the ranges do not give enough distinct languages.
    """
    for field, v in (("num_train", num_train), ("num_eval", num_eval)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"{field}={v!r} must be an int >= 0")
    total = int(num_train) + int(num_eval)
    max_attempts = max_attempts or 50 * total + 1000
    rng = np.random.default_rng(seed)
    seen: set[bytes] = set()
    dfas: list[DFA] = []
    attempts = 0
    while len(dfas) < total:
        if attempts >= max_attempts:
            raise ConfigError(f"num_train+num_eval={total} distinct DFAs not reached after {attempts} samples; "
                              f"allowed: fewer DFAs or wider sample ranges")
        attempts += 1
        dfa = sample_dfa(rng, **sample_kwargs)
        k = dfa.key()  # byte length encodes num_states, so no cross-size clashes
        if k not in seen:
            seen.add(k)
            dfas.append(dfa)
    evals, train = dfas[:num_eval], dfas[num_eval:]
    half = int(num_eval) // 2
    return train, evals[:half], evals[half:]


__all__ = [
    "DFA", "LETTERS", "LETTER_IDS", "PAD", "SEP", "VOCAB", "VOCAB_SIZE", "canonicalize", "decode", "dfa_metrics",
    "encode", "is_letter", "legal_next", "make_dfas", "minimize", "sample_dfa", "sample_graph", "sample_prompt", "scored",
    "states_after", "trim",
]
