"""Corpus pipeline: stream documents from files, encode them with a Hugging Face tokenizer into flat arrays.

    docs = read_documents("data/", doc_mode="blank_line")       # .txt / .jsonl / .jsonl.gz, streamed
    corpus = encode_corpus("tokenizer.json", docs, out_dir="enc/")  # uint32 ids + word / document starts
    corpus = EncodedCorpus.load("enc/")                            # memory-mapped

Word starts come from the tokenizer itself: `Encoding.word_ids` numbers the pre-tokenizer's splits (after
every step of a Sequence pre-tokenizer, and with each added token as its own split), so a token starts a
word exactly where its word id changes. Checked against `pre_tokenize_str` for byte-level BPE (GPT-2,
SmolLM2: Digits + ByteLevel) and Metaspace tokenizers in tests/test_corpus.py. A tokenizer without a
pre-tokenizer, or with `Metaspace(split=False)` (how some SentencePiece conversions look), does not split
at all: each document is then a single word, which is what its BPE model sees too. `encode_batch_fast`
is not used: it returns no word ids (all None) and no offsets.

Invalid UTF-8 with errors="replace" is counted in a ReadStats (pass `stats=` to read_documents) and
reported by one UnicodeWarning per affected file.
"""
from __future__ import annotations

import codecs
import errno
import glob
import gzip
import itertools
import json
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, Union, get_args

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

Source = Union[str, "os.PathLike[str]"]
DocMode = Literal["file", "blank_line", "line"]
Errors = Literal["strict", "replace"]

_DOC_MODES: tuple[str, ...] = get_args(DocMode)
_ERRORS: tuple[str, ...] = get_args(Errors)
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
_FOLDER_SUFFIXES = (".txt", ".txt.gz") + _JSONL_SUFFIXES  # what a folder source contributes
_GLOB_CHARS = frozenset("*?[")
# A batch also closes at this many characters, so a folder of large files never sits in memory at once;
# 8 Mi characters are some two million tokens, enough for encode_batch to keep every core busy.
_BATCH_CHARS = 8 << 20
_MANIFEST = "manifest.json"
_FORMAT = "igot.EncodedCorpus"
_FORMAT_VERSION = 1
_NPY_HEADER_BYTES = 128  # fixed so the header can be rewritten in place with the final length


# ----------------------------------------------------------------------------------------------- reading


class CorpusDecodeError(UnicodeDecodeError):
    """Invalid UTF-8 in a corpus file; names the file and the byte offset (a ValueError subclass)."""

    def __init__(self, path: Path, offset: int, cause: UnicodeDecodeError) -> None:
        super().__init__(cause.encoding, cause.object, cause.start, cause.end, cause.reason)
        self.path = path
        self.offset = offset  # byte offset in the file (in the decompressed stream for .gz)

    def __str__(self) -> str:
        return (f"{self.path}: invalid UTF-8 at byte offset {self.offset} ({self.reason}); pass "
                "errors='replace' to replace invalid bytes with U+FFFD")


@dataclass
class ReadStats:
    """Counters that read_documents fills in while it streams (pass one as `stats=`)."""

    n_files: int = 0  # files opened
    n_docs: int = 0  # documents yielded
    n_replaced: int = 0  # invalid UTF-8 sequences replaced by U+FFFD (errors="replace")


