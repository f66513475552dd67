"""Synthetic domain QA (the Llama-3-SynE stage-II recipe): an instruct model turns domain documents into
question-answer text, filtered and appended to a JSON-lines file that igot.train reads as one more source.

    summary = synthesize(["hpo:train"], "qa.jsonl", heldout=["hpo:heldout"], per_doc=2, max_docs=50)
    print(summary.format())
    # run.toml: [data.sources] synthetic = ["qa.jsonl"]  (each line's "text" is the training text)

Each batch of documents goes through: the template's chat messages -> `per_doc` sampled replies per
document from a pluggable generator (transformers `generate` with a KV cache and left padding, or vLLM on
a GPU, or any callable with the Generator signature) -> question / answer parsing -> the filters below ->
one JSON line per kept pair. A pair is counted under the first filter it fails, in this order:
unfinished (stopped by max_new_tokens), malformed (no "Question: ... Answer: ..."), too_short / too_long
(words), contaminated (a word n-gram shared with any held-out document), copies_source (most of the answer
lies in long word n-grams of its own source document), exact_duplicate, near_duplicate. Source documents
equal to a held-out document are never used.

Word n-grams: lowercase `\\w+` runs, each word hashed to 64 bits (blake2b) and each n-gram by a polynomial
over its words' hashes, so case, whitespace and punctuation never hide a match. Near duplicates: MinHash
over word 3-gram shingles with LSH banding (plain numpy, no dependency; 96 permutations in 24 bands of 4
rows, so a pair at Jaccard 0.7 becomes a candidate with probability 1 - (1 - 0.7^4)^24 = 0.9986), each
candidate confirmed by the exact Jaccard of the two shingle sets, so no pair is dropped on an estimate.

Resume: a document is done when its source hash is on a line of `out` or in the side file `<out>.done`
(written after the document's lines); done documents are skipped, and the dedup index is rebuilt from the
lines already there. Each document's lines go out in one unbuffered write, and a run starts by cutting a
trailing partial line (left by a kill or a full disk), so the file only ever holds whole lines.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Union

import numpy as np

SourceSpec = Union[str, "os.PathLike[str]"]
Messages = list[dict[str, str]]

TEMPLATES = ("science", "code")  # built in: igot/templates/synth_<name>.toml
BACKENDS = ("auto", "transformers", "vllm")
DROP_REASONS = ("unfinished", "malformed", "too_short", "too_long", "contaminated", "copies_source",
                "exact_duplicate", "near_duplicate")
LINE_FIELDS = ("question", "answer", "text", "source", "model", "template")
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_CORPUS_SPEC = re.compile(r"([A-Za-z0-9_]+):([A-Za-z]+)")
_WORD = re.compile(r"\w+")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: n-gram hash = polynomial in this over the words' hashes
_LSH_BANDS, _LSH_ROWS = 24, 4
_LSH_SEED = 20240726


# --------------------------------------------------------------------------------------------- options


def _option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Sampling:
    """Decoding settings, the same for every backend (temperature 0 = greedy)."""

    max_new_tokens: int = _option(256, "the most tokens generated per reply; longer replies are 'unfinished'")
    temperature: float = _option(0.7, "sampling temperature (0 = greedy decoding)")
    top_p: float = _option(0.9, "nucleus sampling: keep the smallest token set with this probability")
    top_k: int = _option(50, "sample among the k likeliest tokens (0 = no limit)")
    repetition_penalty: float = _option(1.0, "divide the logits of tokens already present (1 = off)")
    seed: int = _option(0, "random seed of the sampler")

    def __post_init__(self) -> None:
        _check(self.max_new_tokens >= 1, f"max_new_tokens={self.max_new_tokens} must be at least 1")
        _check(self.temperature >= 0, f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        _check(0 < self.top_p <= 1, f"top_p={self.top_p} must be in (0, 1]")
        _check(self.top_k >= 0, f"top_k={self.top_k} must be >= 0 (0 = no limit)")
        _check(self.repetition_penalty > 0, f"repetition_penalty={self.repetition_penalty} must be > 0")


@dataclass(frozen=True)
class Filters:
    """Thresholds of the pair filters (lengths in words: lowercase \\w+ runs)."""

    min_question_words: int = _option(3, "drop pairs whose question has fewer words")
    max_question_words: int = _option(100, "drop pairs whose question has more words")
    min_answer_words: int = _option(3, "drop pairs whose answer has fewer words")
    max_answer_words: int = _option(400, "drop pairs whose answer has more words")
    contamination_ngram: int = _option(13, "drop pairs sharing a run of this many words with a held-out document")
    copy_ngram: int = _option(6, "word runs of this length shared with the source count as copied")
    max_copy_fraction: float = _option(0.5, "drop answers whose copied words reach this fraction")
    near_duplicate_jaccard: float = _option(0.7, "drop pairs whose word 3-gram Jaccard with a kept pair reaches this")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, int):
                _check(isinstance(value, int) and value >= 1, f"{f.name}={value!r} must be an integer >= 1")
        _check(self.min_question_words <= self.max_question_words,
               f"min_question_words={self.min_question_words} > max_question_words={self.max_question_words}")
        _check(self.min_answer_words <= self.max_answer_words,
               f"min_answer_words={self.min_answer_words} > max_answer_words={self.max_answer_words}")
        _check(0 < self.max_copy_fraction <= 1, f"max_copy_fraction={self.max_copy_fraction} must be in (0, 1]")
        _check(0 < self.near_duplicate_jaccard <= 1,
               f"near_duplicate_jaccard={self.near_duplicate_jaccard} must be in (0, 1]")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# ------------------------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Template:
    """A versioned prompt: chat messages around a document, and how the reply parses into a QA pair."""

    name: str
    version: int
    user: str  # the user message; "{document}" marks where the source document goes
    text: str  # the training text; "{question}" and "{answer}" are filled in
    question_label: str = "Question"
    answer_label: str = "Answer"
    system: str | None = None
    reply_prefix: str = ""  # the reply is started with this (small models keep the format far better)

    def __post_init__(self) -> None:
        where = f"template {self.name!r}"
        _check(bool(re.fullmatch(r"[\w.-]+", self.name)), f"{where}: name must be letters, digits, '.', '_', '-'")
        _check(isinstance(self.version, int) and self.version >= 1, f"{where}: version must be an integer >= 1")
        _check(self.user.count("{document}") == 1, f"{where}: user must contain {{document}} exactly once")
        for key in ("{question}", "{answer}"):
            _check(self.text.count(key) == 1, f"{where}: text must contain {key} exactly once")
        _check(bool(self.question_label.strip() and self.answer_label.strip())
               and self.question_label.lower() != self.answer_label.lower(),
               f"{where}: question_label and answer_label must be two different non-empty words")

    @property
    def id(self) -> str:
        """The name and version written into every output line, e.g. "science-v1"."""
        return f"{self.name}-v{self.version}"

    def messages(self, document: str) -> Messages:
        """Return the chat messages that ask for one QA pair about `document`; with a reply_prefix the last
        message is the assistant's, to be continued (apply_chat_template(continue_final_message=True))."""
        user = self.user.replace("{document}", document)  # not str.format: code is full of braces
        return ([{"role": "system", "content": self.system}] if self.system else []) + \
            [{"role": "user", "content": user}] + \
            ([{"role": "assistant", "content": self.reply_prefix}] if self.reply_prefix else [])

    def parse(self, reply: str) -> tuple[str, str] | None:
        """Split reply_prefix + a reply into (question, answer); None when there is no question label followed
        by an answer label with text after each. A repeated question label before the answer is skipped, and
        text after a second question label (a second pair) is ignored."""
        reply = self.reply_prefix + reply
        question_re, answer_re = _label_re(self.question_label), _label_re(self.answer_label)
        q = question_re.search(reply)
        a = answer_re.search(reply, q.end()) if q else None
        if a is None:
            return None
        for q in question_re.finditer(reply, q.end(), a.start()):  # "Question: Question: ..." -> the last
            pass
        rest = reply[a.end():]
        second = question_re.search(rest)
        question = reply[q.end():a.start()].strip(" \t\r\n*_")
        answer = (rest[:second.start()] if second else rest).strip(" \t\r\n*_")
        return (question, answer) if question and answer else None

    def format(self, question: str, answer: str) -> str:
        """Return the training text of a pair."""
        return self.text.replace("{question}", question).replace("{answer}", answer)


