"""Token counts and the G2/G3 check behind igot.vocab.extend_tokenizer, word by word.

Why words suffice. A Hugging Face tokenizer splits off added tokens, normalizes and pre-tokenizes the rest
into words (pre-tokens), and its *model* then tokenizes each word on its own (tokenizers'
PreTokenizedString::tokenize); with add_special_tokens=False nothing is added around them. An extended
tokenizer shares every stage with its base except the model (igot._vocab_models edits only `model`), so for
every document, with model(w) the ids a model gives word w,

    encode(doc) = model(w1) + model(w2) + ...     len(encode(doc)) = Σ_w count(w) · len(model(w))

for the base and the new tokenizer alike. The words and their counts come from the counting pass
(igot.corpus.encode_corpus, then igot.counting.count_words: the one encoding pass of extend_tokenizer). A
word's text is rebuilt from its base tokens (their strings joined; WordPiece: continuations without their
"##"), and the base model must give back exactly those tokens for it, which proves the rebuilt text is the
text the model saw. Byte-fallback tokens (<0xNN>, for characters without a piece) stand for their byte:
a word's run of them is the UTF-8 of its unknown characters. Then the base and the new model run once on
each distinct word, and per word:
  G3: len(new(w)) <= len(base(w)). Summed with the counts this is G3 for every document, and a word that
      breaks it is itself a text that breaks it.
  G2: new(w) holds no unknown or added id, its tokens join to the same text, and the decoder turns new(w)
      and base(w) into the same string both at the start of a document and after another word.
G2 for whole documents follows when the decoder is word-separable (`separable_decoder`): its output is the
concatenation of one part per word that depends only on that word's tokens and on whether the word comes
first. That holds for ByteLevel (all bytes decoded at once; each word's bytes are whole UTF-8 characters),
Metaspace and WordPiece (each token on its own, with a rule for the document's first token), and a
Sequence of one-character Replace and ByteFallback steps, then Fuse, then Strip with stop=0 (the Llama /
Mistral decoder: a character map of the joined strings, then the first characters of the document;
ByteFallback decodes runs of byte tokens, and a word's runs are whole UTF-8 characters, so runs that meet
across words decode to the concatenation of their parts).
Normalizers need no rule: words are read after normalization and pre-tokenization, which both share.

Documents still checked whole (encoded and decoded with both tokenizers, truncation and padding off):
- documents that hold the unknown token (WordPiece's [UNK] even stands for a whole word) or an added
  token: a word's text cannot be rebuilt from those ids;
- every document when the decoder is not word-separable (CTC merges equal neighbours across words,
  BPEDecoder has a last-token rule, no decoder at all joins tokens with spaces, ...) or when the added
  tokens of the two tokenizers differ (method="added_tokens": then the words themselves change);
- every document of a corpus with a rebuilt word that does not re-encode to its base ids (a safety net;
  it did not fire on any tokenizer tested), or whose documents cannot be matched to the encoded stream.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ._vocab_models import byte_fallback_ids, id_to_token, unmergeable_ids
from .corpus import untruncated

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from .counting import WordTable

_ENCODE_BATCH = 1024  # documents per encode_batch call when documents are checked whole
_WORDS_PER_CALL = 4096  # distinct words per Encoding when the models run on words
_ESCAPED = re.compile("[\udc80-\udcff]")  # bytes of byte-fallback tokens while a word's text is rebuilt
# Documents per encode_batch call of the counting pass: so many that encode_corpus's 8 Mi-character cap
# ends each batch. On the biomedical demo corpora (52k documents, most short), medians of 4 interleaved runs
# against one encode_batch call over everything: 1,024 documents per batch 1.40x its wall / 1.47x its CPU
# time, 4,096: 1.41 / 1.39, 16,384: 1.37 / 1.33, capped: 1.26 / 1.30.
_COUNT_BATCH = 1 << 20


def separable_decoder(decoder: dict | None) -> bool:
    """True when a tokenizer.json decoder decodes a document as one part per word (module docstring)."""
    if decoder is None:
        return False
    if decoder["type"] in ("ByteLevel", "Metaspace", "WordPiece"):
        return True
    steps = decoder["decoders"] if decoder["type"] == "Sequence" else [decoder]
    stage = "map"  # then "fused" after Fuse, "stripped" after Strip
    for step in steps:
        kind = step["type"]
        if stage == "map" and kind == "Replace" and len(step["pattern"].get("String") or "") == 1:
            continue
        if stage == "map" and kind == "ByteFallback":
            continue
        if stage == "map" and kind == "Fuse":
            stage = "fused"
        elif stage == "fused" and kind == "Strip" and not step.get("stop"):
            stage = "stripped"
        else:
            return False
    return True


@dataclass
class CorpusWords:
    """One corpus after the counting pass."""

    select: WordTable  # pre-tokens split around unmergeable ids: what the selection reads
    words: WordTable  # pre-tokens (base ids) of the documents checked word by word, with counts
    n_tokens: int  # base tokens of the whole corpus
    whole_docs: np.ndarray  # int64 [D] indices into the texts of the documents checked whole


def held_apart(starts: np.ndarray, held: np.ndarray) -> np.ndarray:
    """bool [T]: the word starts `starts` with each held (unmergeable) token made a one-token word of its own,
    so that it never joins an entry; both [T] bool over the same tokens."""
    out = starts | held
    out[1:] |= held[:-1]
    return out


def lossy_ids(tok_json: dict) -> np.ndarray:
    """Unmergeable ids whose text a word cannot be rebuilt from: the unknown and the added tokens (int64)."""
    unmergeable = unmergeable_ids(tok_json)
    return unmergeable[~np.isin(unmergeable, list(byte_fallback_ids(tok_json)))]


def count_corpus(tokenizer: Tokenizer, texts: list[str], tok_json: dict, progress: bool) -> CorpusWords:
    """Encode a corpus once with the base (truncation and padding off) and count its words.

    Args:
        tokenizer: the base tokenizer.
        texts: the documents.
        tok_json: the base's parsed tokenizer.json.
        progress: show the encoding progress bar.

    Returns:
        The CorpusWords.
    """
    from .corpus import encode_corpus
    from .counting import count_words

    corpus = encode_corpus(tokenizer, texts, batch_size=_COUNT_BATCH, progress=progress)  # no truncation, padding
    ids, word_starts, doc_starts = (np.asarray(a) for a in (corpus.ids, corpus.word_starts, corpus.doc_starts))
    held = np.isin(ids, unmergeable_ids(tok_json))  # [T]
    if not held.any():
        words = count_words(ids, word_starts, doc_starts)
        return CorpusWords(words, words, corpus.n_tokens, np.zeros(0, np.int64))
    select = count_words(ids, held_apart(word_starts, held), doc_starts)
    lossy = np.isin(ids, lossy_ids(tok_json))  # [T]
    if not lossy.any():
        return CorpusWords(select, count_words(ids, word_starts, doc_starts), corpus.n_tokens, np.zeros(0, np.int64))
    doc_of = np.cumsum(doc_starts) - 1  # [T] document of each token
    whole = np.zeros(corpus.n_docs, bool)  # [D]
    whole[doc_of[lossy]] = True
    nonempty = np.array([i for i, text in enumerate(texts) if text], np.int64)  # encode_corpus skips ""
    if len(nonempty) != corpus.n_docs:  # a document gave no token at all: check every document whole
        return CorpusWords(select, _no_words(), corpus.n_tokens, np.arange(len(texts), dtype=np.int64))
    keep = ~whole[doc_of]  # [T]
    words = count_words(ids[keep], word_starts[keep], doc_starts[keep]) if keep.any() else _no_words()
    return CorpusWords(select, words, corpus.n_tokens, nonempty[whole])


def _no_words() -> WordTable:
    from .counting import WordTable

    return WordTable(np.zeros(1, np.int64), np.zeros(0, np.uint32), np.zeros(0, np.int64))


@dataclass
class Checked:
    """Token counts of base and new per corpus, and what breaks G2 or G3."""

    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # corpus -> (base tokens, new tokens)
    offending: list[str] = field(default_factory=list)  # documents, or words as the base decodes them
    culprits: set[int] = field(default_factory=set)  # the ids of the new encodings of those
    distinct_words: int = 0  # words checked one by one
    whole_documents: int = 0  # documents encoded whole with both tokenizers


def _unescape(text: str) -> str:
    """Turn the surrogate-escaped bytes of byte-fallback tokens into the characters they encode."""
    if not _ESCAPED.search(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:  # not whole characters: a text no model input can be, so the check refuses it
        return "\0" + text


def _model_ids(tokenizer: Tokenizer, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The ids the tokenizer's model alone gives each word, as CSR (offsets int64 [W + 1], ids uint32).

    No normalizer, pre-tokenizer or added token runs: the words go in pre-tokenized, _WORDS_PER_CALL to an
    Encoding, so the model sees each on its own and Python touches a few long id lists, not one per word.
    """
    from tokenizers import Tokenizer

    model_only = Tokenizer(tokenizer.model)  # shares the model; nothing else runs
    chunks = [words[i:i + _WORDS_PER_CALL] for i in range(0, len(words), _WORDS_PER_CALL)]
    encodings = model_only.encode_batch(chunks, is_pretokenized=True, add_special_tokens=False)
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), np.uint32)  # [N]
    word = np.concatenate([np.array(e.word_ids, np.int64) + k * _WORDS_PER_CALL  # [N] row of each id
                           for k, e in enumerate(encodings)] or [np.zeros(0, np.int64)])
    offsets = np.zeros(len(words) + 1, np.int64)  # [W + 1]
    np.cumsum(np.bincount(word, minlength=len(words)), out=offsets[1:])
    return offsets, ids


