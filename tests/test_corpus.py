"""igot.corpus against an independent reference: each pre-token of pre_tokenize_str through the model."""
from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from igot.corpus import (
    CorpusDecodeError,
    EncodedCorpus,
    ReadStats,
    _word_starts_from_offsets,
    encode_corpus,
    load_tokenizer,
    read_documents,
)

TRAIN_TEXT = [
    "Abnormality of the cardiovascular system, 2024 report.",
    "A protein-coding gene involved in cell-cell adhesion; see GO:0007155.",
    "Naïve café über straße — ÆØÅ, 東京 and emoji 🧬🧪 in text.",
    "def f(x):\n    return x  # code\n\n\tindented\ttabs",
    "Hypoplasia of the corpus callosum.  Two  spaces.\r\nWindows line.",
] * 20

DOCS = [
    "The cardiovascular system and the gene.",
    "  leading spaces, trailing spaces  ",
    "digits 1234567 and 3.14159, 東京🧬",
    "line one\nline two\n\n\tthird\r\n",
    "x",
    "Naïve café über Hypoplasia callosum adhesion",
]


def _byte_level_bpe() -> Tokenizer:
    """A small SmolLM2-style tokenizer: Digits(individual) then ByteLevel, BPE trained on TRAIN_TEXT."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(TRAIN_TEXT, trainer)
    return tok


def _metaspace_bpe(split: bool) -> Tokenizer:
    """A SentencePiece-style BPE: Metaspace pre-tokenizer, byte fallback."""
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(split=split)
    tok.decoder = decoders.Metaspace()
    alphabet = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>"] + alphabet, show_progress=False)
    tok.train_from_iterator(TRAIN_TEXT, trainer)
    return tok


LOCAL_TOKENIZERS = {"byte_level": _byte_level_bpe, "metaspace": lambda: _metaspace_bpe(True),
                    "metaspace_nosplit": lambda: _metaspace_bpe(False)}


@pytest.fixture(scope="module", params=sorted(LOCAL_TOKENIZERS))
def local_tok(request) -> Tokenizer:
    return LOCAL_TOKENIZERS[request.param]()


@pytest.fixture(scope="module")
def byte_tok() -> Tokenizer:
    return _byte_level_bpe()


def reference(tok: Tokenizer, docs: list[str]) -> EncodedCorpus:
    """Re-derive the stream without Encoding.word_ids: normalize, pre-tokenize, run the model per piece."""
    ids: list[int] = []
    word_starts: list[bool] = []
    doc_starts: list[bool] = []
    n_docs = n_bytes = 0
    for doc in docs:
        text = tok.normalizer.normalize_str(doc) if tok.normalizer else doc
        pieces = tok.pre_tokenizer.pre_tokenize_str(text) if tok.pre_tokenizer else [(text, (0, len(text)))]
        doc_ids: list[int] = []
        for piece, _ in pieces:
            piece_ids = [t.id for t in tok.model.tokenize(piece)]
            doc_ids += piece_ids
            word_starts += [True] + [False] * (len(piece_ids) - 1)
        # the reference is only trusted where it reproduces the tokenizer's own ids
        assert doc_ids == tok.encode(doc, add_special_tokens=False).ids
        if doc_ids:
            n_docs += 1
            n_bytes += len(doc.encode("utf-8"))
        doc_starts += [True] + [False] * (len(doc_ids) - 1) if doc_ids else []
        ids += doc_ids
    return EncodedCorpus(np.array(ids, np.uint32), np.array(word_starts, bool), np.array(doc_starts, bool),
                         n_docs=n_docs, n_bytes=n_bytes)


def assert_same(got: EncodedCorpus, want: EncodedCorpus) -> None:
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.word_starts, want.word_starts)
    np.testing.assert_array_equal(got.doc_starts, want.doc_starts)
    assert (got.n_docs, got.n_bytes, got.n_tokens) == (want.n_docs, want.n_bytes, want.n_tokens)
    assert got.ids.dtype == np.uint32 and got.word_starts.dtype == got.doc_starts.dtype == np.bool_


# ------------------------------------------------------------------------------------------- encoding


def test_encode_matches_reference(local_tok):
    got = encode_corpus(local_tok, DOCS, batch_size=4, progress=False)  # batches of 4 and 2
    assert_same(got, reference(local_tok, DOCS))
    assert got.n_docs == len(DOCS) == int(got.doc_starts.sum())
    assert not np.any(got.doc_starts & ~got.word_starts)


def test_nosplit_metaspace_is_one_word_per_document():
    tok = _metaspace_bpe(split=False)
    got = encode_corpus(tok, DOCS, progress=False)
    np.testing.assert_array_equal(got.word_starts, got.doc_starts)


@given(st.lists(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40), max_size=12),
       st.integers(1, 5))
def test_encode_matches_reference_property(docs, batch_size):
    tok = _HYPOTHESIS_TOK
    want = reference(tok, docs)
    if want.n_docs == 0:
        with pytest.raises(ValueError, match="no document"):
            encode_corpus(tok, docs, batch_size=batch_size, progress=False)
        return
    assert_same(encode_corpus(tok, docs, batch_size=batch_size, progress=False), want)


_HYPOTHESIS_TOK = _byte_level_bpe()


def test_word_starts_fallback_from_offsets_agrees_with_word_ids(local_tok):
    for doc in DOCS:
        encoding = local_tok.encode(doc, add_special_tokens=False)
        from_word_ids = np.r_[True, np.diff(encoding.word_ids) != 0][:len(encoding.ids)]
        np.testing.assert_array_equal(
            _word_starts_from_offsets(local_tok, doc, encoding.offsets), from_word_ids)


def test_empty_documents_are_skipped_and_empty_corpus_refused(byte_tok):
    got = encode_corpus(byte_tok, ["", "a b", ""], progress=False)
    assert got.n_docs == 1 and got.n_bytes == 3
    for docs in ([], ["", ""]):
        with pytest.raises(ValueError, match="no document"):
            encode_corpus(byte_tok, docs, progress=False)


def test_non_string_document_is_a_type_error(byte_tok):
    with pytest.raises(TypeError, match="document 1 is a bytes"):
        encode_corpus(byte_tok, ["ok", b"raw"], progress=False)


def test_shards_round_trip_and_equal_in_memory(byte_tok, tmp_path):
    docs = DOCS * 5
    in_memory = encode_corpus(byte_tok, docs, batch_size=3, progress=False)
    on_disk = encode_corpus(byte_tok, docs, out_dir=tmp_path, batch_size=3, shard_tokens=40, progress=False)
    assert_same(on_disk, in_memory)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    shards = list(EncodedCorpus.iter_shards(tmp_path))
    assert len(shards) == len(manifest["shards"]) > 2
    assert manifest["n_tokens"] == in_memory.n_tokens and manifest["n_bytes"] == in_memory.n_bytes
    assert all(s.doc_starts[0] and isinstance(s.ids, np.memmap) for s in shards)
    assert_same(EncodedCorpus.concatenate(shards), in_memory)

    # Re-encoding into the same folder as one shard replaces the corpus and removes the stale shards.
    encode_corpus(byte_tok, docs, out_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "doc_starts-00000.npy", "ids-00000.npy", "manifest.json", "word_starts-00000.npy"]
    single = EncodedCorpus.load(tmp_path)
    assert isinstance(single.ids, np.memmap)
    assert_same(single, in_memory)


def test_save_load_round_trip(byte_tok, tmp_path):
    corpus = encode_corpus(byte_tok, DOCS, progress=False)
    corpus.save(tmp_path / "enc")
    assert_same(EncodedCorpus.load(tmp_path / "enc"), corpus)
    np.testing.assert_array_equal(np.load(tmp_path / "enc" / "ids-00000.npy"), corpus.ids)  # plain .npy
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        EncodedCorpus.load(tmp_path)


def test_encode_reads_sources_and_tokenizer_paths(byte_tok, tmp_path):
    (tmp_path / "docs").mkdir()
    for i, doc in enumerate(DOCS):
        (tmp_path / "docs" / f"{i:02d}.txt").write_text(doc, encoding="utf-8", newline="")
    byte_tok.save(str(tmp_path / "tokenizer.json"))
    want = reference(byte_tok, DOCS)
    assert_same(encode_corpus(tmp_path, tmp_path / "docs", progress=False), want)  # HF folder + folder
    assert_same(encode_corpus(str(tmp_path / "tokenizer.json"), [tmp_path / "docs"], progress=False), want)


def test_load_tokenizer_errors_and_truncation_is_ignored(byte_tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(TypeError, match="got int"):
        load_tokenizer(3)
    truncating = Tokenizer.from_str(byte_tok.to_str())
    truncating.enable_truncation(max_length=2)
    got = encode_corpus(truncating, DOCS, progress=False)
    assert_same(got, reference(byte_tok, DOCS))
    assert truncating.truncation["max_length"] == 2  # the caller's tokenizer is left as it was


# -------------------------------------------------------------------------------------------- reading


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_doc_modes(tmp_path):
    text = "first line\nsecond line\n\n\n  \nthird block\r\nstill third\r\n\nlast\n"
    path = _write(tmp_path / "a.txt", text.encode())
    assert list(read_documents(path)) == [text]
    assert list(read_documents(path, doc_mode="blank_line")) == [
        "first line\nsecond line", "third block\r\nstill third", "last"]
    assert list(read_documents(path, doc_mode="line")) == [
        "first line", "second line", "third block", "still third", "last"]
    with pytest.raises(ValueError, match="doc_mode='lines'"):
        read_documents(path, doc_mode="lines")


def test_sources_folder_glob_and_list_in_deterministic_order(tmp_path):
    _write(tmp_path / "b" / "z.txt", b"z")
    _write(tmp_path / "b" / "a.txt", b"a")
    _write(tmp_path / "a.txt", b"top")
    _write(tmp_path / "b" / "c.jsonl", b'{"text": "json"}\n')
    _write(tmp_path / "b" / "ignored.bin", b"\xff")
    assert list(read_documents(tmp_path)) == ["top", "a", "json", "z"]
    assert list(read_documents(str(tmp_path / "**" / "*.txt"))) == ["top", "a", "z"]
    assert list(read_documents([tmp_path / "b" / "z.txt", tmp_path / "a.txt"])) == ["z", "top"]


def test_missing_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_documents(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="glob"):
        read_documents(str(tmp_path / "*.jsonl"))


def test_empty_corpus(tmp_path):
    _write(tmp_path / "empty.txt", b"")
    _write(tmp_path / "blank.txt", b" \n\n \n")
    with pytest.raises(ValueError, match="no non-empty document in 2 file"):
        list(read_documents(tmp_path))
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="no non-empty document in 0 file"):
        list(read_documents(tmp_path / "sub"))


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_jsonl(tmp_path, suffix):
    lines = [{"text": "alpha beta", "id": 1}, {"text": ""}, {"body": "gamma", "text": "delta\nepsilon"}]
    data = "\n".join(json.dumps(r) for r in lines).encode() + b"\n\n"
    path = _write(tmp_path / f"d{suffix}", gzip.compress(data) if suffix.endswith(".gz") else data)
    assert list(read_documents(path)) == ["alpha beta", "delta\nepsilon"]
    with pytest.raises(ValueError, match=rf"d{suffix}:1: no field 'body'.*text_field="):
        list(read_documents(path, text_field="body"))
    bad = _write(tmp_path / "bad.jsonl", b'{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: field 'text' is a int"):
        list(read_documents(bad))
    broken = _write(tmp_path / "broken.jsonl", b'{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match="broken.jsonl:2: not valid JSON"):
        list(read_documents(broken))


@pytest.mark.parametrize("doc_mode", ["file", "blank_line", "line"])
@pytest.mark.parametrize("name", ["bad.txt", "bad.txt.gz", "bad.jsonl"])
def test_invalid_utf8(tmp_path, name, doc_mode):
    if name.endswith(".jsonl"):
        lines = [b'{"text": "caf\xc3\xa9 ok"}\n', b'{"text": "bad \xff byte, cut \xe2\x82"}\n',
                 b'{"text": "\xed\xa0\x80 surrogate"}\n']
    else:
        lines = [b"caf\xc3\xa9 ok\n", b"\n", b"bad \xff byte, cut \xe2\x82\n", b"\xed\xa0\x80 surrogate\n"]
    data = b"".join(lines)
    path = _write(tmp_path / name, gzip.compress(data) if name.endswith(".gz") else data)
    first_bad = data.index(b"\xff")
    with pytest.raises(CorpusDecodeError, match=rf"{name}: invalid UTF-8 at byte offset {first_bad} .*"
                       "errors='replace'") as info:
        list(read_documents(path, doc_mode=doc_mode))
    assert isinstance(info.value, UnicodeDecodeError) and isinstance(info.value, ValueError)
    assert info.value.offset == first_bad

    decoded = data.decode("utf-8", "replace")
    # \xff, the cut sequence \xe2\x82 (one) and the encoded surrogate \xed\xa0\x80 (three: invalid UTF-8)
    n_replaced = decoded.count("\ufffd")
    assert n_replaced == 5
    stats = ReadStats()
    with pytest.warns(UnicodeWarning, match=f"{name}: replaced {n_replaced} invalid UTF-8"):
        docs = list(read_documents(path, doc_mode=doc_mode, errors="replace", stats=stats))
    if name.endswith(".jsonl"):
        assert docs == [json.loads(line)["text"] for line in decoded.splitlines()]
    elif doc_mode == "file":
        assert docs == [decoded]
    assert stats.n_replaced == n_replaced and "".join(docs).count("\ufffd") == n_replaced
    assert stats.n_files == 1 and stats.n_docs == len(docs)


def test_valid_utf8_replace_mode_counts_nothing(tmp_path):
    path = _write(tmp_path / "ok.txt", "plain \ufffd already here".encode())
    stats = ReadStats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(read_documents(path, errors="replace", stats=stats)) == ["plain \ufffd already here"]
    assert stats.n_replaced == 0


# ------------------------------------------------------------------------------ real tokenizers (fetched)


def _real_tokenizer(name: str) -> Tokenizer:
    from igot import data

    try:
        return Tokenizer.from_file(str(data.tokenizer_path(name)))
    except FileNotFoundError as exc:
        pytest.skip(f"{name} tokenizer not fetched (run `igot data fetch`): {exc}")


def _real_docs() -> list[str]:
    from igot import data

    try:
        return data.load_corpus("hpo")[:200] + data.load_corpus("sotu")[:3] + DOCS
    except FileNotFoundError as exc:
        pytest.skip(f"corpora not fetched (run `igot data fetch`): {exc}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gpt2", "mistral"])
def test_real_tokenizer_matches_reference(name, tmp_path):
    tok = _real_tokenizer(name)
    docs = _real_docs()
    want = reference(tok, docs)
    assert_same(encode_corpus(tok, docs, batch_size=64, progress=False), want)
    assert_same(encode_corpus(tok, docs, out_dir=tmp_path, shard_tokens=20_000, progress=False), want)


def test_cli_encode(byte_tok, tmp_path, capsys):
    from igot.cli import main

    _write(tmp_path / "docs" / "a.txt", "\n\n".join(DOCS).encode())
    byte_tok.save(str(tmp_path / "tokenizer.json"))
    out = tmp_path / "enc"
    assert main(["encode", str(tmp_path / "docs"), "--tokenizer", str(tmp_path), "--out", str(out),
                 "--doc-mode", "blank_line", "--no-progress"]) == 0
    want = reference(byte_tok, list(read_documents(tmp_path / "docs", doc_mode="blank_line")))
    assert_same(EncodedCorpus.load(out), want)
    assert f"{want.n_tokens:,} tokens" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "mistral", "bert"])
def test_token_bytes_sum_to_the_bytes_of_each_document(name, tmp_path):
    """Per-token bytes, summed per document, equal the UTF-8 bytes of the text up to the last token's end;
    for byte-level BPE (every byte covered) that is the whole document. They survive save/load."""
    from igot.data import tokenizer_path

    tok = Tokenizer.from_file(str(tokenizer_path(name)))
    docs = [d for d in TRAIN_TEXT if d.strip()]
    corpus = encode_corpus(tok, docs, token_bytes=True, out_dir=tmp_path / "enc", progress=False)
    starts = np.flatnonzero(corpus.doc_starts)
    per_doc = np.add.reduceat(np.asarray(corpus.token_bytes, np.int64), starts)
    for doc, got in zip(docs, per_doc):
        end = tok.encode(doc, add_special_tokens=False).offsets[-1][1]
        assert got == len(doc[:end].encode("utf-8"))
        if name == "smollm2":
            assert got == len(doc.encode("utf-8"))
    assert EncodedCorpus.load(tmp_path / "enc").token_bytes.dtype == np.uint32
    assert encode_corpus(tok, docs, progress=False).token_bytes is None