@functools.lru_cache(maxsize=16)
def _label_re(label: str) -> re.Pattern[str]:
    # "Question:", "**Question:**", "### Question:", "question :" all count; "Subquestion:" does not.
    return re.compile(rf"(?<!\w)[*_#]*{re.escape(label.strip())}[*_]*\s*:[*_]*", re.IGNORECASE)


def load_template(template: str | os.PathLike[str] | Template = "science") -> Template:
    """Return a built-in template by name ("science", "code") or read one from a TOML file.

    Args:
        template: a name in TEMPLATES, a path to a TOML file with the keys name, version, user, text and
            optionally system, question_label, answer_label (see igot/templates/synth_science.toml), or a
            Template (returned as is).
    Returns:
        The Template.
    Raises:
        FileNotFoundError: neither a built-in name nor an existing file.
        ValueError: the file is not valid TOML, has unknown or missing keys, or bad values.
    """
    if isinstance(template, Template):
        return template
    path = Path(template)
    if str(template) in TEMPLATES and not path.exists():
        path = Path(__file__).parent / "templates" / f"synth_{template}.toml"
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, f"no such template file (built in: {', '.join(TEMPLATES)})",
                                str(template))
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    known = {f.name for f in dataclasses.fields(Template)}
    unknown, missing = sorted(set(raw) - known), sorted({"name", "version", "user", "text"} - set(raw))
    if unknown or missing:
        raise ValueError(f"{path}: unknown keys {unknown} / missing keys {missing}; the keys are {sorted(known)}")
    return Template(**raw)


