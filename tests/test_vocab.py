"""igot.vocab: guarantees G1-G4 of the extended tokenizer, per model type, on real tokenizers and corpora.

The writer is tested from merges made by a tiny greedy pair merger that lives here (independent of
igot.scoring), on exact base segmentations of real domain text; the full pipeline (extend_tokenizer with
igot.counting and igot.scoring) is tested separately. G2/G3 are checked by hypothesis over random
Unicode mixed with domain words (so the new merges fire) and over whole held-out corpora.
"""
from __future__ import annotations

import collections
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from igot import data
from igot._vocab_check import Checked, WordCheck, count_corpus
from igot._vocab_models import WORDPIECE_POOL
from igot.vocab import ExtendedTokenizer, apply_selection, extend_tokenizer

KINDS = ("smollm2", "gpt2", "mistral", "bert", "unigram", "wordpiece")
WORDPIECE_KINDS = ("bert", "wordpiece")
BUDGET = 300  # entries per extended test tokenizer
N_DOMAIN_DOCS = 2000  # HPO train documents the test merges are learnt from


# ------------------------------------------------------------------------------------ test harness


def greedy_pair_merges(tokenizer: Tokenizer, docs: list[str], budget: int) -> np.ndarray:
    """Plain BPE training on base segmentations: repeatedly merge the most frequent adjacent pair.

    Words are the tokenizer's own pre-tokens (Encoding.word_ids); returns int64 [M, 2] merges where an
    id >= n_base names entry id - n_base, the Selection format of igot.scoring.
    """
    n_base = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    words: collections.Counter = collections.Counter()
    for enc in tokenizer.encode_batch(docs, add_special_tokens=False):
        current, last = [], None
        for tok_id, word_id, token in zip(enc.ids, enc.word_ids, enc.tokens):
            if word_id != last and current:
                words[tuple(current)] += 1
                current = []
            last = word_id
            if token in special or token.startswith("<0x") or token in ("[UNK]", "<unk>"):
                if current:
                    words[tuple(current)] += 1
                current, last = [], None
                continue
            current.append(tok_id)
        if current:
            words[tuple(current)] += 1
    seqs = [list(w) for w in words]
    counts = list(words.values())
    pairs: collections.Counter = collections.Counter()
    where = collections.defaultdict(set)  # pair -> indices of the words that hold it
    for k, word in enumerate(seqs):
        for pair in zip(word, word[1:]):
            pairs[pair] += counts[k]
            where[pair].add(k)
    merges = []
    for j in range(budget):
        if not pairs:
            break
        (a, b), count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        if count < 2:
            break
        merges.append((a, b))
        for k in list(where[(a, b)]):
            word = seqs[k]
            for pair in zip(word, word[1:]):
                pairs[pair] -= counts[k]
                if pairs[pair] <= 0:
                    del pairs[pair]
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(n_base + j)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            seqs[k] = out
            for pair in zip(out, out[1:]):
                pairs[pair] += counts[k]
                where[pair].add(k)
    return np.array(merges, dtype=np.int64).reshape(-1, 2)


class HandSelection:
    """The part of igot.scoring.Selection that the writer reads."""

    def __init__(self, merges: np.ndarray) -> None:
        self.merges = merges
        self.scores = np.arange(len(merges), 0, -1, dtype=np.float64)


def training_text() -> list[str]:
    return data.load_corpus("hpo")[:1000] + data.load_corpus("sotu")[:2]


def train_unigram() -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(training_text(), trainers.UnigramTrainer(
        vocab_size=1500, special_tokens=["<unk>", "</s>"], unk_token="<unk>"))
    return tok


def train_wordpiece() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(training_text(), trainers.WordPieceTrainer(
        vocab_size=1200, special_tokens=["[UNK]", "[CLS]", "[SEP]"]))
    return tok


