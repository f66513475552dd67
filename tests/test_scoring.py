"""igot.scoring: the Numba kernels against the pure-Python oracle, BPE semantics, budget, curve, τ, errors."""
from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from igot import _scoring_reference as ref
from igot import scoring


def table(words: list[tuple[int, ...]], counts: list[int]) -> SimpleNamespace:
    """A WordTable-like object (offsets int64 [W + 1], ids uint32, counts int64 [W])."""
    offsets = np.zeros(len(words) + 1, np.int64)
    offsets[1:] = np.cumsum([len(w) for w in words])
    ids = np.array([t for w in words for t in w], np.uint32)
    return SimpleNamespace(offsets=offsets, ids=ids, counts=np.array(counts, np.int64))


@st.composite
def word_tables(draw, n_base: int, max_words: int = 14, max_len: int = 7):
    """Distinct words of base ids < n_base with counts 1..6, as (table, word lists)."""
    words = draw(st.lists(st.lists(st.integers(0, n_base - 1), min_size=1, max_size=max_len).map(tuple),
                          min_size=1, max_size=max_words, unique=True))
    counts = draw(st.lists(st.integers(1, 6), min_size=len(words), max_size=len(words)))
    return table(words, counts), [list(w) for w in words]


@st.composite
def problems(draw):
    n_base = draw(st.integers(2, 5))
    dom, dom_words = draw(word_tables(n_base))
    gen, gen_words = draw(word_tables(n_base))
    held, held_words = draw(word_tables(n_base))
    budget = draw(st.integers(0, 20))
    return SimpleNamespace(n_base=n_base, dom=dom, dom_words=dom_words, gen=gen, gen_words=gen_words,
                           held=held, held_words=held_words, budget=budget)


def as_pairs(merges) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in merges]


def user_phi(ig, spec, count, pieces):
    """A custom φ that is not plain arithmetic (dict lookup): runs through the Python callback."""
    bonus = {2.0: 0.0, 3.0: 0.5}.get(float(pieces), 1.0)
    return count * (1.0 + bonus) + 0.01 * ig - 0.1 * max(0.0, -spec)


def reference_pairs(p, method, base_strings=None, min_count=2.0, general=True):
    k = scoring._kernels()
    code, phi = (getattr(k, f"PHI_{method.upper()}"), None) if isinstance(method, str) else (k.PHI_CUSTOM, None)
    if callable(method):
        phi = lambda c, ig, s, n, q: float(method(np.float64(ig), np.float64(s), np.float64(n), np.float64(q)))  # noqa: E731
    return ref.select_pairs(
        p.dom_words, p.dom.counts.astype(float), p.dom.counts,
        p.gen_words if general else None, p.gen.counts if general else None,
        p.held_words, p.held.counts, p.n_base, p.budget, code, phi, 0.5, min_count, base_strings,
    )


@pytest.mark.parametrize("method", ["bpe", "ig_only", "igot", user_phi])
@given(p=problems())
def test_pair_methods_match_python_oracle(method, p):
    sel = scoring.select_tokens(p.dom, p.budget, n_base=p.n_base, method=method, general=p.gen, heldout=p.held)
    out = reference_pairs(p, method)
    assert as_pairs(sel.merges) == as_pairs(out["merges"])
    np.testing.assert_array_equal(sel.scores, np.array(out["scores"], np.float64))
    np.testing.assert_array_equal(sel.counts, np.array(out["counts_raw"], np.int64))
    np.testing.assert_array_equal(sel.gain, np.array(out["gains"], np.float64))
    base = float(np.sum(np.diff(p.held.offsets) * p.held.counts))
    np.testing.assert_allclose(sel.curve, 1.0 - np.array(out["held_tokens"], np.float64) / base, rtol=0, atol=1e-15)


def code_length_bits(words: list[list[int]], counts: list[int]) -> float:
    """Unigram code length of a corpus, -sum_t c_t log2(c_t / T), from its tokens counted one by one."""
    tokens: Counter[int] = Counter()
    for word, count in zip(words, counts):
        for t in word:
            tokens[t] += count
    total = sum(tokens.values())
    return -sum(c * math.log2(c / total) for c in tokens.values())


def merge_everywhere(words: list[list[int]], a: int, b: int, new: int) -> tuple[list[list[int]], list[int]]:
    """Each word with every (a, b) replaced by new, left to right, and the replacements made in each."""
    merged, made = [], []
    for word in words:
        out, i = [], 0
        while i < len(word):
            if word[i : i + 2] == [a, b]:
                out.append(new)
                i += 2
            else:
                out.append(word[i])
                i += 1
        merged.append(out)
        made.append(len(word) - len(out))
    return merged, made


