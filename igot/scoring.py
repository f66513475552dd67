"""Choose the new vocabulary entries: information gain, specificity, φ, IGOT_τ (Numba kernels).

`select_tokens` reads the domain's distinct pre-tokens (a WordTable: base-token-id sequences with
counts) and returns a `Selection`: BPE merges to append to the base tokenizer, in rank order. The
extended tokenizer first applies all base merges (giving exactly the base segmentation of a pre-token),
then the new merges in rank order, standard BPE; `apply_merges` reproduces exactly that, so every number
here (counts, held-out saving, the curve) is what the extended tokenizer will do.

Methods (all greedy, one new entry at a time, counts updated after each pick):
- "bpe": continued BPE, the most frequent adjacent pair of the current segmentations.
- "frequency": AdaptiVocab-style baseline: whole n-grams of 2..max_n base tokens scored by
  count x (pieces - 1), overlap-aware; a pick is built from existing tokens by its cheapest merge tree.
- "ig_only": information gain (igot's definition): bits saved on the domain corpus's unigram code length
  -sum_t c_t log2(c_t / T) when pair (a, b) becomes one token, exactly from the current counts (c_a and
  c_b lose n, the new token gets n, T loses n), minus 2 log2(V) bits for the entry (two ids out of a
  vocabulary of V).
- "igot": φ = count x w(s), s = log2(domain relative frequency / general relative frequency) of the
  candidate in the current segmentations (add-alpha smoothed), w(s) = 1 for s >= -3, 2^(s + 3) below:
  the budget goes to what saves domain tokens, never to what general text needs far more than the
  domain. Every pick also records its information gain (Selection.gain).
- a callable φ(ig, specificity, count, pieces) -> score, on the same pair candidates.
Selection is lazy greedy: the best stored score is recomputed when popped and pushed back if it dropped
(exact for bpe and frequency, whose scores change only with their own counts, and for igot wherever the
guard does not act; an ig_only score also drifts with c_a, c_b, T and V between its own updates).

Measured (SmolLM2 tokenizer, HPO + GO train -> their held-out split, general = SOTU + Moby-Dick; held-out
token saving at 500 / 2000 / 8000 entries, benchmarks/bench_scoring.py): bpe 5.84 / 9.03 / 12.26 %,
igot the same to 0.001 point (its picks part from bpe's at entry 6080, where the guard first drops a
candidate), ig_only 5.71 / 8.85 / 12.04 %, frequency 5.49 / 8.51 / 11.77 %. Raw
counts lead, and every generalisation device tried on them moved held-out saving by <= 0.01 point or
lost: Good-Turing, leave-one-out and document-frequency word weights, count^0.5..0.9, min_count 1..4,
general-text counts as a prior (n + 0.05..1 x general share). Adding IG, specificity or length to the
count lost too (IG as tie-break -0.01; n + IG/n/2 -0.09 at 8000; gating out IG <= 0 -0.07). The tail is
where text is lost (entries of train count < 20 keep about 0.22 of their share on held-out text vs
0.24 for frequent ones) but nothing above predicted which. Hence igot ranks by count with a
specificity guard, and the IG ranking stays available as ig_only. The held-out saving from
apply_merges equals that of the real extended tokenizer (igot.vocab.apply_selection) to the token.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence, Union

import numpy as np

Method = Literal["igot", "ig_only", "frequency", "bpe"]
METHODS: tuple[str, ...] = ("igot", "ig_only", "frequency", "bpe")
Smoothing = Literal["auto", "good-turing", "none"]
Phi = Callable[[Any, Any, Any, Any], Any]


@dataclass(frozen=True)
class Selection:
    """The chosen entries, as BPE merges to append after the base merges.

    Entry j has id n_base + j and is the merge merges[j] = (left, right) of two tokens that exist before
    it (base ids < n_base or earlier entries).
    """

    merges: np.ndarray  # [M, 2] int64
    pieces_offsets: np.ndarray  # [M + 1] int64: entry j spans pieces_ids[off[j]:off[j + 1]]
    pieces_ids: np.ndarray  # [sum of entry lengths] uint32: each entry's expansion into base ids
    scores: np.ndarray  # [M] float64: φ when picked (bits for ig_only / igot, count for bpe / frequency)
    counts: np.ndarray  # [M] int64: uses of the entry in the domain corpus when picked
    specificity: np.ndarray  # [M] float64: log2 domain / general relative frequency (0 without general)
    gain: np.ndarray  # [M] float64: information gain in bits when picked (NaN for "frequency")
    curve: np.ndarray | None  # [M] float64: held-out token saving after entries 0..j (None without heldout)
    tau: float | None  # the IGOT_τ threshold that cut the selection (None when not asked)
    method: str  # "igot", "ig_only", "frequency", "bpe" or "custom"
    n_base: int  # base vocabulary size: the id of entry 0
    n_candidates: int = 0  # distinct candidates at the start (pairs, or n-grams for "frequency")

    def __len__(self) -> int:
        return int(self.merges.shape[0])

    @property
    def pieces(self) -> tuple[np.ndarray, np.ndarray]:
        """(offsets [M + 1], ids) CSR of each entry's expansion into base ids."""
        return self.pieces_offsets, self.pieces_ids

    def piece(self, j: int) -> tuple[int, ...]:
        """Base ids that entry j stands for."""
        return tuple(int(x) for x in self.pieces_ids[self.pieces_offsets[j] : self.pieces_offsets[j + 1]])


