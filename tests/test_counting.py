"""igot.counting (C++ core) against its pure-Python twin count_ngrams_reference and Counter references."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from igot.counting import (
    MIN_MEMORY_BUDGET,
    NgramTable,
    count_ngrams,
    count_ngrams_reference,
    count_words,
    count_words_reference,
    lookup_reference,
)

LARGE_IDS = [0, 1, 2**31, 2**32 - 2, 2**32 - 1]  # no value is a sentinel, the top ones included


@st.composite
def streams(draw, max_len: int = 120):
    """(ids uint32, word_starts, doc_starts) with a small alphabet (many repeats) or extreme ids."""
    n = draw(st.integers(0, max_len))
    alphabet = draw(st.sampled_from([[0, 1], [0, 1, 2, 3], LARGE_IDS, list(range(40))]))
    ids = np.array(draw(st.lists(st.sampled_from(alphabet), min_size=n, max_size=n)), dtype=np.uint32)
    flags = st.lists(st.booleans(), min_size=n, max_size=n)
    word_starts = draw(st.one_of(st.none(), flags.map(lambda f: np.array(f, dtype=bool))))
    doc_starts = draw(st.one_of(st.none(), flags.map(lambda f: np.array(f, dtype=bool))))
    return ids, word_starts, doc_starts


def assert_same_table(got, want) -> None:
    np.testing.assert_array_equal(got.offsets, want.offsets)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.counts, want.counts)
    assert got.offsets.dtype == np.int64 and got.ids.dtype == np.uint32 and got.counts.dtype == np.int64


@given(streams(), st.integers(2, 9), st.integers(1, 3), st.booleans(), st.sampled_from([1, 2, 3, 8]))
def test_count_ngrams_matches_reference(stream, max_n, min_count, cross_words, threads):
    ids, word_starts, doc_starts = stream
    got = count_ngrams(ids, word_starts, doc_starts, max_n=max_n, min_count=min_count, cross_words=cross_words,
                       threads=threads)
    want = count_ngrams_reference(ids, word_starts, doc_starts, max_n=max_n, min_count=min_count,
                                  cross_words=cross_words)
    assert_same_table(got, want)
    assert (got.max_n, got.min_count, got.cross_words) == (max_n, min_count, cross_words)


def test_reference_on_a_hand_example():
    # docs [5 6 | 7] [5 6 7 7]; words start at 0, 2, 3, 5
    ids = np.array([5, 6, 7, 5, 6, 7, 7], dtype=np.uint32)
    words = np.array([1, 0, 1, 1, 0, 1, 0], dtype=bool)
    docs = np.array([1, 0, 0, 1, 0, 0, 0], dtype=bool)
    inside_words = count_ngrams_reference(ids, words, docs, max_n=3).to_dict()
    assert inside_words == {(5, 6): 2, (7, 7): 1}
    across_words = count_ngrams_reference(ids, words, docs, max_n=3, cross_words=True).to_dict()
    assert across_words == {(5, 6): 2, (6, 7): 2, (7, 7): 1, (5, 6, 7): 2, (6, 7, 7): 1}
    assert count_ngrams(ids, words, docs, max_n=3, cross_words=True).to_dict() == across_words


@given(streams(max_len=200), st.booleans())
def test_threads_do_not_change_the_result(stream, cross_words):
    ids, word_starts, doc_starts = stream
    one = count_ngrams(ids, word_starts, doc_starts, max_n=6, cross_words=cross_words, threads=1)
    for threads in (2, 5, 0):
        assert_same_table(count_ngrams(ids, word_starts, doc_starts, max_n=6, cross_words=cross_words,
                                       threads=threads), one)


@st.composite
def distinct_heavy_streams(draw):
    """(ids, word_starts, doc_starts) of 300..3000 random tokens: most n-grams distinct, keys of 6, 9 or 17
    bits per id (packed into 64 or 128 bits), the regime where count_ngrams partitions its keys."""
    n = draw(st.integers(1000, 3000))
    vocab = draw(st.sampled_from([40, 300, 70_000]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ids = rng.integers(0, vocab, n).astype(np.uint32)
    word_starts = rng.random(n) < draw(st.sampled_from([0.1, 0.3, 0.6]))
    doc_starts = rng.random(n) < 0.01 if draw(st.booleans()) else None
    return ids, word_starts, doc_starts


@given(distinct_heavy_streams(), st.integers(3, 8), st.integers(1, 3), st.booleans(), st.sampled_from([1, 2, 3]),
       st.integers(MIN_MEMORY_BUDGET, 4 * MIN_MEMORY_BUDGET))
def test_partitioned_count_matches_reference(stream, max_n, min_count, cross_words, threads, budget):
    # Budgets this small outgrow the direct tables at once: the keys are partitioned by prefix, in one
    # pass or several, with the partition and pass boundaries wherever the drawn stream puts them.
    got = count_ngrams(*stream, max_n=max_n, min_count=min_count, cross_words=cross_words, threads=threads,
                       memory_budget=budget)
    want = count_ngrams_reference(*stream, max_n=max_n, min_count=min_count, cross_words=cross_words)
    assert_same_table(got, want)
    assert got.peak_table_bytes <= budget


@pytest.mark.parametrize("threads", [1, 3])
def test_each_counting_strategy_is_reached_and_exact(threads):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, 4000).astype(np.uint32)  # 9 bits per id: 8 ids pack into 128 bits
    word_starts = rng.random(4000) < 0.2
    wide = rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32)  # 32 bits per id: 5 exceed 128
    cases = [  # (stream, options, strategy, several passes)
        ((ids, word_starts, None), {}, "direct", False),
        ((ids, word_starts, None), {"memory_budget": 16 * MIN_MEMORY_BUDGET}, "partitioned", False),
        ((ids, word_starts, None), {"memory_budget": MIN_MEMORY_BUDGET}, "partitioned", True),
        ((ids, None, None), {"memory_budget": MIN_MEMORY_BUDGET, "max_n": 3}, "partitioned", True),
        ((wide, None, None), {"max_n": 5}, "hashed", False),
        ((wide, None, None), {"max_n": 5, "memory_budget": MIN_MEMORY_BUDGET}, "hashed", True),
    ]
    for stream, options, strategy, several_passes in cases:
        options = {"max_n": 8, **options}
        got = count_ngrams(*stream, threads=threads, **options)
        assert (got.strategy, got.passes > 1) == (strategy, several_passes), options
        assert_same_table(got, count_ngrams_reference(*stream, **options))


@given(streams(max_len=200), st.data())
def test_merge_of_parts_split_at_a_document_equals_one_pass(stream, data):
    ids, word_starts, doc_starts = stream
    cut = data.draw(st.integers(0, len(ids)))
    doc_starts = np.zeros(len(ids), dtype=bool) if doc_starts is None else doc_starts.copy()
    if cut < len(ids):
        doc_starts[cut] = True
    parts = [count_ngrams(ids[a:b], None if word_starts is None else word_starts[a:b], doc_starts[a:b], max_n=5)
             for a, b in ((0, cut), (cut, len(ids)))]
    whole = count_ngrams(ids, word_starts, doc_starts, max_n=5)
    assert_same_table(NgramTable.merge(*parts, threads=2), whole)
    assert_same_table(NgramTable.merge(*parts, min_count=2), count_ngrams(ids, word_starts, doc_starts, max_n=5,
                                                                          min_count=2))


@given(streams(), streams(), st.booleans())
def test_lookup_counts_the_table_ngrams_in_another_stream(domain, general, cross_words):
    table = count_ngrams(*domain, max_n=4, cross_words=cross_words)
    want = count_ngrams_reference(*general, max_n=4, cross_words=cross_words).to_dict()
    expected = [want.get(table.ngram(i), 0) for i in range(len(table))]
    assert lookup_reference(table, *general).tolist() == expected
    for threads in (1, 3):
        got = table.lookup(*general, threads=threads)
        assert got.dtype == np.int64
        assert got.tolist() == expected


@given(streams(max_len=200))
def test_count_words_matches_a_counter(stream):
    ids, word_starts, doc_starts = stream
    if word_starts is None:
        word_starts = np.zeros(len(ids), dtype=bool)
    got = count_words(ids, word_starts, doc_starts, threads=2)
    starts = [i for i in range(len(ids)) if i == 0 or word_starts[i] or (doc_starts is not None and doc_starts[i])]
    words = Counter(tuple(ids[a:b].tolist()) for a, b in zip(starts, starts[1:] + [len(ids)]))
    assert got.to_dict() == dict(words)
    assert_same_table(got, count_words_reference(ids, word_starts, doc_starts))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_small_memory_budget_takes_more_passes_and_stays_exact(threads):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, 6000).astype(np.uint32)
    doc_starts = rng.random(6000) < 0.01
    want = count_ngrams_reference(ids, None, doc_starts, max_n=8, min_count=2, cross_words=True)
    got = count_ngrams(ids, None, doc_starts, max_n=8, min_count=2, cross_words=True, threads=threads,
                       memory_budget=MIN_MEMORY_BUDGET)
    assert got.passes > 1
    assert got.peak_table_bytes <= MIN_MEMORY_BUDGET
    assert_same_table(got, want)
    unbounded = count_ngrams(ids, None, doc_starts, max_n=8, min_count=2, cross_words=True, threads=threads)
    assert unbounded.passes == 1 and unbounded.peak_table_bytes > MIN_MEMORY_BUDGET


@given(streams(), st.booleans())
def test_save_load_round_trip(tmp_path_factory, stream, cross_words):
    table = count_ngrams(*stream, max_n=4, min_count=1, cross_words=cross_words)
    path = table.save(tmp_path_factory.mktemp("t") / "table.igc")
    loaded = NgramTable.load(path)
    assert_same_table(loaded, table)
    assert (loaded.max_n, loaded.min_count, loaded.cross_words) == (4, 1, cross_words)


@pytest.fixture
def saved_table(tmp_path):
    ids = np.array([1, 2, 3, 1, 2, 3, 4, 1, 2], dtype=np.uint32)
    return count_ngrams(ids, max_n=3).save(tmp_path / "t.igc")


@pytest.mark.parametrize("damage", ["flip_payload", "flip_header", "truncate", "extend", "magic", "version", "empty"])
def test_damaged_files_raise_value_error_naming_the_file(saved_table, damage):
    data = bytearray(saved_table.read_bytes())
    if damage == "flip_payload":
        data[-3] ^= 0x40
    elif damage == "flip_header":
        data[20] ^= 0x01
    elif damage == "truncate":
        data = data[:-5]
    elif damage == "extend":
        data += b"\0"
    elif damage == "magic":
        data[:8] = b"NOTATABL"
    elif damage == "version":
        data[8] = 99
    else:
        data = bytearray()
    saved_table.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="t.igc"):
        NgramTable.load(saved_table)


def test_save_is_atomic_and_leaves_no_temp_file(tmp_path):
    table = count_ngrams(np.array([1, 2, 1, 2], dtype=np.uint32), max_n=2)
    table.save(tmp_path / "a.igc")
    table.save(tmp_path / "a.igc")  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["a.igc"]


def test_input_errors_name_the_fix():
    ids = np.arange(5, dtype=np.uint32)
    with pytest.raises(TypeError, match=r"astype\(np.uint32\)"):
        count_ngrams(ids.astype(np.int64))
    with pytest.raises(TypeError, match="np.asarray"):
        count_ngrams([1, 2, 3])
    with pytest.raises(TypeError, match="word_starts"):
        count_ngrams(ids, np.ones(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="doc_starts"):
        count_ngrams(ids, None, np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="1-D"):
        count_ngrams(ids.reshape(1, 5))
    for bad in ({"max_n": 1}, {"max_n": 256}, {"min_count": 0}, {"threads": -1}, {"memory_budget": 1000}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            count_ngrams(ids, **bad)
    with pytest.raises(ValueError, match="word_starts"):
        count_words(ids, None)
    with pytest.raises(TypeError, match="uint32"):
        count_ngrams(ids).lookup(ids.astype(np.int32))
    with pytest.raises(ValueError, match="cross_words"):
        NgramTable.merge(count_ngrams(ids), count_ngrams(ids, cross_words=True))


def test_empty_and_non_contiguous_inputs():
    empty = count_ngrams(np.zeros(0, dtype=np.uint32))
    assert len(empty) == 0 and empty.offsets.tolist() == [0]
    assert len(count_words(np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=bool))) == 0
    assert count_ngrams(np.zeros(0, dtype=np.uint32)).lookup(np.arange(3, dtype=np.uint32)).tolist() == []
    strided = np.array([7, 0, 8, 0, 7, 0, 8], dtype=np.uint32)[::2]
    assert count_ngrams(strided, max_n=2).to_dict() == {(7, 8): 2, (8, 7): 1}
    read_only = np.array([7, 8, 7, 8], dtype=np.uint32)
    read_only.setflags(write=False)  # what a memory-mapped EncodedCorpus hands over
    assert count_ngrams(read_only, max_n=2).to_dict() == {(7, 8): 2, (8, 7): 1}


def test_an_error_inside_the_workers_reaches_the_caller_as_value_error():
    # One pre-token longer than a table key may be: the worker that meets it stops the others, they are
    # joined, and its std::length_error is rethrown on the calling thread.
    n = (1 << 24) + 1
    ids = np.zeros(n, dtype=np.uint32)
    word_starts = np.zeros(n, dtype=bool)
    with pytest.raises(ValueError, match="longer than the limit"):
        count_words(ids, word_starts, threads=2)


def _fetched(*names: str):
    """igot.data, after skipping the test when one of the named items is not fetched at all.

    A damaged item is not skipped: loading it raises, and the test fails with the message that says how
    to repair the cache.
    """
    data = pytest.importorskip("igot.data")
    missing = [name for name in names if data.status()[name] == "not fetched"]
    if missing:
        pytest.skip(f"real data not fetched (igot data fetch --only {' '.join(missing)})")
    return data


@pytest.mark.slow
def test_real_hpo_corpus_matches_the_reference():
    from igot.corpus import encode_corpus

    data = _fetched("hpo", "smollm2")
    docs = data.load_corpus("hpo", "train")
    tokenizer = data.tokenizer_path("smollm2")
    corpus = encode_corpus(tokenizer, docs[:3000], progress=False)
    stream = (corpus.ids, corpus.word_starts, corpus.doc_starts)
    got = count_ngrams(*stream, max_n=8, threads=2)
    assert_same_table(got, count_ngrams_reference(*stream, max_n=8))
    across = count_ngrams(*stream, max_n=8, min_count=2, cross_words=True, threads=2, memory_budget=1 << 20)
    assert across.passes > 1
    want = count_ngrams_reference(*stream, max_n=8, min_count=2, cross_words=True)
    assert_same_table(across, want)
    words = count_words(*stream)
    assert_same_table(words, count_words_reference(*stream))


@pytest.mark.slow
def test_cli_count_saves_a_table_equal_to_the_api(tmp_path, capsys):
    from igot.cli import main
    from igot.corpus import encode_corpus

    tokenizer = _fetched("smollm2").tokenizer_path("smollm2")
    docs = ["Abnormal heart rate.", "Abnormal heart morphology and abnormal heart rate."]
    (tmp_path / "a.txt").write_text("\n\n".join(docs))
    out = tmp_path / "t.igc"
    assert main(["count", "--tokenizer", str(tokenizer), "--doc-mode", "blank_line", "--min-count", "1",
                 "--max-n", "4", "--cross-words", "--out", str(out), "--no-progress", str(tmp_path / "a.txt")]) == 0
    printed = capsys.readouterr().out
    assert "2 documents" in printed and "top" in printed
    corpus = encode_corpus(tokenizer, docs, progress=False)
    want = count_ngrams(corpus.ids, corpus.word_starts, corpus.doc_starts, max_n=4, cross_words=True)
    assert_same_table(NgramTable.load(out), want)
    (tmp_path / "empty.txt").write_text("")
    assert main(["count", "--tokenizer", str(tokenizer), "--out", str(tmp_path / "e.igc"),
                 str(tmp_path / "empty.txt")]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "e.igc").exists()