def guarded_problem(single_token_words: int) -> SimpleNamespace:
    """(0, 1) is used 10 times in the domain and makes up most of the general text: its specificity is
    about -2.1 with 60 single-token domain words and -3.4 with 200, where igot's φ starts to weigh it down."""
    dom_words, gen_words = [[0, 1], [2, 3], [4]], [[0, 1], [4]]
    dom, gen = table([tuple(w) for w in dom_words], [10, 8, single_token_words]), table([(0, 1), (4,)], [1000, 100])
    return SimpleNamespace(n_base=5, dom=dom, dom_words=dom_words, gen=gen, gen_words=gen_words, budget=3)


@pytest.mark.parametrize("method", ["ig_only", "igot"])
@given(p=problems())
@example(p=guarded_problem(60))
@example(p=guarded_problem(200))
def test_gain_specificity_and_phi_are_those_of_an_explicit_merge(method, p):
    # Independent of both implementations: replay the picks on plain word lists and recompute each pick's
    # information gain from the code length before and after its merge, its specificity from the
    # relative frequencies in both corpora at that point, and φ from its definition.
    sel = scoring.select_tokens(p.dom, p.budget, n_base=p.n_base, method=method, general=p.gen)
    dom, gen = p.dom_words, p.gen_words
    counts, gen_counts = p.dom.counts.tolist(), p.gen.counts.tolist()
    for j, (a, b) in enumerate(sel.merges.tolist()):
        before = code_length_bits(dom, counts)
        total = sum(len(w) * c for w, c in zip(dom, counts))
        gen_total = sum(len(w) * c for w, c in zip(gen, gen_counts))
        dom, made = merge_everywhere(dom, a, b, p.n_base + j)
        gen, gen_made = merge_everywhere(gen, a, b, p.n_base + j)
        n = sum(m * c for m, c in zip(made, counts))
        n_general = sum(m * c for m, c in zip(gen_made, gen_counts))
        gain = before - code_length_bits(dom, counts) - 2 * math.log2(p.n_base + j)  # 2 ids of V = n_base + j
        spec = math.log2((n + 0.5) / (total + 0.5)) - math.log2((n_general + 0.5) / (gen_total + 0.5))
        phi = gain if method == "ig_only" else (n if spec >= -3 else n * 2 ** (spec + 3))
        assert sel.counts[j] == n
        assert sel.gain[j] == pytest.approx(gain, rel=1e-9, abs=1e-9)
        assert sel.specificity[j] == pytest.approx(spec, rel=1e-12, abs=1e-12)
        assert sel.scores[j] == pytest.approx(phi, rel=1e-9, abs=1e-9)


@given(p=problems(), max_n=st.integers(2, 5))
def test_frequency_matches_python_oracle(p, max_n):
    sel = scoring.select_tokens(p.dom, p.budget, n_base=p.n_base, method="frequency", heldout=p.held, max_n=max_n)
    out = ref.select_terms(p.dom_words, p.dom.counts.astype(float), p.dom.counts, p.held_words, p.held.counts,
                           p.n_base, p.budget, max_n, 2.0, None)
    assert as_pairs(sel.merges) == as_pairs(out["merges"])
    np.testing.assert_array_equal(sel.scores, np.array(out["scores"], np.float64))
    np.testing.assert_array_equal(sel.counts, np.array(out["counts_raw"], np.int64))


@given(p=problems(), data=st.data())
def test_existing_strings_are_never_new_entries(p, data):
    # base strings chosen so that many concatenations are already base tokens ("a" + "b" == "ab")
    alphabet = [b"a", b"b", b"ab", b"ba", b"aba"]
    strings = data.draw(st.lists(st.sampled_from(alphabet), min_size=p.n_base, max_size=p.n_base, unique=True))
    for method in ("bpe", "frequency"):
        sel = scoring.select_tokens(p.dom, p.budget, n_base=p.n_base, method=method, base_tokens=strings)
        made = [b"".join(strings[t] for t in sel.piece(j)) for j in range(len(sel))]
        assert len(set(made)) == len(made) and not set(made) & set(strings)
        if method == "bpe":
            out = ref.select_pairs(p.dom_words, p.dom.counts.astype(float), p.dom.counts, None, None, None, None,
                                   p.n_base, p.budget, 0, None, 0.5, 2.0, strings)
        else:
            out = ref.select_terms(p.dom_words, p.dom.counts.astype(float), p.dom.counts, None, None,
                                   p.n_base, p.budget, 8, 2.0, strings)
        assert as_pairs(sel.merges) == as_pairs(out["merges"])


