"""Extended tokenizer: turn the selected domain tokens into real BPE merges / vocabulary entries.

    ext = extend_tokenizer("smollm2_dir/", domain=hpo_docs, general=general_docs, budget=2000)
    ext.save("smollm2_hpo/")      # tokenizer.json + tokenizer_config.json + ... ; loads with AutoTokenizer

Pipeline: encode the corpora once with the base tokenizer (igot.corpus) -> count distinct pre-tokens
(igot.counting) -> select entries (igot.scoring) -> append them to the tokenizer.json model
(igot._vocab_models, which documents per model type why G1-G3 of DESIGN.md hold) -> count tokens and verify
G2/G3 for every document of the corpora given, by running the base and new models on each distinct
pre-token (igot._vocab_check, which says why that is exact and which documents are still checked whole).
All of igot's own encodes run with truncation and padding off; the written tokenizer.json keeps the
base's settings. Domain terms are never AddedTokens (method="added_tokens" exists only to compare with
Hugging Face's add_tokens).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np

from ._files import replace_folder
from ._vocab_check import CorpusWords, WordCheck, count_corpus, held_apart, lossy_ids
from .corpus import untruncated
from ._vocab_models import (WORDPIECE_POOL, NewToken, WriteResult, id_to_token, largest_id, model_type,
                            side_file_names, tokenizer_config_default, tokens_json, unmergeable_ids,
                            write_entries)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from .corpus import EncodedCorpus
    from .counting import WordTable

__all__ = ["extend_tokenizer", "apply_selection", "ExtendedTokenizer", "NewToken"]

Method = Literal["igot", "frequency", "bpe", "added_tokens"]
Texts = Union[str, "os.PathLike[str]", Sequence[str], Sequence["os.PathLike[str]"], "EncodedCorpus", "WordTable"]
METHODS = ("igot", "frequency", "bpe", "added_tokens")
REPORT_FILE = "igot_report.json"
_REPAIR_ROUNDS = 3  # verification re-writes without offending entries at most this often


@dataclass
class ExtendedTokenizer:
    """A base tokenizer extended with domain entries, with what was added and how much it saves."""

    tokenizer: Tokenizer  # the extended tokenizers.Tokenizer
    base: Tokenizer  # the base tokenizer, unchanged
    new_tokens: list[NewToken]  # added entries in id order
    report: dict[str, Any]  # method, budget, counts, savings, timings, tau, curve (also igot_report.json)
    side_files: dict[str, bytes] = field(default_factory=dict, repr=False)  # base HF files to carry over
    selection: Any = field(default=None, repr=False)  # the igot.scoring.Selection written (None: added_tokens)

    def save(self, path: str | os.PathLike[str], *, check_transformers: bool = True) -> Path:
        """Write tokenizer.json and the HF side files into a folder atomically, then load them back.

        The files are written into a temporary folder next to `path`, loaded with Tokenizer.from_file
        (and AutoTokenizer.from_pretrained) and compared on a probe text, and only then renamed to
        `path` (an existing folder there is replaced). A failure leaves no partial folder.

        Args:
            path: the output folder.
            check_transformers: also prove the folder with transformers.AutoTokenizer (in a child
                process unless transformers is already imported, so this process never loads torch;
                skipped when transformers is not installed).

        Returns:
            The output folder.

        Raises:
            OSError: the folder cannot be written.
            RuntimeError: the written folder does not load back into the same tokenizer.
        """
        target = Path(path).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            self.tokenizer.save(str(staging / "tokenizer.json"))
            _write_side_files(staging, self.side_files, json.loads(self.tokenizer.to_str()), self.report)
            _prove_loadable(staging, self.tokenizer, self.new_tokens, check_transformers)
            replace_folder(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target


def extend_tokenizer(
    base: Tokenizer | str | os.PathLike[str],
    domain: Texts,
    general: Texts | None = None,
    budget: int = 2000,
    method: Method = "igot",
    tau: float | Literal["auto"] | None = None,
    *,
    heldout: Texts | None = None,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    doc_mode: Literal["file", "blank_line", "line"] = "file",
    verify: bool = True,
    progress: bool = True,
    **options: Any,
) -> ExtendedTokenizer:
    """Extend a tokenizer with up to `budget` domain entries written as real merges / pieces.

    The corpora are encoded once, with truncation and padding off whatever the base's tokenizer.json
    says; the extended tokenizer keeps the base's truncation, padding, post-processor and special tokens.

    Args:
        base: an HF tokenizer folder (tokenizer.json and side files), a tokenizer.json path, or a
            tokenizers.Tokenizer.
        domain: the domain corpus: a path / folder / glob or a list of them (igot.corpus.read_documents),
            a list of document strings, an EncodedCorpus encoded with `base`, or a WordTable of its
            pre-tokens counted with `base` (`igot count --words`, igot.cluster.count_words): then nothing is
            encoded and the check runs on the table's words (corpora must not hold unknown or added tokens).
        general: the general corpus (same forms), used by method="igot" for domain specificity.
        budget: the most new vocabulary entries (WordPiece: the selection offers WORDPIECE_POOL x budget
            candidates and only a set proved safe for every text is written, which can be smaller).
        method: "igot", "frequency" or "bpe" (igot.scoring.select_tokens, written as merges), or
            "added_tokens" (HF add_tokens of the `budget` most frequent multi-token domain words; for
            comparison only: AddedTokens carry none of the G3/G4 promises).
        tau: IGOT_τ stopping threshold (a float or "auto"); when set and `heldout` is not given, a
            seeded `heldout_fraction` of the domain documents is held out to choose and apply it.
        heldout: held-out domain documents (same forms): passed to the selection and reported.
        heldout_fraction: share of domain documents held out when tau is set without `heldout`.
        seed: seed of the held-out split.
        doc_mode: how plain-text files split into documents (see read_documents).
        verify: establish G2/G3 for every document of the corpora (entries that break them are dropped
            and the tokenizer rewritten; for BPE this never happens by construction). The check runs the
            base and new models once per distinct pre-token, which is exact (igot._vocab_check says why
            and which documents it still encodes whole); the counts of the report come from it too.
        progress: show progress bars.
        **options: passed on to igot.scoring.select_tokens (e.g. max_n).

    Returns:
        The ExtendedTokenizer; call .save(dir) to write it.

    Raises:
        ValueError: unsupported model type or setting, bad budget / method / heldout_fraction.
        TypeError: base or a corpus of an unknown type.
        FileNotFoundError: a path does not exist.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget={budget!r} must be a positive int (the most new vocabulary entries)")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(METHODS)}")
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction={heldout_fraction} must lie strictly between 0 and 1")
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    base_tok, side_files = _load_base(base)
    tok_json = json.loads(base_tok.to_str())
    kind = model_type(tok_json)  # unsupported types fail before any compute
    n_base = largest_id(tok_json) + 1
    unmergeable = unmergeable_ids(tok_json)
    from .counting import WordTable

    tables = {name: t for name, t in (("domain", domain), ("general", general), ("heldout", heldout))
              if isinstance(t, WordTable)}  # counted elsewhere: they replace the counting pass
    if tables and method == "added_tokens":
        raise ValueError("method='added_tokens' changes the pre-tokens themselves: pass texts, not word tables")
    if "domain" in tables and tau is not None and heldout is None:
        raise ValueError("tau with a domain word table needs held-out domain text: pass heldout= (documents or a "
                         "word table of them)")
    domain_texts, general_texts, heldout_texts = (
        None if source is None else [] if name in tables else _documents(source, base_tok, doc_mode, name)
        for name, source in (("domain", domain), ("general", general), ("heldout", heldout)))
    if tau is not None and heldout_texts is None:
        domain_texts, heldout_texts = _split(domain_texts, heldout_fraction, seed)
    timings["read"] = time.perf_counter() - clock

    clock = time.perf_counter()
    corpora = {name: texts for name, texts in (("domain", domain_texts), ("heldout", heldout_texts),
                                               ("general", general_texts)) if texts is not None}
    counted = {name: _table_words(tables[name], tok_json, name) if name in tables
               else count_corpus(base_tok, texts, tok_json, progress) for name, texts in corpora.items()}
    words = {name: c.select for name, c in counted.items()}
    timings["encode_count"] = time.perf_counter() - clock

    clock = time.perf_counter()
    selection = merges = scores = None
    if method == "added_tokens":
        tokenizer, written = _add_tokens(base_tok, words["domain"], budget, unmergeable)
    else:
        from .scoring import select_tokens

        pool = budget * WORDPIECE_POOL if kind == "WordPiece" else budget  # most WordPiece entries fail the proof
        selection = select_tokens(words["domain"], pool, n_base=n_base, method=method,
                                  general=words.get("general"), heldout=words.get("heldout"), tau=tau,
                                  base_tokens=_base_token_bytes(tok_json, n_base), **options)
        timings["select"] = time.perf_counter() - clock
        clock = time.perf_counter()
        merges, scores = _selection_arrays(selection)
        tokenizer, written = _write(tok_json, merges, scores, n_base, budget, frozenset())
    new_tokens, skipped = written.new_tokens, written.skipped
    timings["write"] = time.perf_counter() - clock

    clock = time.perf_counter()
    checker = WordCheck(base_tok, tok_json, {name: (corpora[name], counted[name]) for name in corpora})
    unchecked = sorted(checker.by_document & set(tables))  # these would need their documents
    if unchecked:
        raise ValueError(f"the {' and '.join(unchecked)} word table(s) hold words the base tokenizer does not "
                         "give back (counted with another tokenizer?); pass the texts")
    checked = checker.run(tokenizer, check=verify and selection is not None)
    dropped: set[int] = set()
    for _ in range(_REPAIR_ROUNDS):
        if not checked.offending:
            break
        dropped |= {written.entry_of[i] for i in checked.culprits if i in written.entry_of}
        tokenizer, written = _write(tok_json, merges, scores, n_base, budget, frozenset(dropped))
        new_tokens, skipped = written.new_tokens, written.skipped
        checked = checker.run(tokenizer, check=True)
    if checked.offending:
        raise RuntimeError(f"extended {kind} tokenizer still breaks G2/G3 on {len(checked.offending)} text(s) "
                           f"after dropping {len(dropped)} entries, e.g. {checked.offending[0][:200]!r}; "
                           "please report this")
    timings["verify" if verify else "count"] = time.perf_counter() - clock

    report = {
        "method": method, "budget": int(budget), "model_type": kind, "entries_added": len(new_tokens),
        "vocab_size_base": base_tok.get_vocab_size(with_added_tokens=True),
        "vocab_size_new": tokenizer.get_vocab_size(with_added_tokens=True),
        "first_new_id": new_tokens[0].id if new_tokens else None,
        "skipped": skipped, "dropped_by_verification": len(dropped), "verified": bool(verify and selection),
        "word_tables": sorted(tables),
        "checked": {"distinct_words": checked.distinct_words, "whole_documents": checked.whole_documents},
        "tokens": {name: {"base": b, "new": n, "saving": (1.0 - n / b) if b else 0.0}
                   for name, (b, n) in checked.counts.items()},
        "tau": _plain(getattr(selection, "tau", tau)) if selection is not None else None,
        "curve": _plain(getattr(selection, "curve", None)),
        "options": {k: _plain(v) for k, v in options.items()},
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "top_new_tokens": [t.token for t in sorted(new_tokens, key=lambda t: -t.score)[:20]],
    }
    return ExtendedTokenizer(tokenizer, base_tok, new_tokens, report, side_files, selection)


