"""Exact n-gram and pre-token counts over token streams (a thin wrapper of the C++ core igot._core).

    table = count_ngrams(corpus.ids, corpus.word_starts, corpus.doc_starts, max_n=8, min_count=2)
    table.ngram(0), table.counts[0]                  # the most frequent n-gram and its count
    general_counts = table.lookup(general.ids, general.word_starts, general.doc_starts)
    words = count_words(corpus.ids, corpus.word_starts, corpus.doc_starts)
    table.save("domain.igc"); NgramTable.load("domain.igc")

Semantics. ids is a uint32 stream in which every value is a valid token id (no sentinel). A document
boundary sits before every position where doc_starts is True, a pre-token (word) boundary before every
position where word_starts is True; None means no boundaries of that kind. count_ngrams counts every
n-gram of 2 <= n <= max_n consecutive tokens that crosses no document boundary and, unless
cross_words, no word boundary. A pre-token (count_words) runs from one word start to the next word or
document start; a document start and position 0 also start a pre-token. Tables are CSR arrays sorted by
count descending, then by ids lexicographically (a prefix before the longer n-gram).

Threads and memory (csrc/counter.h has the details). When max_n ids fit in 128 bits
(max_n * bit_width(max_id + 1) <= 128: SmolLM2's 49,152 ids up to max_n = 8, any 16-bit vocabulary up to
max_n = 8), an n-gram is packed into one integer whose integer order is the n-grams' order. Each worker
first counts the n-grams of its chunk of the stream into a small hash table ("direct", what real text
inside words needs); once the distinct n-grams outgrow it, every n-gram's key is radix-partitioned by its
leading ids into one buffer and each partition is counted by sorting it in cache ("partitioned", the
sort-based counting of KenLM, which stays fast when most n-grams are distinct). Wider keys use hash
tables of references into ids ("hashed"). NgramTable.strategy says which ran. memory_budget bounds the
bytes of those tables and key buffers: the partitioned count splits its partitions into passes over the
stream that fit (a budget that cannot hold the keys sharing one leading prefix falls back to the hashed
count), the hashed count narrows the range of hash values a pass accepts. Counts stay exact under any
budget (each pass counts every occurrence of the n-grams in its range); a smaller budget costs passes,
never accuracy. Not bounded: the input and the output arrays, plus 24 (packed) or 56 (hashed) bytes per
kept n-gram while the output is ordered.

File format (.igc, little-endian; NgramTable.save / NgramTable.load):

    offset  size  field
    0       8     magic b"IGOTNGRM"
    8       4     format version (uint32) = 1
    12      4     flags (uint32): bit 0 = cross_words, bit 1 = a word table (entries are whole pre-tokens)
    16      8     n, the number of n-grams (uint64)
    24      8     n_ids, the length of ids (uint64)
    32      4     max_n (uint32); a word table: its longest word
    36      4     reserved, 0
    40      8     min_count (int64)
    48      4     CRC-32 of the payload
    52      4     CRC-32 of bytes 0..52
    56            payload: offsets int64 [n + 1], ids uint32 [n_ids], counts int64 [n]

WordTable.save / WordTable.load use the same layout with bit 1 set (min_count 1). A file whose size, magic,
version, checksums or CSR structure do not match, or that holds the other kind of table, raises ValueError
naming the file. Files are written to a temporary name and moved into place with os.replace.
"""
from __future__ import annotations

import operator
import os
import struct
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from . import _core

PathLike = Union[str, "os.PathLike[str]"]

MAX_N = _core.MAX_N
MIN_MEMORY_BUDGET = _core.MIN_MEMORY_BUDGET

_MAGIC = b"IGOTNGRM"
_FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIIQQIIqI")  # all header fields up to the header's own CRC
_HEADER_BYTES = _HEADER.size + 4
_FLAG_CROSS_WORDS = 1
_FLAG_WORDS = 2
_NO_FLAGS = np.zeros(0, dtype=np.bool_)


# ----------------------------------------------------------------------------------------------- tables