def read_documents(
    sources: Source | Iterable[Source],
    *,
    doc_mode: DocMode = "file",
    text_field: str = "text",
    errors: Errors = "strict",
    stats: ReadStats | None = None,
) -> Iterator[str]:
    """Stream the documents of text and JSON-lines files, one file open at a time.

    Formats by suffix: `.jsonl` / `.jsonl.gz` hold one JSON object per line whose `text_field` string is a
    document; anything else is plain UTF-8 text (`.gz` is decompressed) split by `doc_mode`: "file" (the
    whole file), "blank_line" (blocks separated by blank lines, inner newlines kept) or "line" (each line,
    without its line ending). Documents that are empty or only whitespace are skipped. Files come in a
    deterministic order: sources in the order given, each folder and glob sorted by path.

    Args:
        sources: a file, a folder (its *.txt, *.txt.gz, *.jsonl and *.jsonl.gz files, recursively), a glob
            pattern (`**` recurses), or a list of these.
        doc_mode: how plain-text files split into documents (ignored for JSON lines).
        text_field: the key of the document text in each JSON-lines object.
        errors: "strict" raises on invalid UTF-8; "replace" substitutes U+FFFD, counts the replacements in
            `stats.n_replaced` and warns (UnicodeWarning) once per affected file.
        stats: optional ReadStats updated in place while the generator runs.

    Returns:
        An iterator of document strings.

    Raises:
        FileNotFoundError: a source path does not exist or a glob matches nothing.
        ValueError: a bad doc_mode / errors value, a JSON line that is not an object with a string
            `text_field` (the message names file and line), or no non-empty document at all.
        CorpusDecodeError: (a UnicodeDecodeError, so a ValueError) invalid UTF-8 with errors="strict".
    """
    _check_choice("doc_mode", doc_mode, _DOC_MODES)
    _check_choice("errors", errors, _ERRORS)
    paths = _resolve_sources(sources)  # resolved up front so a missing path fails before any work
    return _stream_documents(paths, doc_mode, text_field, errors, stats or ReadStats())


def _stream_documents(paths: list[Path], doc_mode: DocMode, text_field: str, errors: Errors,
                      stats: ReadStats) -> Iterator[str]:
    n_docs_before = stats.n_docs
    for path in paths:
        stats.n_files += 1
        n_replaced_before = stats.n_replaced
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as stream:
            if path.name.endswith(_JSONL_SUFFIXES):
                docs = _jsonl_docs(stream, path, text_field, errors, stats)
            else:
                docs = _text_docs(stream, path, doc_mode, errors, stats)
            for doc in docs:
                if doc.strip():
                    stats.n_docs += 1
                    yield doc
        if stats.n_replaced > n_replaced_before:
            warnings.warn(f"{path}: replaced {stats.n_replaced - n_replaced_before} invalid UTF-8 "
                          "sequence(s) with U+FFFD (errors='replace')", UnicodeWarning, stacklevel=2)
    if stats.n_docs == n_docs_before:
        shown = ", ".join(map(str, paths[:3])) + (", ..." if len(paths) > 3 else "")
        raise ValueError(f"no non-empty document in {len(paths)} file(s) ({shown or 'none'}); check the "
                         "sources, doc_mode and text_field")


def _text_docs(stream: IO[bytes], path: Path, doc_mode: DocMode, errors: Errors,
               stats: ReadStats) -> Iterator[str]:
    if doc_mode == "file":
        yield _decode(stream.read(), path, 0, errors, stats)
        return
    block: list[str] = []
    offset = 0
    for raw in stream:  # 0x0A never occurs inside a multi-byte UTF-8 sequence: per-line decoding is exact
        line = _decode(raw, path, offset, errors, stats)
        offset += len(raw)
        if doc_mode == "line":
            yield line.rstrip("\r\n")
        elif line.strip():
            block.append(line)
        elif block:
            yield "".join(block).rstrip("\r\n")
            block = []
    if block:
        yield "".join(block).rstrip("\r\n")


def _jsonl_docs(stream: IO[bytes], path: Path, text_field: str, errors: Errors,
                stats: ReadStats) -> Iterator[str]:
    offset = 0
    for line_no, raw in enumerate(stream, 1):
        line = _decode(raw, path, offset, errors, stats)
        offset += len(raw)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or text_field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{path}:{line_no}: no field {text_field!r} (found {keys}); pass "
                             "text_field= to name the field that holds the text")
        text = record[text_field]
        if not isinstance(text, str):
            raise ValueError(f"{path}:{line_no}: field {text_field!r} is a {type(text).__name__}, "
                             "not a string")
        yield text