def base_tokenizer(kind: str) -> Tokenizer:
    if kind == "unigram":
        return train_unigram()
    if kind == "wordpiece":
        return train_wordpiece()
    return Tokenizer.from_file(str(data.tokenizer_path(kind)))


@pytest.fixture(scope="module")
def domain_docs() -> list[str]:
    return data.load_corpus("hpo")[:N_DOMAIN_DOCS]


@pytest.fixture(scope="module")
def extended(domain_docs) -> dict[str, ExtendedTokenizer]:
    out = {}
    for kind in KINDS:
        base = base_tokenizer(kind)
        source = data.tokenizer_path(kind).parent if kind in data.TOKENIZERS else base  # HF folder: side files
        # WordPiece writes only the entries proved safe: offer it more candidates, as extend_tokenizer does
        offered = BUDGET * (WORDPIECE_POOL if kind in WORDPIECE_KINDS else 1)
        out[kind] = apply_selection(source, HandSelection(greedy_pair_merges(base, domain_docs, offered)),
                                    budget=BUDGET)
    return out


def assert_g2_g3(ext: ExtendedTokenizer, texts: list[str]) -> tuple[int, int]:
    """Check G2 and G3 on every text; return the total (base, new) token counts."""
    old = ext.base.encode_batch(texts, add_special_tokens=False)
    new = ext.tokenizer.encode_batch(texts, add_special_tokens=False)
    old_text = ext.base.decode_batch([e.ids for e in old], skip_special_tokens=False)
    new_text = ext.tokenizer.decode_batch([e.ids for e in new], skip_special_tokens=False)
    for text, a, b, x, y in zip(texts, old, new, old_text, new_text):
        assert len(b.ids) <= len(a.ids), (text, a.tokens, b.tokens)  # G3
        assert y == x, (text, a.tokens, b.tokens)  # G2
    return sum(len(e.ids) for e in old), sum(len(e.ids) for e in new)


# ------------------------------------------------------------------------------------ G1: ids


@pytest.mark.parametrize("kind", KINDS)
def test_g1_base_ids_kept_new_ids_appended(extended, kind):
    ext = extended[kind]
    base_vocab = ext.base.get_vocab(with_added_tokens=True)
    new_vocab = ext.tokenizer.get_vocab(with_added_tokens=True)
    assert all(new_vocab[t] == i for t, i in base_vocab.items())
    first = max(base_vocab.values()) + 1
    assert [t.id for t in ext.new_tokens] == list(range(first, first + len(ext.new_tokens)))
    assert {t.token: t.id for t in ext.new_tokens} == {t: i for t, i in new_vocab.items() if t not in base_vocab}
    assert len(ext.new_tokens) > BUDGET // 2  # the merges were real, and most became new entries


@pytest.mark.parametrize("kind", KINDS)
def test_no_added_tokens_for_domain_terms(extended, kind):
    ext = extended[kind]
    assert ext.tokenizer.get_added_tokens_decoder() == ext.base.get_added_tokens_decoder()
    assert json.loads(ext.tokenizer.to_str())["added_tokens"] == json.loads(ext.base.to_str())["added_tokens"]


@pytest.mark.parametrize("kind", KINDS)
def test_new_token_pieces_decode_to_the_token(extended, kind):
    ext = extended[kind]
    for token in ext.new_tokens[:200]:
        assert ext.tokenizer.decode([token.id]) == ext.base.decode(list(token.pieces)), token


# ------------------------------------------------------------------------------------ G2 / G3


def _domain_words(ext: ExtendedTokenizer, docs: list[str]) -> list[str]:
    words = [ext.tokenizer.decode([t.id]) for t in ext.new_tokens]
    return words + " ".join(docs[:50]).split()


