"""igot._wordpiece_proof: entries it proves safe never lengthen a WordPiece encoding nor change its [UNK]s.

The reference is exhaustive: every word up to WORD_LEN letters over a small alphabet, encoded by a plain
greedy longest-match (checked against Hugging Face WordPiece itself) with the base and the extended
vocabulary. Random vocabularies and candidates come from hypothesis.
"""
from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers

from igot import data
from igot._wordpiece_proof import safe_entries

ALPHABET = "abc"
WORD_LEN = 7
WORDS = ["".join(w) for n in range(1, WORD_LEN + 1) for w in itertools.product(ALPHABET, repeat=n)]


def greedy(word: str, initial: set[str], continuation: set[str]) -> list[str] | None:
    """Greedy longest-match-first pieces of word (continuations without "##"); None for [UNK]."""
    pieces, start = [], 0
    while start < len(word):
        pool = initial if start == 0 else continuation
        end = next((e for e in range(len(word), start, -1) if word[start:e] in pool), None)
        if end is None:
            return None
        pieces.append(word[start:end])
        start = end
    return pieces


def counterexample(initial: set[str], continuation: set[str], new: list[tuple[bool, str]]) -> str | None:
    """A word of WORDS that the extended vocabulary makes longer or changes to/from [UNK], if any."""
    return next(iter(_effect(initial, continuation, new)[0]), None)


def _effect(initial: set[str], continuation: set[str], new: list[tuple[bool, str]]) -> tuple[list[str], int]:
    """(the words of WORDS the extended vocabulary breaks, how many words it encodes differently)."""
    ext_initial = initial | {p for init, p in new if init}
    ext_continuation = continuation | {p for init, p in new if not init}
    broken, changed = [], 0
    for word in WORDS:
        old, fresh = greedy(word, initial, continuation), greedy(word, ext_initial, ext_continuation)
        if (old is None) != (fresh is None) or (old is not None and len(fresh) > len(old)):
            broken.append(word)
        changed += fresh != old
    return broken, changed


_PIECES = st.text(ALPHABET, min_size=1, max_size=4)


@st.composite
def vocabularies(draw):
    """(initial, continuation, candidates): most single letters present, candidates not in the base."""
    initial = draw(st.sets(_PIECES, max_size=12)) | set(draw(st.sets(st.sampled_from(ALPHABET), min_size=2)))
    continuation = draw(st.sets(_PIECES, max_size=12)) | set(draw(st.sets(st.sampled_from(ALPHABET), min_size=2)))
    candidates = draw(st.lists(st.tuples(st.booleans(), st.text(ALPHABET, min_size=2, max_size=5)),
                               min_size=1, max_size=6, unique=True))
    new = [(init, p) for init, p in candidates if p not in (initial if init else continuation)]
    return initial, continuation, new


def test_entries_proved_safe_never_lengthen_any_word():
    accepted, changed = [], []  # an always-reject proof would pass the property alone: count what it accepts

    @settings(deadline=None)
    @given(vocabularies(), st.integers(1, 6))
    def check(vocab, limit):
        initial, continuation, new = vocab
        for cap in (None, limit):
            proved = safe_entries(initial, continuation, new, limit=cap)
            kept = [entry for entry, ok in zip(new, proved) if ok]
            broken, n_changed = _effect(initial, continuation, kept)
            assert broken == []
            assert cap is None or len(kept) <= cap
            accepted.append(len(kept))
            changed.append(n_changed)

    check()
    # most random candidates are unsafe, but a working proof accepts some that really change encodings
    assert sum(accepted) >= len(accepted) // 4 and sum(c > 0 for c in changed) >= len(changed) // 8, \
        (sum(accepted), sum(c > 0 for c in changed), len(accepted))


def test_safety_belongs_to_the_set_not_to_each_entry():
    initial, continuation = {"a", "b"}, {"a", "b", "c", "cba"}
    # "##ac" alone breaks "aacba" ([a, ##a, ##cba] -> [a, ##ac, ##b, ##a]); with "##ba" it does not
    assert counterexample(initial, continuation, [(False, "ac")]) == "aacba"
    assert counterexample(initial, continuation, [(False, "ac"), (False, "ba")]) is None
    assert safe_entries(initial, continuation, [(False, "ac")]) == [False]
    assert safe_entries(initial, continuation, [(False, "ac"), (False, "ba")]) == [True, True]
    assert safe_entries(initial, continuation, [(False, "ac"), (False, "ba")], limit=1) == [False, True]


def test_a_real_counterexample_is_refused():
    initial, continuation = {"a", "b", "c"}, {"a", "b", "c", "bcc"}
    entry = [(True, "ab")]  # "abcc": [a, ##bcc] becomes [ab, ##c, ##c]
    assert greedy("abcc", initial, continuation) == ["a", "bcc"]
    assert greedy("abcc", initial | {"ab"}, continuation) == ["ab", "c", "c"]
    assert counterexample(initial, continuation, entry) is not None
    assert safe_entries(initial, continuation, entry) == [False]


def test_suffix_closed_vocabulary_accepts_every_entry():
    new = [(True, "ca"), (True, "bcab"), (False, "abca"), (False, "cc")]
    initial = {"a", "b", "c", "ab", "abc"}
    # closed under suffixes, the new entries' suffixes included: greedy is then optimal and monotone
    continuation = {p[k:] for p in initial | {"bca", "cab"} | {p for _, p in new} for k in range(1, len(p))}
    continuation |= set(ALPHABET)
    assert safe_entries(initial, continuation, new) == [True] * len(new)
    assert counterexample(initial, continuation, new) is None


def test_greedy_reference_matches_huggingface_wordpiece():
    initial, continuation = {"a", "ab", "b", "c"}, {"b", "c", "bc", "a"}
    vocab = {p: i for i, p in enumerate(sorted(initial) + ["##" + p for p in sorted(continuation)] + ["[UNK]"])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    for word in WORDS[:400]:
        pieces = greedy(word, initial, continuation)
        expected = ["[UNK]"] if pieces is None else [pieces[0]] + ["##" + p for p in pieces[1:]]
        assert tok.encode(word).tokens == expected, word


@pytest.mark.slow
def test_bert_entry_refused_by_the_proof_really_lengthens_a_word():
    bert = Tokenizer.from_file(str(data.tokenizer_path("bert")))
    vocab = bert.get_vocab()
    initial = [p for p in vocab if not p.startswith("##") and not p.startswith("[")]
    continuation = [p[2:] for p in vocab if p.startswith("##") and len(p) > 2]
    assert safe_entries(initial, continuation, [(True, "activates"), (True, "extracellular")]) == [False, True]
    spec = json.loads(bert.to_str())
    spec["model"]["vocab"]["activates"] = len(vocab)  # what a naive writer would do
    naive = Tokenizer.from_str(json.dumps(spec))
    word = "activatescribe"
    assert bert.encode(word, add_special_tokens=False).tokens == ["activate", "##scribe"]
    assert naive.encode(word, add_special_tokens=False).tokens == ["activates", "##cr", "##ibe"]
