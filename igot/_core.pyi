"""Type stubs of igot._core, the C++ counting core (csrc/bindings.cpp). Use igot.counting instead.

Arrays must already have the exact dtype and be C-contiguous (no conversion happens); an empty flag
array means "no boundaries of that kind". The tables come back as (offsets, ids, counts, passes,
peak_table_bytes, strategy).
"""
import numpy as np
import numpy.typing as npt

__version__: str
MAX_N: int
MIN_MEMORY_BUDGET: int

def count_ngrams(
    ids: npt.NDArray[np.uint32],
    word_starts: npt.NDArray[np.bool_],
    doc_starts: npt.NDArray[np.bool_],
    max_n: int,
    min_count: int,
    threads: int,
    cross_words: bool,
    memory_budget: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32], npt.NDArray[np.int64], int, int, str]: ...
def count_words(
    ids: npt.NDArray[np.uint32],
    word_starts: npt.NDArray[np.bool_],
    doc_starts: npt.NDArray[np.bool_],
    threads: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32], npt.NDArray[np.int64], int, int, str]: ...
def merge_tables(
    offsets: npt.NDArray[np.int64],
    ids: npt.NDArray[np.uint32],
    counts: npt.NDArray[np.int64],
    min_count: int,
    threads: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32], npt.NDArray[np.int64], int, int, str]: ...
def lookup_ngrams(
    offsets: npt.NDArray[np.int64],
    table_ids: npt.NDArray[np.uint32],
    ids: npt.NDArray[np.uint32],
    word_starts: npt.NDArray[np.bool_],
    doc_starts: npt.NDArray[np.bool_],
    cross_words: bool,
    threads: int,
) -> npt.NDArray[np.int64]: ...
