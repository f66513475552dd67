"""Pure-Python twin of igot._scoring_kernels: slow, readable, the test oracle.

Same greedy algorithms and tie-breaks as the Numba kernels (tests assert identical picks), written with
dicts, lists and heapq. Strings of tokens are compared exactly (bytes or tuples of base ids) rather than
by hash. A merge updates only the pairs of the words it touches, as the kernel does, so the two run the
same algorithm and their times compare (benchmarks/bench_scoring.py). The score formulas are written out
here too, not imported from the kernels: a wrong formula on either side then fails the comparison, and
tests/test_scoring.py checks these against the code length of an explicitly merged corpus. They keep the
kernels' order of operations, so that equal scores tie the same way on both sides.
"""
from __future__ import annotations

import heapq
import math
from collections import defaultdict
from typing import Callable, Sequence

import numpy as np

from igot._scoring_kernels import PHI_BPE, PHI_IG_ONLY  # the method codes, shared (not formulas)

SPEC_FLOOR = 3.0  # igot's φ: log2 of how much more often general text may use a candidate (see phi_builtin)


def _xlog2x(x: float) -> float:
    return x * math.log2(x) if x > 0.0 else 0.0


def information_gain(n: float, c_a: float, c_b: float, same: bool, total: float, vocab_size: int) -> float:
    """Bits by which merging n pairs (a, b) shortens the unigram code length T log2 T - sum_t c_t log2 c_t,
    minus 2 log2(V) for the entry: T and c_a, c_b lose n (c_a loses 2n when a == b), the new token has n."""
    gain = _xlog2x(total) - _xlog2x(total - n) + _xlog2x(n)
    if same:
        return gain + (_xlog2x(c_a - 2.0 * n) - _xlog2x(c_a)) - 2.0 * math.log2(vocab_size)
    return gain + (_xlog2x(c_a - n) - _xlog2x(c_a) + _xlog2x(c_b - n) - _xlog2x(c_b)) - 2.0 * math.log2(vocab_size)


def specificity(n_domain: float, total_domain: float, n_general: float, total_general: float, alpha: float) -> float:
    """log2 of the domain relative frequency over the general one, both add-alpha smoothed."""
    domain = math.log2((n_domain + alpha) / (total_domain + alpha))
    return domain - math.log2((n_general + alpha) / (total_general + alpha))


def phi_builtin(code: int, ig: float, spec: float, count: float, pieces: float) -> float:
    """φ of the built-in methods: the count (bpe), the gain (ig_only), or igot's count x w(s) with
    w = 1 for s >= -SPEC_FLOOR and 2^(s + SPEC_FLOOR) below."""
    if code == PHI_BPE:
        return count
    if code == PHI_IG_ONLY:
        return ig
    return count if spec >= -SPEC_FLOOR else count * 2.0 ** (spec + SPEC_FLOOR)


def word_pairs(seg: Sequence[int]) -> dict[tuple[int, int], int]:
    """Mergeable (a, b) pairs of one segmentation with multiplicity; a run of r equal tokens holds r // 2."""
    out: dict[tuple[int, int], int] = defaultdict(int)
    after_equal = False
    for a, b in zip(seg, seg[1:]):
        if a == b:
            if after_equal:
                after_equal = False
                continue
            after_equal = True
        else:
            after_equal = False
        out[(a, b)] += 1
    return out


def merge_word(seg: list[int], a: int, b: int, new: int) -> tuple[list[int], int]:
    """Leftmost non-overlapping (a, b) -> new; returns the new segmentation and the number of merges."""
    out, i, k = [], 0, 0
    while i < len(seg):
        if i + 1 < len(seg) and seg[i] == a and seg[i + 1] == b:
            out.append(new)
            i += 2
            k += 1
        else:
            out.append(seg[i])
            i += 1
    return out, k


class Corpus:
    """Words at their current segmentation, with pair counts and the words each pair occurs in."""

    def __init__(self, words: list[list[int]], weights: Sequence[float], raw: Sequence[int]):
        self.segs = [list(w) for w in words]
        self.weight = [float(x) for x in weights]
        self.raw = [int(x) for x in raw]
        self.tok: dict[int, float] = defaultdict(float)
        self.pair_count: dict[tuple[int, int], float] = defaultdict(float)
        self.pair_words: dict[tuple[int, int], set[int]] = defaultdict(set)
        for w, seg in enumerate(self.segs):
            for t in seg:
                self.tok[t] += self.weight[w]
            for p, k in word_pairs(seg).items():
                self.pair_count[p] += k * self.weight[w]
                self.pair_words[p].add(w)
        self.total = sum(len(s) * x for s, x in zip(self.segs, self.weight))
        self.total_raw = sum(len(s) * x for s, x in zip(self.segs, self.raw))

    def merge(self, a: int, b: int, new: int) -> tuple[set[tuple[int, int]], float, int]:
        """Apply (a, b) -> new in the words that hold the pair; returns (pairs whose count changed, weighted
        applications, raw applications). Only the pairs of those words are touched."""
        delta: dict[tuple[int, int], float] = defaultdict(float)
        applied_w, applied_raw = 0.0, 0
        for w in list(self.pair_words.get((a, b), ())):
            old = self.segs[w]
            seg, k = merge_word(old, a, b, new)
            if k == 0:  # the pair left this word at an earlier merge (the word sets are never pruned)
                continue
            for p, c in word_pairs(old).items():
                delta[p] -= c * self.weight[w]
            for p, c in word_pairs(seg).items():
                delta[p] += c * self.weight[w]
                self.pair_words[p].add(w)
            self.segs[w] = seg
            for t, d in ((a, -k), (b, -k), (new, k)):
                self.tok[t] += d * self.weight[w]
            self.total -= k * self.weight[w]
            self.total_raw -= k * self.raw[w]
            applied_w += k * self.weight[w]
            applied_raw += k * self.raw[w]
        changed = {p for p, d in delta.items() if d != 0.0}
        for p in changed:
            self.pair_count[p] += delta[p]
        return changed, applied_w, applied_raw