def _decode(data: bytes, path: Path, offset: int, errors: Errors, stats: ReadStats) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if errors == "strict":
            raise CorpusDecodeError(path, offset + exc.start, exc) from None
    # Same output as data.decode("utf-8", "replace"), while counting the replaced sequences; each
    # attempt stops at the next error, so the work stays linear in len(data).
    view = memoryview(data)
    parts: list[str] = []
    pos = 0
    while True:
        try:
            parts.append(codecs.utf_8_decode(view[pos:], "strict", True)[0])
            return "".join(parts)
        except UnicodeDecodeError as exc:
            parts.append(codecs.utf_8_decode(view[pos:pos + exc.start], "strict", True)[0])
            parts.append("\ufffd")
            stats.n_replaced += 1
            pos += exc.end


def _resolve_sources(sources: Source | Iterable[Source]) -> list[Path]:
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    paths: list[Path] = []
    for source in sources:
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"sources must be paths, folders or glob patterns, got {type(source).__name__}")
        path = Path(source)
        if path.is_dir():
            paths += _folder_files(path)
        elif path.is_file():
            paths.append(path)
        elif _GLOB_CHARS & set(str(source)):
            matches = sorted(Path(m) for m in glob.glob(str(source), recursive=True))
            if not matches:
                raise FileNotFoundError(errno.ENOENT, "no file matches the glob pattern", str(source))
            for match in matches:
                paths += _folder_files(match) if match.is_dir() else [match]
        else:
            raise FileNotFoundError(errno.ENOENT, "no such corpus file or folder", str(source))
    return paths


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(_FOLDER_SUFFIXES) and p.is_file())


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


# --------------------------------------------------------------------------------------- encoded corpus


@dataclass(eq=False)
class EncodedCorpus:
    """A corpus as one token stream: ids plus the flags that mark where words and documents start.

    Every document contributes at least one token (empty ones are skipped), so `doc_starts.sum() ==
    n_docs`, and every document start is also a word start. `n_bytes` counts the UTF-8 bytes of the
    encoded documents (the denominator of bits per byte).

    `token_bytes` (optional, encode_corpus(token_bytes=True)) gives each token the UTF-8 bytes of the text
    from the end of the previous token of its document (or the document start) to its own end, so the
    bytes of any run of tokens are a sum over it, and a document's tokens sum to the bytes of its text up
    to the end of its last token (trailing text no token covers, e.g. whitespace BERT drops, is not counted).
    """

    ids: np.ndarray  # [T] uint32 token ids
    word_starts: np.ndarray  # [T] bool, True at the first token of each pre-token (word)
    doc_starts: np.ndarray  # [T] bool, True at the first token of each document
    n_docs: int
    n_bytes: int
    token_bytes: np.ndarray | None = None  # [T] uint32, see the class docstring

    def __post_init__(self) -> None:
        if self.ids.dtype != np.uint32:
            raise TypeError(f"ids must be uint32, got {self.ids.dtype}")
        for name in ("word_starts", "doc_starts"):
            flags = getattr(self, name)
            if flags.dtype != np.bool_:
                raise TypeError(f"{name} must be bool, got {flags.dtype}")
            if flags.shape != self.ids.shape:
                raise ValueError(f"{name} has shape {flags.shape}, ids has {self.ids.shape}")
        if self.token_bytes is not None:
            if self.token_bytes.dtype != np.uint32:
                raise TypeError(f"token_bytes must be uint32, got {self.token_bytes.dtype}")
            if self.token_bytes.shape != self.ids.shape:
                raise ValueError(f"token_bytes has shape {self.token_bytes.shape}, ids has {self.ids.shape}")
        if self.ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {self.ids.shape}")

    @property
    def n_tokens(self) -> int:
        """Number of tokens in the stream."""
        return int(self.ids.shape[0])

    @classmethod
    def concatenate(cls, parts: Iterable[EncodedCorpus]) -> EncodedCorpus:
        """Join corpora end to end (documents stay separate: each part starts with a document start).

        Args:
            parts: the corpora, in order.

        Returns:
            One in-memory EncodedCorpus.
        """
        parts = list(parts)
        if not parts:
            return _empty_corpus()
        with_bytes = all(p.token_bytes is not None for p in parts)
        return cls(ids=np.concatenate([p.ids for p in parts]),
                   word_starts=np.concatenate([p.word_starts for p in parts]),
                   doc_starts=np.concatenate([p.doc_starts for p in parts]),
                   n_docs=sum(p.n_docs for p in parts), n_bytes=sum(p.n_bytes for p in parts),
                   token_bytes=np.concatenate([p.token_bytes for p in parts]) if with_bytes else None)

    def save(self, path: Source) -> Path:
        """Write the corpus as one shard (three .npy files) plus manifest.json into a folder.

        Args:
            path: the folder (created if missing; a corpus already there is replaced).

        Returns:
            The folder.
        """
        writer = _ShardWriter(Path(path), shard_tokens=max(self.n_tokens, 1))
        try:
            writer.add(self)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise

    @classmethod
    def load(cls, path: Source) -> EncodedCorpus:
        """Open a corpus written by save() or encode_corpus(out_dir=...).

        A single shard (the usual case: see encode_corpus's shard_tokens) is memory-mapped read-only, so
        opening costs no memory whatever the corpus size. Several shards are concatenated into memory
        (6 bytes per token); use iter_shards() to walk them one at a time instead.

        Args:
            path: the folder holding manifest.json.

        Returns:
            The EncodedCorpus.

        Raises:
            FileNotFoundError: no manifest.json in the folder.
            ValueError: the manifest or a shard does not match what was written.
        """
        shards = list(cls.iter_shards(path))
        return shards[0] if len(shards) == 1 else cls.concatenate(shards)

    @classmethod
    def iter_shards(cls, path: Source) -> Iterator[EncodedCorpus]:
        """Yield the shards of a saved corpus one at a time, each memory-mapped read-only.

        Shards hold whole documents, so counting per shard and merging the counts gives the same result
        as counting the whole stream.

        Args:
            path: the folder holding manifest.json.

        Returns:
            An iterator of EncodedCorpus, in stream order.

        Raises:
            FileNotFoundError: no manifest.json in the folder.
            ValueError: the manifest or a shard does not match what was written.
        """
        folder = Path(path)
        manifest = _read_manifest(folder)
        for shard in manifest["shards"]:
            arrays = {name: np.load(folder / shard[name], mmap_mode="r", allow_pickle=False)
                      for name in _ARRAY_DTYPES if name in shard}
            if any(a.shape != (shard["n_tokens"],) for a in arrays.values()):
                raise ValueError(f"{folder}: shard {shard['ids']} does not hold the {shard['n_tokens']} "
                                 "tokens its manifest lists; re-encode the corpus")
            yield cls(**arrays, n_docs=shard["n_docs"], n_bytes=shard["n_bytes"])


