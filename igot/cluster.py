"""Encode and count corpora on a Dask cluster; the result is the single-machine count, exactly.

    from igot import cluster
    table = cluster.count_ngrams(["corpus/"], "tokenizer.json", cluster="local:2", max_n=8, min_count=2)
    with cluster.connect("tcp://scheduler:8786") as client:        # a running Dask scheduler
        words = cluster.count_words(["domain/"], "tokenizer.json", cluster=client)
        general = cluster.lookup_ngrams(table, ["general/"], "tokenizer.json", cluster=client)

Needs the optional extra: `pip install 'igot[cluster]'` (dask + distributed); `import igot` never loads it.

How. The sources are cut into shards (plan_shards): whole files, or byte ranges of large files that start
and end between documents (`.jsonl` and doc_mode "line": after a newline; doc_mode "blank_line": after a
whitespace-only line; doc_mode "file" and `.gz` files are never cut). Each shard is one task: a worker reads
its documents exactly as igot.corpus.read_documents would, encodes them (igot.corpus.encode_corpus) and
counts them (igot.counting) with min_count=1. The partial tables are summed in a tree of
NgramTable.merge tasks on the workers, `fan_in` at a time, and min_count is applied only by the last merge,
so the table equals count_ngrams over the concatenated corpus in one process (n-grams, pre-tokens and
lookup occurrences never cross a document, and shards end between documents). Only the final table travels
to the caller.

Failures. A task whose worker dies is re-run by the scheduler (up to its `distributed.scheduler.
allowed-failures`, 3 by default; set for local clusters from `retries`), a task that raises is re-run
`retries` times; a shard that still fails raises ShardError naming its file (and byte range) and the cause,
after every other task is cancelled. Outputs are written by the caller with NgramTable.save / WordTable.save
(temporary name, then os.replace), so a failed count leaves nothing behind.

Why Dask and not Ray (measured on the 2-core box, benchmarks/RESULTS.md "Cluster"): a local Dask cluster of
2 workers starts in about 0.6 s and its processes hold about 50 MiB; Ray's starts in about 2.3 s and runs a
GCS server, a raylet and agents beside the workers (about 340 MiB of processes). Ray hands large numpy
results over through its shared-memory object store (a 200 MB result in 0.09 s against Dask's 0.42 s over
TCP), but here the partial tables are merged on the workers and only the final table comes back, so that
advantage does not apply; both re-run tasks of a dead worker.

Local clusters (`local:N`) run N worker processes of one task at a time; each gets cpu_count // N threads
for the tokenizer (RAYON_NUM_THREADS) and the counter. Workers are started with the "spawn" method: a script
that calls this module must guard its entry point with `if __name__ == "__main__":`.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from .corpus import DocMode, Errors, ReadStats, Source, load_tokenizer, untruncated

if TYPE_CHECKING:
    from distributed import Client
    from tokenizers import Tokenizer

    from .counting import NgramTable, WordTable

__all__ = ["Shard", "ShardError", "connect", "plan_shards", "count_ngrams", "count_words", "lookup_ngrams"]

ClusterLike = Union[str, "Client"]
# 64 MiB of text is some 16 M tokens: a shard then encodes for tens of seconds on one core, long enough
# to hide the scheduling cost (about 2 ms a task), short enough that a retried shard costs little.
SHARD_BYTES = 64 << 20
_INSTALL = "igot.cluster needs Dask: pip install 'igot[cluster]' (dask and distributed)"


class ShardError(RuntimeError):
    """One or more shards kept failing; `failures` holds (shard, exception) pairs, the message their files."""

    def __init__(self, failures: list[tuple[Shard, BaseException]], n_shards: int) -> None:
        self.failures = failures
        lines = [f"  {shard}: {type(exc).__name__}: {exc}" for shard, exc in failures[:10]]
        more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
        super().__init__(f"{len(failures)} of {n_shards} shard(s) failed after their retries; nothing was "
                         "written. Fix or leave out these files:\n" + "\n".join(lines) + more)


# ----------------------------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    """What one task reads: a whole file, or bytes [start, stop) of it, cut between documents."""

    path: str
    start: int = 0  # byte offset of the shard's first line
    stop: int | None = None  # byte offset after its last line; None: the end of the file

    def __str__(self) -> str:
        return self.path if self.stop is None else f"{self.path} (bytes {self.start:,}-{self.stop:,})"


def plan_shards(sources: Source | Iterable[Source], *, doc_mode: DocMode = "file",
                shard_bytes: int = SHARD_BYTES) -> list[Shard]:
    """Cut the corpus into shards of about `shard_bytes`, each file's pieces in file order.

    Args:
        sources: files, folders or globs, as igot.corpus.read_documents takes them.
        doc_mode: how plain-text files split into documents; "file" never cuts a .txt file.
        shard_bytes: a file larger than this is cut into byte ranges of about this size at the next
            document boundary (.jsonl, or .txt in "line" / "blank_line" mode; never .gz).

    Returns:
        The shards, in the order read_documents reads the documents.

    Raises:
        FileNotFoundError: a source does not exist or a glob matches nothing.
        ValueError: shard_bytes < 1 or an unknown doc_mode.
    """
    from .corpus import _DOC_MODES, _JSONL_SUFFIXES, _check_choice, _resolve_sources

    _check_choice("doc_mode", doc_mode, _DOC_MODES)
    if shard_bytes < 1:
        raise ValueError(f"shard_bytes={shard_bytes} must be at least 1")
    shards = []
    for path in _resolve_sources(sources):
        size = path.stat().st_size
        jsonl = path.name.endswith(_JSONL_SUFFIXES)
        if size <= shard_bytes or path.name.endswith(".gz") or not (jsonl or doc_mode != "file"):
            shards.append(Shard(str(path)))
            continue
        cuts = [0]
        with open(path, "rb") as f:
            while cuts[-1] + shard_bytes < size:
                cut = _next_boundary(f, cuts[-1] + shard_bytes, blank_line=doc_mode == "blank_line" and not jsonl)
                if cut is None or cut >= size:
                    break
                cuts.append(cut)
        cuts.append(size)
        shards += [Shard(str(path), a, b) for a, b in zip(cuts[:-1], cuts[1:])]
    return shards


def _next_boundary(f: io.BufferedReader, offset: int, blank_line: bool) -> int | None:
    """The first document boundary at or after `offset`: a line start, or the end of a whitespace-only line."""
    f.seek(offset - 1)
    f.readline()  # to the end of the line holding byte offset - 1: the next line starts at or after offset
    if not blank_line:
        return f.tell()
    for raw in iter(f.readline, b""):  # _text_docs ends a block at a line that strips to nothing
        if not raw.decode("utf-8", "replace").strip():
            return f.tell()
    return None


def _shard_documents(shard: Shard, doc_mode: DocMode, text_field: str, errors: Errors,
                     stats: ReadStats) -> Iterator[str]:
    """The non-empty documents of one shard, as read_documents yields them from its file."""
    import gzip

    from .corpus import _JSONL_SUFFIXES, CorpusDecodeError, _jsonl_docs, _text_docs

    path = Path(shard.path)
    if shard.stop is None:
        stream = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    else:
        with open(path, "rb") as f:
            f.seek(shard.start)
            stream = io.BytesIO(f.read(shard.stop - shard.start))
    with stream:
        if path.name.endswith(_JSONL_SUFFIXES):
            docs = _jsonl_docs(stream, path, text_field, errors, stats)
        else:
            docs = _text_docs(stream, path, doc_mode, errors, stats)
        try:
            for doc in docs:
                if doc.strip():
                    stats.n_docs += 1
                    yield doc
        except CorpusDecodeError as exc:  # the offset counts from the shard's start: make it the file's
            raise CorpusDecodeError(path, exc.offset + shard.start, exc) from None


# ----------------------------------------------------------------------------------------------- tasks


@dataclass
class _Part:
    """A shard's (or a merged group's) result with the reading statistics the caller reports."""

    value: Any  # NgramTable, WordTable or int64 [n] lookup counts
    n_docs: int = 0
    n_tokens: int = 0
    n_bytes: int = 0
    replaced: dict[str, int] = field(default_factory=dict)  # file -> invalid UTF-8 sequences replaced


@functools.lru_cache(maxsize=4)
def _worker_tokenizer(tokenizer_json: str) -> Tokenizer:
    """The tokenizer, parsed once per worker process (the JSON string is the cache key)."""
    from tokenizers import Tokenizer

    # untruncated once here, so that encode_corpus need not copy it for every shard
    return untruncated(Tokenizer.from_str(tokenizer_json))


def _encode_shard(shard: Shard, tokenizer_json: str, read: dict[str, Any]):
    """(EncodedCorpus or None when the shard holds no document, ReadStats) of one shard."""
    from .corpus import encode_corpus

    stats = ReadStats()
    docs = list(_shard_documents(shard, stats=stats, **read))
    if not docs:
        return None, stats
    return encode_corpus(_worker_tokenizer(tokenizer_json), docs, progress=False), stats


def _shard_task(shard: Shard, tokenizer_json: str, read: dict[str, Any], count: Callable[..., Any],
                empty: Callable[[], Any], options: dict[str, Any]) -> _Part:
    """Encode one shard and apply `count(ids, word_starts, doc_starts, threads=..., **options)` to it."""
    corpus, stats = _encode_shard(shard, tokenizer_json, read)
    replaced = {shard.path: stats.n_replaced} if stats.n_replaced else {}
    if corpus is None:
        return _Part(empty(), replaced=replaced)
    value = count(corpus.ids, corpus.word_starts, corpus.doc_starts, threads=_worker_threads(), **options)
    return _Part(value, corpus.n_docs, corpus.n_tokens, corpus.n_bytes, replaced)


def _combine(parts: tuple[_Part, ...], merge: Callable[..., Any], options: dict[str, Any]) -> _Part:
    """Sum a group of parts with `merge(*values, **options)` and add up their statistics."""
    replaced: dict[str, int] = {}
    for part in parts:
        for path, n in part.replaced.items():
            replaced[path] = replaced.get(path, 0) + n
    return _Part(merge(*(p.value for p in parts), **options), sum(p.n_docs for p in parts),
                 sum(p.n_tokens for p in parts), sum(p.n_bytes for p in parts), replaced)


def _merge_ngrams(*tables: NgramTable, min_count: int = 1) -> NgramTable:
    from .counting import NgramTable

    return NgramTable.merge(*tables, min_count=min_count, threads=_worker_threads())


def _merge_words(*tables: WordTable) -> WordTable:
    from .counting import WordTable

    return WordTable.merge(*tables, threads=_worker_threads())


def _add_counts(*counts: np.ndarray) -> np.ndarray:
    return np.sum(counts, axis=0, dtype=np.int64)


def _lookup(ids: np.ndarray, word_starts: np.ndarray, doc_starts: np.ndarray, *, table: NgramTable,
            threads: int) -> np.ndarray:
    return table.lookup(ids, word_starts, doc_starts, threads=threads)


def _empty_ngrams(max_n: int, cross_words: bool) -> NgramTable:
    from .counting import NgramTable

    return NgramTable(np.zeros(1, np.int64), np.zeros(0, np.uint32), np.zeros(0, np.int64), max_n=max_n,
                      cross_words=cross_words)


def _empty_words() -> WordTable:
    from .counting import WordTable

    return WordTable(np.zeros(1, np.int64), np.zeros(0, np.uint32), np.zeros(0, np.int64))


# ----------------------------------------------------------------------------------------------- cluster


@contextlib.contextmanager
def connect(address: str, *, retries: int = 3) -> Iterator[Client]:
    """Connect to a running Dask scheduler, or start a local cluster, for the length of a `with` block.

    Args:
        address: a scheduler address ("tcp://host:8786", or a scheduler file's path ending in .json), or
            "local:N" to start N worker processes on this machine (closed again when the block ends).
        retries: for a local cluster, how often a task may lose its worker before it counts as failed
            (the scheduler's distributed.scheduler.allowed-failures).

    Returns:
        A context manager that yields a distributed.Client.

    Raises:
        ImportError: Dask is not installed (the message has the pip command).
        ValueError: "local:N" with N < 1 or not a number.
        OSError: the scheduler cannot be reached.
    """
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError(_INSTALL) from None

    if not address.startswith("local:"):
        target = {"scheduler_file": address} if address.endswith(".json") else {"address": address}
        with Client(**target) as client:
            yield client
        return
    try:
        n_workers = int(address[len("local:"):])
    except ValueError:
        n_workers = 0
    if n_workers < 1:
        raise ValueError(f"cluster address {address!r}: write local:N with N >= 1 worker processes")
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    import logging

    with dask.config.set({"distributed.scheduler.allowed-failures": retries}):
        # no dashboard; the scheduler's HTTP endpoints (health, metrics) on a free loopback port, not 8787
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                               silence_logs=logging.ERROR,
                               env={"RAYON_NUM_THREADS": str(threads), "IGOT_CLUSTER_THREADS": str(threads)})
    with cluster, Client(cluster) as client:
        yield client


@contextlib.contextmanager
def _client(cluster: ClusterLike, retries: int) -> Iterator[Client]:
    if isinstance(cluster, str):
        with connect(cluster, retries=retries) as client:
            yield client
    else:
        yield cluster


def _worker_threads() -> int:
    """Counting threads of a task: what connect() gave a local worker, else 1 (tasks already run side by side)."""
    return int(os.environ.get("IGOT_CLUSTER_THREADS", "1"))


def _run(cluster: ClusterLike, sources: Source | Iterable[Source], tokenizer: Tokenizer | Source, *,
         count: Callable[..., Any], empty: Callable[[], Any], options: dict[str, Any], merge: Callable[..., Any],
         final_options: dict[str, Any], doc_mode: DocMode, text_field: str, errors: Errors, shard_bytes: int,
         retries: int, fan_in: int, progress: bool) -> _Part:
    """Plan shards, run one task per shard, merge the parts in a tree on the workers, return the sum."""
    from .corpus import _ERRORS, _check_choice

    _check_choice("errors", errors, _ERRORS)
    if fan_in < 2:
        raise ValueError(f"fan_in={fan_in} must be at least 2 (parts summed by one merge task)")
    if retries < 0:
        raise ValueError(f"retries={retries} must be >= 0")
    shards = plan_shards(sources, doc_mode=doc_mode, shard_bytes=shard_bytes)
    tokenizer_json = load_tokenizer(tokenizer).to_str()
    read = {"doc_mode": doc_mode, "text_field": text_field, "errors": errors}
    run_id = uuid.uuid4().hex[:8]
    with _client(cluster, retries) as client:
        from distributed import as_completed
        from tqdm.auto import tqdm

        # hash=False: a content-hashed key is shared with the previous call on the same tokenizer, whose release
        # can delete it while this call replicates it ("lost dependencies")
        tok = client.scatter(tokenizer_json, broadcast=True, hash=False)
        futures = [client.submit(_shard_task, shard, tok, read, count, empty, options, retries=retries,
                                 key=f"igot-shard-{i}-{run_id}") for i, shard in enumerate(shards)]
        shard_of = {f.key: shard for f, shard in zip(futures, shards)}
        merges, level, depth = [], futures, 0
        while True:  # the whole tree is submitted up front: a merge starts once its inputs exist
            last = len(level) <= fan_in
            level = [client.submit(_combine, tuple(level[i:i + fan_in]), merge, final_options if last else {},
                                   retries=retries, key=f"igot-merge-{depth}-{i // fan_in}-{run_id}")
                     for i in range(0, len(level), fan_in)]
            merges += level
            depth += 1
            if last:
                break
        failures = []
        with tqdm(total=len(shards), unit="shard", desc="cluster", disable=None if progress else True) as bar:
            for future in as_completed(futures):
                if future.status == "error":
                    failures.append((shard_of[future.key], future.exception()))
                bar.update(1)
        if failures:
            client.cancel(futures + merges)
            raise ShardError(sorted(failures, key=lambda f: shards.index(f[0])), len(shards))
        part = level[0].result()
    for path, n in part.replaced.items():
        warnings.warn(f"{path}: replaced {n} invalid UTF-8 sequence(s) with U+FFFD (errors='replace')",
                      UnicodeWarning, stacklevel=3)
    if part.n_docs == 0:
        raise ValueError(f"no non-empty document in {len(shards)} shard(s); check the sources, doc_mode and "
                         "text_field")
    return part


def count_ngrams(sources: Source | Iterable[Source], tokenizer: Tokenizer | Source, *,
                 cluster: ClusterLike = "local:2", max_n: int = 8, min_count: int = 1,
                 cross_words: bool = False, memory_budget: int | None = None, doc_mode: DocMode = "file",
                 text_field: str = "text", errors: Errors = "strict", shard_bytes: int = SHARD_BYTES,
                 retries: int = 2, fan_in: int = 8, progress: bool = True) -> NgramTable:
    """Count the n-grams of a corpus on a cluster: igot.counting.count_ngrams of the encoded corpus, exactly.

    Args:
        sources: files, folders or globs (igot.corpus.read_documents).
        tokenizer: a tokenizers.Tokenizer, tokenizer.json or an HF folder.
        cluster: a distributed.Client, a scheduler address, or "local:N" (see connect).
        max_n: longest n-gram counted.
        min_count: keep n-grams seen at least this often in the whole corpus (applied by the last merge).
        cross_words: also count n-grams across pre-token boundaries.
        memory_budget: bytes for each task's counting tables (igot.counting.count_ngrams).
        doc_mode, text_field, errors: how documents are read (igot.corpus.read_documents).
        shard_bytes: the size large files are cut to (plan_shards).
        retries: re-runs of a task that raised; for a local cluster also of a task whose worker died.
        fan_in: parts summed by one merge task.
        progress: show a bar of finished shards.

    Returns:
        The NgramTable, equal to count_ngrams(corpus.ids, corpus.word_starts, corpus.doc_starts, ...) of
        encode_corpus(tokenizer, read_documents(sources, ...)) in one process.

    Raises:
        ShardError: a shard kept failing (its file is named).
        ImportError: Dask is not installed.
        FileNotFoundError: a source does not exist.
        ValueError: a bad argument, or no document in the sources.
    """
    from .counting import count_ngrams as count

    if min_count < 1:
        raise ValueError(f"min_count={min_count} must be at least 1")
    return _run(cluster, sources, tokenizer, count=count, empty=functools.partial(_empty_ngrams, max_n, cross_words),
                options={"max_n": max_n, "min_count": 1, "cross_words": cross_words, "memory_budget": memory_budget},
                merge=_merge_ngrams, final_options={"min_count": min_count}, doc_mode=doc_mode,
                text_field=text_field, errors=errors, shard_bytes=shard_bytes, retries=retries, fan_in=fan_in,
                progress=progress).value


def count_words(sources: Source | Iterable[Source], tokenizer: Tokenizer | Source, *,
                cluster: ClusterLike = "local:2", doc_mode: DocMode = "file", text_field: str = "text",
                errors: Errors = "strict", shard_bytes: int = SHARD_BYTES, retries: int = 2, fan_in: int = 8,
                progress: bool = True) -> WordTable:
    """Count the distinct pre-tokens of a corpus on a cluster (the table igot extend's selection reads).

    Args:
        sources: files, folders or globs (igot.corpus.read_documents).
        tokenizer: a tokenizers.Tokenizer, tokenizer.json or an HF folder.
        cluster: a distributed.Client, a scheduler address, or "local:N" (see connect).
        doc_mode, text_field, errors, shard_bytes, retries, fan_in, progress: as count_ngrams.

    Returns:
        The WordTable, equal to igot.counting.count_words of the corpus encoded in one process; save it
        with .save(path) for `igot extend --domain-table`, or pass it to igot.vocab.extend_tokenizer.

    Raises:
        ShardError: a shard kept failing (its file is named).
        ImportError: Dask is not installed.
        FileNotFoundError: a source does not exist.
        ValueError: a bad argument, or no document in the sources.
    """
    from .counting import count_words as count

    return _run(cluster, sources, tokenizer, count=count, empty=_empty_words, options={}, merge=_merge_words,
                final_options={}, doc_mode=doc_mode, text_field=text_field, errors=errors,
                shard_bytes=shard_bytes, retries=retries, fan_in=fan_in, progress=progress).value


def lookup_ngrams(table: NgramTable, sources: Source | Iterable[Source], tokenizer: Tokenizer | Source, *,
                  cluster: ClusterLike = "local:2", doc_mode: DocMode = "file", text_field: str = "text",
                  errors: Errors = "strict", shard_bytes: int = SHARD_BYTES, retries: int = 2, fan_in: int = 8,
                  progress: bool = True) -> np.ndarray:
    """Count a table's n-grams in another corpus on a cluster: NgramTable.lookup of that corpus, exactly.

    Args:
        table: the n-grams to look up (e.g. the domain's); sent to every worker once.
        sources: the other corpus's files, folders or globs (e.g. the general text).
        tokenizer: the tokenizer the table was counted with.
        cluster: a distributed.Client, a scheduler address, or "local:N" (see connect).
        doc_mode, text_field, errors, shard_bytes, retries, fan_in, progress: as count_ngrams.

    Returns:
        int64 [len(table)]: equal to table.lookup of the corpus encoded in one process.

    Raises:
        ShardError: a shard kept failing (its file is named).
        ImportError: Dask is not installed.
        FileNotFoundError: a source does not exist.
        ValueError: a bad argument, or no document in the sources.
    """
    with _client(cluster, retries) as client:
        shared = client.scatter(table, broadcast=True, hash=False)  # see _run
        return _run(client, sources, tokenizer, count=_lookup, empty=functools.partial(np.zeros, len(table), np.int64),
                    options={"table": shared}, merge=_add_counts, final_options={}, doc_mode=doc_mode,
                    text_field=text_field, errors=errors, shard_bytes=shard_bytes, retries=retries, fan_in=fan_in,
                    progress=progress).value