# ------------------------------------------------------------------------------------------ generators


@dataclass(frozen=True)
class Generation:
    """One reply of a generator."""

    text: str  # decoded, special tokens removed; a continued assistant message's text is not repeated
    n_tokens: int  # tokens generated, the end-of-turn token included when there is one
    finished: bool  # True when it ended on an end-of-turn token, False when max_new_tokens cut it


class Generator(Protocol):
    """What synthesize() calls: `per_doc` replies for each conversation, in order; a conversation whose last
    message is the assistant's is continued from it (the template's reply_prefix).

    Any callable with this signature works (e.g. a function returning crafted replies in tests); its
    `name` attribute, when present, is the "model" written into each line.
    """

    def __call__(self, conversations: Sequence[Messages], n: int, sampling: Sampling) -> list[list[Generation]]:
        ...


def _chat_tokenizer(model: str, chat_template: str | os.PathLike[str] | None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
    if chat_template is not None:
        tokenizer.chat_template = Path(chat_template).read_text(encoding="utf-8")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the tokenizer of {model} has no chat template (no 'chat_template' in "
                         "tokenizer_config.json and no chat_template.jinja); pass the Jinja template the model "
                         "was trained with as chat_template= (igot synth --chat-template FILE)")
    return tokenizer


def _render(tokenizer: Any, conversations: Sequence[Messages]) -> list[list[int]]:
    """Prompt token ids: the chat template's text (it holds any BOS itself), encoded without adding more. A
    conversation ending with an assistant message is continued from that message's text."""
    ids = []
    for conv in conversations:
        cont = bool(conv) and conv[-1]["role"] == "assistant"
        text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=not cont,
                                             continue_final_message=cont)
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def _stop_ids(tokenizer: Any, generation_config: Any) -> list[int]:
    ids = getattr(generation_config, "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model has no end-of-turn token (eos_token_id in generation_config.json or the "
                         "tokenizer); set one so replies can finish")
    return ids


def _model_name(model: str | os.PathLike[str]) -> str:
    return Path(model).name or str(model)


class TransformersGenerator:
    """Batched `model.generate`: left padding, KV cache, one call per batch of conversations.

    Args:
        model: a Hugging Face causal LM folder (or hub id) whose tokenizer has a chat template.
        device: "cuda", "cpu", ...; default cuda when available.
        dtype: "float32", "bfloat16" or "float16"; default bfloat16 on cuda, float32 otherwise.
        chat_template: a Jinja chat template file, for a model whose tokenizer has none.
        name: the "model" written into the output lines (default: the folder's name).
    Raises:
        ValueError: the tokenizer has no chat template, or no end-of-turn token is known.
    """

    def __init__(self, model: str | os.PathLike[str], *, device: str | None = None, dtype: str | None = None,
                 chat_template: str | os.PathLike[str] | None = None, name: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.tokenizer = _chat_tokenizer(str(model), chat_template)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        self.model = AutoModelForCausalLM.from_pretrained(str(model), dtype=getattr(torch, dtype)).to(device).eval()
        self.stop_ids = _stop_ids(self.tokenizer, self.model.generation_config)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.name = name or _model_name(model)
        self._seeded: int | None = None

    def __call__(self, conversations: Sequence[Messages], n: int, sampling: Sampling) -> list[list[Generation]]:
        """Generate n replies per conversation (see Generator)."""
        import copy

        import torch

        if self._seeded != sampling.seed:  # once per seed, not per batch, so batches draw different noise
            torch.manual_seed(sampling.seed)
            self._seeded = sampling.seed
        ids = _render(self.tokenizer, conversations)
        width = max(map(len, ids))
        input_ids = torch.tensor([[self.pad_id] * (width - len(x)) + x for x in ids])  # [B, W], left padded
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])  # [B, W]
        config = copy.deepcopy(self.model.generation_config)  # keeps e.g. suppress_tokens of a grown model
        greedy = sampling.temperature == 0
        config.update(max_new_tokens=sampling.max_new_tokens, do_sample=not greedy, num_return_sequences=n,
                      temperature=None if greedy else sampling.temperature,
                      top_p=None if greedy else sampling.top_p,
                      top_k=None if greedy else sampling.top_k,  # 0 = no limit
                      repetition_penalty=sampling.repetition_penalty, eos_token_id=self.stop_ids,
                      pad_token_id=self.pad_id, use_cache=True)
        device = self.model.device
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                      generation_config=config)  # [B * n, W + new], prompt-major
        new = out[:, width:].cpu()
        stops = torch.isin(new, torch.tensor(self.stop_ids))  # [B * n, new]
        replies = []
        for row, row_stops in zip(new.tolist(), stops):
            hits = torch.nonzero(row_stops)
            n_tokens = int(hits[0]) + 1 if len(hits) else len(row)
            replies.append(Generation(self.tokenizer.decode(row[:n_tokens], skip_special_tokens=True).strip(),
                                      n_tokens, bool(len(hits))))
        return [replies[i * n:(i + 1) * n] for i in range(len(ids))]