def select_pairs(
    words: list[list[int]],
    weights: Sequence[float],
    raw: Sequence[int],
    general: list[list[int]] | None,
    general_counts: Sequence[int] | None,
    heldout: list[list[int]] | None,
    heldout_counts: Sequence[int] | None,
    n_base: int,
    budget: int,
    code: int,
    phi: Callable | None,
    alpha: float,
    min_count: float,
    base_strings: Sequence[bytes] | None,
) -> dict:
    """Lazy-greedy pair merges, as igot._scoring_kernels.select_pairs (same arguments in list form)."""
    score_fn = phi if phi is not None else (lambda c, ig, s, n, p: phi_builtin(c, ig, s, n, p))
    dom = Corpus(words, weights, raw)
    gen = Corpus(general, general_counts, general_counts) if general is not None else None
    held = Corpus(heldout, heldout_counts, heldout_counts) if heldout is not None else None
    string = {t: (base_strings[t] if base_strings is not None else (t,)) for t in range(n_base)}
    n_pieces = {t: 1 for t in range(n_base)}
    existing = set(string.values())

    def score(p: tuple[int, int], n_vocab: int) -> tuple[float, float]:
        a, b = p
        n = dom.pair_count[p]
        ig = information_gain(n, dom.tok[a], dom.tok[b], a == b, dom.total, n_vocab)
        spec = 0.0
        if gen is not None:
            spec = specificity(n, dom.total, gen.pair_count.get(p, 0.0), gen.total, alpha)
        return float(score_fn(code, ig, spec, n, float(n_pieces[a] + n_pieces[b]))), spec, ig

    current: dict[tuple[int, int], float] = {}
    dead: set[tuple[int, int]] = set()
    heap: list[tuple[float, int, int]] = []  # (-score, a, b): heapq pops the best, ties to small (a, b)
    for p, n in dom.pair_count.items():
        if n >= min_count:
            current[p] = score(p, n_base)[0]
            heapq.heappush(heap, (-current[p], *p))
    out = {k: [] for k in ("merges", "scores", "specs", "gains", "counts_w", "counts_raw", "held_tokens")}
    while len(out["merges"]) < budget and heap:
        neg, a, b = heapq.heappop(heap)
        p, m = (a, b), len(out["merges"])
        if p in dead or -neg != current.get(p) or dom.pair_count[p] < min_count:
            continue
        fresh, spec, ig = score(p, n_base + m)
        if fresh < -neg:
            current[p] = fresh
            heapq.heappush(heap, (-fresh, a, b))
            continue
        dead.add(p)
        joined = string[a] + string[b]
        if joined in existing:
            continue
        new = n_base + m
        string[new] = joined
        existing.add(joined)
        n_pieces[new] = n_pieces[a] + n_pieces[b]
        changed, applied_w, applied_raw = dom.merge(a, b, new)
        if gen is not None:
            gen.merge(a, b, new)
        if held is not None:
            held.merge(a, b, new)
        for key, value in zip(out, ((a, b), fresh, spec, ig, applied_w, applied_raw,
                                    held.total_raw if held is not None else 0)):
            out[key].append(value)
        for q in changed:
            if q in dead or dom.pair_count[q] < min_count:
                current[q] = -np.inf
                continue
            current[q] = score(q, n_base + m + 1)[0]
            heapq.heappush(heap, (-current[q], *q))
    return out


def apply_merges(words: list[list[int]], merges: Sequence[tuple[int, int]], n_base: int) -> list[list[int]]:
    """Naive BPE: repeatedly merge the lowest-ranked adjacent pair, one occurrence at a time, leftmost first."""
    rank: dict[tuple[int, int], int] = {}
    for r, (a, b) in enumerate(merges):
        rank.setdefault((int(a), int(b)), r)
    out = []
    for word in words:
        seg = list(word)
        while True:
            ranked = [(rank[(x, y)], i) for i, (x, y) in enumerate(zip(seg, seg[1:])) if (x, y) in rank]
            if not ranked:
                break
            r, i = min(ranked)
            seg[i : i + 2] = [n_base + r]
        out.append(seg)
    return out