_UNICODE = st.text(st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S", "Z", "Cc")), max_size=12)
_EXOTIC = st.sampled_from(["😀", "👩‍🔬", "中文", "日本語", "e\u0301", "\u0303", "  ", "\t\t", "\n\n\n", "\r\n",
                           "\x00", "\x1b[0m", "ﬁ", "Ⅻ", "١٢٣", "İ", "ß", "\u200b", "<s>", "</s>", "[CLS]",
                           "<|endoftext|>", "<|im_start|>"])


@st.composite
def mixed_text(draw, words: list[str]) -> str:
    parts = draw(st.lists(st.one_of(st.sampled_from(words), _UNICODE, _EXOTIC), min_size=1, max_size=25))
    seps = draw(st.lists(st.sampled_from(["", " ", "  ", "\n", "-", "(", ") "]), min_size=len(parts),
                         max_size=len(parts)))
    return "".join(s + p for s, p in zip(seps, parts))


@pytest.mark.parametrize("kind", KINDS)
def test_g2_g3_random_unicode_with_domain_words(extended, domain_docs, kind):
    ext = extended[kind]
    words = _domain_words(ext, domain_docs)
    fired = []

    @given(mixed_text(words))
    def check(text):
        assert_g2_g3(ext, [text])
        fired.append(len(ext.tokenizer.encode(text).ids) < len(ext.base.encode(text).ids))

    check()
    assert any(fired), "no example used a new entry: the property test did not exercise the merges"


@pytest.mark.parametrize("kind", KINDS)
def test_g2_g3_whole_heldout_corpora(extended, kind):
    ext = extended[kind]
    for name in ("hpo", "go"):
        texts = data.load_corpus(name, "heldout")
        # the whole GO held-out split (6.9k docs) for the shipped default, a 2k-doc slice for the others
        base, new = assert_g2_g3(ext, texts if name == "hpo" or kind == "smollm2" else texts[:2000])
        assert new < base  # learnt on HPO train, the entries also shorten unseen domain text


# ------------------------------------------------------------------------------------ word-level counts and check


def word_check(base: Tokenizer, new: Tokenizer, corpora: dict[str, list[str]], tok_json: dict | None = None
               ) -> Checked:
    """What extend_tokenizer's verification finds: counts and offences from the word-level check."""
    tok_json = tok_json or json.loads(base.to_str())
    counted = {name: (texts, count_corpus(base, texts, tok_json, False)) for name, texts in corpora.items()}
    return WordCheck(base, tok_json, counted).run(new, check=True)


def document_tokens(tok: Tokenizer, texts: list[str]) -> int:
    return sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))


EDGE_DOCS = ["", "\x00", "naïve 😀 [CLS] <|endoftext|> </s> <unk> ∑ 中文 ﬁ Ⅻ", "x" * 300, "\n\n",
             "İß e\u0301"]


@pytest.mark.parametrize("kind", KINDS)
def test_word_level_counts_equal_whole_document_encodes(extended, kind):
    ext = extended[kind]
    corpora = {"hpo": data.load_corpus("hpo", "heldout")[:1500], "go": data.load_corpus("go", "heldout")[:500],
               "general": data.load_corpus("sotu", "heldout")[:3] + data.load_corpus("moby_dick", "heldout")[:2],
               "code": data.load_corpus("pystdlib", "heldout")[:3], "edge": EDGE_DOCS}
    checked = word_check(ext.base, ext.tokenizer, corpora)
    assert checked.offending == []
    assert_g2_g3(ext, [t for texts in corpora.values() for t in texts])  # the documents agree
    for name, texts in corpora.items():
        assert checked.counts[name] == (document_tokens(ext.base, texts), document_tokens(ext.tokenizer, texts))
    assert checked.counts["hpo"][1] < checked.counts["hpo"][0]
    n_docs = sum(map(len, corpora.values()))
    assert checked.distinct_words > 5000 and checked.whole_documents < n_docs // 20  # really word by word