def _kernels():
    """The Numba kernels, imported (and compiled or loaded from cache) on first use."""
    return importlib.import_module("igot._scoring_kernels")


def _word_arrays(words: Any, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets int64 [W + 1], ids uint32, counts int64 [W]) of a WordTable-like object, checked."""
    try:
        offsets, ids, counts = words.offsets, words.ids, words.counts
    except AttributeError:
        raise TypeError(f"{name} must be a WordTable (offsets, ids, counts), got {type(words).__name__}") from None
    for label, arr, dtype in (("offsets", offsets, np.int64), ("ids", ids, np.uint32), ("counts", counts, np.int64)):
        if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != 1:
            got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
            raise TypeError(f"{name}.{label} must be a 1-D {np.dtype(dtype)} array, got {got}")
    if offsets.size != counts.size + 1 or offsets[0] != 0 or offsets[-1] != ids.size or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{name}.offsets must rise from 0 to len(ids) = {ids.size} with one entry per word + 1")
    if np.any(counts < 0):
        raise ValueError(f"{name}.counts must be >= 0")
    return np.ascontiguousarray(offsets), np.ascontiguousarray(ids), np.ascontiguousarray(counts)


def word_weights(counts: np.ndarray, smoothing: str = "good-turing", max_count: int = 10) -> np.ndarray:
    """Per-word weights that estimate each word's frequency in unseen domain text.

    Good-Turing: a word seen c < max_count times gets (c + 1) N_{c+1} / N_c (N_c = number of words seen
    c times); the unseen-word mass N_1 is handed to the words seen once (a new word looks like a rare one),
    so hapaxes get 2 N_2 / N_1 + 1. Weights are rounded to multiples of 1/1024 so that incremental sums
    are exact in any order.

    Args:
        counts: int64 [W] word counts.
        smoothing: "good-turing" or "none" (the raw counts).
        max_count: counts from here on are kept as they are (Good-Turing is noisy where N_c is small).

    Returns:
        float64 [W] weights.
    """
    weights = counts.astype(np.float64)
    if smoothing == "none" or counts.size == 0:
        return weights
    n_c = np.bincount(counts, minlength=max_count + 2).astype(np.float64)
    for c in range(1, max_count):
        if n_c[c] > 0 and n_c[c + 1] > 0:
            weights[counts == c] = (c + 1) * n_c[c + 1] / n_c[c] + (1.0 if c == 1 else 0.0)
    return np.round(weights * 1024.0) / 1024.0


def _string_hashes(n_base: int, base_tokens: Sequence[bytes] | None) -> tuple[np.ndarray, np.ndarray]:
    """uint64 polynomial hash and length of each base token's string (bytes, or the id itself)."""
    if base_tokens is None:
        ids = np.arange(n_base, dtype=np.uint64) + np.uint64(1)
        return ids * np.uint64(0x9E3779B97F4A7C15), np.ones(n_base, np.int64)
    if len(base_tokens) != n_base:
        raise ValueError(f"base_tokens has {len(base_tokens)} strings; pass one per base id (n_base={n_base})")
    base = 0x100000001B3
    hashes = np.empty(n_base, np.uint64)
    for t, s in enumerate(base_tokens):
        h = 0
        for byte in bytes(s):
            h = (h * base + byte + 1) & 0xFFFFFFFFFFFFFFFF
        hashes[t] = h
    return hashes, np.array([len(s) for s in base_tokens], np.int64)


def _empty_words() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(1, np.int64), np.zeros(0, np.uint32), np.zeros(0, np.int64)