@dataclass(eq=False)
class _CsrTable:
    """Distinct id sequences with counts, as CSR arrays sorted by count desc, then lexicographically."""

    offsets: np.ndarray  # int64 [n + 1]
    ids: np.ndarray  # uint32 [offsets[-1]]
    counts: np.ndarray  # int64 [n]

    def __len__(self) -> int:
        return len(self.counts)

    def _entry(self, i: int) -> tuple[int, ...]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a table of {n} entries")
        i %= n
        return tuple(self.ids[self.offsets[i] : self.offsets[i + 1]].tolist())

    @property
    def lengths(self) -> np.ndarray:
        """Number of ids in each entry, int64 [n]."""
        return np.diff(self.offsets)

    def save(self, path: PathLike) -> Path:
        """Write the table to path in the .igc format (module docstring), atomically.

        Args:
            path: destination file; its folder must exist.

        Returns:
            The path written.

        Raises:
            OSError: the file cannot be written.
        """
        return _write_igc(path, self, *self._igc_fields())

    def _igc_fields(self) -> tuple[int, int, int]:
        """(flags, max_n, min_count) of the .igc header."""
        raise NotImplementedError

    def to_dict(self) -> dict[tuple[int, ...], int]:
        """Return {ids tuple: count}; meant for small tables and tests."""
        ids = self.ids.tolist()
        bounds = self.offsets.tolist()
        return {tuple(ids[a:b]): c for a, b, c in zip(bounds[:-1], bounds[1:], self.counts.tolist())}


@dataclass(eq=False)
class WordTable(_CsrTable):
    """Distinct pre-tokens (as base-id sequences) with their frequencies; built by count_words."""

    def word(self, i: int) -> tuple[int, ...]:
        """Return the ids of pre-token i."""
        return self._entry(i)

    @classmethod
    def merge(cls, *tables: WordTable, threads: int = 0) -> WordTable:
        """Sum several tables (e.g. of disjoint parts of a corpus, split between documents) into one.

        Args:
            *tables: at least one WordTable.
            threads: worker threads, 0 = all cores.

        Returns:
            The WordTable that count_words gives for all the parts at once.

        Raises:
            ValueError: no tables.
        """
        if not tables:
            raise ValueError("WordTable.merge needs at least one table")
        return cls(*_merged(tables, 1, threads)[:3])

    def _igc_fields(self) -> tuple[int, int, int]:
        return _FLAG_WORDS, int(self.lengths.max(initial=0)), 1

    @classmethod
    def load(cls, path: PathLike) -> WordTable:
        """Read a table written by WordTable.save.

        Args:
            path: an .igc file holding a word table.

        Returns:
            The WordTable.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is truncated, corrupt, an n-gram table (NgramTable.load reads it) or not igot's.
        """
        flags, _, _, arrays = _read_igc(path)
        if not flags & _FLAG_WORDS:
            raise ValueError(f"{path} holds an n-gram table, not a word table: count with `igot count --words` "
                             "(or igot.counting.count_words) and save that")
        return cls(*arrays)

    def __repr__(self) -> str:
        return f"WordTable({len(self)} words, {int(self.counts.sum())} occurrences)"


@dataclass(eq=False)
class NgramTable(_CsrTable):
    """Distinct n-grams with their exact counts; built by count_ngrams, NgramTable.merge or .load."""

    max_n: int = 8
    min_count: int = 1
    cross_words: bool = False
    passes: int = field(default=1, repr=False)  # passes over the stream the memory budget needed
    peak_table_bytes: int = field(default=0, repr=False)  # largest total size of the tables and key buffers
    strategy: str = field(default="", repr=False)  # "direct", "partitioned" or "hashed" (module docstring)

    def ngram(self, i: int) -> tuple[int, ...]:
        """Return the ids of n-gram i."""
        return self._entry(i)

    def __repr__(self) -> str:
        return (f"NgramTable({len(self)} n-grams, max_n={self.max_n}, min_count={self.min_count}, "
                f"cross_words={self.cross_words})")

    def lookup(self, ids: np.ndarray, word_starts: np.ndarray | None = None,
               doc_starts: np.ndarray | None = None, *, threads: int = 0) -> np.ndarray:
        """Count the occurrences of exactly this table's n-grams in another stream.

        The other stream's boundaries are honoured like count_ngrams does with this table's
        cross_words: an occurrence never crosses a document boundary, nor a word boundary unless the
        table was counted with cross_words=True.

        Args:
            ids: uint32 [T] token ids of the other stream (e.g. the general corpus).
            word_starts: bool [T] or None, True at the first token of each pre-token.
            doc_starts: bool [T] or None, True at the first token of each document.
            threads: worker threads, 0 = all cores.

        Returns:
            int64 [len(self)]: the count of each n-gram of this table in the stream.

        Raises:
            TypeError: an array has the wrong dtype.
            ValueError: arrays of different lengths, or threads < 0.
        """
        ids, word_starts, doc_starts = _checked_stream(ids, word_starts, doc_starts)
        return _core.lookup_ngrams(self.offsets, self.ids, ids, word_starts, doc_starts,
                                   cross_words=self.cross_words, threads=threads)

    @classmethod
    def merge(cls, *tables: NgramTable, min_count: int = 1, threads: int = 0) -> NgramTable:
        """Sum several tables (e.g. counts of disjoint parts of a corpus) into one.

        The sum is exact for the n-grams present; it equals one count over all the parts (split at
        document boundaries) when every part was counted with min_count=1. A part's pruned n-grams are
        missing from the sum, so the result's min_count is the largest of min_count and the parts'.

        Args:
            *tables: at least one NgramTable, all with the same cross_words.
            min_count: drop n-grams whose summed count is smaller.
            threads: worker threads, 0 = all cores.

        Returns:
            NgramTable with max_n the largest of the parts'.

        Raises:
            ValueError: no tables, mixed cross_words, or min_count < 1.
        """
        if not tables:
            raise ValueError("NgramTable.merge needs at least one table")
        modes = {t.cross_words for t in tables}
        if len(modes) > 1:
            raise ValueError("cannot merge tables counted with and without cross_words; recount with one setting")
        offsets, ids, counts, passes, peak, strategy = _merged(tables, min_count, threads)
        return cls(offsets, ids, counts, max_n=max(t.max_n for t in tables),
                   min_count=max([min_count] + [t.min_count for t in tables]),
                   cross_words=modes.pop(), passes=passes, peak_table_bytes=peak, strategy=strategy)

    def _igc_fields(self) -> tuple[int, int, int]:
        return _FLAG_CROSS_WORDS if self.cross_words else 0, self.max_n, self.min_count

    @classmethod
    def load(cls, path: PathLike) -> NgramTable:
        """Read a table written by NgramTable.save.

        Args:
            path: an .igc file.

        Returns:
            The NgramTable.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is truncated, corrupt, a word table (WordTable.load reads it), not an igot
                n-gram table or of another version.
        """
        flags, max_n, min_count, arrays = _read_igc(path)
        if flags & _FLAG_WORDS:
            raise ValueError(f"{path} holds a word table: read it with WordTable.load")
        return cls(*arrays, max_n=max_n, min_count=min_count, cross_words=bool(flags & _FLAG_CROSS_WORDS))