@pytest.mark.parametrize("kind", KINDS)
def test_word_level_counts_equal_whole_document_encodes_on_random_text(extended, domain_docs, kind):
    ext = extended[kind]
    words, tok_json = _domain_words(ext, domain_docs), json.loads(ext.base.to_str())

    @settings(deadline=None, max_examples=40)
    @given(st.lists(mixed_text(words), min_size=1, max_size=5))
    def check(docs):
        assume(document_tokens(ext.base, docs) > 0)
        checked = word_check(ext.base, ext.tokenizer, {"docs": docs}, tok_json)
        assert checked.offending == []
        assert checked.counts["docs"] == (document_tokens(ext.base, docs), document_tokens(ext.tokenizer, docs))

    check()


def test_byte_fallback_words_are_checked_word_by_word(extended):
    ext = extended["mistral"]  # SentencePiece BPE: a character without a piece becomes its UTF-8 bytes
    docs = ["Line one\nline two 🧬 naïve\n\n  ∑ x² 漢", "DNA 🧬🧬, ꙮ 𝔸x\n"] + \
        data.load_corpus("moby_dick", "heldout")[:2] + data.load_corpus("hpo", "heldout")[:200]
    tokens = {t for e in ext.base.encode_batch(docs, add_special_tokens=False) for t in e.tokens}
    assert {"<0x0A>", "<0xF0>"} <= tokens  # newlines and emoji really are byte-fallback tokens here
    checked = word_check(ext.base, ext.tokenizer, {"docs": docs})
    assert checked.offending == [] and checked.whole_documents == 0  # their words were rebuilt and checked
    assert checked.counts["docs"] == (document_tokens(ext.base, docs), document_tokens(ext.tokenizer, docs))


def _metaspace_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], split: bool = True) -> Tokenizer:
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=split)
    tok.decoder = decoders.Metaspace(prepend_scheme="first", split=split)
    return tok


def _wordpiece(vocab: list[str]) -> Tokenizer:
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(cleanup=True)
    return tok


def broken_extensions() -> dict[str, tuple[Tokenizer, Tokenizer, list[str]]]:
    """(base, a bad "extension", its words): each breaks G2 or G3 on some text, as a faulty writer could."""
    bpe = {"▁": 0, "a": 1, "b": 2, "c": 3, "▁a": 4, "▁ab": 5, "▁abc": 6, "bc": 7}
    base_merges = [("▁", "a"), ("▁a", "b"), ("▁ab", "c")]
    spaced = {"▁": 0, "a": 1, "b": 2, "▁a": 3, "▁b": 4, "▁a▁b": 5}
    spaced_merges = [("▁", "a"), ("▁", "b")]
    pieces = ["[UNK]", "x", "n", "##'", "##t", "##'t"]
    bert = Tokenizer.from_file(str(data.tokenizer_path("bert")))
    naive = json.loads(bert.to_str())
    naive["model"]["vocab"]["activates"] = bert.get_vocab_size()
    return {
        # a new merge ranked before the base merges: "abc" becomes [▁a, bc] instead of [▁abc] (G3)
        "bpe_merge_first": (_metaspace_bpe(bpe, base_merges), _metaspace_bpe(bpe, [("b", "c")] + base_merges),
                            ["abc", "bc", "a", "ab", "c"]),
        # SentencePiece without splitting: the Metaspace decoder drops every ▁ of the first token, so a new
        # "▁a▁b" decodes "a b" as "ab" at the start of a document only (G2)
        "metaspace_first_token": (_metaspace_bpe(spaced, spaced_merges, split=False),
                                  _metaspace_bpe(spaced, spaced_merges + [("▁a", "▁b")], split=False),
                                  ["a", "b"]),
        # the WordPiece decoder's cleanup: a new word-initial "n't" glues itself to the word before (G2)
        "wordpiece_cleanup": (_wordpiece(pieces), _wordpiece(pieces + ["n't"]), ["x", "n't", "t"]),
        # greedy longest match is not monotone: "activatescribe" -> [activates, ##cr, ##ibe] (G3)
        "wordpiece_greedy": (bert, Tokenizer.from_str(json.dumps(naive)), ["activatescribe", "the", "activate"]),
    }


