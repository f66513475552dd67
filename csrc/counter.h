// igot's counting core: exact n-gram, pre-token and lookup counts over uint32 token streams.
//
// Plain C++17, no Python: csrc/bindings.cpp converts numpy arrays to these pointer views and back.
// Every uint32 value is a valid token id (no sentinel); boundaries come from the flag arrays.
//
// count_ngrams packs each n-gram into one 64- or 128-bit integer when max_n * bit_width(max_id + 1)
// <= 128 and counts those keys directly in small per-worker hash tables, or, once most n-grams turn out
// distinct, by radix-partitioning them and sorting each partition in cache (counter.cpp, "Packed-key
// n-gram counting"). Everything else (count_words, merge_tables, wider n-grams, budgets too small for
// one partition) uses the hashed engine below.
//
// Hashed engine (one engine, three producers):
//   * Each worker thread owns a contiguous chunk of the work (stream positions, or table entries) and
//     counts the keys that START in its chunk into its own open-addressing hash table. A key is a
//     (position, length) reference into the input array, so the tables hold no copy of the ids.
//   * Keys are hashed with a 64-bit multiply-fold step per id and a splitmix64 finaliser.
//   * After the scan each table is compacted and sorted by (hash, key) in place; then worker p k-way
//     merges hash range p of every table, sums equal keys and keeps those with count >= min_count.
//   * Memory budget (bytes, 0 = unlimited): the hash tables of all workers, including the transient
//     old+new arrays of a rehash, stay within the budget. When a table would outgrow its worker's share,
//     the pass shrinks the range of hash values it accepts (halving it) and drops the keys above the new
//     range; the dropped range is counted exactly by a later pass over the input, whose range width is
//     sized from how full the tables of the previous pass got. Counts stay exact: each pass counts
//     every occurrence of the keys in its range and nothing else.
//   * Results are sorted by count descending, then by ids lexicographically (a prefix before the
//     longer key).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace igot {

// A token stream; a null flag pointer means "no such boundaries".
struct Stream {
    const uint32_t* ids = nullptr;      // [size]
    size_t size = 0;
    const bool* word_starts = nullptr;  // [size] true at the first token of each pre-token
    const bool* doc_starts = nullptr;   // [size] true at the first token of each document
};

// Flat CSR table of distinct keys with their counts, sorted by count desc then lexicographically.
struct Table {
    std::vector<int64_t> offsets;   // [n + 1]
    std::vector<uint32_t> ids;      // [offsets[n]]
    std::vector<int64_t> counts;    // [n]
    uint64_t passes = 0;            // passes over the input (> 1 when the memory budget forced a split)
    uint64_t peak_table_bytes = 0;  // largest total size of the counting structures (tables, key buffers)
    const char* strategy = "hashed";  // count_ngrams: "direct", "partitioned" (packed keys) or "hashed"
};

struct CountOptions {
    int max_n = 8;                // longest n-gram counted (>= 2)
    int64_t min_count = 1;        // keys seen fewer times are dropped (exactly: after the full sum)
    int threads = 0;              // 0 = all hardware threads
    bool cross_words = false;     // count n-grams that cross pre-token boundaries
    uint64_t memory_budget = 0;   // bytes for the hash tables; 0 = unlimited
};

constexpr int kMaxN = 255;                      // longest n-gram count_ngrams accepts
constexpr uint64_t kMaxKeyLength = (1u << 24) - 1;  // longest key (pre-token) a table can hold
constexpr uint64_t kMaxStreamSize = uint64_t(1) << 40;
constexpr uint64_t kMinMemoryBudget = uint64_t(1) << 16;

// Every n-gram of 2 <= n <= max_n tokens that crosses no document boundary (and no pre-token
// boundary unless cross_words). Throws std::invalid_argument on bad options or array sizes.
Table count_ngrams(const Stream& stream, const CountOptions& options);

// Distinct pre-tokens (runs from one word start to the next word or document start; a document
// start also starts a pre-token, and so does position 0) with their frequencies.
Table count_words(const Stream& stream, int threads);

// Sums the counts of equal keys of a concatenation of tables (offsets [n + 1] into ids, counts [n]),
// drops sums below min_count, and sorts like count_ngrams.
Table merge_tables(const int64_t* offsets, size_t n, const uint32_t* ids, size_t n_ids,
                   const int64_t* counts, int64_t min_count, int threads);

// For each key of a table (offsets [n + 1] into table_ids, distinct keys of any length >= 1), the
// number of its occurrences in stream that cross no document boundary (nor a pre-token boundary
// unless cross_words). Returns counts [n].
std::vector<int64_t> lookup_ngrams(const int64_t* offsets, size_t n, const uint32_t* table_ids,
                                   size_t n_table_ids, const Stream& stream, bool cross_words,
                                   int threads);

}  // namespace igot