def _empty_corpus() -> EncodedCorpus:
    return EncodedCorpus(np.zeros(0, np.uint32), np.zeros(0, bool), np.zeros(0, bool), 0, 0)


def _read_manifest(folder: Path) -> dict:
    manifest_path = folder / _MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no encoded corpus here (manifest.json missing)", str(folder))
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != _FORMAT or manifest.get("version") != _FORMAT_VERSION:
        raise ValueError(f"{manifest_path}: not an {_FORMAT} v{_FORMAT_VERSION} manifest")
    return manifest


# ------------------------------------------------------------------------------------------ shard files


class _NpyAppender:
    """A 1-D .npy file written piece by piece to a temp file, its header patched with the final length."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype, self.length = path, np.dtype(dtype), 0
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.file = open(self.tmp, "wb")
        self.file.write(_npy_header(self.dtype, 0))

    def append(self, array: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(array, dtype=self.dtype).data)
        self.length += len(array)

    def close(self) -> None:
        self.file.seek(0)
        self.file.write(_npy_header(self.dtype, self.length))
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _npy_header(dtype: np.dtype, length: int) -> bytes:
    """The .npy v1.0 header of a 1-D array, padded to a fixed size (the format allows any padding)."""
    fields = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)}
    body = repr(fields).encode("latin1")
    prefix = b"\x93NUMPY\x01\x00" + (_NPY_HEADER_BYTES - 10).to_bytes(2, "little")
    return prefix + body.ljust(_NPY_HEADER_BYTES - len(prefix) - 1) + b"\n"


# The arrays of a shard file set; token_bytes is present only in corpora encoded with token_bytes=True.
_ARRAY_DTYPES = {"ids": np.uint32, "word_starts": np.bool_, "doc_starts": np.bool_, "token_bytes": np.uint32}


def _shard_files(shard: dict) -> list[str]:
    return [shard[name] for name in _ARRAY_DTYPES if name in shard]


class _ShardWriter:
    """Appends encoded batches to .npy shards in a folder; the manifest is written last, atomically."""

    def __init__(self, folder: Path, shard_tokens: int) -> None:
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens={shard_tokens} must be at least 1")
        self.folder, self.shard_tokens = folder, shard_tokens
        folder.mkdir(parents=True, exist_ok=True)
        # Drop an old manifest first: until the new one lands, the folder holds no valid corpus.
        self.stale = {f for s in _old_shards(folder) for f in _shard_files(s)}
        (folder / _MANIFEST).unlink(missing_ok=True)
        self.shards: list[dict] = []
        self.files: dict[str, _NpyAppender] = {}

    def add(self, part: EncodedCorpus) -> None:
        if not self.files:
            index = len(self.shards)
            names = [name for name in _ARRAY_DTYPES if getattr(part, name) is not None]
            self.shards.append({name: f"{name}-{index:05d}.npy" for name in names}
                               | {"n_tokens": 0, "n_docs": 0, "n_bytes": 0})
            self.files = {name: _NpyAppender(self.folder / self.shards[-1][name], _ARRAY_DTYPES[name])
                          for name in names}
        for name, file in self.files.items():
            file.append(getattr(part, name))
        shard = self.shards[-1]
        shard["n_tokens"] += part.n_tokens
        shard["n_docs"] += part.n_docs
        shard["n_bytes"] += part.n_bytes
        if shard["n_tokens"] >= self.shard_tokens:
            self._close_shard()

    def _close_shard(self) -> None:
        for file in self.files.values():
            file.close()
        self.files = {}

    def finish(self) -> Path:
        self._close_shard()
        totals = {key: sum(s[key] for s in self.shards) for key in ("n_tokens", "n_docs", "n_bytes")}
        manifest = {"format": _FORMAT, "version": _FORMAT_VERSION, **totals, "shards": self.shards}
        _write_atomic(self.folder / _MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))
        kept = {f for s in self.shards for f in _shard_files(s)}
        for name in self.stale - kept:
            (self.folder / name).unlink(missing_ok=True)
        return self.folder

    def abort(self) -> None:
        for file in self.files.values():
            file.abort()
        self.files = {}


def _old_shards(folder: Path) -> list[dict]:
    try:
        return _read_manifest(folder)["shards"]
    except (OSError, ValueError, KeyError):
        return []


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------------- encoding


def load_tokenizer(tokenizer: Tokenizer | Source) -> Tokenizer:
    """Return a tokenizers.Tokenizer from a Tokenizer, a fast HF tokenizer, tokenizer.json or an HF folder.

    Args:
        tokenizer: a tokenizers.Tokenizer, a transformers fast tokenizer (its backend is used), a path to
            a tokenizer.json, or a folder that contains tokenizer.json.

    Returns:
        The tokenizers.Tokenizer.

    Raises:
        FileNotFoundError: the path does not exist, or the folder has no tokenizer.json.
        TypeError: anything else.
    """
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)  # transformers' PreTrainedTokenizerFast
    if isinstance(backend, Tokenizer):
        return backend
    if not isinstance(tokenizer, (str, os.PathLike)):
        raise TypeError(f"tokenizer must be a tokenizers.Tokenizer, a tokenizer.json path or an HF folder, "
                        f"got {type(tokenizer).__name__}")
    path = Path(tokenizer)
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(errno.ENOENT, "folder has no tokenizer.json (only a slow tokenizer? "
                                    "save it with a transformers fast tokenizer first)", str(path))
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such tokenizer file or folder", str(path))
    return Tokenizer.from_file(str(path))


def encode_corpus(
    tokenizer: Tokenizer | Source,
    docs: Iterable[str] | Source,
    *,
    out_dir: Source | None = None,
    batch_size: int = 1024,
    shard_tokens: int = 1 << 30,
    token_bytes: bool = False,
    progress: bool = True,
) -> EncodedCorpus:
    """Encode documents into one token stream with word and document starts, in memory or on disk.

    Documents are encoded in batches with `tokenizer.encode_batch(..., add_special_tokens=False)` (Rust,
    all cores); while Python copies one batch into numpy the next one is already encoding. The ids equal
    `tokenizer.encode(doc, add_special_tokens=False).ids` of each document, concatenated. A token starts
    a word where `Encoding.word_ids` changes (see the module docstring); should a tokenizer give no word
    ids, the word starts come from the token offsets matched against `pre_tokenizer.pre_tokenize_str`
    of the document (exact unless a normalizer shifts characters). Truncation and padding set in the
    tokenizer are ignored (a copy without them is used). Empty documents are skipped.

    Args:
        tokenizer: a tokenizers.Tokenizer, a tokenizer.json path or an HF folder (see load_tokenizer).
        docs: an iterable of document strings, or sources for read_documents (a path, folder or glob as a
            str / PathLike, or a list of Path objects); a plain list of str is read as documents.
        out_dir: if given, stream the arrays into .npy shards there (memory stays at about one batch
            whatever the corpus size) and return the memory-mapped result of EncodedCorpus.load.
        batch_size: documents per encode_batch call (a batch also ends at 8 Mi characters).
        shard_tokens: with out_dir, a new shard starts after a shard holds this many tokens (shards end
            between documents). The default, 2**30 tokens (6 GiB of arrays), keeps one shard for most
            corpora, which load() maps without copying.
        token_bytes: also record the UTF-8 bytes each token covers (EncodedCorpus.token_bytes, from the
            token offsets; 4 more bytes per token), so that the bytes of any run of tokens can be summed.
        progress: show a tqdm bar (documents, tokens/s); it also stays off when stderr is not a TTY.

    Returns:
        The EncodedCorpus.

    Raises:
        ValueError: no document produced a token, or batch_size < 1.
        TypeError: a document is not a str, or the tokenizer is of an unknown type.
        FileNotFoundError: a source or the tokenizer path does not exist.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    tok = untruncated(load_tokenizer(tokenizer))
    if isinstance(docs, (str, os.PathLike)) or (isinstance(docs, (list, tuple)) and docs
                                                 and all(isinstance(d, os.PathLike) for d in docs)):
        docs = read_documents(docs)
    sink = _ShardWriter(Path(out_dir), shard_tokens) if out_dir is not None else None
    parts: list[EncodedCorpus] = []
    n_docs = n_tokens = 0
    start = time.perf_counter()
    bar = tqdm(unit="doc", disable=(None if progress else True), desc="encode", file=sys.stderr)
    try:
        # One worker thread encodes batch k+1 (Rust, GIL released) while this thread converts batch k.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            for texts in itertools.chain(_batches(docs, batch_size), [None]):
                submitted = None if texts is None else (
                    texts, pool.submit(tok.encode_batch, texts, add_special_tokens=False))
                if pending is not None:
                    part = _encoded_batch(tok, pending[0], pending[1].result(), token_bytes)
                    if sink is not None:
                        sink.add(part)
                    else:
                        parts.append(part)
                    n_docs += part.n_docs
                    n_tokens += part.n_tokens
                    bar.update(len(pending[0]))
                    bar.set_postfix_str(f"{n_tokens / (time.perf_counter() - start):,.0f} tok/s",
                                        refresh=False)
                pending = submitted
        if n_docs == 0:
            raise ValueError("no document to encode: docs is empty or holds only empty strings")
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    finally:
        bar.close()
    if sink is not None:
        return EncodedCorpus.load(sink.finish())
    return EncodedCorpus.concatenate(parts)