def _breaks(base: Tokenizer, new: Tokenizer, text: str) -> bool:
    a, b = (t.encode(text, add_special_tokens=False).ids for t in (base, new))
    return len(b) > len(a) or base.decode(a, skip_special_tokens=False) != new.decode(b, skip_special_tokens=False)


@pytest.mark.parametrize("name", ["bpe_merge_first", "metaspace_first_token", "wordpiece_cleanup",
                                  "wordpiece_greedy"])
def test_word_level_check_finds_every_broken_document(name):
    base, new, words = broken_extensions()[name]
    docs = [" ".join(combo) for n in (1, 2, 3) for combo in itertools.product(words, repeat=n)]
    broken = [doc for doc in docs if _breaks(base, new, doc)]
    assert broken  # the bad extension really breaks documents
    for doc in broken:  # never misses: a document that breaks G2/G3 holds a word the check flags
        assert word_check(base, new, {"doc": [doc]}).offending, doc
    checked = word_check(base, new, {"docs": docs})
    assert checked.offending and checked.culprits
    for text in checked.offending:  # and what it flags is real: that word breaks a text on its own
        assert _breaks(base, new, text) or _breaks(base, new, f"{words[0]} {text}"), text


def test_a_decoder_that_is_not_word_separable_is_checked_document_by_document(extended):
    ext = extended["gpt2"]
    base, new = (Tokenizer.from_str(t.to_str()) for t in (ext.base, ext.tokenizer))
    for tok in (base, new):
        tok.decoder = decoders.CTC()  # merges equal neighbouring tokens, across words too
    docs = data.load_corpus("hpo", "heldout")[:300]
    checked = word_check(base, new, {"docs": docs})
    assert checked.whole_documents == len(docs) and checked.distinct_words == 0
    assert checked.counts["docs"] == (document_tokens(base, docs), document_tokens(new, docs))


# ------------------------------------------------------------------------------------ G4: loading


@pytest.mark.parametrize("kind", KINDS)
def test_g4_saved_folder_loads_with_tokenizers_and_transformers(extended, kind, tmp_path):
    from transformers import AutoTokenizer

    ext = extended[kind]
    folder = ext.save(tmp_path / kind)
    texts = data.load_corpus("hpo", "heldout")[:300] + data.load_corpus("sotu", "heldout")[:3]
    expected = [e.ids for e in ext.tokenizer.encode_batch(texts, add_special_tokens=False)]
    from_file = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert [e.ids for e in from_file.encode_batch(texts, add_special_tokens=False)] == expected
    auto = AutoTokenizer.from_pretrained(str(folder))
    assert auto(texts, add_special_tokens=False)["input_ids"] == expected
    assert len(auto) == ext.tokenizer.get_vocab_size(with_added_tokens=True)


def test_special_tokens_and_chat_template_survive(extended, tmp_path):
    from transformers import AutoTokenizer

    base_dir = data.tokenizer_path("smollm2").parent
    ext = extended["smollm2"]
    folder = ext.save(tmp_path / "ext", check_transformers=False)
    base_auto, new_auto = AutoTokenizer.from_pretrained(str(base_dir)), AutoTokenizer.from_pretrained(str(folder))
    assert new_auto.all_special_tokens == base_auto.all_special_tokens
    assert new_auto.all_special_ids == base_auto.all_special_ids
    assert new_auto.chat_template == base_auto.chat_template
    messages = [{"role": "user", "content": "Define the phenotype: abnormality of the hypothalamus."}]
    assert new_auto.apply_chat_template(messages, tokenize=False) == \
        base_auto.apply_chat_template(messages, tokenize=False)
    base_json, new_json = (json.loads(Path(d, "tokenizer.json").read_text()) for d in (base_dir, folder))
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "added_tokens", "truncation",
                "padding"):
        assert new_json[key] == base_json[key], key
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (base_dir / name).exists():
            assert (folder / name).read_bytes() == (base_dir / name).read_bytes()
    report = json.loads((folder / "igot_report.json").read_text())
    assert report["entries_added"] == len(ext.new_tokens)


