"""Prove, for every text, that new WordPiece entries never lengthen an encoding nor change its [UNK]s.

Hugging Face WordPiece is greedy longest-match-first (GLM): inside a word it takes the longest vocabulary
piece that starts at the current position (a "##" continuation piece after the first one), and a word
where no piece matches becomes one [UNK]. GLM is not monotone in the vocabulary: adding "activates" to
BERT's vocabulary turns "activatescribe" from [activate, ##scribe] into [activates, ##cr, ##ibe], because
the text left after the new piece ("cribe") is not a piece while the text left after the old one
("scribe") is. Real BERT vocabularies are far from closed under suffixes, so each new entry needs a proof.

The proof is a game between two paths over the same word: P reads it with the base vocabulary, Q with
the extended one. They agree until Q takes a new entry t where P takes p, the longest base piece that is a
prefix of t (a base piece longer than t would also be Q's longest match). From there one path is behind
the other by a known text s: the path behind must read s, and its next piece is either
  - the longest piece that is a prefix of s (the text after s extends no longer piece), or
  - any piece longer than s that starts with s (the text after s continues it); then the other path is
    behind by the rest of that piece.
The paths are in step again when s is used up; from there they read the same text the same way until Q
takes a new entry again. The balance counts P's pieces minus Q's since the divergence: P's move +1, Q's
-1. An entry is safe when every play from its divergence gets back in step with balance >= 0 and the
path behind always has a piece (a path without one turns the whole word into [UNK] on one side only,
breaking G2). The text after s is chosen freely at every move, a superset of what real text can do (a
move may ignore that an earlier longest match ruled some continuations out), so "safe" holds for every
text and "unsafe" may be conservative.

Each s is a suffix of some piece, so the game graph is finite. The value of a state is the smallest
balance it can still reach in step: a shortest path to "in step" with edge weights +1 / -1, solved by
Bellman-Ford; a state that keeps falling (a negative cycle: Q behind without bound) is unsafe.

Safety is a property of the whole set, not of each entry: an entry can be safe only because another new
piece gives Q a short way through the text after it, and dropping that piece can break it. So the set that
is written (after the budget cut) is the set that is proved (`safe_entries`).
"""
from __future__ import annotations

import bisect
from typing import Iterable

_IN_STEP = ("", "")  # the target state
_P_BEHIND, _Q_BEHIND = "P", "Q"
_FALLING = -(1 << 30)  # value of a state that can fall without bound or leave a path without a piece
_MAX_ROUNDS = 256  # Bellman-Ford sweeps before a still-falling state is declared unbounded


class _Pieces:
    """A set of continuation piece strings with the two queries the game needs."""

    def __init__(self, pieces: Iterable[str]) -> None:
        self.set = set(pieces)
        self.sorted = sorted(self.set)
        self.longest = max(map(len, self.set), default=0)

    def longest_prefix(self, s: str) -> int:
        """Length of the longest piece that is a prefix of s (0 when none is)."""
        for k in range(min(len(s), self.longest), 0, -1):
            if s[:k] in self.set:
                return k
        return 0

    def extensions(self, s: str) -> list[str]:
        """Pieces longer than s that start with s."""
        lo = bisect.bisect_right(self.sorted, s)
        hi = bisect.bisect_left(self.sorted, s + "\U0010ffff", lo)
        return [u for u in self.sorted[lo:hi] if u.startswith(s)]


def _moves(state: tuple[str, str], base: _Pieces, extended: _Pieces) -> list[tuple[int, tuple[str, str]]]:
    """(weight, next state) of every move of the path behind; next state _IN_STEP, or None for no piece."""
    who, s = state
    pieces, weight = (base, 1) if who == _P_BEHIND else (extended, -1)
    other = _Q_BEHIND if who == _P_BEHIND else _P_BEHIND
    moves: list[tuple[int, tuple[str, str]]] = []
    k = pieces.longest_prefix(s)
    if k == 0:
        moves.append((weight, None))  # type: ignore[arg-type]
    else:
        moves.append((weight, _IN_STEP if k == len(s) else (who, s[k:])))
    for u in pieces.extensions(s):
        moves.append((weight, (other, u[len(s):])))
    return moves


def _values(starts: set[tuple[str, str]], base: _Pieces, extended: _Pieces) -> dict[tuple[str, str], int]:
    """Smallest balance each state reachable from `starts` can get back in step with (Bellman-Ford)."""
    graph: dict[tuple[str, str], list[tuple[int, tuple[str, str]]]] = {}
    todo = list(starts)
    while todo:
        state = todo.pop()
        if state in graph or state == _IN_STEP:
            continue
        graph[state] = _moves(state, base, extended)
        todo.extend(nxt for _, nxt in graph[state] if nxt is not None and nxt not in graph)
    inf = 1 << 40
    value = {state: inf for state in graph}
    value[_IN_STEP] = 0
    changed: set[tuple[str, str]] = set()
    for _ in range(_MAX_ROUNDS):
        changed = set()
        for state, moves in graph.items():
            best = min(w + value[nxt] if nxt is not None else _FALLING for w, nxt in moves)
            if best < value[state]:
                value[state] = max(best, _FALLING)
                changed.add(state)
        if not changed:
            break
    for state in changed:  # still falling after _MAX_ROUNDS sweeps: Q can fall behind without bound
        value[state] = _FALLING
    return value


def safe_entries(base_initial: Iterable[str], base_continuation: Iterable[str],
                 new: list[tuple[bool, str]], limit: int | None = None) -> list[bool]:
    """Choose the new WordPiece entries to write: at most `limit`, in order, all proved safe together.

    Args:
        base_initial: the base vocabulary's word-initial pieces (strings without the "##" prefix).
        base_continuation: its continuation pieces, without the prefix.
        new: (is_initial, piece without prefix) of each candidate entry, best first, none in the base.
        limit: the most entries to choose (None: no limit).

    Returns:
        One bool per candidate, True for the chosen ones. The chosen set is proved safe as a set (G2 and
        G3 for every text); it is found by dropping the entries found unsafe (first among all candidates,
        then among the first `limit` survivors) until a proof of the first `limit` survivors succeeds.
    """
    initial = _Pieces(base_initial)
    base = _Pieces(base_continuation)
    starts: list[tuple[str, str] | None] = []
    for is_initial, piece in new:
        k = (initial if is_initial else base).longest_prefix(piece)
        starts.append((_P_BEHIND, piece[k:]) if 0 < k < len(piece) else None)
    alive = [start is not None for start in starts]
    take = len(new) if limit is None else limit
    whole_pool = True  # round one proves every candidate (cheap pruning); then only what would be written
    while True:
        survivors = [i for i, on in enumerate(alive) if on]
        chosen = survivors if whole_pool else survivors[:take]
        extended = _Pieces(base.set | {new[i][1] for i in chosen if not new[i][0]})
        value = _values({starts[i] for i in chosen}, base, extended)  # type: ignore[misc]
        unsafe = [i for i in chosen if value[starts[i]] < 0]  # type: ignore[index]
        if not unsafe and len(chosen) <= take:
            picked = set(chosen)
            return [i in picked for i in range(len(new))]
        for i in unsafe:
            alive[i] = False
        whole_pool = False