def apply_selection(base: Tokenizer | str | os.PathLike[str], selection: Any, *, budget: int | None = None
                    ) -> ExtendedTokenizer:
    """Write an existing selection into a base tokenizer (no counting, selection or verification).

    Args:
        base: an HF tokenizer folder, a tokenizer.json path, or a tokenizers.Tokenizer.
        selection: an igot.scoring.Selection, or anything with `.merges` (int64 [M, 2], an id >= n_base
            names entry id - n_base, n_base = largest base id + 1) and optionally `.scores` [M].
        budget: the most new ids (default: all entries).

    Returns:
        The ExtendedTokenizer (report: method "selection", entries added, skipped entries).

    Raises:
        ValueError: unsupported model type or settings, or merges naming unknown entries.
    """
    base_tok, side_files = _load_base(base)
    tok_json = json.loads(base_tok.to_str())
    kind = model_type(tok_json)
    merges, scores = _selection_arrays(selection)
    tokenizer, written = _write(tok_json, merges, scores, largest_id(tok_json) + 1,
                                len(merges) if budget is None else budget, frozenset())
    report = {"method": "selection", "model_type": kind, "entries_added": len(written.new_tokens),
              "skipped": written.skipped}
    return ExtendedTokenizer(tokenizer, base_tok, written.new_tokens, report, side_files, selection)