def test_save_is_atomic(extended, tmp_path, monkeypatch):
    import igot.vocab as vocab

    ext = extended["gpt2"]
    target = tmp_path / "out"
    target.mkdir()
    (target / "marker").write_text("old")

    def broken(folder, *args):
        (folder / "tokenizer_config.json").write_text("{")  # half-written, then the disk "fails"
        raise OSError("disk full")

    monkeypatch.setattr(vocab, "_write_side_files", broken)
    with pytest.raises(OSError, match="disk full"):
        ext.save(target)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temp folder left behind
    assert sorted(os.listdir(target)) == ["marker"]  # the old folder is untouched
    monkeypatch.undo()
    ext.save(target)
    assert "marker" not in os.listdir(target) and (target / "tokenizer.json").is_file()
    assert sorted(os.listdir(tmp_path)) == ["out"]


# ------------------------------------------------------------------------------------ model types


def test_unsupported_model_type_is_refused():
    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match=r"WordLevel.*BPE, Unigram, WordPiece"):
        apply_selection(tok, HandSelection(np.array([[0, 1]])))


def test_wordpiece_writes_only_entries_proved_safe(extended):
    ext = extended["bert"]
    assert ext.report["skipped"]["unproved_or_past_budget"] > 0  # BERT's vocabulary is not closed under suffixes
    bert = Tokenizer.from_file(str(data.tokenizer_path("bert")))
    activates = [bert.token_to_id("activate"), bert.token_to_id("##s")]
    written = apply_selection(bert, HandSelection(np.array([activates])))
    assert written.new_tokens == [] and written.report["skipped"] == {"unproved_or_past_budget": 1}


def _tiny_bpe(**model_options) -> Tokenizer:
    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3, " ": 4}
    return Tokenizer(models.BPE(vocab, [("a", "b")], **model_options))


@pytest.mark.parametrize("option, vocab, merge", [
    ({"dropout": 0.1}, {"a": 0, "b": 1, "ab": 2, "c": 3}, ("a", "b")),
    ({"continuing_subword_prefix": "##"}, {"a": 0, "##b": 1, "ab": 2, "##c": 3}, ("a", "##b")),
    ({"end_of_word_suffix": "</w>"}, {"a": 0, "b</w>": 1, "ab</w>": 2, "c": 3}, ("a", "b</w>")),
])
def test_unsupported_bpe_settings_are_refused(option, vocab, merge):
    tok = Tokenizer(models.BPE(vocab, [merge], **option))
    with pytest.raises(ValueError, match=next(iter(option))):
        apply_selection(tok, HandSelection(np.array([[3, 2]])))


def test_merges_written_in_the_base_format_and_spaces_force_pairs():
    tok_json = json.loads(_tiny_bpe().to_str())
    tok_json["model"]["merges"] = ["a b"]  # the legacy "a b" string format
    legacy = Tokenizer.from_str(json.dumps(tok_json))
    from igot._vocab_models import write_entries

    edited = json.loads(legacy.to_str())
    edited["model"]["merges"] = ["a b"]
    write_entries(edited, np.array([[3, 2]]), np.array([1.0]), 5, 10)
    assert edited["model"]["merges"] == ["a b", "ab c"]
    edited = json.loads(legacy.to_str())
    edited["model"]["merges"] = ["a b"]
    write_entries(edited, np.array([[3, 4], [5, 2]]), np.array([1.0, 1.0]), 5, 10)  # "ab" + " "
    assert edited["model"]["merges"] == [["a", "b"], ["ab", " "], ["ab ", "c"]]
    new = Tokenizer.from_str(json.dumps(edited))
    assert new.encode("ab c").tokens == ["ab c"]


