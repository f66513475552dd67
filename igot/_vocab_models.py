"""Per-model-type writers behind igot.vocab: append selected entries to a tokenizer.json model so that the
extended tokenizer keeps guarantees G1-G3 of DESIGN.md.

Every writer takes the entries of a Selection (entry j merges two tokens; an id >= n_base names entry
id - n_base) and edits the parsed `model` section of tokenizer.json in place. Why each rule holds:

BPE (byte-level: GPT-2, SmolLM2, Llama-3; SentencePiece-style with byte fallback and the ▁ metaspace):
    new merges go after every base merge, new ids after the largest id (G1). BPE always applies the
    lowest-ranked applicable merge, and a base merge never involves a new id, so every base merge fires
    before any new one: the base segmentation is reached first, then new merges only join adjacent
    tokens (never longer, G3) into tokens whose string is the concatenation of the two (same decode, G2).
    `ignore_merges` (a pre-token that is itself a vocabulary entry is emitted whole) only shortens.
    Byte-fallback tokens (<0xNN>), the unknown token and added tokens never enter a merge: their decoded
    text is not their vocabulary string.
Unigram (T5 style): a new piece w with base pieces p1..pk gets score(w) = Σ score(pi) + EPSILON. Expanding
    the new pieces of any path gives a base path that scores exactly EPSILON per new piece less, so the
    new best path expands to a base path within k·EPSILON of the base optimum: the base best path itself
    unless the base has a near-tie that close, and then it is the base best path with spans of its own
    pieces joined (G3, G2). The `verify` step of extend_tokenizer checks this on the real corpora. HF
    scores unknown characters min_score - 10, so a new piece may only lower min_score when the unknown
    penalty is path-independent (every character of every piece is itself a piece).
WordPiece (BERT style): greedy longest-match-first is NOT monotone in the vocabulary: adding "activates"
    to BERT's vocabulary turns "activatescribe" from [activate, ##scribe] into [activates, ##cr, ##ibe].
    So every candidate entry must be proved safe for all texts before it is written: igot._wordpiece_proof
    plays the base parse against the extended one over every text that can follow the entry and keeps a
    set of entries whose every play ends no longer and with the same [UNK]s (G3, G2); the selection
    offers WORDPIECE_POOL times the budget so that proved entries can fill it. New pieces
    get ids after the largest id (G1); a WordPiece entry needs no intermediate pieces, so an entry whose
    sub-entries were not proved safe can still be written.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._wordpiece_proof import safe_entries

SUPPORTED_MODELS = ("BPE", "Unigram", "WordPiece")

# Candidates offered to the WordPiece writer per budgeted entry: on BERT-base-uncased with the biomedical
# corpus about a quarter of the candidates are proved safe.
WORDPIECE_POOL = 4

# Added to Σ score(pieces) of a new Unigram piece. Path scores are sums of ~1e1..1e4 in float64 (rounding
# ~1e-12), so 1e-6 dominates rounding while staying below the score gaps of real segmentations.
UNIGRAM_EPSILON = 1e-6

_BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
# WordPiece decoder cleanup patterns (tokenizers decoders/wordpiece.rs) that start at a word-initial
# token's leading space and span more than one character: joining "n" with "##'t" would change cleanup.
_CLEANUP_BODIES = ("n't", "'m", "'s", "'ve", "'re")


@dataclass(frozen=True)
class NewToken:
    """One vocabulary entry added by extend_tokenizer."""

    token: str  # the vocabulary string, e.g. "Ġphenotype", "▁gene", "##ase"
    id: int  # its id in the extended tokenizer
    pieces: tuple[int, ...]  # its segmentation into base-tokenizer ids
    score: float  # the selection score φ


@dataclass
class WriteResult:
    """What a writer did: the new tokens and counters for the report."""

    new_tokens: list[NewToken] = field(default_factory=list)
    entry_of: dict[int, int] = field(default_factory=dict)  # new id -> selection entry that produced it
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> entries not written

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def model_type(tok_json: dict) -> str:
    """Return the model type of a parsed tokenizer.json, or raise ValueError naming the supported ones."""
    kind = tok_json.get("model", {}).get("type")
    if kind not in SUPPORTED_MODELS:
        raise ValueError(f"tokenizer model type {kind!r} is not supported by extend_tokenizer; supported: "
                         f"{', '.join(SUPPORTED_MODELS)}")
    return kind


def unmergeable_ids(tok_json: dict) -> np.ndarray:
    """Ids that never take part in a new entry: added/special tokens, the unknown token, byte fallbacks.

    Returns:
        Sorted int64 array of ids.
    """
    model = tok_json["model"]
    ids = {t["id"] for t in tok_json.get("added_tokens") or []} | set(byte_fallback_ids(tok_json))
    unk = model.get("unk_token")
    if model["type"] == "Unigram":
        if model.get("unk_id") is not None:
            ids.add(model["unk_id"])
    elif unk is not None and unk in model["vocab"]:
        ids.add(model["vocab"][unk])
    return np.array(sorted(ids), dtype=np.int64)


def byte_fallback_ids(tok_json: dict) -> dict[int, int]:
    """Map the byte-fallback ids (<0xNN>) of a parsed tokenizer.json to their byte; empty without byte fallback."""
    model = tok_json["model"]
    if not model.get("byte_fallback"):
        return {}
    return {i: int(token[3:5], 16) for token, i in _vocab_items(model) if _BYTE_FALLBACK.match(token)}


def id_to_token(tok_json: dict) -> dict[int, str]:
    """Map every id of a parsed tokenizer.json (model vocabulary and added tokens) to its string."""
    table = {i: t for t, i in _vocab_items(tok_json["model"])}
    for added in tok_json.get("added_tokens") or []:
        table.setdefault(added["id"], added["content"])
    return table


def largest_id(tok_json: dict) -> int:
    """The largest id in use (model vocabulary or added tokens), -1 for an empty tokenizer."""
    ids = [i for _, i in _vocab_items(tok_json["model"])]
    ids += [t["id"] for t in tok_json.get("added_tokens") or []]
    return max(ids, default=-1)


def write_entries(tok_json: dict, merges: np.ndarray, scores: np.ndarray, n_base: int, budget: int,
                  drop: frozenset[int] = frozenset()) -> WriteResult:
    """Append the selected entries to tok_json["model"] in place (G1-G3), at most `budget` new ids.

    Args:
        tok_json: parsed tokenizer.json of the base tokenizer (edited in place).
        merges: int64 [M, 2] selection merges; an id >= n_base names entry id - n_base.
        scores: float64 [M] selection score of each entry.
        n_base: the id bound of the base stream (largest id + 1).
        budget: the most new vocabulary ids to add.
        drop: entry indices not to write (e.g. refused by verification); BPE also drops their dependents.

    Returns:
        WriteResult with the new tokens in id order.

    Raises:
        ValueError: unsupported model type or settings, or merges that name an unknown entry.
    """
    merges = np.asarray(merges, dtype=np.int64).reshape(-1, 2)  # [M, 2]
    if len(merges) and (merges.min() < 0 or np.any(merges >= n_base + np.arange(len(merges))[:, None])):
        raise ValueError("selection merges must name base ids or earlier entries (id - n_base < row)")
    strings = id_to_token(tok_json)
    pieces = _expand(merges, n_base)
    forbidden = set(unmergeable_ids(tok_json).tolist())
    writer = {"BPE": _write_bpe, "Unigram": _write_unigram, "WordPiece": _write_wordpiece}
    return writer[model_type(tok_json)](tok_json, merges, scores, pieces, strings, n_base, budget,
                                        forbidden, drop)


def _vocab_items(model: dict) -> list[tuple[str, int]]:
    if model["type"] == "Unigram":
        return [(piece, i) for i, (piece, _) in enumerate(model["vocab"])]
    return list(model["vocab"].items())


def _expand(merges: np.ndarray, n_base: int) -> list[tuple[int, ...]]:
    pieces: list[tuple[int, ...]] = []
    for a, b in merges.tolist():
        pieces.append((pieces[a - n_base] if a >= n_base else (a,)) +
                      (pieces[b - n_base] if b >= n_base else (b,)))
    return pieces


def _refused(j: int, pieces: list[tuple[int, ...]], forbidden: set[int], drop: frozenset[int],
             result: WriteResult) -> bool:
    """True (and counted) when entry j is dropped or contains an id that must not be merged."""
    if j in drop:
        result.skip("dropped")
        return True
    if forbidden.intersection(pieces[j]):
        result.skip("unmergeable_piece")
        return True
    return False


def _write_bpe(tok_json, merges, scores, pieces, strings, n_base, budget, forbidden, drop) -> WriteResult:
    model = tok_json["model"]
    if model.get("dropout") not in (None, 0, 0.0):
        raise ValueError(f"BPE dropout={model['dropout']} samples segmentations at random, so no extension "
                         "can promise G2/G3; set model.dropout to null in tokenizer.json first")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise ValueError(f"BPE with {key}={model[key]!r} is not supported by extend_tokenizer (supported: "
                             "byte-level BPE and SentencePiece-style BPE without subword affixes)")
    vocab: dict[str, int] = model["vocab"]
    _pin_added_tokens(tok_json, vocab)
    base_merges: list = model["merges"]
    as_strings = bool(base_merges) and isinstance(base_merges[0], str)
    pairs = {tuple(m.split(" ", 1)) if as_strings else tuple(m) for m in base_merges}
    next_id = largest_id(tok_json) + 1
    final_id: dict[int, int] = {}  # entry j -> its id in the extended tokenizer
    added: list[tuple[str, str]] = []
    result = WriteResult()
    for j, (a, b) in enumerate(merges.tolist()):
        ia = a if a < n_base else final_id.get(a - n_base)
        ib = b if b < n_base else final_id.get(b - n_base)
        if ia is None or ib is None:  # an operand was not written
            result.skip("dropped")
            continue
        if _refused(j, pieces, forbidden, drop, result):
            continue
        left, right = strings[ia], strings[ib]
        text = left + right
        if (left, right) in pairs:  # already a merge (base or an earlier entry): nothing to add
            final_id[j] = vocab[text]
            result.skip("existing_merge")
            continue
        if text in vocab:  # the string exists but nothing merged into it here: the merge alone helps
            final_id[j] = vocab[text]
            result.skip("merge_to_existing_token")
        elif len(result.new_tokens) == budget:
            break
        else:
            final_id[j] = vocab[text] = next_id
            strings[next_id] = text
            result.new_tokens.append(NewToken(text, next_id, pieces[j], float(scores[j])))
            result.entry_of[next_id] = j
            next_id += 1
        pairs.add((left, right))
        added.append((left, right))
    if as_strings and not any(" " in s for pair in added for s in pair):
        base_merges.extend(f"{left} {right}" for left, right in added)
    else:  # a token with a space cannot be written as "a b": switch the whole list to pairs
        model["merges"] = [m.split(" ", 1) if as_strings else m for m in base_merges] + [list(p) for p in added]
    return result


def _write_unigram(tok_json, merges, scores, pieces, strings, n_base, budget, forbidden, drop) -> WriteResult:
    model = tok_json["model"]
    vocab: list = model["vocab"]  # [[piece, score], ...], id = position
    beyond = [t["id"] for t in tok_json.get("added_tokens") or [] if t["id"] >= len(vocab)]
    if beyond:
        raise ValueError(f"Unigram tokenizer has added tokens with ids {beyond[:5]} beyond its "
                         f"{len(vocab)} pieces: new pieces cannot be appended after the largest id (G1)")
    index = {piece: i for i, (piece, _) in enumerate(vocab)}
    piece_scores = [score for _, score in vocab]
    min_score = min(piece_scores, default=0.0)
    singles = {piece for piece in index if len(piece) == 1}
    unk_is_path_independent = all(set(piece) <= singles for piece, i in index.items() if i not in forbidden)
    result = WriteResult()
    for j in range(len(merges)):
        if _refused(j, pieces, forbidden, drop, result):
            continue
        text = "".join(strings[i] for i in pieces[j])
        if text in index:
            result.skip("existing_piece")
            continue
        score = math.fsum(piece_scores[i] for i in pieces[j]) + UNIGRAM_EPSILON
        if score < min_score and not unk_is_path_independent:
            result.skip("below_min_score")  # would change the unknown-character penalty
            continue
        if len(result.new_tokens) == budget:
            break
        index[text] = len(vocab)
        vocab.append([text, score])
        result.new_tokens.append(NewToken(text, index[text], pieces[j], float(scores[j])))
        result.entry_of[index[text]] = j
    return result


def _write_wordpiece(tok_json, merges, scores, pieces, strings, n_base, budget, forbidden, drop) -> WriteResult:
    model = tok_json["model"]
    prefix = model.get("continuing_subword_prefix") or "##"
    vocab: dict[str, int] = model["vocab"]
    _pin_added_tokens(tok_json, vocab)
    cleanup = bool((tok_json.get("decoder") or {}).get("cleanup"))
    result = WriteResult()
    candidates: list[tuple[int, bool, str, str]] = []  # (entry, word-initial, piece without prefix, token)
    seen: set[str] = set()
    for j in range(len(merges)):
        if _refused(j, pieces, forbidden, drop, result):
            continue
        first = strings[pieces[j][0]]
        initial = not _is_continuation(first, prefix)
        bare = "".join(_bare(strings[i], prefix) for i in pieces[j])
        token = bare if initial else prefix + bare
        if initial and cleanup and any(bare.startswith(b) and not first.startswith(b) for b in _CLEANUP_BODIES):
            result.skip("decoder_cleanup")
        elif token in vocab or token in seen:
            result.skip("existing_piece")
        else:
            seen.add(token)
            candidates.append((j, initial, bare, token))
    matched = [p for p, i in vocab.items() if i not in forbidden]  # pieces the greedy match can use
    chosen = safe_entries([p for p in matched if not _is_continuation(p, prefix)],
                          [_bare(p, prefix) for p in matched if _is_continuation(p, prefix)],
                          [(initial, bare) for _, initial, bare, _ in candidates], limit=budget)
    next_id = largest_id(tok_json) + 1
    for (j, _, _, token), keep in zip(candidates, chosen):
        if not keep:
            result.skip("unproved_or_past_budget")
            continue
        vocab[token] = next_id
        result.new_tokens.append(NewToken(token, next_id, pieces[j], float(scores[j])))
        result.entry_of[next_id] = j
        next_id += 1
    return result


def _pin_added_tokens(tok_json: dict, vocab: dict[str, int]) -> None:
    # tokenizers re-numbers an added token that is not in the model vocabulary to model size + k on load,
    # so once the model grows, <|endoftext|> (GPT-2: id 50256, outside its BPE vocabulary) would move.
    # Putting it into the model vocabulary under its id pins it (G1); no merge ever produces it.
    for added in tok_json.get("added_tokens") or []:
        if added["content"] not in vocab:
            vocab[added["content"]] = added["id"]


def _is_continuation(piece: str, prefix: str) -> bool:
    return piece.startswith(prefix) and len(piece) > len(prefix)


def _bare(piece: str, prefix: str) -> str:
    return piece[len(prefix):] if _is_continuation(piece, prefix) else piece


def tokens_json(tok_json: dict) -> str:
    """Serialise a parsed tokenizer.json for Tokenizer.from_str (floats round-trip exactly)."""
    import json

    return json.dumps(tok_json, ensure_ascii=False)


def side_file_names() -> tuple[str, ...]:
    """The Hugging Face side files an extended tokenizer folder carries over from its base folder."""
    return ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
            "added_tokens.json")


def tokenizer_config_default(tok_json: dict) -> dict[str, Any]:
    """A tokenizer_config.json for a bare tokenizer.json, so AutoTokenizer.from_pretrained can load it."""
    special = [t for t in tok_json.get("added_tokens") or [] if t.get("special")]
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    model = tok_json["model"]
    unk = model.get("unk_token")
    if model["type"] == "Unigram" and model.get("unk_id") is not None:
        unk = model["vocab"][model["unk_id"]][0]
    if unk is not None:
        config["unk_token"] = unk
    if special:
        config["additional_special_tokens"] = [t["content"] for t in special if t["content"] != unk]
    return config