class VLLMGenerator:
    """vLLM offline generation (GPU): the same prompts and sampling settings as TransformersGenerator.

    Args:
        model: a Hugging Face causal LM folder or hub id whose tokenizer has a chat template.
        dtype: vLLM's dtype ("auto", "bfloat16", ...).
        chat_template: a Jinja chat template file, for a model whose tokenizer has none.
        name: the "model" written into the output lines (default: the folder's name).
        seed: vLLM's engine seed.
        **llm_kwargs: passed to vllm.LLM (e.g. gpu_memory_utilization, max_model_len).
    Raises:
        ImportError: vllm is not installed.
        ValueError: the tokenizer has no chat template.
    """

    def __init__(self, model: str | os.PathLike[str], *, dtype: str | None = None,
                 chat_template: str | os.PathLike[str] | None = None, name: str | None = None, seed: int = 0,
                 **llm_kwargs: Any) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise ImportError("the vllm backend needs vLLM on a CUDA machine: pip install 'igot[vllm]' "
                              "(or use backend='transformers')") from None
        from transformers import GenerationConfig

        self.tokenizer = _chat_tokenizer(str(model), chat_template)
        try:
            generation_config = GenerationConfig.from_pretrained(str(model))
        except OSError:
            generation_config = None
        self.stop_ids = _stop_ids(self.tokenizer, generation_config)
        self.llm = LLM(model=str(model), dtype=dtype or "auto", seed=seed, **llm_kwargs)
        self.name = name or _model_name(model)

    def __call__(self, conversations: Sequence[Messages], n: int, sampling: Sampling) -> list[list[Generation]]:
        """Generate n replies per conversation (see Generator)."""
        from vllm import SamplingParams

        params = SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                top_k=sampling.top_k or -1, repetition_penalty=sampling.repetition_penalty,
                                max_tokens=sampling.max_new_tokens, stop_token_ids=self.stop_ids)
        prompts = [{"prompt_token_ids": ids} for ids in _render(self.tokenizer, conversations)]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[Generation(o.text.strip(), len(o.token_ids), o.finish_reason == "stop") for o in r.outputs]
                for r in outputs]


def load_generator(model: str | os.PathLike[str] | None = None, *, backend: str = "auto",
                   device: str | None = None, dtype: str | None = None,
                   chat_template: str | os.PathLike[str] | None = None, seed: int = 0) -> Generator:
    """Load a generation backend for a Hugging Face chat model.

    Args:
        model: model folder or hub id; None for the cached SmolLM2-135M-Instruct (igot.data.smollm2()).
        backend: "auto" (vLLM when it is installed and CUDA is available, else transformers),
            "transformers" or "vllm".
        device, dtype: see TransformersGenerator (vLLM uses dtype only).
        chat_template: a Jinja chat template file for a model whose tokenizer has none.
        seed: vLLM's engine seed (the transformers backend seeds from Sampling.seed).
    Returns:
        A TransformersGenerator or VLLMGenerator.
    Raises:
        ValueError: an unknown backend, or no chat template.
        ImportError: backend="vllm" without vllm installed.
    """
    import importlib.util

    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    name = None
    if model is None:
        from .data import smollm2

        model, name = smollm2(), DEFAULT_MODEL_NAME
    if backend == "auto":
        import torch

        backend = "vllm" if importlib.util.find_spec("vllm") and torch.cuda.is_available() else "transformers"
    if backend == "vllm":
        return VLLMGenerator(model, dtype=dtype, chat_template=chat_template, name=name, seed=seed)
    return TransformersGenerator(model, device=device, dtype=dtype, chat_template=chat_template, name=name)