@st.composite
def merge_lists(draw):
    """Random valid merge lists: merge j joins two ids that exist before it."""
    n_base = draw(st.integers(2, 5))
    n = draw(st.integers(0, 12))
    merges = []
    for j in range(n):
        merges.append((draw(st.integers(0, n_base + j - 1)), draw(st.integers(0, n_base + j - 1))))
    return n_base, merges


@given(spec=merge_lists(), data=st.data())
def test_apply_merges_matches_naive_bpe(spec, data):
    n_base, merges = spec
    words_table, words = data.draw(word_tables(n_base, max_len=10))
    sel = scoring.Selection(
        merges=np.array(merges, np.int64).reshape(-1, 2), pieces_offsets=np.zeros(1, np.int64),
        pieces_ids=np.zeros(0, np.uint32), scores=np.zeros(0), counts=np.zeros(0, np.int64),
        specificity=np.zeros(0), gain=np.zeros(0), curve=None, tau=None, method="bpe", n_base=n_base,
    )
    naive = ref.apply_merges(words, merges, n_base)
    assert scoring.apply_merges(words_table, sel).tolist() == [len(w) for w in naive]
    lens, ids, offsets = scoring._kernels().apply_merges(words_table.offsets, words_table.ids, sel.merges, n_base)
    assert [ids[offsets[w]:offsets[w + 1]].tolist() for w in range(len(words))] == naive