def test_merge_into_an_existing_string_adds_no_id():
    vocab = {"a": 0, "b": 1, "c": 2, "bc": 3, "abc": 4}
    tok = Tokenizer(models.BPE(vocab, [("b", "c")]))  # "abc" exists but no merge builds it
    ext = apply_selection(tok, HandSelection(np.array([[0, 3]])))
    assert ext.new_tokens == [] and ext.report["skipped"] == {"merge_to_existing_token": 1}
    assert ext.tokenizer.encode("abc").tokens == ["abc"] and tok.encode("abc").tokens == ["a", "bc"]


# ------------------------------------------------------------------------------------ pipeline


@pytest.fixture(scope="module")
def pipeline(domain_docs) -> ExtendedTokenizer:
    general = data.load_corpus("sotu")[:20]
    return extend_tokenizer(data.tokenizer_path("smollm2").parent, domain_docs, general, budget=300,
                            method="igot", tau="auto", progress=False)


def test_extend_tokenizer_pipeline(pipeline):
    ext, report = pipeline, pipeline.report
    assert 0 < len(ext.new_tokens) <= 300
    assert report["method"] == "igot" and report["budget"] == 300 and report["verified"]
    assert report["entries_added"] == len(ext.new_tokens)
    assert set(report["tokens"]) == {"domain", "heldout", "general"}
    assert report["tokens"]["domain"]["saving"] > 0.01 and report["tokens"]["heldout"]["saving"] > 0
    assert report["tau"] is not None and len(report["curve"]) >= len(ext.new_tokens)
    assert_g2_g3(ext, data.load_corpus("go", "heldout")[:2000])
    for token in ext.new_tokens:
        assert ext.tokenizer.decode([token.id]) == ext.base.decode(list(token.pieces))


# ------------------------------------------------------------------------------------ truncating, padding bases

PAD_TOKEN = {"smollm2": "<|endoftext|>", "mistral": "</s>", "bert": "[PAD]", "unigram": "</s>"}
SETTINGS = ("truncation", "padding", "post_processor", "added_tokens", "normalizer", "pre_tokenizer", "decoder")


