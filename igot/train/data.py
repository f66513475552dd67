"""The trainer's data: sources encoded once into cached token shards, packed streams, a mixture sampler.

- Sources: each name of [data.sources] lists igot.data corpora ("hpo:train") and/or files, folders and
  globs (.txt, .jsonl, .jsonl.gz). A source is encoded once with the run's tokenizer into
  $IGOT_CACHE/train-encoded/<key>/ (igot.corpus shards with per-token bytes); the key hashes the tokenizer
  and the sources' identity (corpus manifests; file paths, sizes and modification times), so runs with the
  same tokenizer share the cache and a changed file is encoded again.
- Packing: a source is an endless stream of epochs; each epoch is its documents in a seeded order (or the
  curriculum's order), each followed by the separator token. A sequence is a window of the stream:
  seq_len * K input tokens plus the K tokens after them (the targets of its last position).
- Sampling: MixtureSampler picks the source of each sequence by smooth weighted round robin, so every
  prefix of the stream holds each source's share of sequences (hence tokens) to within one sequence, with
  no randomness to replay; the seed drives the document order inside each source. The state is a few
  numbers per source (position, credit), saved in checkpoints.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._files import replace_folder
from ..corpus import EncodedCorpus, _resolve_sources, encode_corpus, read_documents
from ..data import CORPORA, SPLITS, cache_dir, load_corpus

_CORPUS_SPEC = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*):(?P<split>[a-z]+)$")
_CACHE_FORMAT = 1  # bump when what an encoded source folder holds changes


def _corpus_spec(spec: str) -> tuple[str, str] | None:
    """("hpo", "train") for "hpo:train" when it names an igot.data corpus and no such path exists."""
    match = _CORPUS_SPEC.match(spec)
    if match is None or Path(spec).exists():
        return None
    name, split = match["name"], match["split"]
    if name not in CORPORA or split not in SPLITS:
        raise ValueError(f"{spec!r} is neither a file nor an igot corpus: corpora are {', '.join(CORPORA)} and "
                         f"splits {', '.join(SPLITS)} (e.g. \"hpo:train\")")
    return name, split


def read_source(specs: Sequence[str], *, doc_mode: str = "file", text_field: str = "text") -> Iterator[str]:
    """Stream the documents of one source: its corpora and paths in the order listed.

    Args:
        specs: igot.data corpora as "name:split" and/or files, folders and globs (see igot.corpus).
        doc_mode: how .txt files split into documents.
        text_field: the text key of .jsonl files.
    Returns:
        An iterator of document strings.
    Raises:
        ValueError: an unknown corpus, or a path source without a non-empty document.
        FileNotFoundError: a missing path, or a corpus that is not fetched.
    """
    for spec in specs:
        corpus = _corpus_spec(spec)
        if corpus is not None:
            yield from load_corpus(*corpus)
        else:
            yield from read_documents(spec, doc_mode=doc_mode, text_field=text_field)


def _spec_identity(spec: str) -> Any:
    corpus = _corpus_spec(spec)
    if corpus is not None:
        manifest = cache_dir() / "corpora" / corpus[0] / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"corpus {corpus[0]!r} is not fetched; run `igot data fetch --only {corpus[0]}`")
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        return ["corpus", *corpus, files["docs.jsonl"]["sha256"]]
    return ["paths", [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in _resolve_sources(spec)]]


@dataclass(eq=False)
class Source:
    """One named source as token arrays: documents end to end, with their offsets and per-token bytes."""

    name: str
    ids: np.ndarray  # [T] uint32 (memory-mapped)
    token_bytes: np.ndarray  # [T] uint32 UTF-8 bytes each token covers
    doc_offsets: np.ndarray  # [n_docs + 1] int64: document d is ids[doc_offsets[d]:doc_offsets[d + 1]]
    folder: Path  # the cache folder it was read from

    @property
    def n_docs(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.doc_offsets[-1])

    @property
    def n_bytes(self) -> int:
        return int(self.token_bytes.sum(dtype=np.int64))


def encode_source(name: str, specs: Sequence[str], tokenizer: Any, tokenizer_json: str, *, cache: Path | None = None,
                  doc_mode: str = "file", text_field: str = "text", progress: bool = True) -> Source:
    """Encode one source with the run's tokenizer into the shared cache (once), and open it.

    Args:
        name: the source's name in the config (for messages).
        specs: its corpora and paths.
        tokenizer: the run's tokenizers.Tokenizer.
        tokenizer_json: that tokenizer's JSON text (part of the cache key).
        cache: the folder of encoded sources (default $IGOT_CACHE/train-encoded).
        doc_mode, text_field: as for read_source.
        progress: show the encoding progress bar.
    Returns:
        The Source, memory-mapped from the cache.
    Raises:
        ValueError: the source holds no document (the message names it), or an unknown corpus.
        FileNotFoundError: a missing path or corpus.
    """
    identity = [_CACHE_FORMAT, hashlib.sha256(tokenizer_json.encode()).hexdigest(), doc_mode, text_field,
                [_spec_identity(s) for s in specs]]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]
    root = cache if cache is not None else cache_dir() / "train-encoded"
    folder = root / key
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # ranks and concurrent runs: one encodes, the others then read it
        if not (folder / "manifest.json").is_file():
            staging = root / f".{key}.tmp"
            try:
                docs = read_source(specs, doc_mode=doc_mode, text_field=text_field)
                encode_corpus(tokenizer, docs, out_dir=staging, token_bytes=True, progress=progress)
            except ValueError as exc:
                raise ValueError(f"data.sources.{name} ({', '.join(specs)}): {exc}") from None
            (staging / "source.json").write_text(json.dumps({"specs": list(specs), "identity": identity}))
            replace_folder(staging, folder)
    corpus = EncodedCorpus.load(folder)
    if corpus.token_bytes is None:  # a damaged or foreign folder under our key
        raise OSError(errno.EIO, "encoded source lacks token_bytes; delete the folder to re-encode", str(folder))
    doc_offsets = np.append(np.flatnonzero(corpus.doc_starts), corpus.n_tokens).astype(np.int64)
    return Source(name, corpus.ids, corpus.token_bytes, doc_offsets, folder)


def heldout_texts(specs: Sequence[str], n_docs: int, *, doc_mode: str = "file", text_field: str = "text") -> list[str]:
    """The first n_docs documents of a held-out set (the same texts whatever the tokenizer).

    Raises:
        ValueError: the set has no document.
    """
    texts = []
    for doc in read_source(specs, doc_mode=doc_mode, text_field=text_field):
        if len(texts) == n_docs:
            break
        texts.append(doc)
    if not texts and n_docs:
        raise ValueError(f"held-out set {', '.join(specs)} holds no document")
    return texts


# ------------------------------------------------------------------------------------------ streams


class SourceStream:
    """A source as an endless packed stream: epoch after epoch of its documents, each + the separator.

    Every epoch has the same length (tokens + documents), so a stream position maps to (epoch, offset)
    by division. The document order of an epoch is a seeded shuffle, or, when `buckets` is given (the
    ppl_ascending curriculum), the buckets in their order, each shuffled on its own.
    """

    def __init__(self, source: Source, separator: int, seed: int, buckets: list[np.ndarray] | None = None) -> None:
        self.source, self.separator, self.seed, self.buckets = source, separator, seed, buckets
        self.lengths = np.diff(source.doc_offsets) + 1  # [n_docs] tokens per document with its separator
        self.epoch_len = int(self.lengths.sum())
        self._epoch: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, order, cumulative starts)

    def order(self, epoch: int) -> np.ndarray:
        """[n_docs] int64: the documents of `epoch` in stream order."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.buckets is None:
            return rng.permutation(self.source.n_docs)
        return np.concatenate([rng.permutation(bucket) for bucket in self.buckets])

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._epoch is None or self._epoch[0] != epoch:
            order = self.order(epoch)
            starts = np.concatenate([[0], np.cumsum(self.lengths[order])])  # [n_docs + 1]
            self._epoch = (epoch, order, starts)
        return self._epoch[1], self._epoch[2]

    def window(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens start..start+length-1 of the stream and the UTF-8 bytes of each (the separator has 0).

        Returns:
            (ids int64 [length], token_bytes int64 [length]).
        """
        ids = np.empty(length, np.int64)
        nbytes = np.zeros(length, np.int64)
        filled = 0
        while filled < length:
            epoch, offset = divmod(start + filled, self.epoch_len)
            order, starts = self._layout(epoch)
            slot = int(np.searchsorted(starts, offset, side="right")) - 1
            while filled < length and slot < len(order):
                doc = int(order[slot])
                first, last = self.source.doc_offsets[doc], self.source.doc_offsets[doc + 1]
                inside = offset - int(starts[slot])  # position inside this document + separator
                take = min(length - filled, int(last - first) - inside)
                if take > 0:
                    ids[filled:filled + take] = self.source.ids[first + inside:first + inside + take]
                    nbytes[filled:filled + take] = self.source.token_bytes[first + inside:first + inside + take]
                    filled += take
                    offset += take
                if filled < length:  # the separator after the document
                    ids[filled] = self.separator
                    filled += 1
                    offset += 1
                slot += 1
        return ids, nbytes


# -------------------------------------------------------------------------------------------- sampler


@dataclass
class SamplerState:
    """Where the mixture is: stream positions (in tokens) and the round-robin credits of this stage."""

    positions: dict[str, int] = field(default_factory=dict)  # stream key -> next token position
    credits: dict[str, float] = field(default_factory=dict)  # source -> smooth round-robin credit
    weights: dict[str, float] = field(default_factory=dict)  # source -> current (normalised) weight

    def to_dict(self) -> dict[str, Any]:
        return {"positions": dict(self.positions), "credits": dict(self.credits), "weights": dict(self.weights)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SamplerState:
        return cls(dict(data["positions"]), dict(data["credits"]), dict(data["weights"]))


@dataclass(frozen=True)
class Draw:
    """One sequence: which source, which stream and where in it."""

    source: str
    stream: str
    start: int


class MixtureSampler:
    """Draws sequences from named streams by weight, deterministically (smooth weighted round robin)."""

    def __init__(self, streams: Mapping[str, tuple[str, SourceStream]], state: SamplerState) -> None:
        """streams: source name -> (stream key, stream); state: positions by stream key, credits, weights."""
        self.streams, self.state = streams, state
        for name, (key, _) in streams.items():
            state.positions.setdefault(key, 0)
            state.credits.setdefault(name, 0.0)

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Normalise and use these weights from the next draw on (credits are kept).

        Raises:
            ValueError: a weight is negative or not finite, or they sum to zero (e.g. a reweighting rule's output).
        """
        values = [float(weights[name]) for name in self.streams]
        if not all(math.isfinite(v) and v >= 0 for v in values) or not sum(values) > 0:
            raise ValueError(f"source weights {dict(zip(self.streams, values))} must be finite, >= 0 and not all 0; "
                             "check the stage's reweight rule")
        self.state.weights = {name: v / sum(values) for name, v in zip(self.streams, values)}

    def draw(self, n: int, advance: int) -> list[Draw]:
        """Pick the next n sequences; each moves its stream by `advance` tokens (its input tokens)."""
        draws = []
        names = list(self.streams)
        for _ in range(n):
            for name in names:
                self.state.credits[name] += self.state.weights[name]
            pick = max(names, key=lambda name: self.state.credits[name])  # ties: the first listed
            self.state.credits[pick] -= 1.0
            key = self.streams[pick][0]
            draws.append(Draw(pick, key, self.state.positions[key]))
            self.state.positions[key] += advance
        return draws

    def batch(self, draws: Sequence[Draw], seq_len: int, patch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token windows of the draws: inputs, patch targets, and the bytes of the inputs.

        Returns:
            inputs int64 [B, seq_len * K], targets int64 [B, seq_len, K] (the K tokens after each position's
            patch), input bytes int64 [B].
        """
        n_inputs = seq_len * patch_size
        inputs = np.empty((len(draws), n_inputs), np.int64)
        targets = np.empty((len(draws), seq_len, patch_size), np.int64)
        nbytes = np.empty(len(draws), np.int64)
        for row, draw in enumerate(draws):
            ids, token_bytes = self.streams[draw.source][1].window(draw.start, n_inputs + patch_size)
            inputs[row] = ids[:n_inputs]
            targets[row] = ids[patch_size:].reshape(seq_len, patch_size)
            nbytes[row] = token_bytes[:n_inputs].sum()
        return inputs, targets, nbytes


def ppl_buckets(scores: np.ndarray, n_buckets: int) -> list[np.ndarray]:
    """Documents split by score into n_buckets quantile buckets, lowest scores first.

    Args:
        scores: [n_docs] per-document score (mean NLL per token under the stage's starting model).
        n_buckets: how many buckets (at most n_docs).
    Returns:
        A list of int64 arrays of document indices; their concatenation is the documents by ascending score.
    """
    ranked = np.argsort(scores, kind="stable")
    return [bucket for bucket in np.array_split(ranked, min(n_buckets, len(ranked))) if len(bucket)]