# ------------------------------------------------------------------------------------- word n-grams


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@functools.lru_cache(maxsize=1 << 20)
def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def _ngram_hashes(words: Sequence[str], n: int) -> np.ndarray:
    """uint64 hash of each run of n consecutive words, in order ([len(words) - n + 1], empty if fewer)."""
    count = len(words) - n + 1
    if count <= 0:
        return np.empty(0, np.uint64)
    word_hashes = np.fromiter((_word_hash(w) for w in words), np.uint64, len(words))
    acc = np.zeros(count, np.uint64)
    with np.errstate(over="ignore"):  # arithmetic mod 2^64 is the point
        for k in range(n):
            acc = acc * _MIX + word_hashes[k:k + count]
    return acc


def _contains(sorted_hashes: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Which of `hashes` occur in the sorted array `sorted_hashes` (bool, same shape as hashes)."""
    if len(sorted_hashes) == 0:
        return np.zeros(len(hashes), bool)
    at = np.minimum(np.searchsorted(sorted_hashes, hashes), len(sorted_hashes) - 1)
    return sorted_hashes[at] == hashes


class NgramIndex:
    """The set of word n-grams of a document collection (sorted uint64 hashes, 8 bytes per n-gram).

    Args:
        documents: the texts to index.
        n: n-gram length in words.
    """

    def __init__(self, documents: Iterable[str], n: int) -> None:
        self.n = n
        parts = [_ngram_hashes(_words(doc), n) for doc in documents]
        self.hashes = np.unique(np.concatenate(parts)) if parts else np.empty(0, np.uint64)

    def __len__(self) -> int:
        return len(self.hashes)

    def shares_ngram(self, text: str) -> bool:
        """Return True when text has a run of n words that occurs in an indexed document."""
        return bool(_contains(self.hashes, _ngram_hashes(_words(text), self.n)).any())


def copied_fraction(answer: str, source: str, n: int) -> float:
    """Return the fraction of the answer's words that lie inside a run of n words also found in source.

    Args:
        answer, source: texts (compared as lowercase \\w+ words).
        n: the run length; an answer shorter than n words scores 0.
    Returns:
        A fraction in [0, 1].
    """
    words = _words(answer)
    hits = _contains(np.unique(_ngram_hashes(_words(source), n)), _ngram_hashes(words, n))
    if not hits.any():
        return 0.0
    covered = np.convolve(hits.astype(np.int64), np.ones(n, np.int64))  # [len(words)]: runs covering word j
    return float(np.count_nonzero(covered)) / len(words)


class Deduplicator:
    """Exact and near-duplicate detection of QA pairs, incremental (check one pair, keep it if new).

    Exact: the same lowercase word sequence of question and answer. Near: Jaccard similarity of word
    3-gram shingle sets (question and answer words together) at or above `threshold`, found by MinHash LSH
    and confirmed exactly. Memory: 2.2 KB per kept pair of 40 words (measured with tracemalloc), most of it
    the LSH buckets, so some 450,000 pairs per GB.

    Args:
        threshold: the Jaccard similarity at which a pair is a near duplicate of a kept one.
        shingle: words per shingle.
    """

    def __init__(self, threshold: float, shingle: int = 3) -> None:
        self.threshold, self.shingle = threshold, shingle
        rng = np.random.default_rng(_LSH_SEED)
        size = _LSH_BANDS * _LSH_ROWS
        # x -> a*x + b mod 2^64 with odd a is a permutation of the 64-bit values: MinHash's permutations.
        self._a = rng.integers(0, 2**63, size, np.uint64) * np.uint64(2) + np.uint64(1)
        self._b = rng.integers(0, 2**63, size, np.uint64)
        self._row_mix = rng.integers(0, 2**63, _LSH_ROWS, np.uint64) * np.uint64(2) + np.uint64(1)
        self._exact: set[bytes] = set()
        # band key -> the kept pair's index, or a list of them: int keys and a plain int for the usual
        # single entry took 2.2 KB per kept pair where bytes keys and lists took 5.6 KB
        self._buckets: list[dict[int, int | list[int]]] = [{} for _ in range(_LSH_BANDS)]
        self._shingles: list[np.ndarray] = []

    def check(self, question: str, answer: str) -> str | None:
        """Return "exact_duplicate" or "near_duplicate" for a pair like a kept one; else keep it, return None."""
        q_words, a_words = _words(question), _words(answer)
        key = hashlib.blake2b("\x1f".join(q_words + ["\x1e"] + a_words).encode("utf-8"), digest_size=16).digest()
        if key in self._exact:
            return "exact_duplicate"
        words = q_words + a_words
        shingles = np.unique(_ngram_hashes(words, min(self.shingle, len(words)) or 1)) if words else \
            np.zeros(1, np.uint64)
        with np.errstate(over="ignore"):
            signature = (self._a[:, None] * shingles[None, :] + self._b[:, None]).min(axis=1)  # [bands * rows]
            # one 64-bit key per band; two bands colliding only adds a candidate, which is then checked
            keys = (signature.reshape(_LSH_BANDS, _LSH_ROWS) * self._row_mix).sum(axis=1).tolist()
        candidates: set[int] = set()
        for bucket, band in zip(self._buckets, keys):
            hit = bucket.get(band)
            if isinstance(hit, list):
                candidates.update(hit)
            elif hit is not None:
                candidates.add(hit)
        for j in sorted(candidates):
            other = self._shingles[j]
            common = len(np.intersect1d(shingles, other, assume_unique=True))
            if common / (len(shingles) + len(other) - common) >= self.threshold:
                return "near_duplicate"
        self._exact.add(key)
        index = len(self._shingles)
        for bucket, band in zip(self._buckets, keys):
            hit = bucket.get(band)
            if hit is None:
                bucket[band] = index
            elif isinstance(hit, list):
                hit.append(index)
            else:
                bucket[band] = [hit, index]
        self._shingles.append(shingles)
        return None


# ------------------------------------------------------------------------------------------- sources


def source_hash(document: str) -> str:
    """Return the "source" of a document's lines: the first 16 hex digits of the sha256 of its UTF-8 text."""
    return hashlib.sha256(document.encode("utf-8")).hexdigest()[:16]


def read_sources(sources: SourceSpec | Iterable[SourceSpec], *, doc_mode: str = "file") -> Iterator[str]:
    """Stream the documents of igot.data corpora ("hpo:train", name:split) and files, folders or globs.

    Args:
        sources: one spec or a list; a "name:split" spec names a corpus of igot.data.CORPORA unless a file
            of that name exists.
        doc_mode: how plain-text files split into documents (igot.corpus.read_documents).
    Returns:
        An iterator of documents, sources in the order given.
    Raises:
        ValueError: a corpus name with an unknown split.
        FileNotFoundError: a path that does not exist, or a corpus that is not fetched.
    """
    from .corpus import read_documents
    from .data import CORPORA, SPLITS, load_corpus

    specs = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    parsed = []  # checked up front, so a bad spec fails before any generation
    for spec in specs:
        match = _CORPUS_SPEC.fullmatch(str(spec))
        if match and match[1] in CORPORA and not Path(spec).exists():
            if match[2] not in SPLITS:
                raise ValueError(f"{spec!r}: split {match[2]!r} is not one of {', '.join(SPLITS)}")
            parsed.append((match[1], match[2]))
        else:
            parsed.append(read_documents(spec, doc_mode=doc_mode))  # resolves the paths now
    return (doc for item in parsed for doc in (load_corpus(*item) if isinstance(item, tuple) else item))


def _doc_key(document: str) -> bytes:
    return hashlib.blake2b(" ".join(_words(document)).encode("utf-8"), digest_size=16).digest()


def _cut(document: str, max_chars: int) -> str:
    if len(document) <= max_chars:
        return document
    space = document.rfind(" ", max_chars // 2, max_chars)
    return document[:space if space > 0 else max_chars]


# ------------------------------------------------------------------------------------------------ output


@dataclass
class SynthSummary:
    """What a synthesize() run did; format() prints it."""

    out: str
    model: str
    template: str
    read: int = 0  # documents read from the sources
    source_heldout: int = 0  # equal to a held-out document: never used
    already_done: int = 0  # done by an earlier run (or repeated in the sources): skipped
    used: int = 0  # documents sent to the generator
    cut: int = 0  # of those, cut to max_doc_chars
    existing_pairs: int = 0  # lines already in the file when the run started
    repaired_bytes: int = 0  # trailing partial line removed at start (an interrupted earlier run)
    generated: int = 0  # replies
    tokens: int = 0  # tokens generated
    generate_s: float = 0.0  # seconds inside the generator
    wall_s: float = 0.0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first reply it dropped (prefix included)
    kept: int = 0

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of generation (0 when nothing was generated)."""
        return self.tokens / self.generate_s if self.generate_s > 0 else 0.0

    def format(self) -> str:
        """Return the summary as a few lines of text."""
        drops = ", ".join(f"{reason} {count:,}" for reason, count in self.dropped.items())
        return "\n".join([
            f"{self.out}: {self.kept:,} pairs kept of {self.generated:,} replies from {self.used:,} documents "
            f"(model {self.model}, template {self.template}); {self.existing_pairs:,} pairs were already there",
            f"generated {self.tokens:,} tokens in {self.generate_s:.1f} s: {self.tokens_per_s:,.1f} tokens/s "
            f"(wall {self.wall_s:.1f} s)",
            f"documents: {self.read:,} read, {self.used:,} used ({self.cut:,} cut to max_doc_chars), "
            f"{self.already_done:,} already done, {self.source_heldout:,} equal to a held-out document"
            + (f"; a partial last line of {self.repaired_bytes:,} bytes was removed" if self.repaired_bytes else ""),
            f"dropped: {drops}",
        ])


def _cut_partial_line(fd: int) -> int:
    """Truncate what follows the last newline of the file; return the bytes removed."""
    size = end = os.fstat(fd).st_size
    while end > 0:
        start = max(0, end - (1 << 16))
        block = os.pread(fd, end - start, start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end < size:
        os.ftruncate(fd, end)
    return size - end


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # a regular file takes it in one write; loop only in case the OS splits it
        view = view[os.write(fd, view):]


class _Output:
    """The output file and its .done side file, locked, repaired, and read back for resume."""

    def __init__(self, out: Path) -> None:
        if not out.name.endswith(".jsonl"):
            raise ValueError(f"out={str(out)!r} must end with .jsonl (the trainer reads JSON lines by suffix)")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.done_path = out, out.with_name(out.name + ".done")
        fresh = not out.exists()
        self.fd = os.open(out, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise OSError(errno.EBUSY, "another igot synth run is writing this file; wait for it", str(out)) from None
        if fresh and self.done_path.exists():  # the output was deleted: start over, not "all done"
            self.done_path.unlink()
        self.done_fd = os.open(self.done_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self.repaired = _cut_partial_line(self.fd)
        _cut_partial_line(self.done_fd)

    def existing(self) -> Iterator[dict[str, Any]]:
        """Yield the lines already in the file (checked: JSON objects with every field)."""
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    record, why = None, str(exc)
                else:
                    why = f"missing fields {[k for k in LINE_FIELDS if k not in record]}"
                if not isinstance(record, dict) or not all(k in record for k in LINE_FIELDS):
                    raise ValueError(f"{self.path}:{number}: not an igot synth line ({why}); pass another out")
                yield record

    def done_sources(self) -> set[str]:
        with open(self.done_path, encoding="utf-8") as f:
            return {line.strip() for line in f if line.strip()}

    def write(self, source: str, lines: list[str]) -> None:
        if lines:
            _write_all(self.fd, "".join(lines).encode("utf-8"))
        _write_all(self.done_fd, f"{source}\n".encode("ascii"))

    def close(self) -> None:
        for fd in (self.fd, self.done_fd):
            os.fsync(fd)
            os.close(fd)


# ---------------------------------------------------------------------------------------------- driver


def synthesize(
    domain: SourceSpec | Iterable[SourceSpec],
    out: str | os.PathLike[str],
    *,
    generator: Generator | str | os.PathLike[str] | None = None,
    template: str | os.PathLike[str] | Template = "science",
    heldout: SourceSpec | Iterable[SourceSpec] = (),
    per_doc: int = 2,
    max_docs: int | None = None,
    batch_size: int = 8,
    sampling: Sampling = Sampling(),
    filters: Filters = Filters(),
    max_doc_chars: int = 2000,
    doc_mode: str = "file",
    progress: bool = True,
) -> SynthSummary:
    """Generate question-answer pairs from domain documents and append the kept ones to a JSON-lines file.

    Each line holds question, answer, text (the training text, template.text filled in), source
    (source_hash of the document), model and template (its id, e.g. "science-v1"). Rerunning the same
    call resumes: documents already done are skipped, so an interrupted run is finished by running it again.

    Args:
        domain: source documents: igot.data corpora as "name:split" (e.g. "hpo:train"), files, folders or
            globs (igot.corpus.read_documents), one or a list.
        out: the output file, ending in .jsonl; created, or appended to when it exists.
        generator: a Generator callable (its `name` attribute is the "model" field), a model folder / hub
            id loaded with load_generator(backend="auto"), or None for the cached SmolLM2-135M-Instruct.
        template: a built-in template name (TEMPLATES), a TOML template file, or a Template.
        heldout: held-out documents (same forms as domain): a pair sharing a run of
            filters.contamination_ngram words with one is dropped, and a domain document equal to one
            (same words) is never used as a source.
        per_doc: replies sampled per document (each parsed into at most one pair).
        max_docs: the most domain documents to cover, counting those done by earlier runs; None = all.
        batch_size: documents per generator call (batch_size * per_doc sequences).
        sampling: decoding settings.
        filters: filter thresholds.
        max_doc_chars: documents longer than this are cut (at a space) before they go into the prompt.
        doc_mode: how plain-text source files split into documents ("file", "blank_line", "line").
        progress: show a tqdm bar on stderr (documents, kept pairs, tokens/s).
    Returns:
        A SynthSummary of this run (counts of every filter, tokens/s).
    Raises:
        ValueError: bad arguments, an out file that is not igot synth output or was written with another
            model or template, or a generator returning the wrong number of replies.
        OSError: another run holds the output file.
        FileNotFoundError: a missing source or template file.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    for name, value, low in (("per_doc", per_doc, 1), ("batch_size", batch_size, 1),
                             ("max_doc_chars", max_doc_chars, 1), ("max_docs", max_docs, 0)):
        if value is not None and (not isinstance(value, int) or value < low):
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    if per_doc > 1 and sampling.temperature == 0:
        raise ValueError(f"per_doc={per_doc} with temperature 0 repeats one greedy reply; set temperature > 0")
    tmpl = load_template(template)
    docs = read_sources(domain, doc_mode=doc_mode)  # specs checked before the model loads
    heldout_docs = list(read_sources(heldout, doc_mode=doc_mode)) if heldout else []
    if generator is None or isinstance(generator, (str, os.PathLike)):
        generator = load_generator(generator, seed=sampling.seed)
    model_name = getattr(generator, "name", None) or getattr(generator, "__name__", type(generator).__name__)
    contamination = NgramIndex(heldout_docs, filters.contamination_ngram) if heldout_docs else None
    heldout_keys = {_doc_key(doc) for doc in heldout_docs}
    del heldout_docs

    summary = SynthSummary(out=str(out), model=model_name, template=tmpl.id)
    dedup = Deduplicator(filters.near_duplicate_jaccard)
    output = _Output(Path(out))
    try:
        summary.repaired_bytes = output.repaired
        done = output.done_sources()
        for record in output.existing():
            if (record["model"], record["template"]) != (model_name, tmpl.id):
                raise ValueError(f"{out} holds pairs of model {record['model']!r}, template {record['template']!r}; "
                                 f"this run is {model_name!r}, {tmpl.id!r}: pass another out")
            done.add(record["source"])
            dedup.check(record["question"], record["answer"])
            summary.existing_pairs += 1

        def check(reply: Generation, document: str) -> tuple[str | None, str, str]:
            if not reply.finished:
                return "unfinished", "", ""
            pair = tmpl.parse(reply.text)
            if pair is None:
                return "malformed", "", ""
            question, answer = pair
            n_q, n_a = len(_words(question)), len(_words(answer))
            if n_q < filters.min_question_words or n_a < filters.min_answer_words:
                return "too_short", question, answer
            if n_q > filters.max_question_words or n_a > filters.max_answer_words:
                return "too_long", question, answer
            if contamination is not None and (contamination.shares_ngram(question) or
                                              contamination.shares_ngram(answer)):
                return "contaminated", question, answer
            if copied_fraction(answer, document, filters.copy_ngram) >= filters.max_copy_fraction:
                return "copies_source", question, answer
            return dedup.check(question, answer), question, answer

        bar = tqdm(total=max_docs, unit="doc", desc="synth", disable=None if progress else True, file=sys.stderr)

        def run(batch: list[tuple[str, str]]) -> None:
            prompts = [_cut(doc, max_doc_chars) for _, doc in batch]
            summary.cut += sum(len(p) < len(doc) for p, (_, doc) in zip(prompts, batch))
            t0 = time.perf_counter()
            replies = generator([tmpl.messages(p) for p in prompts], per_doc, sampling)
            summary.generate_s += time.perf_counter() - t0
            if len(replies) != len(batch) or any(len(r) != per_doc for r in replies):
                raise ValueError(f"generator {model_name!r} returned {[len(r) for r in replies]} replies for "
                                 f"{len(batch)} conversations; it must return per_doc={per_doc} for each")
            for (source, document), doc_replies in zip(batch, replies):
                lines = []
                for reply in doc_replies:
                    summary.generated += 1
                    summary.tokens += reply.n_tokens
                    reason, question, answer = check(reply, document)
                    if reason is not None:
                        summary.dropped[reason] += 1
                        summary.examples.setdefault(reason, tmpl.reply_prefix + reply.text)
                        continue
                    summary.kept += 1
                    lines.append(json.dumps({"question": question, "answer": answer,
                                             "text": tmpl.format(question, answer), "source": source,
                                             "model": model_name, "template": tmpl.id},
                                            ensure_ascii=False) + "\n")
                output.write(source, lines)
            bar.update(len(batch))
            bar.set_postfix(kept=summary.kept, tok_s=f"{summary.tokens_per_s:.1f}")

        batch: list[tuple[str, str]] = []
        taken = 0
        with bar:
            for document in docs:
                if max_docs is not None and taken >= max_docs:
                    break
                summary.read += 1
                if heldout_keys and _doc_key(document) in heldout_keys:
                    summary.source_heldout += 1
                    continue
                taken += 1
                source = source_hash(document)
                if source in done:
                    summary.already_done += 1
                    bar.update(1)
                    continue
                done.add(source)
                batch.append((source, document))
                summary.used += 1
                if len(batch) == batch_size:
                    run(batch)
                    batch = []
            if batch:
                run(batch)
    finally:
        output.close()
    summary.wall_s = time.perf_counter() - start
    return summary