def _merged(tables: Sequence[_CsrTable], min_count: int, threads: int) -> tuple:
    """_core.merge_tables of the tables' concatenated CSR arrays."""
    starts = np.cumsum([0] + [len(t.ids) for t in tables[:-1]], dtype=np.int64)
    offsets = np.concatenate([t.offsets[:-1] + s for t, s in zip(tables, starts)]
                             + [np.array([sum(len(t.ids) for t in tables)], dtype=np.int64)])
    ids = np.concatenate([t.ids for t in tables]).astype(np.uint32, copy=False)
    counts = np.concatenate([t.counts for t in tables]).astype(np.int64, copy=False)
    return _core.merge_tables(offsets, ids, counts, min_count=min_count, threads=threads)


def _write_igc(path: PathLike, table: _CsrTable, flags: int, max_n: int, min_count: int) -> Path:
    """Write a table's CSR arrays and header fields as an .igc file (temporary name, then os.replace)."""
    path = Path(path)
    offsets = np.ascontiguousarray(table.offsets, dtype="<i8")
    ids = np.ascontiguousarray(table.ids, dtype="<u4")
    counts = np.ascontiguousarray(table.counts, dtype="<i8")
    payload_crc = 0
    for array in (offsets, ids, counts):
        payload_crc = zlib.crc32(memoryview(array).cast("B"), payload_crc)
    header = _HEADER.pack(_MAGIC, _FORMAT_VERSION, flags, len(counts), len(ids), max_n, 0, min_count, payload_crc)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(header + struct.pack("<I", zlib.crc32(header)))
            for array in (offsets, ids, counts):
                f.write(memoryview(array).cast("B"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _read_igc(path: PathLike) -> tuple[int, int, int, list[np.ndarray]]:
    """(flags, max_n, min_count, [offsets, ids, counts]) of an .igc file, every check of the format done."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_HEADER_BYTES)
        if len(head) < _HEADER_BYTES or head[:8] != _MAGIC:
            raise ValueError(f"{path} is not an igot n-gram table (bad magic or shorter than its header)")
        (_, version, flags, n, n_ids, max_n, _, min_count, payload_crc) = _HEADER.unpack(head[:_HEADER.size])
        if version != _FORMAT_VERSION:
            raise ValueError(f"{path} has format version {version}; this igot reads version {_FORMAT_VERSION}")
        if struct.unpack("<I", head[_HEADER.size:])[0] != zlib.crc32(head[:_HEADER.size]):
            raise ValueError(f"{path} is corrupt: header checksum mismatch")
        expected = _HEADER_BYTES + 8 * (n + 1) + 4 * n_ids + 8 * n
        if size != expected:
            raise ValueError(f"{path} is truncated or padded: {size} bytes, its header says {expected}")
        arrays = []
        crc = 0
        for dtype, count in (("<i8", n + 1), ("<u4", n_ids), ("<i8", n)):
            data = f.read(np.dtype(dtype).itemsize * count)
            crc = zlib.crc32(data, crc)
            arrays.append(np.frombuffer(data, dtype=dtype).astype(dtype[1:], copy=False))
    if crc != payload_crc:
        raise ValueError(f"{path} is corrupt: payload checksum mismatch")
    offsets, ids, counts = arrays
    if offsets[0] != 0 or offsets[-1] != n_ids or np.any(np.diff(offsets) < 1) or np.any(counts < 1):
        raise ValueError(f"{path} is corrupt: inconsistent offsets or counts")
    return flags, max_n, min_count, arrays


# ----------------------------------------------------------------------------------------------- counting


def count_ngrams(ids: np.ndarray, word_starts: np.ndarray | None = None, doc_starts: np.ndarray | None = None,
                 *, max_n: int = 8, min_count: int = 1, threads: int = 0, cross_words: bool = False,
                 memory_budget: int | None = None) -> NgramTable:
    """Count every n-gram (2 <= n <= max_n) of a token stream exactly, in C++ threads.

    Args:
        ids: uint32 [T] token ids; every value is a valid id.
        word_starts: bool [T] or None, True at the first token of each pre-token.
        doc_starts: bool [T] or None, True at the first token of each document.
        max_n: longest n-gram counted, 2 to MAX_N (255).
        min_count: keep n-grams seen at least this often (applied to the exact total).
        threads: worker threads, 0 = all cores. The result does not depend on it.
        cross_words: also count n-grams that cross pre-token boundaries (never document boundaries).
        memory_budget: bytes for the counting tables and key buffers (>= MIN_MEMORY_BUDGET), None =
            unlimited; a small budget costs extra passes over ids, never exactness (module docstring).

    Returns:
        NgramTable sorted by count desc, then ids; empty for an empty stream.

    Raises:
        TypeError: ids is not uint32 or a boundary array is not bool.
        ValueError: arrays of different lengths, or max_n, min_count, threads or memory_budget out of range.

    Example:
        >>> t = count_ngrams(np.array([5, 6, 5, 6], dtype=np.uint32), max_n=2)
        >>> t.ngram(0), int(t.counts[0])
        ((5, 6), 2)
    """
    ids, word_starts, doc_starts = _checked_stream(ids, word_starts, doc_starts)
    if memory_budget is not None and operator.index(memory_budget) < MIN_MEMORY_BUDGET:
        raise ValueError(f"memory_budget must be None (unlimited) or at least {MIN_MEMORY_BUDGET} bytes, "
                         f"got {memory_budget}")
    offsets, out_ids, counts, passes, peak, strategy = _core.count_ngrams(
        ids, word_starts, doc_starts, max_n=operator.index(max_n), min_count=operator.index(min_count),
        threads=operator.index(threads), cross_words=bool(cross_words),
        memory_budget=0 if memory_budget is None else operator.index(memory_budget))
    return NgramTable(offsets, out_ids, counts, max_n=int(max_n), min_count=int(min_count),
                      cross_words=bool(cross_words), passes=passes, peak_table_bytes=peak, strategy=strategy)


def count_words(ids: np.ndarray, word_starts: np.ndarray, doc_starts: np.ndarray | None = None,
                *, threads: int = 0) -> WordTable:
    """Count the distinct pre-tokens of a token stream (in C++).

    Args:
        ids: uint32 [T] token ids.
        word_starts: bool [T], True at the first token of each pre-token.
        doc_starts: bool [T] or None, True at the first token of each document (also a pre-token start).
        threads: worker threads, 0 = all cores.

    Returns:
        WordTable sorted by count desc, then ids.

    Raises:
        TypeError: ids is not uint32 or a boundary array is not bool.
        ValueError: arrays of different lengths, word_starts missing, or a pre-token over 2**24 - 1 tokens.
    """
    if word_starts is None:
        raise ValueError("count_words needs word_starts (True at the first token of each pre-token)")
    ids, word_starts, doc_starts = _checked_stream(ids, word_starts, doc_starts)
    offsets, out_ids, counts, _, _, _ = _core.count_words(ids, word_starts, doc_starts,
                                                          threads=operator.index(threads))
    return WordTable(offsets, out_ids, counts)


def _checked_stream(ids: np.ndarray, word_starts: np.ndarray | None,
                    doc_starts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check dtypes and lengths; return C-contiguous arrays, with an empty array for "no boundaries"."""
    if not isinstance(ids, np.ndarray):
        raise TypeError(f"ids must be a numpy array of uint32, got {type(ids).__name__}; "
                        "pass np.asarray(ids, dtype=np.uint32)")
    if ids.dtype != np.uint32:
        raise TypeError(f"ids has dtype {ids.dtype}; pass ids.astype(np.uint32)")
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    flags = []
    for name, starts in (("word_starts", word_starts), ("doc_starts", doc_starts)):
        if starts is None:
            flags.append(_NO_FLAGS)
            continue
        if not isinstance(starts, np.ndarray) or starts.dtype != np.bool_:
            kind = starts.dtype if isinstance(starts, np.ndarray) else type(starts).__name__
            raise TypeError(f"{name} must be a numpy bool array, got {kind}; pass np.asarray({name}, dtype=bool)")
        if starts.shape != ids.shape:
            raise ValueError(f"{name} has shape {starts.shape} but ids has shape {ids.shape}; "
                             "they must describe the same tokens")
        flags.append(np.ascontiguousarray(starts) if len(starts) else _NO_FLAGS)
    return np.ascontiguousarray(ids), flags[0], flags[1]


# ----------------------------------------------------------------------------------------------- reference


def count_ngrams_reference(ids: Sequence[int], word_starts: Sequence[bool] | None = None,
                           doc_starts: Sequence[bool] | None = None, *, max_n: int = 8, min_count: int = 1,
                           threads: int = 0, cross_words: bool = False,
                           memory_budget: int | None = None) -> NgramTable:
    """Slow, obviously-correct pure-Python twin of count_ngrams (the test oracle).

    Same arguments and result; threads and memory_budget are accepted and ignored.
    """
    counter: Counter[tuple[int, ...]] = Counter()
    for segment in _reference_segments(ids, word_starts, doc_starts, cross_words):
        for n in range(2, max_n + 1):
            for i in range(len(segment) - n + 1):
                counter[tuple(segment[i : i + n])] += 1
    kept = {k: c for k, c in counter.items() if c >= min_count}
    offsets, flat, counts = _reference_csr(kept)
    return NgramTable(offsets, flat, counts, max_n=max_n, min_count=min_count, cross_words=cross_words)


def lookup_reference(table: NgramTable, ids: Sequence[int], word_starts: Sequence[bool] | None = None,
                     doc_starts: Sequence[bool] | None = None) -> np.ndarray:
    """Slow pure-Python twin of NgramTable.lookup (the test oracle and the lookup benchmark's baseline).

    Looks up every window of the table's n-gram lengths in a dict of the table's n-grams, segment by
    segment (the table's cross_words decides whether word starts end a segment).
    """
    index = {table.ngram(i): i for i in range(len(table))}
    lengths = sorted({len(key) for key in index})
    counts = np.zeros(len(table), dtype=np.int64)
    for segment in _reference_segments(ids, word_starts, doc_starts, table.cross_words):
        for n in lengths:
            for i in range(len(segment) - n + 1):
                j = index.get(tuple(segment[i : i + n]))
                if j is not None:
                    counts[j] += 1
    return counts


def count_words_reference(ids: Sequence[int], word_starts: Sequence[bool],
                          doc_starts: Sequence[bool] | None = None) -> WordTable:
    """Slow pure-Python twin of count_words (the test oracle)."""
    counter = Counter(tuple(s) for s in _reference_segments(ids, word_starts, doc_starts, cross_words=False))
    return WordTable(*_reference_csr(counter))


def _reference_segments(ids: Sequence[int], word_starts: Sequence[bool] | None, doc_starts: Sequence[bool] | None,
                        cross_words: bool) -> Iterator[list[int]]:
    """Yield the runs of ids between boundaries (document starts, and word starts unless cross_words)."""
    segment: list[int] = []
    for i, token in enumerate(ids):
        at_doc = doc_starts is not None and bool(doc_starts[i])
        at_word = not cross_words and word_starts is not None and bool(word_starts[i])
        if (at_doc or at_word) and segment:
            yield segment
            segment = []
        segment.append(int(token))
    if segment:
        yield segment


def _reference_csr(counter: Mapping[tuple[int, ...], int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort {ids tuple: count} by count desc, then ids (Python tuple order), into CSR arrays."""
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(k) for k, _ in items], dtype=np.int64)
    flat = np.array([t for k, _ in items for t in k], dtype=np.uint32)
    counts = np.array([c for _, c in items], dtype=np.int64)
    return offsets, flat, counts