def truncating_padding_base(kind: str, base_json: str, folder: Path) -> Path | Tokenizer:
    """The base with truncation at 128 tokens and padding to 128 set in its tokenizer.json (and side files)."""
    tok = Tokenizer.from_str(base_json)
    tok.enable_truncation(128)
    tok.enable_padding(length=128, pad_id=tok.token_to_id(PAD_TOKEN[kind]), pad_token=PAD_TOKEN[kind])
    if kind not in data.TOKENIZERS:
        return tok
    folder.mkdir()
    for side in data.tokenizer_path(kind).parent.iterdir():
        if side.name != "tokenizer.json":
            (folder / side.name).write_bytes(side.read_bytes())
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.parametrize("kind", ["smollm2", "mistral", "bert", "unigram"])
def test_truncating_padding_base_changes_nothing_but_keeps_its_settings(kind, domain_docs, tmp_path):
    from transformers import AutoTokenizer

    base_json = base_tokenizer(kind).to_str()
    plain_base = Tokenizer.from_str(base_json)  # each parse may move a Unigram score by an ulp: parse once each
    plain_source = data.tokenizer_path(kind).parent if kind in data.TOKENIZERS else plain_base
    truncating = truncating_padding_base(kind, base_json, tmp_path / "base")
    heldout, general = data.load_corpus("hpo", "heldout")[:400], data.load_corpus("sotu")[:3]
    corpora = dict(domain=domain_docs[:1000], general=general, heldout=heldout, budget=100, progress=False)
    plain = extend_tokenizer(plain_source, **corpora)
    ext = extend_tokenizer(truncating, **corpora)
    assert len(plain.new_tokens) > 20
    assert [(t.token, t.id) for t in ext.new_tokens] == [(t.token, t.id) for t in plain.new_tokens]
    assert ext.report["tokens"] == plain.report["tokens"]  # whole documents counted, not 128 tokens each
    assert ext.report["dropped_by_verification"] == 0 and ext.report["verified"]
    whole = sum(len(e.ids) for e in plain_base.encode_batch(general, add_special_tokens=False))
    assert ext.report["tokens"]["general"]["base"] == whole > 10 * 128 * len(general)

    folder = ext.save(tmp_path / "out")  # proves the folder with Tokenizer.from_file and AutoTokenizer
    saved = json.loads((folder / "tokenizer.json").read_text())
    base_json = json.loads((truncating if isinstance(truncating, Tokenizer) else
                            Tokenizer.from_file(str(truncating / "tokenizer.json"))).to_str())
    for key in SETTINGS:
        assert saved[key] == base_json[key], key
    assert saved["truncation"]["max_length"] == 128 and saved["padding"]["strategy"] == {"Fixed": 128}
    if not isinstance(truncating, Tokenizer):
        for side in ("tokenizer_config.json", "special_tokens_map.json"):
            assert (folder / side).read_bytes() == (truncating / side).read_bytes()
    auto = AutoTokenizer.from_pretrained(str(folder))
    texts = heldout[:50] + data.load_corpus("sotu", "heldout")[:1]
    expected = [e.ids for e in plain.tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert auto(texts, add_special_tokens=False)["input_ids"] == expected
    padded = Tokenizer.from_file(str(folder / "tokenizer.json")).encode_batch(texts, add_special_tokens=False)
    assert {len(e.ids) for e in padded} == {128}  # the written file still truncates and pads
    assert padded[-1].ids == expected[-1][:128] and padded[0].ids[-1] == base_json["padding"]["pad_id"]


def test_added_tokens_method_is_only_for_comparison(domain_docs):
    base = Tokenizer.from_file(str(data.tokenizer_path("gpt2")))
    ext = extend_tokenizer(base, domain_docs[:500], budget=50, method="added_tokens", progress=False)
    added = ext.tokenizer.get_added_tokens_decoder()
    assert len(added) == len(base.get_added_tokens_decoder()) + len(ext.new_tokens) > 0
    assert ext.report["tokens"]["domain"]["saving"] > 0


def test_bad_arguments_are_refused(domain_docs):
    base = data.tokenizer_path("gpt2")
    with pytest.raises(ValueError, match="budget"):
        extend_tokenizer(base, domain_docs[:10], budget=0)
    with pytest.raises(ValueError, match="method"):
        extend_tokenizer(base, domain_docs[:10], method="magic")
    with pytest.raises(ValueError, match="domain"):
        extend_tokenizer(base, [])
    with pytest.raises(FileNotFoundError):
        extend_tokenizer(base, "/nonexistent/corpus.txt")


def test_cli_extend(tmp_path, capsys):
    from igot.cli import main

    domain = tmp_path / "domain.txt"
    domain.write_text("\n".join(data.load_corpus("hpo")[:800]))
    out = tmp_path / "ext"
    rc = main(["extend", "--base", str(data.tokenizer_path("gpt2").parent), "--domain", str(domain),
               "--doc-mode", "line", "--budget", "100", "--method", "frequency", "--out", str(out),
               "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0 and "entries added" in printed and "domain" in printed
    assert Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size() > 50257


def test_vocab_path_never_imports_torch(tmp_path):
    import subprocess
    import sys

    script = f"""
import sys, numpy as np
from igot import data
from igot.vocab import apply_selection
sys.path.insert(0, {str(Path(__file__).parent)!r})
base = data.tokenizer_path("gpt2")
a, b, c = __import__("tokenizers").Tokenizer.from_file(str(base)).encode("zqxjvkwp").ids[:3]
ext = apply_selection(base, type("S", (), {{"merges": np.array([[a, b], [50257, c]])}}))
ext.save({str(tmp_path / "out")!r}, check_transformers=False)
print(len(ext.new_tokens), sorted(m for m in ("torch", "transformers", "triton") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["2", "[]"]
