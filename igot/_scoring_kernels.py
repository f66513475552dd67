"""Numba kernels of igot.scoring: flat-array BPE state, lazy-greedy selection, BPE application.

Imported on first use by igot.scoring (never at `import igot` time), so numba loads only when a selection
runs. Everything here loops over flat numpy arrays: open-addressing hash maps instead of typed dicts,
per-pair linked lists of words instead of Python lists. The pure-Python twin (the test oracle) is
igot/_scoring_reference.py; both must make the same picks.
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit, objmode

# φ codes of the built-in methods (igot.scoring maps method names to these).
PHI_BPE, PHI_IG_ONLY, PHI_IGOT, PHI_CUSTOM = 0, 1, 2, 3
# igot: log2 of how much more often (relative) general text may use a candidate before it is down-weighted
SPEC_FLOOR = 3.0

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_HASH_BASE = np.uint64(0x100000001B3)  # odd multiplier of the polynomial string hash

# One corpus (domain, general or held-out) segmented by the merges picked so far.
# seg[wstart[w] : wstart[w] + wlen[w]] is word w's current token sequence.
PairState = namedtuple(
    "PairState",
    [
        "seg", "wstart", "wlen", "weight", "raw",  # words: [S], [W], [W], [W] float64, [W] int64
        "tok_w", "tot_w", "tot_raw",  # token weights [V], total weight [1], total raw tokens [1]
        "keys", "vals",  # pair hash map (key a * key_base + b -> pair id) [cap]
        "pa", "pb", "pc", "npairs",  # pair ids -> left, right, weighted count [P]; count of pair ids [1]
        "head", "lword", "lnext", "nlinks",  # per-pair linked list of words that contain the pair
        "delta", "mark", "inword", "touched", "stamp",  # scratch of one merge application
    ],
)


@njit(cache=True)
def _mix(x):
    """splitmix64 finaliser: a well-spread uint64 from any uint64."""
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


@njit(cache=True)
def _map_find(keys, vals, key):
    """Value stored for key (int64, never -1) in an open-addressing map, or -1."""
    mask = keys.size - 1
    i = np.int64(_mix(np.uint64(key)) & np.uint64(mask))
    while True:
        k = keys[i]
        if k == key:
            return vals[i]
        if k == -1:
            return -1
        i = (i + 1) & mask


@njit(cache=True)
def _map_insert(keys, vals, key, val):
    """Insert or overwrite key -> val (the map is sized so that it never fills)."""
    mask = keys.size - 1
    i = np.int64(_mix(np.uint64(key)) & np.uint64(mask))
    while keys[i] != -1 and keys[i] != key:
        i = (i + 1) & mask
    keys[i] = key
    vals[i] = val


@njit(cache=True)
def _pow2_at_least(n):
    cap = 16
    while cap < n:
        cap *= 2
    return cap


@njit(cache=True)
def _xlog2x(x):
    return x * math.log2(x) if x > 0.0 else 0.0


# ---------------------------------------------------------------------------------------------------
# Pair state: build, count pairs of a word, apply one merge everywhere it occurs
# ---------------------------------------------------------------------------------------------------
@njit(cache=True)
def _pair_id(st, a, b, key_base):
    key = a * key_base + b
    pid = _map_find(st.keys, st.vals, key)
    if pid == -1:
        pid = st.npairs[0]
        st.npairs[0] += 1
        st.pa[pid] = a
        st.pb[pid] = b
        _map_insert(st.keys, st.vals, key, pid)
    return pid


@njit(cache=True)
def _count_word_pairs(st, w, sign, key_base, ntouched):
    """Add sign * weight[w] to the count of every pair of word w's current segmentation.

    A run of r equal tokens x holds floor(r / 2) pairs (x, x): what leftmost-first BPE can merge.
    sign < 0 stamps the pairs as present before the merge; sign > 0 links the word to pairs that are new
    in it. Returns the new length of the touched-pairs list.
    """
    s0 = st.wstart[w]
    n = st.wlen[w]
    wt = st.weight[w] * sign
    stamp = st.stamp[0]
    after_equal = False
    for i in range(n - 1):
        a = st.seg[s0 + i]
        b = st.seg[s0 + i + 1]
        if a == b:
            if after_equal:  # overlaps the (x, x) counted just before
                after_equal = False
                continue
            after_equal = True
        else:
            after_equal = False
        pid = _pair_id(st, a, b, key_base)
        st.delta[pid] += wt
        if st.mark[pid] != stamp:
            st.mark[pid] = stamp
            st.touched[ntouched] = pid
            ntouched += 1
        if sign < 0:
            st.inword[pid] = stamp
        elif st.inword[pid] != stamp:
            st.inword[pid] = stamp
            link = st.nlinks[0]
            st.nlinks[0] += 1
            st.lword[link] = w
            st.lnext[link] = st.head[pid]
            st.head[pid] = link
    return ntouched


@njit(cache=True)
def _grown(arr, n, fill):
    """A copy of arr with length n (>= arr.size); the new tail is set to fill."""
    out = np.empty(n, arr.dtype)
    out[: arr.size] = arr
    out[arr.size :] = fill
    return out


@njit(cache=True)
def _reserve(st, n_new, key_base):
    """st with room for n_new more pair ids and links: arrays doubled and the pair map rebuilt if short."""
    need_pairs = st.npairs[0] + n_new
    need_links = st.nlinks[0] + n_new
    if need_pairs <= st.pa.size and 2 * need_pairs <= st.keys.size and need_links <= st.lword.size:
        return st
    n_pairs = st.pa.size
    while n_pairs < need_pairs:
        n_pairs *= 2
    n_links = st.lword.size
    while n_links < need_links:
        n_links *= 2
    keys = np.full(_pow2_at_least(2 * n_pairs), -1, np.int64)
    vals = np.empty(keys.size, np.int64)
    for pid in range(st.npairs[0]):
        _map_insert(keys, vals, st.pa[pid] * key_base + st.pb[pid], pid)
    return PairState(
        st.seg, st.wstart, st.wlen, st.weight, st.raw, st.tok_w, st.tot_w, st.tot_raw, keys, vals,
        _grown(st.pa, n_pairs, 0), _grown(st.pb, n_pairs, 0), _grown(st.pc, n_pairs, 0.0), st.npairs,
        _grown(st.head, n_pairs, -1), _grown(st.lword, n_links, 0), _grown(st.lnext, n_links, 0), st.nlinks,
        _grown(st.delta, n_pairs, 0.0), _grown(st.mark, n_pairs, 0), _grown(st.inword, n_pairs, 0),
        _grown(st.touched, n_pairs, 0), st.stamp,
    )


@njit(cache=True)
def _new_pair_state(offsets, ids, weight, raw, n_tokens, key_base):
    """Pair state of a word table whose words are all at their base segmentation."""
    n_words = offsets.size - 1
    n_sym = ids.size
    max_pairs = max(1024, n_sym // 4)  # grown by _reserve as merges make new pairs
    n_links = max(1024, n_sym // 2)
    cap = _pow2_at_least(2 * max_pairs)
    tok_w = np.zeros(n_tokens, np.float64)
    tot_w = np.zeros(1, np.float64)
    tot_raw = np.zeros(1, np.int64)
    seg = ids.astype(np.int64)
    wlen = np.empty(n_words, np.int64)
    for w in range(n_words):
        wlen[w] = offsets[w + 1] - offsets[w]
        for i in range(offsets[w], offsets[w + 1]):
            tok_w[seg[i]] += weight[w]
        tot_w[0] += weight[w] * wlen[w]
        tot_raw[0] += raw[w] * wlen[w]
    st = PairState(
        seg, offsets[:-1].copy(), wlen, weight, raw, tok_w, tot_w, tot_raw,
        np.full(cap, -1, np.int64), np.empty(cap, np.int64),
        np.empty(max_pairs, np.int64), np.empty(max_pairs, np.int64), np.zeros(max_pairs, np.float64),
        np.zeros(1, np.int64),
        np.full(max_pairs, -1, np.int64), np.empty(n_links, np.int64),
        np.empty(n_links, np.int64), np.zeros(1, np.int64),
        np.zeros(max_pairs, np.float64), np.zeros(max_pairs, np.int64), np.zeros(max_pairs, np.int64),
        np.empty(max_pairs, np.int64), np.zeros(1, np.int64),
    )
    for w in range(n_words):
        st = _reserve(st, wlen[w], key_base)
        st.stamp[0] += 1
        nt = _count_word_pairs(st, w, 1.0, key_base, 0)
        for j in range(nt):
            pid = st.touched[j]
            st.pc[pid] += st.delta[pid]
            st.delta[pid] = 0.0
    return st


@njit(cache=True)
def _apply_merge(st, a, b, new, key_base):
    """Merge every leftmost non-overlapping (a, b) into `new` in all words; update all counts.

    Returns (the state, whose arrays may have been regrown; number of pair ids whose count changed, listed
    in st.touched[:n]; weighted applications; raw applications).
    """
    pid = _map_find(st.keys, st.vals, a * key_base + b)
    if pid == -1:
        return st, 0, 0.0, 0
    ntouched = 0
    applied_w = 0.0
    applied_raw = 0
    link = st.head[pid]
    while link != -1:
        w = st.lword[link]
        link = st.lnext[link]
        s0 = st.wstart[w]
        n = st.wlen[w]
        found = False
        for i in range(n - 1):
            if st.seg[s0 + i] == a and st.seg[s0 + i + 1] == b:
                found = True
                break
        if not found:  # the pair left this word earlier (the list is never pruned)
            continue
        st = _reserve(st, n, key_base)
        st.stamp[0] += 1
        ntouched = _count_word_pairs(st, w, -1.0, key_base, ntouched)
        k = 0
        out = s0
        i = s0
        end = s0 + n
        while i < end:
            if i + 1 < end and st.seg[i] == a and st.seg[i + 1] == b:
                st.seg[out] = new
                i += 2
                k += 1
            else:
                st.seg[out] = st.seg[i]
                i += 1
            out += 1
        st.wlen[w] = out - s0
        ntouched = _count_word_pairs(st, w, 1.0, key_base, ntouched)
        wk = st.weight[w] * k
        st.tok_w[a] -= wk
        st.tok_w[b] -= wk
        st.tok_w[new] += wk
        st.tot_w[0] -= wk
        st.tot_raw[0] -= st.raw[w] * k
        applied_w += wk
        applied_raw += st.raw[w] * k
    n_changed = 0
    for j in range(ntouched):
        q = st.touched[j]
        st.mark[q] = 0
        if st.delta[q] != 0.0:
            st.pc[q] += st.delta[q]
            st.delta[q] = 0.0
            st.touched[n_changed] = q
            n_changed += 1
    return st, n_changed, applied_w, applied_raw


# ---------------------------------------------------------------------------------------------------
# Scores: information gain, specificity, φ
# ---------------------------------------------------------------------------------------------------
@njit(cache=True)
def information_gain(n, c_a, c_b, same, total, vocab_size):
    """Bits saved on the corpus's unigram code length by merging n (a, b) pairs, minus the entry's cost.

    Code length L = T log2 T - sum_t c_t log2 c_t. Merging n pairs: c_a -= n, c_b -= n (c_a -= 2n when
    a == b), c_new = n, T -= n. The new entry costs 2 log2(V) bits: it is spelled as two ids of a
    vocabulary of V tokens.
    """
    gain = _xlog2x(total) - _xlog2x(total - n) + _xlog2x(n)
    if same:
        gain += _xlog2x(c_a - 2.0 * n) - _xlog2x(c_a)
    else:
        gain += _xlog2x(c_a - n) - _xlog2x(c_a) + _xlog2x(c_b - n) - _xlog2x(c_b)
    return gain - 2.0 * math.log2(vocab_size)


@njit(cache=True)
def specificity(n_domain, total_domain, n_general, total_general, alpha):
    """log2 of the domain / general relative frequency, both add-alpha smoothed."""
    return math.log2((n_domain + alpha) / (total_domain + alpha)) - math.log2(
        (n_general + alpha) / (total_general + alpha)
    )


@njit(cache=True)
def phi_builtin(code, ig, spec, count, pieces):
    """Score of a built-in method: count (bpe), IG (ig_only), count x specificity weight (igot).

    igot: count * w(s), w = 1 for s >= -3 and 2^(s + 3) below: a candidate keeps its full count unless
    general text uses it more than 8x as often (relative frequency) as the domain; past that its weight
    halves per doubling. Count, not IG, leads because it is what held-out token saving rewards (see
    igot/scoring.py, "Measured").
    """
    if code == PHI_BPE:
        return count
    if code == PHI_IG_ONLY:
        return ig
    return count if spec >= -SPEC_FLOOR else count * 2.0 ** (spec + SPEC_FLOOR)


# A user's φ is called back in Python from one compiled (and cached) function, so the selection loop
# is compiled once for every callable; about 6 us per score.
_USER_PHI: list = [None]


def _call_user_phi(ig, spec, count, pieces):
    out = np.asarray(_USER_PHI[0](np.float64(ig), np.float64(spec), np.float64(count), np.float64(pieces)))
    if out.size != 1:
        raise ValueError(f"the method callable must return one score per candidate, got shape {out.shape}")
    return float(out.reshape(-1)[0])


@njit(cache=True)
def phi_user(code, ig, spec, count, pieces):
    """φ of the callable in _USER_PHI[0] (code is unused; it keeps the signature of phi_builtin)."""
    with objmode(out="float64"):
        out = _call_user_phi(ig, spec, count, pieces)
    return out


@njit(cache=True)
def _string_hash(h_left, len_left, h_right, len_right, pow_table):
    """Polynomial hash of the concatenation of two strings (their hashes and lengths)."""
    h = h_left * pow_table[min(len_right, pow_table.size - 1)] + h_right
    if len_right >= pow_table.size:  # longer than the table: finish the power by repeated squaring
        p = pow_table[pow_table.size - 1]
        e = len_right - (pow_table.size - 1)
        extra = np.uint64(1)
        base = _HASH_BASE
        while e > 0:
            if e & 1:
                extra *= base
            base *= base
            e >>= 1
        h = h_left * (p * extra) + h_right
    return h


@njit(cache=True)
def _string_key(h, length):
    """int64 map key of a string hash (never -1, the empty-slot marker)."""
    k = np.int64(_mix(h ^ (np.uint64(length) * _M2)) >> np.uint64(1))
    return k


# ---------------------------------------------------------------------------------------------------
# Max-heap of (score, a, b, id) with lazy invalidation; ties go to the smaller (a, b)
# ---------------------------------------------------------------------------------------------------
@njit(cache=True)
def _token_string_map(tok_hash, tok_strlen, n_base, n_tokens):
    """Powers of the string-hash base and a map string key -> id of every base token (for "already a
    token" checks); sized for n_tokens so new tokens can be inserted as they are made."""
    pow_table = np.empty(257, np.uint64)
    pow_table[0] = np.uint64(1)
    for i in range(1, pow_table.size):
        pow_table[i] = pow_table[i - 1] * _HASH_BASE
    s_keys = np.full(_pow2_at_least(2 * n_tokens), -1, np.int64)
    s_vals = np.empty(s_keys.size, np.int64)
    for t in range(n_base):
        _map_insert(s_keys, s_vals, _string_key(tok_hash[t], tok_strlen[t]), t)
    return pow_table, s_keys, s_vals


@njit(cache=True)
def _heap_before(hs, ha, hb, i, j):
    if hs[i] != hs[j]:
        return hs[i] > hs[j]
    if ha[i] != ha[j]:
        return ha[i] < ha[j]
    return hb[i] < hb[j]


@njit(cache=True)
def _heap_swap(hs, ha, hb, hi, i, j):
    hs[i], hs[j] = hs[j], hs[i]
    ha[i], ha[j] = ha[j], ha[i]
    hb[i], hb[j] = hb[j], hb[i]
    hi[i], hi[j] = hi[j], hi[i]


@njit(cache=True)
def _heap_push(hs, ha, hb, hi, size, score, a, b, idx):
    """Push; returns the (possibly regrown) arrays and the new size."""
    if size == hs.size:
        hs = np.concatenate((hs, np.empty(hs.size, np.float64)))
        ha = np.concatenate((ha, np.empty(ha.size, np.int64)))
        hb = np.concatenate((hb, np.empty(hb.size, np.int64)))
        hi = np.concatenate((hi, np.empty(hi.size, np.int64)))
    i = size
    hs[i], ha[i], hb[i], hi[i] = score, a, b, idx
    while i > 0:
        parent = (i - 1) >> 1
        if not _heap_before(hs, ha, hb, i, parent):
            break
        _heap_swap(hs, ha, hb, hi, i, parent)
        i = parent
    return hs, ha, hb, hi, size + 1


@njit(cache=True)
def _heap_pop(hs, ha, hb, hi, size):
    """Move the top entry to index size-1 and restore the heap on [0, size-1); returns the new size."""
    size -= 1
    _heap_swap(hs, ha, hb, hi, 0, size)
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        best = left
        if left + 1 < size and _heap_before(hs, ha, hb, left + 1, left):
            best = left + 1
        if not _heap_before(hs, ha, hb, best, i):
            break
        _heap_swap(hs, ha, hb, hi, i, best)
        i = best
    return size


# ---------------------------------------------------------------------------------------------------
# Pair-level selection: bpe, ig_only, igot, custom φ
# ---------------------------------------------------------------------------------------------------
@njit(cache=True)
def _pair_score(dom, gen, has_general, pid, n_vocab, code, alpha, tok_len):
    a = dom.pa[pid]
    b = dom.pb[pid]
    n = dom.pc[pid]
    ig = information_gain(n, dom.tok_w[a], dom.tok_w[b], a == b, dom.tot_w[0], n_vocab)
    spec = 0.0
    if has_general:
        g = _map_find(gen.keys, gen.vals, a * (dom.tok_w.size + 1) + b)
        n_general = gen.pc[g] if g != -1 else 0.0
        spec = specificity(n, dom.tot_w[0], n_general, gen.tot_w[0], alpha)
    pieces = float(tok_len[a] + tok_len[b])
    # called by name, not passed in: a function argument would defeat numba's on-disk cache
    score = phi_user(code, ig, spec, n, pieces) if code == PHI_CUSTOM else phi_builtin(code, ig, spec, n, pieces)
    return score, spec, ig


@njit(cache=True)
def select_pairs(
    d_off, d_ids, d_weight, d_raw,
    g_off, g_ids, g_raw, has_general,
    h_off, h_ids, h_raw, has_heldout,
    n_base, budget, code, alpha, min_count, tok_hash, tok_strlen,
):
    """Greedy pair merges (lazy greedy: a popped score is recomputed and re-pushed if it dropped).

    tok_hash / tok_strlen [n_base]: string hash and length of each base token; a candidate whose string
    equals an existing token (base or new) is skipped for good. Returns merges [M, 2], scores [M],
    specificity [M], information gain [M], weighted and raw domain counts [M], held-out tokens after each merge [M],
    number of distinct candidate pairs at the start.
    """
    n_tokens = n_base + budget
    key_base = n_tokens + 1
    dom = _new_pair_state(d_off, d_ids, d_weight, d_raw, n_tokens, key_base)
    gen = _new_pair_state(g_off, g_ids, g_raw.astype(np.float64), g_raw, n_tokens, key_base)
    held = _new_pair_state(h_off, h_ids, h_raw.astype(np.float64), h_raw, n_tokens, key_base)

    # strings of all tokens, for the "already a token" check
    th = np.zeros(n_tokens, np.uint64)
    tl = np.zeros(n_tokens, np.int64)
    tok_len = np.ones(n_tokens, np.int64)  # length in base tokens
    th[:n_base] = tok_hash
    tl[:n_base] = tok_strlen
    pow_table, s_keys, s_vals = _token_string_map(tok_hash, tok_strlen, n_base, n_tokens)

    merges = np.empty((budget, 2), np.int64)
    scores = np.empty(budget, np.float64)
    specs = np.empty(budget, np.float64)
    gains = np.empty(budget, np.float64)
    counts_w = np.empty(budget, np.float64)
    counts_raw = np.empty(budget, np.int64)
    held_tokens = np.empty(budget, np.int64)

    cur = np.full(dom.pa.size, -np.inf)
    dead = np.zeros(dom.pa.size, np.bool_)
    cap = max(16, 2 * dom.npairs[0])
    hs = np.empty(cap, np.float64)
    ha = np.empty(cap, np.int64)
    hb = np.empty(cap, np.int64)
    hi = np.empty(cap, np.int64)
    size = 0
    n_cand = dom.npairs[0]
    for pid in range(n_cand):
        if dom.pc[pid] >= min_count:
            sc, _, _ = _pair_score(dom, gen, has_general, pid, n_base, code, alpha, tok_len)
            cur[pid] = sc
            hs, ha, hb, hi, size = _heap_push(hs, ha, hb, hi, size, sc, dom.pa[pid], dom.pb[pid], pid)

    m = 0
    while m < budget and size > 0:
        size = _heap_pop(hs, ha, hb, hi, size)
        score = hs[size]
        pid = hi[size]
        if dead[pid] or score != cur[pid] or dom.pc[pid] < min_count:
            continue
        fresh, spec, ig = _pair_score(dom, gen, has_general, pid, n_base + m, code, alpha, tok_len)
        if fresh < score:
            cur[pid] = fresh
            hs, ha, hb, hi, size = _heap_push(hs, ha, hb, hi, size, fresh, dom.pa[pid], dom.pb[pid], pid)
            continue
        a = dom.pa[pid]
        b = dom.pb[pid]
        h = _string_hash(th[a], tl[a], th[b], tl[b], pow_table)
        skey = _string_key(h, tl[a] + tl[b])
        if _map_find(s_keys, s_vals, skey) != -1:
            dead[pid] = True
            continue
        new = n_base + m
        th[new] = h
        tl[new] = tl[a] + tl[b]
        tok_len[new] = tok_len[a] + tok_len[b]
        _map_insert(s_keys, s_vals, skey, new)
        merges[m, 0] = a
        merges[m, 1] = b
        scores[m] = fresh
        specs[m] = spec
        gains[m] = ig
        dead[pid] = True
        dom, n_changed, applied_w, applied_raw = _apply_merge(dom, a, b, new, key_base)
        if dom.pa.size > cur.size:
            cur = _grown(cur, dom.pa.size, -np.inf)
            dead = _grown(dead, dom.pa.size, False)
        counts_w[m] = applied_w
        counts_raw[m] = applied_raw
        if has_general:
            gen = _apply_merge(gen, a, b, new, key_base)[0]
        if has_heldout:
            held = _apply_merge(held, a, b, new, key_base)[0]
        held_tokens[m] = held.tot_raw[0]
        m += 1
        for j in range(n_changed):
            q = dom.touched[j]
            if dead[q] or dom.pc[q] < min_count:
                cur[q] = -np.inf
                continue
            sc, _, _ = _pair_score(dom, gen, has_general, q, n_base + m, code, alpha, tok_len)
            cur[q] = sc
            hs, ha, hb, hi, size = _heap_push(hs, ha, hb, hi, size, sc, dom.pa[q], dom.pb[q], q)
    return merges[:m], scores[:m], specs[:m], gains[:m], counts_w[:m], counts_raw[:m], held_tokens[:m], n_cand


# ---------------------------------------------------------------------------------------------------
# BPE application (the semantics of the extended tokenizer)
# ---------------------------------------------------------------------------------------------------
@njit(cache=True)
def apply_merges(offsets, ids, merges, n_base):
    """Segment every word by its base tokens, then the merges in rank order (BPE). Returns
    (tokens per word [W], new ids [sum], offsets [W + 1])."""
    n_words = offsets.size - 1
    key_base = n_base + merges.shape[0] + 1
    cap = _pow2_at_least(2 * merges.shape[0] + 2)
    keys = np.full(cap, -1, np.int64)
    vals = np.empty(cap, np.int64)
    for r in range(merges.shape[0]):
        key = merges[r, 0] * key_base + merges[r, 1]
        if _map_find(keys, vals, key) == -1:  # a repeated merge keeps its first (lowest) rank
            _map_insert(keys, vals, key, r)
    out = ids.astype(np.int64)
    lens = np.empty(n_words, np.int64)
    for w in range(n_words):
        s0 = offsets[w]
        n = offsets[w + 1] - s0
        while n > 1:
            best = -1
            for i in range(n - 1):
                r = _map_find(keys, vals, out[s0 + i] * key_base + out[s0 + i + 1])
                if r != -1 and (best == -1 or r < best):
                    best = r
            if best == -1:
                break
            a = merges[best, 0]
            b = merges[best, 1]
            new = n_base + best
            j = s0
            i = s0
            end = s0 + n
            while i < end:
                if i + 1 < end and out[i] == a and out[i + 1] == b:
                    out[j] = new
                    i += 2
                else:
                    out[j] = out[i]
                    i += 1
                j += 1
            n = j - s0
        lens[w] = n
    new_offsets = np.zeros(n_words + 1, np.int64)
    for w in range(n_words):
        new_offsets[w + 1] = new_offsets[w] + lens[w]
    new_ids = np.empty(new_offsets[n_words], np.int64)
    for w in range(n_words):
        new_ids[new_offsets[w] : new_offsets[w + 1]] = out[offsets[w] : offsets[w] + lens[w]]
    return lens, new_ids, new_offsets


# ---------------------------------------------------------------------------------------------------
# Term-level selection ("frequency"): whole n-grams scored by count x (pieces - 1)
# ---------------------------------------------------------------------------------------------------
@njit(cache=True)
def _enumerate_terms(offsets, ids, max_n):
    """All n-gram occurrences (2 <= n <= max_n, inside one word): word, start, length, hash of the ids."""
    n_words = offsets.size - 1
    total = 0
    for w in range(n_words):
        L = offsets[w + 1] - offsets[w]
        for i in range(L):
            total += max(min(max_n, L - i) - 1, 0)
    o_word = np.empty(total, np.int64)
    o_start = np.empty(total, np.int64)
    o_len = np.empty(total, np.int64)
    o_hash = np.empty(total, np.uint64)
    k = 0
    for w in range(n_words):
        s0 = offsets[w]
        L = offsets[w + 1] - s0
        for i in range(L):
            h = np.uint64(ids[s0 + i]) + np.uint64(1)
            for n in range(2, min(max_n, L - i) + 1):
                h = h * _HASH_BASE + np.uint64(ids[s0 + i + n - 1]) + np.uint64(1)
                o_word[k], o_start[k], o_len[k], o_hash[k] = w, i, n, _mix(h ^ np.uint64(n))
                k += 1
    return o_word, o_start, o_len, o_hash


@njit(cache=True)
def _occurrence_value(is_start, s0, L, start, n):
    """pieces - 1 of an occurrence whose ends fall on piece boundaries, else 0."""
    if not is_start[s0 + start] or (start + n < L and not is_start[s0 + start + n]):
        return 0
    pieces = 0
    for p in range(start, start + n):
        if is_start[s0 + p]:
            pieces += 1
    return pieces - 1


@njit(cache=True)
def _span_hash(pieces_h, pieces_l, i, j, pow_table):
    h = pieces_h[i]
    length = pieces_l[i]
    for p in range(i + 1, j):
        h = _string_hash(h, length, pieces_h[p], pieces_l[p], pow_table)
        length += pieces_l[p]
    return h, length


@njit(cache=True)
def select_terms(
    d_off, d_ids, d_weight, d_raw, h_off, h_ids, h_raw, has_heldout,
    n_base, budget, max_n, min_count, tok_hash, tok_strlen,
):
    """Greedy whole-term picks by weight x (pieces - 1), each built by its cheapest merge tree.

    Scores only fall as terms are merged (pieces coarsen), so the first valid heap entry is the exact
    maximum. Ties go to the term seen first in the table (then the shorter). Returns merges [M, 2],
    scores [M], raw domain counts [M], held-out tokens after each merge [M], number of distinct n-grams.
    """
    n_tokens = n_base + budget
    key_base = n_tokens + 1
    o_word, o_start, o_len, o_hash = _enumerate_terms(d_off, d_ids, max_n)
    n_occ = o_hash.size
    order = np.argsort(o_hash, kind="mergesort")  # stable: a term's occurrences stay in table order
    cand = np.empty(n_occ, np.int64)
    c_first = np.empty(n_occ, np.int64)  # first occurrence of each candidate
    n_cand = 0
    for r in range(n_occ):
        o = order[r]
        if r == 0 or o_hash[o] != o_hash[order[r - 1]]:
            c_first[n_cand] = o
            n_cand += 1
        else:
            f = c_first[n_cand - 1]
            same = o_len[o] == o_len[f]
            if same:
                for p in range(o_len[o]):
                    if d_ids[d_off[o_word[o]] + o_start[o] + p] != d_ids[d_off[o_word[f]] + o_start[f] + p]:
                        same = False
            if not same:
                raise ValueError("64-bit n-gram hash collision; lower max_n or report this input")
        cand[o] = n_cand - 1
    c_off = np.zeros(n_cand + 1, np.int64)  # occurrences of candidate c: order[c_off[c]:c_off[c+1]]
    for o in range(n_occ):
        c_off[cand[o] + 1] += 1
    for c in range(n_cand):
        c_off[c + 1] += c_off[c]
    w_occ = np.zeros(d_off.size, np.int64)  # occurrences of word w: w_occ[w]:w_occ[w+1] (table order)
    for o in range(n_occ):
        w_occ[o_word[o] + 1] += 1
    for w in range(d_off.size - 1):
        w_occ[w + 1] += w_occ[w]

    is_start = np.ones(d_ids.size, np.bool_)
    contrib = np.empty(n_occ, np.float64)
    alive = np.empty(n_occ, np.bool_)
    c_score = np.zeros(n_cand, np.float64)
    c_count = np.zeros(n_cand, np.float64)
    for o in range(n_occ):
        w = o_word[o]
        v = _occurrence_value(is_start, d_off[w], d_off[w + 1] - d_off[w], o_start[o], o_len[o])
        alive[o] = v > 0
        contrib[o] = d_weight[w] * v
        c_score[cand[o]] += contrib[o]
        if alive[o]:
            c_count[cand[o]] += d_weight[w]

    pow_table, s_keys, s_vals = _token_string_map(tok_hash, tok_strlen, n_base, n_tokens)

    held = _new_pair_state(h_off, h_ids, h_raw.astype(np.float64), h_raw, n_tokens, key_base)
    merges = np.empty((budget, 2), np.int64)
    scores = np.empty(budget, np.float64)
    counts_raw = np.empty(budget, np.int64)
    held_tokens = np.empty(budget, np.int64)

    cap = max(16, 2 * n_cand)
    hs = np.empty(cap, np.float64)
    ha = np.empty(cap, np.int64)
    hb = np.empty(cap, np.int64)
    hi = np.empty(cap, np.int64)
    size = 0
    dead = np.zeros(n_cand, np.bool_)
    first_pos = np.empty(n_cand, np.int64)
    for c in range(n_cand):
        f = c_first[c]
        first_pos[c] = d_off[o_word[f]] + o_start[f]
        if c_score[c] > 0.0 and c_count[c] >= min_count:
            hs, ha, hb, hi, size = _heap_push(hs, ha, hb, hi, size, c_score[c], first_pos[c], o_len[f], c)

    wstamp = np.zeros(d_off.size, np.int64)
    changed_words = np.empty(d_off.size, np.int64)
    cost = np.empty((max_n + 1, max_n + 1), np.int64)
    split = np.empty((max_n + 1, max_n + 1), np.int64)
    span_tok = np.empty((max_n + 1, max_n + 1), np.int64)
    ph = np.empty(max_n, np.uint64)
    pl = np.empty(max_n, np.int64)
    stack = np.empty(4 * max_n, np.int64)
    INF = 1 << 40
    m = 0
    picks = 0
    while m < budget and size > 0:
        size = _heap_pop(hs, ha, hb, hi, size)
        c = hi[size]
        if dead[c] or hs[size] != c_score[c] or c_count[c] < min_count or c_score[c] <= 0.0:
            continue
        # cheapest merge tree over the term's base tokens (interval DP; ties to the leftmost split)
        f = c_first[c]
        n = o_len[f]
        s_first = d_off[o_word[f]] + o_start[f]
        for p in range(n):
            ph[p] = tok_hash[d_ids[s_first + p]]
            pl[p] = tok_strlen[d_ids[s_first + p]]
        for length in range(1, n + 1):
            for i in range(n - length + 1):
                j = i + length
                if length == 1:
                    cost[i, j] = 0
                    span_tok[i, j] = d_ids[s_first + i]
                    continue
                h, hl = _span_hash(ph, pl, i, j, pow_table)
                t = _map_find(s_keys, s_vals, _string_key(h, hl))
                span_tok[i, j] = t
                if t >= n_base:
                    cost[i, j] = 0
                    continue
                cost[i, j] = INF
                if t != -1:  # already a base token, but not this term's base segmentation
                    continue
                for k in range(i + 1, j):
                    if cost[i, k] + cost[k, j] + 1 < cost[i, j]:
                        cost[i, j] = cost[i, k] + cost[k, j] + 1
                        split[i, j] = k
        if cost[0, n] > budget - m:
            dead[c] = True
            continue
        dead[c] = True
        picks += 1
        # merge the term's aligned, non-overlapping occurrences (leftmost first) in the domain state
        n_changed = 0
        applied_raw = 0
        for r in range(c_off[c], c_off[c + 1]):
            o = order[r]
            w = o_word[o]
            s0 = d_off[w]
            if _occurrence_value(is_start, s0, d_off[w + 1] - s0, o_start[o], n) == 0:
                continue
            for p in range(o_start[o] + 1, o_start[o] + n):
                is_start[s0 + p] = False
            applied_raw += d_raw[w]
            if wstamp[w] != picks:
                wstamp[w] = picks
                changed_words[n_changed] = w
                n_changed += 1
        # emit the tree's new entries in post-order
        top = 0
        stack[top] = 0
        stack[top + 1] = n
        stack[top + 2] = 0  # 0: children not done yet, 1: emit
        top = 3
        while top > 0:
            top -= 3
            i, j, state = stack[top], stack[top + 1], stack[top + 2]
            if cost[i, j] == 0:
                continue
            if state == 0:
                k = split[i, j]
                stack[top], stack[top + 1], stack[top + 2] = i, j, 1
                stack[top + 3], stack[top + 4], stack[top + 5] = k, j, 0
                stack[top + 6], stack[top + 7], stack[top + 8] = i, k, 0
                top += 9
                continue
            k = split[i, j]
            a = span_tok[i, k]
            b = span_tok[k, j]
            new = n_base + m
            h, hl = _span_hash(ph, pl, i, j, pow_table)
            _map_insert(s_keys, s_vals, _string_key(h, hl), new)
            span_tok[i, j] = new
            cost[i, j] = 0
            merges[m, 0] = a
            merges[m, 1] = b
            scores[m] = c_score[c]
            counts_raw[m] = applied_raw
            if has_heldout:
                held = _apply_merge(held, a, b, new, key_base)[0]
            held_tokens[m] = held.tot_raw[0]
            m += 1
        # occurrences in changed words lose value; push their terms' new scores
        for q in range(n_changed):
            w = changed_words[q]
            s0 = d_off[w]
            L = d_off[w + 1] - s0
            for o in range(w_occ[w], w_occ[w + 1]):
                v = _occurrence_value(is_start, s0, L, o_start[o], o_len[o])
                new_contrib = d_weight[w] * v
                if new_contrib == contrib[o] and alive[o] == (v > 0):
                    continue
                t = cand[o]
                c_score[t] += new_contrib - contrib[o]
                contrib[o] = new_contrib
                if alive[o] and v == 0:
                    c_count[t] -= d_weight[w]
                alive[o] = v > 0
                if not dead[t] and c_score[t] > 0.0:
                    hs, ha, hb, hi, size = _heap_push(hs, ha, hb, hi, size, c_score[t], first_pos[t], o_len[o], t)
    return merges[:m], scores[:m], counts_raw[:m], held_tokens[:m], n_cand