# ------------------------------------------------------------------------------------------- inputs


def _load_base(base: Any) -> tuple[Tokenizer, dict[str, bytes]]:
    from .corpus import load_tokenizer

    tokenizer = load_tokenizer(base)
    folder = None
    if isinstance(base, (str, os.PathLike)):
        folder = Path(base) if Path(base).is_dir() else Path(base).parent
    side = {}
    for name in side_file_names() if folder else ():
        if (folder / name).is_file():
            side[name] = (folder / name).read_bytes()
    return tokenizer, side


def _documents(source: Any, tokenizer: Tokenizer, doc_mode: str, name: str) -> list[str]:
    from .corpus import EncodedCorpus, read_documents

    if isinstance(source, (list, tuple)) and not source:
        raise ValueError(f"the {name} corpus is empty: pass documents or paths as {name}=")
    if isinstance(source, EncodedCorpus):  # decode each document back to text (lossless for byte-level)
        ids = np.asarray(source.ids)  # [T]
        starts = np.flatnonzero(np.asarray(source.doc_starts)).tolist() + [len(ids)]
        return tokenizer.decode_batch([ids[a:b].tolist() for a, b in zip(starts[:-1], starts[1:])],
                                      skip_special_tokens=False)
    if isinstance(source, (list, tuple)) and source and all(isinstance(d, str) for d in source) \
            and not all(_looks_like_path(d) for d in source):
        return list(source)
    if isinstance(source, (str, os.PathLike)) or isinstance(source, (list, tuple)):
        return list(read_documents(source, doc_mode=doc_mode))
    raise TypeError(f"a corpus must be paths, a list of document strings or an EncodedCorpus, got "
                    f"{type(source).__name__}")