def select_terms(
    words: list[list[int]],
    weights: Sequence[float],
    raw: Sequence[int],
    heldout: list[list[int]] | None,
    heldout_counts: Sequence[int] | None,
    n_base: int,
    budget: int,
    max_n: int,
    min_count: float,
    base_strings: Sequence[bytes] | None,
) -> dict:
    """Whole-term greedy ("frequency"), as igot._scoring_kernels.select_terms, recomputing every score
    from scratch at each step (exact argmax; ties to the term seen first in the table, then the shorter)."""
    starts = [[True] * len(w) for w in words]  # a piece starts at this base position
    occurrences: dict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)
    first_pos: dict[tuple[int, ...], tuple[int, int]] = {}
    pos = 0
    for w, word in enumerate(words):
        for i in range(len(word)):
            for n in range(2, min(max_n, len(word) - i) + 1):
                term = tuple(word[i : i + n])
                occurrences[term].append((w, i))
                first_pos.setdefault(term, (pos + i, n))
        pos += len(word)

    def value(w: int, i: int, n: int) -> int:
        s = starts[w]
        if not s[i] or (i + n < len(s) and not s[i + n]):
            return 0
        return sum(s[i : i + n]) - 1

    string = {t: (base_strings[t] if base_strings is not None else (t,)) for t in range(n_base)}
    token_of = {v: k for k, v in string.items()}
    held = Corpus(heldout, heldout_counts, heldout_counts) if heldout is not None else None
    dead: set[tuple[int, ...]] = set()
    out = {k: [] for k in ("merges", "scores", "counts_raw", "held_tokens")}
    while len(out["merges"]) < budget:
        best = None
        for term, occ in occurrences.items():
            if term in dead:
                continue
            vals = [(value(w, i, len(term)), w) for w, i in occ]
            score = sum(weights[w] * v for v, w in vals)
            count = sum(weights[w] for v, w in vals if v > 0)
            if score > 0 and count >= min_count:
                key = (-score, *first_pos[term])
                if best is None or key < best[0]:
                    best = (key, term)
        if best is None:
            break
        (neg_score, _, n), term = best
        dead.add(term)
        tree = _cheapest_tree(term, string, token_of, n_base)
        if tree is None or len(tree) > budget - len(out["merges"]):
            continue
        applied_raw = 0
        for w, i in occurrences[term]:
            if value(w, i, n) > 0:
                for p in range(i + 1, i + n):
                    starts[w][p] = False
                applied_raw += raw[w]
        for a, b in tree:
            new = n_base + len(out["merges"])
            string[new] = string[a] + string[b]
            token_of[string[new]] = new
            if held is not None:
                held.merge(a, b, new)
            for key, v in zip(out, ((a, b), -neg_score, applied_raw, held.total_raw if held is not None else 0)):
                out[key].append(v)
    return out


def _cheapest_tree(term, string, token_of, n_base):
    """Merges (post-order) that build `term` from existing tokens with the fewest new entries, or None.

    A span whose string is already a token costs 0 if it is a new entry (or a single base id); a span of
    two or more base ids whose string is a base token cannot be built. Ties go to the leftmost split.
    """
    n = len(term)
    best: dict[tuple[int, int], tuple[float, list, int | None]] = {}  # span -> (cost, merges, token id)

    def span_string(i, j):
        s = string[term[i]]
        for t in term[i + 1 : j]:
            s = s + string[t]
        return s

    for length in range(1, n + 1):
        for i in range(n - length + 1):
            j = i + length
            if length == 1:
                best[i, j] = (0, [], term[i])
                continue
            t = token_of.get(span_string(i, j))
            if t is not None and t >= n_base:
                best[i, j] = (0, [], t)
                continue
            best[i, j] = (float("inf"), [], None)
            if t is not None:
                continue
            for k in range(i + 1, j):
                c = best[i, k][0] + best[k, j][0] + 1
                if c < best[i, j][0]:
                    best[i, j] = (c, best[i, k][1] + best[k, j][1], (i, k, j))
    cost, _, _ = best[0, n]
    if cost == float("inf"):
        return None
    merges: list[tuple] = []
    made: dict[tuple[int, int], object] = {}

    def emit(i, j):
        entry = best[i, j]
        if entry[0] == 0:
            return entry[2]
        _, k, _ = entry[2]
        a, b = emit(i, k), emit(k, j)
        merges.append((a, b))
        return ("new", len(merges) - 1)

    emit(0, n)
    # resolve placeholders ("new", index) into ids relative to the entries emitted so far
    first = max(token_of.values()) + 1 if token_of else n_base
    first = max(first, n_base)
    resolved = []
    for a, b in merges:
        resolved.append(tuple(first + x[1] if isinstance(x, tuple) else x for x in (a, b)))
    return resolved
