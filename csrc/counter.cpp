// igot's counting core; the design is described in counter.h.
#include "counter.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

namespace igot {
namespace {

// ---------------------------------------------------------------------------------------------
// Hashing of variable-length id sequences: state <- fold(state ^ id) with a 64x64->128 multiply
// (wyhash's "mum"), then a splitmix64 finaliser that also mixes in the length.

constexpr uint64_t kSeed = 0x243F6A8885A308D3ULL;

inline uint64_t hash_step(uint64_t state, uint32_t id) {
    const __uint128_t p = static_cast<__uint128_t>(state ^ id) * 0x9E3779B97F4A7C15ULL;
    return static_cast<uint64_t>(p) ^ static_cast<uint64_t>(p >> 64);
}

inline uint64_t hash_finish(uint64_t state, uint64_t length) {
    uint64_t z = state + length * 0xD6E8FEB86659FD93ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

inline uint64_t hash_ids(const uint32_t* ids, size_t length) {
    uint64_t state = kSeed;
    for (size_t k = 0; k < length; ++k) state = hash_step(state, ids[k]);
    return hash_finish(state, length);
}

// The memory-budget passes split the hash space on this value rather than on the hash itself: the
// table index uses the hash's top bits, which must stay uniform inside a narrow pass range.
inline uint64_t range_key(uint64_t hash) { return (hash << 32) | (hash >> 32); }

// ---------------------------------------------------------------------------------------------
// Keys are references into a base array: ref = position << 24 | length.

inline uint64_t make_ref(uint64_t pos, uint64_t length) { return (pos << 24) | length; }
inline uint64_t ref_pos(uint64_t ref) { return ref >> 24; }
inline uint32_t ref_len(uint64_t ref) { return static_cast<uint32_t>(ref & kMaxKeyLength); }

// Lexicographic order of id sequences, a prefix before the longer sequence.
inline bool ids_less(const uint32_t* a, uint32_t na, const uint32_t* b, uint32_t nb) {
    const uint32_t n = std::min(na, nb);
    for (uint32_t k = 0; k < n; ++k) {
        if (a[k] != b[k]) return a[k] < b[k];
    }
    return na < nb;
}

inline bool same_ids(const uint32_t* a, const uint32_t* b, uint32_t length) {
    for (uint32_t k = 0; k < length; ++k) {
        if (a[k] != b[k]) return false;
    }
    return true;
}

struct Slot {
    uint64_t hash;
    uint64_t ref;
    int64_t count;  // 0 marks an empty slot (every stored key has count >= 1)
};

// Open addressing with linear probing; the slot index is the hash's top bits.
class CountTable {
public:
    explicit CountTable(size_t capacity = 0) { reset(capacity); }

    void reset(size_t capacity) {
        size_t cap = 16;
        while (cap < capacity) cap <<= 1;
        slots_.assign(cap, Slot{0, 0, 0});
        set_shape(cap);
        size_ = 0;
    }

    size_t size() const { return size_; }
    size_t bytes() const { return slots_.capacity() * sizeof(Slot); }
    // Load factor 5/8: linear probing stays short and a doubling keeps the table half full.
    bool needs_grow() const { return (size_ + 1) * 8 > slots_.size() * 5; }

    void add(uint64_t hash, uint64_t ref, int64_t count, const uint32_t* base) {
        const uint32_t* key = base + ref_pos(ref);
        const uint32_t length = ref_len(ref);
        size_t i = hash >> shift_;
        for (;;) {
            Slot& s = slots_[i];
            if (s.count == 0) {
                s = Slot{hash, ref, count};
                ++size_;
                return;
            }
            if (s.hash == hash && ref_len(s.ref) == length &&
                same_ids(base + ref_pos(s.ref), key, length)) {
                s.count += count;
                return;
            }
            i = (i + 1) & mask_;
        }
    }

    // Slot of the key (ids[0..length) compared against keys stored in base), or nullptr.
    const Slot* find(uint64_t hash, const uint32_t* ids, uint32_t length, const uint32_t* base) const {
        size_t i = hash >> shift_;
        for (;;) {
            const Slot& s = slots_[i];
            if (s.count == 0) return nullptr;
            if (s.hash == hash && ref_len(s.ref) == length &&
                same_ids(base + ref_pos(s.ref), ids, length)) {
                return &s;
            }
            i = (i + 1) & mask_;
        }
    }

    void grow() { rehash(slots_.size() * 2, [](const Slot&) { return true; }); }

    // Drops the keys whose range key lies above last (their range is left to a later pass).
    void drop_above(uint64_t last) {
        rehash(slots_.size(), [last](const Slot& s) { return range_key(s.hash) <= last; });
    }

    // Moves the stored keys within [lo, last] to the front, sorted by (hash, key); returns how many.
    // The slot index is the hash's top bits, so the slots are already in hash order except for short
    // probe displacements and the few keys that wrapped around the end: an insertion sort after
    // moving those to the back costs about one pass. The table is unusable afterwards until reset().
    size_t compact_sorted(uint64_t lo, uint64_t last, const uint32_t* base) {
        auto in_range = [lo, last](const Slot& s) {
            return s.count != 0 && range_key(s.hash) >= lo && range_key(s.hash) <= last;
        };
        std::vector<Slot> wrapped;
        size_t m = 0;
        for (size_t i = 0; i < slots_.size(); ++i) {
            const Slot s = slots_[i];
            if (!in_range(s)) continue;
            if ((s.hash >> shift_) > i) {
                wrapped.push_back(s);
            } else {
                slots_[m++] = s;
            }
        }
        for (const Slot& s : wrapped) slots_[m++] = s;
        auto less = [base](const Slot& a, const Slot& b) {
            if (a.hash != b.hash) return a.hash < b.hash;
            return ids_less(base + ref_pos(a.ref), ref_len(a.ref), base + ref_pos(b.ref), ref_len(b.ref));
        };
        for (size_t i = 1; i < m; ++i) {
            const Slot s = slots_[i];
            size_t j = i;
            while (j > 0 && less(s, slots_[j - 1])) {
                slots_[j] = slots_[j - 1];
                --j;
            }
            slots_[j] = s;
        }
        size_ = 0;
        return m;
    }

    void prefetch(uint64_t hash) const { __builtin_prefetch(slots_.data() + (hash >> shift_)); }

    const std::vector<Slot>& slots() const { return slots_; }

private:
    void set_shape(size_t cap) {
        int bits = 0;
        while ((size_t(1) << bits) < cap) ++bits;
        shift_ = 64 - bits;
        mask_ = cap - 1;
    }

    template <class Keep>
    void rehash(size_t capacity, Keep keep) {
        std::vector<Slot> kept;
        kept.reserve(size_);
        for (const Slot& s : slots_) {
            if (s.count != 0 && keep(s)) kept.push_back(s);
        }
        std::vector<Slot>().swap(slots_);
        slots_.assign(capacity, Slot{0, 0, 0});
        set_shape(capacity);
        for (const Slot& s : kept) {
            size_t i = s.hash >> shift_;
            while (slots_[i].count != 0) i = (i + 1) & mask_;
            slots_[i] = s;
        }
        size_ = kept.size();
    }

    std::vector<Slot> slots_;
    size_t size_ = 0;
    size_t mask_ = 0;
    int shift_ = 60;
};

// ---------------------------------------------------------------------------------------------
// Threads: every call starts its workers and joins them before returning; the first exception of a
// worker stops the others (at their next block) and is rethrown on the calling thread.

int resolve_threads(int threads) {
    if (threads < 0) throw std::invalid_argument("threads must be >= 0 (0 = all cores), got " + std::to_string(threads));
    if (threads == 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    return std::min(threads, 1024);
}

class Workers {
public:
    template <class Fn>
    void run(size_t n, Fn fn) {
        std::vector<std::thread> pool;
        pool.reserve(n > 0 ? n - 1 : 0);
        auto guarded = [this, &fn](size_t t) {
            try {
                fn(t);
            } catch (...) {
                std::lock_guard<std::mutex> lock(mutex_);
                if (!error_) error_ = std::current_exception();
                stop_.store(true);
            }
        };
        try {
            for (size_t t = 1; t < n; ++t) pool.emplace_back(guarded, t);
        } catch (...) {
            stop_.store(true);
            for (auto& th : pool) th.join();
            throw;
        }
        if (n > 0) guarded(0);
        for (auto& th : pool) th.join();
        if (error_) std::rethrow_exception(error_);
    }
    bool stopped() const { return stop_.load(std::memory_order_relaxed); }

private:
    std::mutex mutex_;
    std::exception_ptr error_;
    std::atomic<bool> stop_{false};
};

constexpr size_t kBlock = size_t(1) << 16;  // work units between two checks of the stop flag

// Runs scan(begin, end, emit) over [t * work / k, (t + 1) * work / k) in blocks.
template <class Scan, class Emit>
void scan_chunk(const Scan& scan, size_t work, size_t t, size_t k, const Workers& workers, Emit& emit) {
    const size_t begin = work * t / k, end = work * (t + 1) / k;
    for (size_t b = begin; b < end && !workers.stopped(); b += kBlock) {
        scan(b, std::min(end, b + kBlock), emit);
    }
}

// ---------------------------------------------------------------------------------------------
// The counting engine. scan(begin, end, emit) calls emit(hash, ref, count) for every key occurrence
// that starts in [begin, end); refs point into base. Returns the keys with count >= min_count.

struct EngineOptions {
    int threads;
    int64_t min_count;
    uint64_t memory_budget;  // 0 = unlimited
};

template <class Scan>
std::vector<Slot> count_keys(const uint32_t* base, size_t work, const Scan& scan, const EngineOptions& opt,
                             Table& stats) {
    const size_t k = std::max<size_t>(1, std::min<size_t>(resolve_threads(opt.threads), work));
    const bool bounded = opt.memory_budget != 0;
    const uint64_t share = bounded ? opt.memory_budget / k : 0;
    // Tables start small and grow; under a budget they start within a quarter of the worker's share.
    size_t first_capacity = 4096;
    if (bounded) first_capacity = std::min(first_capacity, std::max<size_t>(16, share / (4 * sizeof(Slot))));
    std::vector<CountTable> tables(k);
    std::vector<uint64_t> peak_bytes(k, 0);
    std::vector<size_t> full_size(k, 0);  // keys a worker's table held when the budget stopped its growth
    std::vector<size_t> end_size(k, 0);   // keys a worker's table held at the end of the pass
    std::vector<std::vector<Slot>> kept(k);

    uint64_t lo = 0, width = ~uint64_t(0);  // this pass counts the range keys in [lo, lo + width]
    for (;;) {
        std::atomic<uint64_t> last{lo + std::min(width, ~uint64_t(0) - lo)};
        ++stats.passes;
        Workers counting;
        counting.run(k, [&](size_t t) {
            CountTable& table = tables[t];
            table.reset(first_capacity);
            uint64_t applied_last = last.load();  // the range this table was last purged to
            auto make_room = [&]() {
                while (table.needs_grow()) {
                    uint64_t cur = last.load();
                    if (cur < applied_last) {  // another worker narrowed the range: use that room first
                        table.drop_above(cur);
                        applied_last = cur;
                        continue;
                    }
                    // A rehash holds the old and the new array: 3x the current size at its peak.
                    if (table.bytes() * 3 <= share || cur == lo) {
                        table.grow();
                        break;
                    }
                    full_size[t] = std::max(full_size[t], table.size());
                    last.compare_exchange_strong(cur, lo + (cur - lo) / 2);
                    applied_last = last.load();
                    table.drop_above(applied_last);
                }
            };
            auto insert = [&](const Slot& key) {
                if (bounded) {
                    const uint64_t r = range_key(key.hash);
                    if (r < lo || r > last.load(std::memory_order_relaxed)) return;
                    if (table.needs_grow()) {
                        make_room();
                        peak_bytes[t] = std::max<uint64_t>(peak_bytes[t], table.bytes());
                        if (r > last.load(std::memory_order_relaxed)) return;
                    }
                } else if (table.needs_grow()) {
                    table.grow();
                }
                table.add(key.hash, key.ref, key.count, base);
            };
            // Keys wait kAhead emits between the prefetch of their slot and their insertion, so the
            // cache misses of the (large, random-access) table overlap instead of adding up.
            constexpr size_t kAhead = 16;
            Slot pending[kAhead];
            size_t n_pending = 0, next = 0;
            auto emit = [&](uint64_t hash, uint64_t ref, int64_t count) {
                table.prefetch(hash);
                if (n_pending == kAhead) {
                    insert(pending[next]);
                } else {
                    ++n_pending;
                }
                pending[next] = Slot{hash, ref, count};
                next = (next + 1) % kAhead;
            };
            scan_chunk(scan, work, t, k, counting, emit);
            for (size_t j = 0; j < n_pending; ++j) insert(pending[(next + kAhead - n_pending + j) % kAhead]);
            peak_bytes[t] = std::max<uint64_t>(peak_bytes[t], table.bytes());
        });
        const uint64_t final_last = last.load();
        for (size_t t = 0; t < k; ++t) end_size[t] = tables[t].size();

        if (k == 1) {
            kept[0].reserve(kept[0].size() + tables[0].size());
            for (const Slot& s : tables[0].slots()) {
                const uint64_t r = range_key(s.hash);
                if (s.count >= opt.min_count && r >= lo && r <= final_last) kept[0].push_back(s);
            }
        } else {
            std::vector<size_t> sizes(k);
            Workers sorting;
            sorting.run(k, [&](size_t t) { sizes[t] = tables[t].compact_sorted(lo, final_last, base); });
            Workers merging;
            merging.run(k, [&](size_t p) {
                // Worker p merges the hashes in [p * 2^64 / k, (p + 1) * 2^64 / k) of every table.
                auto bound = [k](size_t q) -> __uint128_t { return (static_cast<__uint128_t>(q) << 64) / k; };
                std::vector<const Slot*> head(k), end(k);
                for (size_t t = 0; t < k; ++t) {
                    const Slot* first = tables[t].slots().data();
                    const Slot* stop = first + sizes[t];
                    auto lower = [&](size_t q) {
                        if (q == k) return stop;
                        const uint64_t h = static_cast<uint64_t>(bound(q));
                        return std::lower_bound(first, stop, h, [](const Slot& s, uint64_t v) { return s.hash < v; });
                    };
                    head[t] = lower(p);
                    end[t] = lower(p + 1);
                }
                auto less = [base](const Slot& a, const Slot& b) {
                    if (a.hash != b.hash) return a.hash < b.hash;
                    return ids_less(base + ref_pos(a.ref), ref_len(a.ref), base + ref_pos(b.ref), ref_len(b.ref));
                };
                for (;;) {
                    const Slot* best = nullptr;
                    for (size_t t = 0; t < k; ++t) {
                        if (head[t] != end[t] && (best == nullptr || less(*head[t], *best))) best = head[t];
                    }
                    if (best == nullptr) break;
                    Slot sum = *best;
                    sum.count = 0;
                    for (size_t t = 0; t < k; ++t) {
                        if (head[t] != end[t] && !less(sum, *head[t])) {  // equal key (never less than best)
                            sum.count += head[t]->count;
                            ++head[t];
                        }
                    }
                    if (sum.count >= opt.min_count) kept[p].push_back(sum);
                }
            });
        }
        if (final_last == ~uint64_t(0)) break;
        // The next pass aims to fill the fullest table to 85% of what the budget let it hold: widths
        // carried over unchanged only ever shrink (each halving sticks), which multiplied the passes.
        const size_t fullest = *std::max_element(end_size.begin(), end_size.end());
        const size_t limit = *std::max_element(full_size.begin(), full_size.end());
        long double scale = 4.0L;
        if (fullest != 0 && limit != 0) scale = std::min(4.0L, std::max(0.5L, 0.85L * limit / fullest));
        const long double next_width = std::max(1.0L, (final_last - lo) * scale);
        width = next_width >= 18446744073709551615.0L ? ~uint64_t(0) : static_cast<uint64_t>(next_width);
        lo = final_last + 1;
    }
    uint64_t peak = 0;
    for (uint64_t b : peak_bytes) peak += b;
    stats.peak_table_bytes = peak;
    tables.clear();

    if (k == 1) return std::move(kept[0]);
    size_t total = 0;
    for (const auto& v : kept) total += v.size();
    std::vector<Slot> out;
    out.reserve(total);
    for (auto& v : kept) {
        out.insert(out.end(), v.begin(), v.end());
        std::vector<Slot>().swap(v);
    }
    return out;
}

inline int bit_width(uint64_t v) {
    int bits = 0;
    while (v != 0) {
        ++bits;
        v >>= 1;
    }
    return bits;
}

// Sorts the counted keys by count desc then ids and writes the CSR table. Each key gets a 128-bit
// sort key packing (max_count - count, then id + 1 for as many leading ids as fit, 0 past the end so a
// prefix sorts first) in as few bits as the data needs, so nearly every comparison is one integer
// comparison; only equal sort keys (same count and leading ids) compare the ids themselves. Chunks
// sort in parallel, then merge pairwise. (An LSD radix sort of these keys needed 11 scatter passes
// and was slower.) The count is decoded from the sort key, so the slots are freed before sorting.
Table to_table(std::vector<Slot>&& keys, const uint32_t* base, size_t n_base, int threads, Table&& stats) {
    const size_t n = keys.size();
    const size_t k = std::max<size_t>(1, std::min<size_t>(resolve_threads(threads), n / 65536));
    std::vector<size_t> cut(k + 1);
    for (size_t t = 0; t <= k; ++t) cut[t] = n * t / k;
    int64_t max_count = 1;
    for (const Slot& s : keys) max_count = std::max(max_count, s.count);
    const uint32_t max_id = n_base == 0 ? 0 : *std::max_element(base, base + n_base);
    const int count_bits = bit_width(static_cast<uint64_t>(max_count - 1));
    const int id_bits = bit_width(uint64_t(max_id) + 1);
    const int packed_ids = std::min(6, (128 - count_bits) / id_bits);
    const int count_shift = packed_ids * id_bits;
    struct Item {
        __uint128_t key;
        uint64_t ref;
    };
    std::vector<Item> items(n);
    auto less = [base](const Item& a, const Item& b) {
        if (a.key != b.key) return a.key < b.key;
        return ids_less(base + ref_pos(a.ref), ref_len(a.ref), base + ref_pos(b.ref), ref_len(b.ref));
    };
    Workers sorting;
    sorting.run(k, [&](size_t t) {
        for (size_t i = cut[t]; i < cut[t + 1]; ++i) {
            const Slot& s = keys[i];
            const uint32_t* ids = base + ref_pos(s.ref);
            __uint128_t key = static_cast<uint64_t>(max_count - s.count);
            for (int j = 0; j < packed_ids; ++j) {
                key = (key << id_bits) | (static_cast<uint32_t>(j) < ref_len(s.ref) ? uint64_t(ids[j]) + 1 : 0);
            }
            items[i] = Item{key, s.ref};
        }
    });
    std::vector<Slot>().swap(keys);
    sorting.run(k, [&](size_t t) { std::sort(items.begin() + cut[t], items.begin() + cut[t + 1], less); });
    for (size_t step = 1; step < k; step *= 2) {
        std::vector<size_t> firsts;
        for (size_t t = 0; t + step < k; t += 2 * step) firsts.push_back(t);
        Workers merging;
        merging.run(firsts.size(), [&](size_t j) {
            const size_t t = firsts[j];
            std::inplace_merge(items.begin() + cut[t], items.begin() + cut[t + step],
                               items.begin() + cut[std::min(k, t + 2 * step)], less);
        });
    }

    Table out = std::move(stats);
    out.offsets.resize(n + 1);
    out.counts.resize(n);
    out.offsets[0] = 0;
    for (size_t i = 0; i < n; ++i) {
        out.offsets[i + 1] = out.offsets[i] + ref_len(items[i].ref);
        const uint64_t rank = count_shift >= 128 ? 0 : static_cast<uint64_t>(items[i].key >> count_shift);
        out.counts[i] = max_count - static_cast<int64_t>(rank);
    }
    out.ids.resize(static_cast<size_t>(out.offsets[n]));
    Workers copying;
    copying.run(k, [&](size_t t) {
        for (size_t i = cut[t]; i < cut[t + 1]; ++i) {
            std::memcpy(out.ids.data() + out.offsets[i], base + ref_pos(items[i].ref),
                        ref_len(items[i].ref) * sizeof(uint32_t));
        }
    });
    return out;
}

// ---------------------------------------------------------------------------------------------
// Producers.

void check_stream(const Stream& s) {
    if (s.size > kMaxStreamSize) {
        throw std::invalid_argument("token stream too long: " + std::to_string(s.size) + " > 2**40 tokens");
    }
}

// N-grams of min_n <= n <= max_n starting in [begin, end) inside one segment (segments end at a
// document start and, unless cross_words, at a word start).
class NgramScan {
public:
    NgramScan(const Stream& s, int min_n, int max_n, bool cross_words)
        : s_(s), word_(cross_words ? nullptr : s.word_starts), min_n_(min_n), max_n_(max_n) {}

    template <class Emit>
    void operator()(size_t begin, size_t end, Emit& emit) const {
        const uint32_t* ids = s_.ids;
        size_t seg_end = next_boundary(begin + 1);
        for (size_t i = begin; i < end; ++i) {
            if (i == seg_end) seg_end = next_boundary(i + 1);
            const size_t limit = std::min<size_t>(max_n_, seg_end - i);
            if (limit < static_cast<size_t>(min_n_)) continue;
            uint64_t state = kSeed;
            for (size_t n = 1; n <= limit; ++n) {
                state = hash_step(state, ids[i + n - 1]);
                if (n >= static_cast<size_t>(min_n_)) emit(hash_finish(state, n), make_ref(i, n), int64_t(1));
            }
        }
    }

private:
    size_t next_boundary(size_t j) const {
        const bool* doc = s_.doc_starts;
        const bool* word = word_;
        if (doc == nullptr && word == nullptr) return s_.size;
        if (doc != nullptr && word != nullptr) {
            while (j < s_.size && !(doc[j] | word[j])) ++j;
        } else {
            const bool* flags = doc != nullptr ? doc : word;
            const void* hit = j < s_.size ? std::memchr(flags + j, 1, s_.size - j) : nullptr;
            j = hit ? static_cast<size_t>(static_cast<const bool*>(hit) - flags) : s_.size;
        }
        return std::min(j, s_.size);
    }

    const Stream& s_;
    const bool* word_;
    int min_n_, max_n_;
};

// Pre-tokens starting in [begin, end).
class WordScan {
public:
    explicit WordScan(const Stream& s) : s_(s) {}

    template <class Emit>
    void operator()(size_t begin, size_t end, Emit& emit) const {
        for (size_t i = begin; i < end; ++i) {
            if (!is_start(i)) continue;
            size_t j = i + 1;
            while (j < s_.size && !is_start(j)) ++j;
            const size_t length = j - i;
            if (length > kMaxKeyLength) {
                throw std::length_error("a pre-token of " + std::to_string(length) + " tokens at position " +
                                        std::to_string(i) + " is longer than the limit of " +
                                        std::to_string(kMaxKeyLength) + "; check word_starts");
            }
            emit(hash_ids(s_.ids + i, length), make_ref(i, length), int64_t(1));
        }
    }

private:
    bool is_start(size_t j) const {
        return j == 0 || s_.word_starts[j] || (s_.doc_starts != nullptr && s_.doc_starts[j]);
    }
    const Stream& s_;
};

// Entries of a CSR table.
class EntryScan {
public:
    EntryScan(const int64_t* offsets, const uint32_t* ids, const int64_t* counts)
        : offsets_(offsets), ids_(ids), counts_(counts) {}

    template <class Emit>
    void operator()(size_t begin, size_t end, Emit& emit) const {
        for (size_t i = begin; i < end; ++i) {
            const uint64_t pos = static_cast<uint64_t>(offsets_[i]);
            const uint64_t length = static_cast<uint64_t>(offsets_[i + 1]) - pos;
            emit(hash_ids(ids_ + pos, length), make_ref(pos, length), counts_ ? counts_[i] : int64_t(1));
        }
    }

private:
    const int64_t* offsets_;
    const uint32_t* ids_;
    const int64_t* counts_;
};

// Offsets must start at 0, end at n_ids and give keys of 1..kMaxKeyLength ids.
void check_csr(const int64_t* offsets, size_t n, size_t n_ids) {
    if (offsets[0] != 0 || offsets[n] != static_cast<int64_t>(n_ids)) {
        throw std::invalid_argument("offsets must start at 0 and end at len(ids) = " + std::to_string(n_ids) +
                                    ", got " + std::to_string(offsets[0]) + " and " + std::to_string(offsets[n]));
    }
    for (size_t i = 0; i < n; ++i) {
        const int64_t length = offsets[i + 1] - offsets[i];
        if (length < 1 || static_cast<uint64_t>(length) > kMaxKeyLength) {
            throw std::invalid_argument("entry " + std::to_string(i) + " has length " + std::to_string(length) +
                                        "; every key needs 1 to " + std::to_string(kMaxKeyLength) + " ids");
        }
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

Table count_ngrams(const Stream& stream, const CountOptions& options) {
    check_stream(stream);
    if (options.max_n < 2 || options.max_n > kMaxN) {
        throw std::invalid_argument("max_n must be in [2, " + std::to_string(kMaxN) + "], got " +
                                    std::to_string(options.max_n));
    }
    if (options.min_count < 1) {
        throw std::invalid_argument("min_count must be >= 1, got " + std::to_string(options.min_count));
    }
    if (options.memory_budget != 0 && options.memory_budget < kMinMemoryBudget) {
        throw std::invalid_argument("memory_budget must be at least " + std::to_string(kMinMemoryBudget) +
                                    " bytes, got " + std::to_string(options.memory_budget));
    }
    Table stats;
    const NgramScan scan(stream, 2, options.max_n, options.cross_words);
    std::vector<Slot> keys = count_keys(stream.ids, stream.size, scan,
                                        {options.threads, options.min_count, options.memory_budget}, stats);
    return to_table(std::move(keys), stream.ids, stream.size, options.threads, std::move(stats));
}

Table count_words(const Stream& stream, int threads) {
    check_stream(stream);
    if (stream.size > 0 && stream.word_starts == nullptr) throw std::invalid_argument("count_words needs word_starts");
    Table stats;
    const WordScan scan(stream);
    std::vector<Slot> keys = count_keys(stream.ids, stream.size, scan, {threads, 1, 0}, stats);
    return to_table(std::move(keys), stream.ids, stream.size, threads, std::move(stats));
}

Table merge_tables(const int64_t* offsets, size_t n, const uint32_t* ids, size_t n_ids, const int64_t* counts,
                   int64_t min_count, int threads) {
    if (min_count < 1) throw std::invalid_argument("min_count must be >= 1, got " + std::to_string(min_count));
    check_csr(offsets, n, n_ids);
    for (size_t i = 0; i < n; ++i) {
        if (counts[i] < 1) {
            throw std::invalid_argument("entry " + std::to_string(i) + " has count " + std::to_string(counts[i]) +
                                        "; table counts must be >= 1");
        }
    }
    Table stats;
    const EntryScan scan(offsets, ids, counts);
    std::vector<Slot> keys = count_keys(ids, n, scan, {threads, min_count, 0}, stats);
    return to_table(std::move(keys), ids, n_ids, threads, std::move(stats));
}

std::vector<int64_t> lookup_ngrams(const int64_t* offsets, size_t n, const uint32_t* table_ids, size_t n_table_ids,
                                   const Stream& stream, bool cross_words, int threads) {
    check_stream(stream);
    check_csr(offsets, n, n_table_ids);
    std::vector<int64_t> counts(n, 0);
    if (n == 0 || stream.size == 0) return counts;

    // Index: key -> entry number + 1 (stored in the count field, so 0 still means empty).
    CountTable index(n * 2);
    int min_n = kMaxN + 1, max_n = 0;
    const EntryScan entries(offsets, table_ids, nullptr);
    size_t next_entry = 0;
    auto insert = [&](uint64_t hash, uint64_t ref, int64_t) {
        const uint32_t length = ref_len(ref);
        if (index.find(hash, table_ids + ref_pos(ref), length, table_ids) != nullptr) {
            throw std::invalid_argument("the table holds entry " + std::to_string(next_entry) +
                                        " twice; lookup needs distinct keys");
        }
        index.add(hash, ref, static_cast<int64_t>(++next_entry), table_ids);
        min_n = std::min<int>(min_n, length);
        max_n = std::max<int>(max_n, std::min<uint32_t>(length, kMaxN + 1));
    };
    entries(0, n, insert);
    if (max_n > kMaxN) throw std::invalid_argument("lookup supports keys of at most " + std::to_string(kMaxN) + " ids");

    const size_t k = std::max<size_t>(1, std::min<size_t>(resolve_threads(threads), stream.size / 4096));
    std::vector<std::vector<int64_t>> partial(k - 1, std::vector<int64_t>());
    const NgramScan scan(stream, min_n, max_n, cross_words);
    Workers workers;
    workers.run(k, [&](size_t t) {
        int64_t* mine = counts.data();
        if (t > 0) {
            partial[t - 1].assign(n, 0);
            mine = partial[t - 1].data();
        }
        const uint32_t* ids = stream.ids;
        auto hit = [&](uint64_t hash, uint64_t ref, int64_t) {
            const Slot* s = index.find(hash, ids + ref_pos(ref), ref_len(ref), table_ids);
            if (s != nullptr) ++mine[s->count - 1];
        };
        scan_chunk(scan, stream.size, t, k, workers, hit);
    });
    for (const auto& p : partial) {
        for (size_t i = 0; i < n; ++i) counts[i] += p[i];
    }
    return counts;
}

}  // namespace igot