def untruncated(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer itself, or a copy with truncation and padding off when it has either set.

    igot's own encodes (counting, verification, the save proof, training data) must see whole documents: a
    base whose tokenizer.json truncates to 128 tokens would otherwise be counted and compared on padded
    prefixes. The caller's tokenizer is left as it was, so what igot hands back keeps the base's settings.
    """
    if tokenizer.truncation is None and tokenizer.padding is None:
        return tokenizer
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def _batches(docs: Iterable[str], batch_size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    n_chars = 0
    for index, doc in enumerate(docs):
        if not isinstance(doc, str):
            raise TypeError(f"document {index} is a {type(doc).__name__}, not a str (pass paths as Path "
                            "objects or through read_documents)")
        if not doc:
            continue
        batch.append(doc)
        n_chars += len(doc)
        if len(batch) == batch_size or n_chars >= _BATCH_CHARS:
            yield batch
            batch, n_chars = [], 0
    if batch:
        yield batch


def _encoded_batch(tok: Tokenizer, texts: list[str], encodings: list[Encoding],
                   with_token_bytes: bool = False) -> EncodedCorpus:
    id_lists = [e.ids for e in encodings]
    lengths = np.fromiter(map(len, id_lists), np.int64, len(id_lists))  # [B]
    n_tokens = int(lengths.sum())
    ids = np.fromiter(itertools.chain.from_iterable(id_lists), np.uint32, n_tokens)  # [T]
    doc_offsets = np.cumsum(lengths) - lengths  # [B] first token of each document
    has_tokens = lengths > 0
    doc_starts = np.zeros(n_tokens, bool)  # [T]
    doc_starts[doc_offsets[has_tokens]] = True
    word_ids_lists = [e.word_ids for e in encodings]
    try:
        word_ids = np.fromiter(itertools.chain.from_iterable(word_ids_lists), np.int64, n_tokens)  # [T]
        word_starts = np.empty(n_tokens, bool)  # [T]
        word_starts[:1] = True
        np.not_equal(word_ids[1:], word_ids[:-1], out=word_starts[1:])
        word_starts |= doc_starts  # word ids restart at 0 in every document
    except TypeError:  # some token without a word id (None)
        word_starts = np.concatenate([_word_starts_from_offsets(tok, text, e.offsets)
                                      for text, e in zip(texts, encodings)] or [np.zeros(0, bool)])
    n_bytes = sum(len(t) if t.isascii() else len(t.encode("utf-8"))
                  for t, keep in zip(texts, has_tokens) if keep)
    token_bytes = None
    if with_token_bytes:
        token_bytes = np.concatenate([_token_bytes(text, e.offsets) for text, e in zip(texts, encodings)]
                                     or [np.zeros(0, np.uint32)])
    return EncodedCorpus(ids, word_starts, doc_starts, n_docs=int(has_tokens.sum()), n_bytes=n_bytes,
                         token_bytes=token_bytes)


def _token_bytes(text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """[T_doc] uint32: UTF-8 bytes from the previous token's end (or the document start) to each token's end.

    Offsets are character positions; a running maximum keeps the counts non-negative where several
    tokens share one character (byte-fallback pieces of one character) or a normalizer reorders them.
    """
    char_ends = np.fromiter((end for _, end in offsets), np.int64, len(offsets))  # [T_doc]
    if text.isascii():
        byte_ends = char_ends
    else:
        code_points = np.frombuffer(text.encode("utf-32-le"), np.uint32)  # [chars]
        char_bytes = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
        byte_at = np.concatenate([[0], np.cumsum(char_bytes)])  # [chars + 1] byte offset of each char
        byte_ends = byte_at[char_ends]
    byte_ends = np.maximum.accumulate(byte_ends) if len(byte_ends) else byte_ends
    return np.diff(byte_ends, prepend=0).astype(np.uint32)


def _word_starts_from_offsets(tok: Tokenizer, text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """Word starts of one document from its token offsets and the pre-tokenizer's splits of the text."""
    if tok.pre_tokenizer is None:
        split_starts = np.zeros(1, np.int64)
    else:
        split_starts = np.array([start for _, (start, _) in tok.pre_tokenizer.pre_tokenize_str(text)]
                                or [0], np.int64)
    token_starts = np.array([start for start, _ in offsets], np.int64)  # [T_doc]
    split_of_token = np.searchsorted(split_starts, token_starts, side="right")  # [T_doc]
    word_starts = np.ones(len(offsets), bool)  # [T_doc]
    word_starts[1:] = split_of_token[1:] != split_of_token[:-1]
    return word_starts