def _table_words(table: WordTable, tok_json: dict, name: str) -> CorpusWords:
    """What count_corpus gives for the text a word table was counted from (igot count --words)."""
    if np.isin(table.ids, lossy_ids(tok_json)).any():
        raise ValueError(f"the {name} word table holds unknown or added-token ids, whose documents igot checks "
                         "whole: pass the texts instead")
    n_tokens = int(np.dot(table.lengths, table.counts))
    held = np.isin(table.ids, unmergeable_ids(tok_json))  # byte-fallback ids: split around, as count_corpus does
    if not held.any():
        return CorpusWords(table, table, n_tokens, np.zeros(0, np.int64))
    word_starts = np.zeros(len(table.ids), bool)  # [N]
    word_starts[table.offsets[:-1]] = True
    starts = np.flatnonzero(held_apart(word_starts, held))
    word_of = np.searchsorted(table.offsets, starts, side="right") - 1
    split = type(table)(np.append(starts, len(table.ids)).astype(np.int64), table.ids, table.counts[word_of])
    return CorpusWords(type(table).merge(split), table, n_tokens, np.zeros(0, np.int64))


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and len(text) < 4096 and os.path.exists(text)


def _split(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    order = np.random.default_rng(seed).permutation(len(texts))
    n_held = max(1, int(round(fraction * len(texts))))
    if n_held >= len(texts):
        raise ValueError(f"{len(texts)} domain document(s) are too few to hold out {fraction:.0%} for tau; "
                         "pass heldout= or more documents")
    held = set(order[:n_held].tolist())
    return ([t for i, t in enumerate(texts) if i not in held], [texts[i] for i in sorted(held)])


# ------------------------------------------------------------------------------------------- writing


def _write(tok_json: dict, merges: np.ndarray, scores: np.ndarray, n_base: int, budget: int,
           drop: frozenset[int]) -> tuple[Tokenizer, WriteResult]:
    from tokenizers import Tokenizer

    # Writers edit the model's vocab and merges in place (append, add keys, or replace the merges list):
    # copying those two keeps the base JSON pristine at a fraction of a deep copy's cost.
    model = dict(tok_json["model"])
    model["vocab"] = type(model["vocab"])(model["vocab"])
    if "merges" in model:
        model["merges"] = list(model["merges"])
    edited = {**tok_json, "model": model}
    result = write_entries(edited, merges, scores, n_base, budget, drop)
    return Tokenizer.from_str(tokens_json(edited)), result


def _selection_arrays(selection: Any) -> tuple[np.ndarray, np.ndarray]:
    merges = np.asarray(selection.merges, dtype=np.int64).reshape(-1, 2)  # [M, 2]
    scores = getattr(selection, "scores", None)
    scores = np.full(len(merges), np.nan) if scores is None else np.asarray(scores, dtype=np.float64)  # [M]
    return merges, scores


def _base_token_bytes(tok_json: dict, n_base: int) -> list[bytes] | None:
    """The string of each base id as bytes, so the selection skips candidates that are already tokens."""
    if tok_json["model"]["type"] == "WordPiece":  # "##" forms: a concatenation is not the token string
        return None
    strings = id_to_token(tok_json)
    return [strings[i].encode() if i in strings else b"\x00igot-unused-%d" % i for i in range(n_base)]


def _add_tokens(base: Tokenizer, words, budget: int, unmergeable: np.ndarray) -> tuple[Tokenizer, WriteResult]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(base.to_str())
    vocab = base.get_vocab(with_added_tokens=True)
    chosen: dict[str, tuple[tuple[int, ...], float]] = {}
    for i in range(len(words)):
        if len(chosen) == budget:
            break
        ids = tuple(int(x) for x in words.word(i))
        if len(ids) < 2 or np.isin(ids, unmergeable).any():
            continue
        text = base.decode(list(ids), skip_special_tokens=False)
        if text.strip() and text not in vocab and text not in chosen:
            chosen[text] = (ids, float(words.counts[i]))
    tokenizer.add_tokens(list(chosen))
    new_tokens = [NewToken(text, tokenizer.token_to_id(text), ids, count) for text, (ids, count) in chosen.items()]
    return tokenizer, WriteResult(new_tokens=sorted(new_tokens, key=lambda t: t.id))


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


# ------------------------------------------------------------------------------------------- saving


def _write_side_files(folder: Path, side_files: dict[str, bytes], tok_json: dict, report: dict) -> None:
    files = dict(side_files)
    if "tokenizer_config.json" not in files:
        files["tokenizer_config.json"] = json.dumps(tokenizer_config_default(tok_json), indent=2).encode()
    if "special_tokens_map.json" not in files:
        config = json.loads(files["tokenizer_config.json"])
        special = {k: v for k, v in config.items()
                   if k.endswith("_token") or k == "additional_special_tokens"}
        files["special_tokens_map.json"] = json.dumps(special, indent=2, ensure_ascii=False).encode()
    files[REPORT_FILE] = json.dumps(report, indent=2, ensure_ascii=False).encode()
    for name, data in files.items():
        (folder / name).write_bytes(data)


def _prove_loadable(folder: Path, tokenizer: Tokenizer, new_tokens: list[NewToken], check_transformers: bool
                    ) -> None:
    from tokenizers import Tokenizer

    probe = "".join(_probe_text(tokenizer, t) for t in new_tokens[:200]) + " igot probe: 123 ∑ 😀 naïve\n"
    expected = untruncated(tokenizer).encode(probe, add_special_tokens=False).ids
    loaded = untruncated(Tokenizer.from_file(str(folder / "tokenizer.json")))
    loaded = loaded.encode(probe, add_special_tokens=False).ids
    if loaded != expected:
        raise RuntimeError(f"{folder}/tokenizer.json does not load back into the same tokenizer")
    if check_transformers:
        auto_ids = _transformers_ids(folder, probe)
        if auto_ids is not None and auto_ids != expected:
            raise RuntimeError(f"AutoTokenizer.from_pretrained({str(folder)!r}) encodes differently from "
                               "tokenizer.json; check the tokenizer_class in tokenizer_config.json")


_AUTO_SCRIPT = """import json, sys
try:
    from transformers import AutoTokenizer
except ImportError:
    sys.exit(3)
probe = json.loads(sys.stdin.read())
print(json.dumps(AutoTokenizer.from_pretrained(sys.argv[1])(probe, add_special_tokens=False)["input_ids"]))
"""


def _transformers_ids(folder: Path, probe: str) -> list[int] | None:
    """Encode probe with AutoTokenizer.from_pretrained(folder); None when transformers is not installed.

    transformers imports torch, which the corpus -> vocab path must not load: unless the caller already
    imported transformers, the check runs in a child process.
    """
    if "transformers" in sys.modules:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))(probe, add_special_tokens=False)["input_ids"]
    done = subprocess.run([sys.executable, "-c", _AUTO_SCRIPT, str(folder)], input=json.dumps(probe),
                          capture_output=True, text=True)
    if done.returncode == 3:
        return None
    if done.returncode != 0:
        raise RuntimeError(f"AutoTokenizer.from_pretrained({str(folder)!r}) failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _probe_text(tokenizer: Tokenizer, token: NewToken) -> str:
    return tokenizer.decode([token.id], skip_special_tokens=False) + " "