def _pieces(merges: np.ndarray, n_base: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR expansion of every entry into base ids."""
    expansion: list[list[int]] = []
    for a, b in merges.tolist():
        expansion.append((expansion[a - n_base] if a >= n_base else [a]) + (expansion[b - n_base] if b >= n_base else [b]))
    offsets = np.zeros(len(expansion) + 1, np.int64)
    offsets[1:] = np.cumsum([len(e) for e in expansion])
    ids = np.array([t for e in expansion for t in e], np.uint32)
    return offsets, ids


def _tau_cut(curve: np.ndarray, tau: float | str, window: int) -> tuple[int, float]:
    """(entries to keep, τ) for IGOT_τ.

    The marginal saving of entry j is curve[j] - curve[j - 1], smoothed by a trailing mean over `window`
    entries. τ = float: keep entries up to the first whose smoothed marginal saving is under τ.
    τ = "auto": the knee of the saving curve, the entry that lies farthest above the chord from (0, 0) to
    (M, curve[-1]) (Kneedle on a concave rising curve); τ is the smoothed marginal saving there.
    """
    if curve.size == 0:
        return 0, float(tau) if tau != "auto" else 0.0
    marginal = np.diff(np.concatenate(([0.0], curve)))
    csum = np.concatenate(([0.0], np.cumsum(marginal)))
    j = np.arange(curve.size)
    start = np.maximum(j + 1 - window, 0)
    smoothed = (csum[j + 1] - csum[start]) / (j + 1 - start)
    if tau == "auto":
        if curve[-1] <= 0.0:
            return 0, 0.0
        knee = int(np.argmax(curve / curve[-1] - (j + 1) / curve.size))
        return knee + 1, float(smoothed[knee])
    below = np.flatnonzero(smoothed < tau)
    return (int(below[0]) if below.size else curve.size), float(tau)


def _check_options(budget: int, n_base: int, method: Any, tau: Any, heldout: Any, max_n: int, min_count: float) -> None:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise TypeError(f"budget must be an int, got {type(budget).__name__}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0 (number of new entries), got {budget}")
    if isinstance(n_base, bool) or not isinstance(n_base, (int, np.integer)) or n_base <= 0:
        raise ValueError(f"n_base must be a positive int (largest base id + 1), got {n_base!r}")
    if not callable(method) and method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {', '.join(METHODS)} or a callable φ")
    if tau is not None:
        if heldout is None:
            raise ValueError("tau needs a held-out domain WordTable: pass heldout=...")
        if tau != "auto" and not isinstance(tau, (int, float)):
            raise ValueError(f"tau must be None, a float or 'auto', got {tau!r}")
    if max_n < 2:
        raise ValueError(f"max_n must be >= 2 (base tokens per candidate), got {max_n}")
    if min_count < 0:
        raise ValueError(f"min_count must be >= 0, got {min_count}")


def select_tokens(
    words: Any,
    budget: int,
    *,
    n_base: int,
    method: Union[Method, Phi] = "igot",
    general: Any = None,
    heldout: Any = None,
    tau: float | Literal["auto"] | None = None,
    max_n: int = 8,
    min_count: float = 2,
    smoothing: Smoothing = "auto",
    alpha: float = 0.5,
    base_tokens: Sequence[bytes] | None = None,
    tau_window: int = 50,
) -> Selection:
    """Pick up to `budget` new vocabulary entries for the domain, greedily, as appended BPE merges.

    Args:
        words: domain WordTable (offsets int64 [W + 1], ids uint32, counts int64 [W]).
        budget: number of new entries (intermediate entries of a merge tree included).
        n_base: base vocabulary size (largest base id + 1); entry j gets id n_base + j.
        method: "igot", "ig_only", "frequency", "bpe", or a callable φ(ig, specificity, count, pieces)
            -> score on the pair candidates of "igot"; it gets numpy float64 scalars (numpy-vectorised code
            works), pieces = base tokens the entry spans, and is called back from the compiled loop
            (about 6 us a score; not thread-safe: one custom selection at a time).
        general: general-text WordTable, for specificity (igot, custom φ).
        heldout: held-out domain WordTable; gives the curve of held-out token saving and enables tau.
        tau: IGOT_τ: stop when the held-out saving per entry (trailing mean over tau_window entries) falls
            under tau; "auto" stops at the knee of the saving curve (see `_tau_cut`).
        max_n: longest candidate, in base tokens ("frequency").
        min_count: candidates used fewer times than this (weighted count) are never picked.
        smoothing: word-count smoothing of the scores: "none" (raw counts; "auto" means this) or
            "good-turing" (`word_weights`; measured: no gain in held-out saving, see "Measured").
        alpha: add-alpha smoothing of the specificity's relative frequencies.
        base_tokens: byte string of each base id; when given, a candidate whose string is already a
            base token is skipped (its merge would not create a new id).
        tau_window: entries in the trailing mean of IGOT_τ.

    Returns:
        Selection with at most `budget` entries.

    Raises:
        TypeError: a table is not a WordTable of int64 offsets / uint32 ids / int64 counts.
        ValueError: budget < 0, unknown method, bad tau / max_n / n_base, ids >= n_base.
    """
    _check_options(budget, n_base, method, tau, heldout, max_n, min_count)
    if smoothing not in ("auto", "good-turing", "none"):
        raise ValueError(f"smoothing={smoothing!r} is unknown; use 'auto', 'good-turing' or 'none'")
    tables = {"words": words, "general": general, "heldout": heldout}
    arrays = {k: (_word_arrays(v, k) if v is not None else _empty_words()) for k, v in tables.items()}
    for k, (_, ids, _) in arrays.items():
        if ids.size and int(ids.max()) >= n_base:
            raise ValueError(f"{k} holds id {int(ids.max())} >= n_base={n_base}: pass the base vocabulary size")
    name = "custom" if callable(method) else method
    if smoothing == "auto":
        smoothing = "none"
    d_off, d_ids, d_counts = arrays["words"]
    g_off, g_ids, g_counts = arrays["general"]
    h_off, h_ids, h_counts = arrays["heldout"]
    weights = word_weights(d_counts, smoothing)
    tok_hash, tok_len = _string_hashes(n_base, base_tokens)
    k = _kernels()
    if name == "frequency":
        merges, scores, counts, held, n_cand = k.select_terms(
            d_off, d_ids, weights, d_counts, h_off, h_ids, h_counts, heldout is not None,
            n_base, budget, max_n, float(min_count), tok_hash, tok_len,
        )
        specs = np.zeros(len(scores))
        gains = np.full(len(scores), np.nan)
    else:
        code = k.PHI_CUSTOM if callable(method) else getattr(k, f"PHI_{name.upper()}")  # PHI_BPE, ...
        k._USER_PHI[0] = method if callable(method) else None
        try:
            merges, scores, specs, gains, _, counts, held, n_cand = k.select_pairs(
                d_off, d_ids, weights, d_counts, g_off, g_ids, g_counts, general is not None,
                h_off, h_ids, h_counts, heldout is not None,
                n_base, budget, code, float(alpha), float(min_count), tok_hash, tok_len,
            )
        finally:
            k._USER_PHI[0] = None
    curve = None
    if heldout is not None:
        base_tokens_held = float(np.sum(np.diff(h_off) * h_counts))
        curve = 1.0 - held / base_tokens_held if base_tokens_held > 0 else np.zeros(len(held))
    keep = len(merges)
    if tau is not None:
        keep, tau = _tau_cut(curve, tau, tau_window)
    offsets, ids = _pieces(merges[:keep], n_base)
    return Selection(
        merges=np.ascontiguousarray(merges[:keep]), pieces_offsets=offsets, pieces_ids=ids,
        scores=scores[:keep], counts=counts[:keep].astype(np.int64), specificity=specs[:keep], gain=gains[:keep],
        curve=curve[:keep] if curve is not None else None, tau=tau, method=name, n_base=int(n_base),
        n_candidates=int(n_cand),
    )


def apply_merges(words: Any, selection: Selection) -> np.ndarray:
    """Number of tokens of each word under the extended tokenizer (base segmentation + new merges).

    Args:
        words: WordTable whose ids are base ids (< selection.n_base).
        selection: the Selection whose merges are appended, in rank order (standard BPE: repeatedly apply
            the lowest-ranked applicable merge, leftmost first).

    Returns:
        int64 [W] tokens per word.

    Raises:
        TypeError: words is not a WordTable of int64 / uint32 / int64 arrays.
        ValueError: words hold ids >= selection.n_base.
    """
    offsets, ids, _ = _word_arrays(words, "words")
    merges = np.ascontiguousarray(selection.merges, dtype=np.int64).reshape(-1, 2)  # [M, 2]
    if ids.size and int(ids.max()) >= selection.n_base:
        raise ValueError(f"words hold id {int(ids.max())} >= n_base={selection.n_base}: pass base-id words")
    return _kernels().apply_merges(offsets, ids, merges, int(selection.n_base))[0]


def token_saving(words: Any, selection: Selection) -> float:
    """Held-out token saving 1 - tokens_new / tokens_base of `words` (weighted by their counts).

    Args:
        words: WordTable of base ids.
        selection: the Selection to apply.

    Returns:
        the saving in [0, 1).
    """
    offsets, _, counts = _word_arrays(words, "words")
    base = float(np.sum(np.diff(offsets) * counts))
    return 1.0 - float(np.sum(apply_merges(words, selection) * counts)) / base if base > 0 else 0.0