def _same_rows(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """bool [W]: row k of CSR a equals row k of CSR b (each a pair of offsets [W + 1] and ids)."""
    length_a, length_b = np.diff(a[0]), np.diff(b[0])
    same = length_a == length_b  # [W]
    in_a, in_b = np.repeat(same, length_a), np.repeat(same, length_b)  # tokens of rows of equal length
    differs = a[1][in_a] != b[1][in_b]  # aligned: the rows kept have the same lengths, in order
    same[np.repeat(np.flatnonzero(same), length_a[same])[differs]] = False
    return same


def _rows(csr: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR of the given rows of a CSR, in that order."""
    offsets, ids = csr
    lengths = offsets[rows + 1] - offsets[rows]
    out = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out, ids[np.repeat(offsets[rows] - out[:-1], lengths) + np.arange(out[-1])]


class WordCheck:
    """The base side of the check, done once; `run` counts and checks one extended tokenizer against it."""

    def __init__(self, base: Tokenizer, tok_json: dict, corpora: dict[str, tuple[list[str], CorpusWords]]) -> None:
        """Rebuild the text of every distinct word of the corpora and prove it with the base model.

        Args:
            base: the base tokenizer.
            tok_json: its parsed tokenizer.json.
            corpora: name -> (documents, their CorpusWords from count_corpus).
        """
        self.base, self.corpora = untruncated(base), corpora
        self.lossy = frozenset(lossy_ids(tok_json).tolist())
        model = tok_json["model"]
        self.prefix = (model.get("continuing_subword_prefix") or "##") if model["type"] == "WordPiece" else ""
        strings = id_to_token(tok_json)
        for i, byte in byte_fallback_ids(tok_json).items():  # a byte >= 0x80 as its surrogate escape
            strings[i] = chr(byte) if byte < 0x80 else chr(0xDC00 + byte)
        self.strings = [strings.get(i, "") for i in range(max(strings, default=-1) + 1)]
        index: dict[str, int] = {}
        self.texts: list[str] = []  # distinct words of all corpora
        self.where: dict[str, np.ndarray] = {}  # corpus -> int64 [W_c] position of each of its words in texts
        parts = []  # CSR of the base ids of the words each corpus adds to texts
        for name, (_, counted) in corpora.items():
            where, first_seen = [], []
            for row, text in enumerate(self._texts(counted.words)):
                k = index.setdefault(text, len(self.texts))
                if k == len(self.texts):
                    self.texts.append(text)
                    first_seen.append(row)
                where.append(k)
            self.where[name] = np.array(where, np.int64)
            parts.append(_rows((counted.words.offsets, counted.words.ids), np.array(first_seen, np.int64)))
        lengths = np.concatenate([np.diff(offsets) for offsets, _ in parts])  # [W]
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        self.base_ids = (offsets, np.concatenate([ids for _, ids in parts]))  # CSR of the base ids of texts
        self.faithful = np.zeros(len(self.texts), bool)  # [W] rebuilt text re-encodes to the base ids
        if separable_decoder(tok_json.get("decoder")):
            self.faithful = _same_rows(self.base_ids, _model_ids(base, self.texts))
        self.by_document = {name for name in corpora if not self.faithful[self.where[name]].all()}
        first = np.flatnonzero(self.faithful)
        self.context = self._base_word(first[0]) if len(first) else []  # a word to put before another

    def run(self, new: Tokenizer, check: bool) -> Checked:
        """Count the tokens of base and new on every corpus and, with check, find what breaks G2 or G3.

        Args:
            new: the extended tokenizer (its truncation and padding are ignored).
            check: also check G2 and G3 (otherwise only count).

        Returns:
            The Checked counts and offences.
        """
        result = Checked()
        same_words = new.get_added_tokens_decoder() == self.base.get_added_tokens_decoder()
        by_document = self.by_document if same_words else set(self.corpora)
        new_len = np.zeros(len(self.texts), np.int64)  # [W]
        if len(by_document) < len(self.corpora):
            fresh = _model_ids(new, self.texts)
            new_len = np.diff(fresh[0])
            if check:
                changed = np.flatnonzero(self.faithful & ~_same_rows(self.base_ids, fresh))
                self._check_words(new, fresh, changed.tolist(), result)
            result.distinct_words = int(self.faithful.sum())
        plain_new = untruncated(new)
        for name, (texts, counted) in self.corpora.items():
            if name in by_document:
                result.counts[name] = (counted.n_tokens, self._check_documents(plain_new, texts, check, result))
                continue
            whole = [texts[i] for i in counted.whole_docs.tolist()]
            word_new = int(np.dot(counted.words.counts, new_len[self.where[name]]))
            whole_new = self._check_documents(plain_new, whole, check, result)
            result.counts[name] = (counted.n_tokens, word_new + whole_new)
        return result

    def _texts(self, words: WordTable) -> list[str]:
        """The text of every word of a table (the same as _join, word by word, in one sweep)."""
        pieces = [self.strings[i] for i in words.ids.tolist()]
        bounds = words.offsets.tolist()
        if self.prefix:
            later = np.ones(len(pieces), bool)  # [N] pieces after the first of their word
            later[bounds[:-1]] = False
            for i in np.flatnonzero(later).tolist():
                pieces[i] = self._continuation(pieces[i])
        return [_unescape("".join(pieces[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]

    def _join(self, ids: list[int], strings: list[str]) -> str:
        """The text a model read to give `ids` (WordPiece continuations lose their prefix)."""
        pieces = [strings[i] for i in ids]
        if self.prefix:
            pieces[1:] = map(self._continuation, pieces[1:])
        return _unescape("".join(pieces))

    def _continuation(self, piece: str) -> str:
        """A WordPiece piece after the first of its word, as text; "\0" marks one without the prefix."""
        return piece[len(self.prefix):] if piece.startswith(self.prefix) else "\0" + piece

    def _base_word(self, k: int) -> list[int]:
        offsets, ids = self.base_ids
        return ids[offsets[k]:offsets[k + 1]].tolist()

    def _check_words(self, new: Tokenizer, fresh: tuple[np.ndarray, np.ndarray], changed: list[int],
                     result: Checked) -> None:
        """Record the words among `changed` (new ids differ from the base ids) that break G2 or G3."""
        top = int(fresh[1].max()) + 1 if len(fresh[1]) else 0  # the new model's largest id + 1
        strings = self.strings + [new.id_to_token(i) or "" for i in range(len(self.strings), top)]
        pending = []  # (base ids, new ids) of words that pass the length and text rules: decode them
        for k in changed:
            old, ids = self._base_word(k), fresh[1][fresh[0][k]:fresh[0][k + 1]].tolist()
            if len(ids) > len(old) or self.lossy.intersection(ids) or \
                    self._join(ids, strings) != self.texts[k]:
                self._offence(result, self.base.decode(old, skip_special_tokens=False), ids)
            else:
                pending.append((old, ids))
        for_base = [old for old, _ in pending] + [self.context + old for old, _ in pending]
        for_new = [ids for _, ids in pending] + [self.context + ids for _, ids in pending]
        old_text = self.base.decode_batch(for_base, skip_special_tokens=False)
        new_text = new.decode_batch(for_new, skip_special_tokens=False)
        n = len(pending)
        for i, (_, ids) in enumerate(pending):
            if old_text[i] != new_text[i] or old_text[n + i] != new_text[n + i]:
                self._offence(result, old_text[i], ids)

    def _check_documents(self, new: Tokenizer, texts: list[str], check: bool, result: Checked) -> int:
        """New tokens of documents encoded whole; with check, record those that break G2 or G3."""
        n_new = 0
        for start in range(0, len(texts), _ENCODE_BATCH):
            batch = texts[start:start + _ENCODE_BATCH]
            fresh = [e.ids for e in new.encode_batch(batch, add_special_tokens=False)]
            n_new += sum(map(len, fresh))
            if check:
                old = [e.ids for e in self.base.encode_batch(batch, add_special_tokens=False)]
                old_text = self.base.decode_batch(old, skip_special_tokens=False)
                new_text = new.decode_batch(fresh, skip_special_tokens=False)
                for text, a, b, x, y in zip(batch, old, fresh, old_text, new_text):
                    if len(b) > len(a) or x != y:
                        self._offence(result, text, b)
        result.whole_documents += len(texts)
        return n_new

    @staticmethod
    def _offence(result: Checked, text: str, new_ids: list[int]) -> None:
        result.offending.append(text)
        result.culprits.update(new_ids)