@pytest.mark.parametrize("method", ["bpe", "igot", "ig_only", "frequency"])
@given(p=problems())
def test_selection_invariants(method, p):
    sel = scoring.select_tokens(p.dom, p.budget, n_base=p.n_base, method=method, general=p.gen, heldout=p.held)
    m = len(sel)
    assert m <= p.budget and sel.merges.shape == (m, 2) and sel.merges.dtype == np.int64
    # each merge joins tokens that exist before it; pieces are the concatenation of the operands' pieces
    assert np.all(sel.merges >= 0) and np.all(sel.merges < p.n_base + np.arange(m)[:, None])
    for j, (a, b) in enumerate(sel.merges.tolist()):
        left = sel.piece(a - p.n_base) if a >= p.n_base else (a,)
        right = sel.piece(b - p.n_base) if b >= p.n_base else (b,)
        assert sel.piece(j) == left + right
    # the curve is the held-out saving of each prefix, as apply_merges gives it; BPE never gets longer
    assert sel.curve.shape == (m,) and np.all(np.diff(sel.curve) >= 0)
    for j in range(0, m, max(1, m // 3)):
        prefix = scoring.Selection(**{**sel.__dict__, "merges": sel.merges[: j + 1]})
        assert sel.curve[j] == pytest.approx(scoring.token_saving(p.held, prefix), abs=1e-12)


def test_budget_is_exact_with_intermediate_entries():
    # one frequent 6-token word: its whole-term pick needs 5 merges, so budgets below 5 skip it
    words = table([(0, 1, 2, 3, 4, 5), (0, 1), (2, 3)], [50, 3, 3])
    for budget in range(0, 9):
        sel = scoring.select_tokens(words, budget, n_base=6, method="frequency", min_count=1)
        assert len(sel) <= budget
        if budget >= 5:
            assert (0, 1, 2, 3, 4, 5) in [sel.piece(j) for j in range(len(sel))]
    sel = scoring.select_tokens(words, 5, n_base=6, method="frequency", min_count=1)
    assert len(sel) == 5 and sel.piece(4) == (0, 1, 2, 3, 4, 5)
    for method in ("bpe", "igot"):
        assert len(scoring.select_tokens(words, 4, n_base=6, method=method, min_count=1)) == 4


def _tau_problem():
    rng = np.random.default_rng(0)
    words = {}
    for _ in range(400):
        w = tuple(rng.integers(0, 8, rng.integers(2, 7)).tolist())
        words[w] = words.get(w, 0) + int(rng.integers(1, 9))
    dom = table(list(words), list(words.values()))
    held = table(list(words)[::2], list(words.values())[::2])
    return dom, held


def test_tau_cuts_the_selection():
    dom, held = _tau_problem()
    full = scoring.select_tokens(dom, 120, n_base=8, method="bpe", heldout=held)
    assert scoring.select_tokens(dom, 120, n_base=8, method="bpe", heldout=held, tau=0.0).merges.shape == full.merges.shape
    assert len(scoring.select_tokens(dom, 120, n_base=8, method="bpe", heldout=held, tau=1.0)) == 0
    tau = 0.002
    cut = scoring.select_tokens(dom, 120, n_base=8, method="bpe", heldout=held, tau=tau, tau_window=5)
    marginal = np.diff(np.concatenate(([0.0], full.curve)))
    window = [marginal[max(0, j - 4): j + 1].mean() for j in range(len(marginal))]
    expected = next((j for j, v in enumerate(window) if v < tau), len(window))
    assert len(cut) == expected and cut.tau == tau
    np.testing.assert_array_equal(cut.merges, full.merges[: len(cut)])
    auto = scoring.select_tokens(dom, 120, n_base=8, method="bpe", heldout=held, tau="auto")
    knee = int(np.argmax(full.curve / full.curve[-1] - np.arange(1, len(full) + 1) / len(full)))
    assert len(auto) == knee + 1 and 0 < len(auto) < len(full) and auto.tau > 0


def test_bad_inputs():
    dom, held = _tau_problem()
    with pytest.raises(ValueError, match="budget"):
        scoring.select_tokens(dom, -1, n_base=8)
    with pytest.raises(ValueError, match="igot, ig_only, frequency, bpe"):
        scoring.select_tokens(dom, 5, n_base=8, method="unigram")
    with pytest.raises(ValueError, match="heldout"):
        scoring.select_tokens(dom, 5, n_base=8, tau=0.1)
    with pytest.raises(ValueError, match="n_base"):
        scoring.select_tokens(dom, 5, n_base=4)
    with pytest.raises(TypeError, match="ids must be a 1-D uint32"):
        scoring.select_tokens(SimpleNamespace(offsets=dom.offsets, ids=dom.ids.astype(np.int64), counts=dom.counts),
                              5, n_base=8)
    with pytest.raises(TypeError, match="counts"):
        scoring.select_tokens(SimpleNamespace(offsets=dom.offsets, ids=dom.ids, counts=dom.counts.astype(np.int32)),
                              5, n_base=8)
    with pytest.raises(TypeError, match="WordTable"):
        scoring.select_tokens([[1, 2]], 5, n_base=8)
    with pytest.raises(TypeError, match="budget"):
        scoring.select_tokens(dom, 5.0, n_base=8)
    with pytest.raises(ValueError, match="base_tokens"):
        scoring.select_tokens(dom, 5, n_base=8, base_tokens=[b"a"])
    with pytest.raises(ValueError, match="max_n"):
        scoring.select_tokens(dom, 5, n_base=8, method="frequency", max_n=1)


def test_user_phi_errors_propagate():
    dom, _ = _tau_problem()

    def broken(ig, spec, count, pieces):
        raise ZeroDivisionError("from the user's φ")

    with pytest.raises(ZeroDivisionError):
        scoring.select_tokens(dom, 5, n_base=8, method=broken)
    with pytest.raises(ValueError, match="one score per candidate"):
        scoring.select_tokens(dom, 5, n_base=8, method=lambda ig, s, n, p: np.array([n, n]))
    # vectorised code that returns a one-element array is fine, and equals the plain count (bpe)
    vectorised = scoring.select_tokens(dom, 5, n_base=8, method=lambda ig, s, n, p: np.atleast_1d(n))
    np.testing.assert_array_equal(vectorised.merges, scoring.select_tokens(dom, 5, n_base=8, method="bpe").merges)


def test_import_does_not_load_numba():
    code = "import sys, igot.scoring; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_real_biomedical_selection_saves_heldout_tokens():
    from tokenizers import Tokenizer

    from igot import data
    from igot.corpus import encode_corpus
    from igot.counting import count_words

    tok = Tokenizer.from_file(str(data.tokenizer_path("smollm2")))

    def words(docs):
        enc = encode_corpus(tok, docs, progress=False)
        return count_words(np.asarray(enc.ids), np.asarray(enc.word_starts), np.asarray(enc.doc_starts))

    dom, held = words(data.load_corpus("hpo", "train")), words(data.load_corpus("hpo", "heldout"))
    sel = scoring.select_tokens(dom, 300, n_base=tok.get_vocab_size(), method="igot", heldout=held)
    assert len(sel) == 300 and 0.02 < sel.curve[-1] < 0.5
    assert sel.curve[-1] == pytest.approx(scoring.token_saving(held, sel), abs=1e-12)
    bpe = scoring.select_tokens(dom, 300, n_base=tok.get_vocab_size(), method="bpe", heldout=held)
    assert sel.curve[-1] >= bpe.curve[-1] - 1e-12
