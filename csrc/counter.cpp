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

// Tables index a slot by the hash's top log2(capacity) bits (capacity a power of 2): the shift.
inline int index_shift(size_t capacity) {
    int bits = 0;
    while ((size_t(1) << bits) < capacity) ++bits;
    return 64 - bits;
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
        shift_ = index_shift(cap);
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

// The n-gram starts of a stream: for every position i in [begin, end), calls fn(i, limit) with limit =
// min(max_n, tokens from i to the end of its segment) when that is >= min_n (segments end at a document
// start and, unless cross_words, at a word start).
class NgramStarts {
public:
    NgramStarts(const Stream& s, int min_n, int max_n, bool cross_words)
        : s_(s), word_(cross_words ? nullptr : s.word_starts), min_n_(min_n), max_n_(max_n) {}

    template <class Fn>
    void operator()(size_t begin, size_t end, Fn&& fn) const {
        size_t seg_end = next_boundary(begin + 1);
        for (size_t i = begin; i < end; ++i) {
            if (i == seg_end) seg_end = next_boundary(i + 1);
            const size_t limit = std::min<size_t>(max_n_, seg_end - i);
            if (limit >= static_cast<size_t>(min_n_)) fn(i, limit);
        }
    }

    int min_n() const { return min_n_; }

private:
    size_t next_boundary(size_t j) const {
        const bool* doc = s_.doc_starts;
        const bool* word = word_;
        if (doc == nullptr && word == nullptr) return s_.size;
        if (doc != nullptr && word != nullptr) {
            while (j < s_.size && !(doc[j] | word[j])) ++j;
        } else {
            const bool* flags = doc != nullptr ? doc : word;
            // Most segments are a few tokens long: look at the next bytes before paying for a memchr call.
            for (const size_t stop = std::min(s_.size, j + 16); j < stop; ++j) {
                if (flags[j]) return j;
            }
            const void* hit = j < s_.size ? std::memchr(flags + j, 1, s_.size - j) : nullptr;
            j = hit ? static_cast<size_t>(static_cast<const bool*>(hit) - flags) : s_.size;
        }
        return std::min(j, s_.size);
    }

    const Stream& s_;
    const bool* word_;
    int min_n_, max_n_;
};

// N-grams of min_n <= n <= max_n starting in [begin, end), as (hash, ref) keys.
class NgramScan {
public:
    NgramScan(const Stream& s, int min_n, int max_n, bool cross_words)
        : ids_(s.ids), starts_(s, min_n, max_n, cross_words) {}

    template <class Emit>
    void operator()(size_t begin, size_t end, Emit& emit) const {
        const size_t min_n = static_cast<size_t>(starts_.min_n());
        starts_(begin, end, [&](size_t i, size_t limit) {
            uint64_t state = kSeed;
            for (size_t n = 1; n <= limit; ++n) {
                state = hash_step(state, ids_[i + n - 1]);
                if (n >= min_n) emit(hash_finish(state, n), make_ref(i, n), int64_t(1));
            }
        });
    }

private:
    const uint32_t* ids_;
    NgramStarts starts_;
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

// ---------------------------------------------------------------------------------------------
// Packed-key n-gram counting: count_ngrams when max_n * bit_width(max_id + 1) <= 128.
//
// An n-gram is its own key: the slots id_0 + 1, ..., id_{n-1} + 1 packed most significant first into
// the top max_n * id_bits bits of a 64- or 128-bit integer, zeros after the last id. Equal keys are
// equal n-grams and integer order is lexicographic order with a prefix first, so no key refers back
// to the stream and sorting keys sorts n-grams. A key is never 0 (an empty table slot).
//
// 1. Direct: each worker counts the keys of its chunk into its own hash table. While every table
//    stays under kDirectSlots slots that is the whole count (real text inside words: few distinct
//    n-grams, tables in cache).
// 2. Partitioned, once a table outgrows that (most n-grams distinct): a table that large misses the
//    cache on every key, so the keys are counted by sorting instead, as KenLM does. A first scan takes
//    the histogram of the keys' top kBucketBits bits (their prefix); consecutive buckets form
//    partitions of about kPartitionBytes of keys; a second scan writes each occurrence's key into its
//    partition's slice of one buffer; each partition is then sorted in cache by an MSD radix sort that
//    counts the runs of equal keys as it goes (count_run). Partitions are prefix ranges, so their
//    concatenation is in lexicographic order. Under a memory budget (or past kPassBytes) the
//    partitions are split into passes whose key buffer and sort scratch fit (a partition longer than
//    the scratch is sorted in place); each pass scans the stream again and keeps only its own
//    partitions' keys, so counts are exact. A budget that cannot hold the keys of one bucket (n-grams
//    sharing their leading ids) leaves the count to the hashed engine.
// 3. The lexicographically sorted (key, count) runs are bucket-sorted by count, descending and stably,
//    and unpacked into the CSR table.

using u128 = __uint128_t;

inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
inline uint64_t key_hash(uint64_t key) { return mix64(key); }
inline uint64_t key_hash(u128 key) {
    return mix64(static_cast<uint64_t>(key) ^ mix64(static_cast<uint64_t>(key >> 64)));
}
inline int lowest_bit(uint64_t key) { return __builtin_ctzll(key); }
inline int lowest_bit(u128 key) {
    const uint64_t low = static_cast<uint64_t>(key);
    return low != 0 ? __builtin_ctzll(low) : 64 + __builtin_ctzll(static_cast<uint64_t>(key >> 64));
}

constexpr int kBucketBits = 16;  // prefix bits that choose a key's partition (fewer under a tight budget)

struct Packing {
    int id_bits;                     // bits of one slot (id + 1)
    int used_bits;                   // max_n * id_bits <= the key's width
    int bucket_bits = kBucketBits;   // a key's bucket is its top bucket_bits bits (of used_bits)

    template <class K>
    uint32_t bucket(K key) const {
        return used_bits >= bucket_bits ? static_cast<uint32_t>(key >> (used_bits - bucket_bits))
                                        : static_cast<uint32_t>(key << (bucket_bits - used_bits));
    }
    template <class K>
    uint32_t length(K key) const {
        return static_cast<uint32_t>((used_bits - 1 - lowest_bit(key)) / id_bits + 1);
    }
    template <class K>
    void unpack(K key, uint32_t length, uint32_t* out) const {
        const K mask = (K(1) << id_bits) - 1;
        int shift = used_bits;
        for (uint32_t j = 0; j < length; ++j) {
            shift -= id_bits;
            out[j] = static_cast<uint32_t>((key >> shift) & mask) - 1;
        }
    }
};

// The 2..max_n-grams starting in [begin, end) as packed keys.
template <class K>
class PackedScan {
public:
    PackedScan(const Stream& s, int max_n, bool cross_words, Packing packing)
        : ids_(s.ids), starts_(s, 2, max_n, cross_words), packing_(packing) {}

    template <class Emit>
    void operator()(size_t begin, size_t end, Emit& emit) const {
        const int id_bits = packing_.id_bits;
        const int top = packing_.used_bits - id_bits;
        starts_(begin, end, [&](size_t i, size_t limit) {
            const uint32_t* ids = ids_ + i;
            int shift = top;
            K key = static_cast<K>(uint64_t(ids[0]) + 1) << shift;
            for (size_t n = 1; n < limit; ++n) {
                shift -= id_bits;
                key |= static_cast<K>(uint64_t(ids[n]) + 1) << shift;
                emit(key);
            }
        });
    }

private:
    const uint32_t* ids_;
    NgramStarts starts_;
    Packing packing_;
};

template <class K>
struct KeyCount {
    K key;
    int64_t count;
};

// Open addressing with linear probing on packed keys; the slot index is the top bits of the hash.
template <class K>
class PackedTable {
public:
    using Slot = KeyCount<K>;

    void reset(size_t capacity) {
        size_t cap = 16;
        while (cap < capacity) cap <<= 1;
        slots_.assign(cap, Slot{0, 0});
        set_shape(cap);
        size_ = 0;
    }
    void release() {
        std::vector<Slot>().swap(slots_);
        size_ = 0;
    }

    size_t size() const { return size_; }
    size_t capacity() const { return slots_.size(); }
    size_t bytes() const { return slots_.capacity() * sizeof(Slot); }
    // Load factor 1/2: the tables are small (in cache) or short-lived, probes stay short.
    bool needs_grow() const { return (size_ + 1) * 2 > slots_.size(); }

    void prefetch(uint64_t hash) const { __builtin_prefetch(slots_.data() + (hash >> shift_)); }

    void add(K key, uint64_t hash, int64_t count) {
        size_t i = hash >> shift_;
        for (;;) {
            Slot& s = slots_[i];
            if (s.key == key) {
                s.count += count;
                return;
            }
            if (s.key == 0) {
                s = Slot{key, count};
                ++size_;
                return;
            }
            i = (i + 1) & mask_;
        }
    }

    void grow() {
        std::vector<Slot> old;
        old.swap(slots_);
        slots_.assign(old.size() * 2, Slot{0, 0});
        set_shape(slots_.size());
        for (const Slot& s : old) {
            if (s.key == 0) continue;
            size_t i = key_hash(s.key) >> shift_;
            while (slots_[i].key != 0) i = (i + 1) & mask_;
            slots_[i] = s;
        }
    }

    // Appends the keys counted at least min_count times to out.
    void append_to(std::vector<Slot>& out, int64_t min_count) const {
        for (const Slot& s : slots_) {
            if (s.key != 0 && s.count >= min_count) out.push_back(s);
        }
    }

private:
    void set_shape(size_t cap) {
        shift_ = index_shift(cap);
        mask_ = cap - 1;
    }

    std::vector<Slot> slots_;
    size_t size_ = 0;
    size_t mask_ = 0;
    int shift_ = 60;
};

template <class It>
void sort_by_key(It first, It last) {
    std::sort(first, last, [](const auto& a, const auto& b) { return a.key < b.key; });
}

inline int key_width(uint64_t v) { return v == 0 ? 0 : 64 - __builtin_clzll(v); }
inline int key_width(u128 v) {
    const uint64_t high = static_cast<uint64_t>(v >> 64);
    return high != 0 ? 128 - __builtin_clzll(high) : key_width(static_cast<uint64_t>(v));
}

constexpr int kDigitBits = 11;     // MSD radix digit: 2048 buckets, their counters stay in L1
constexpr size_t kInsertionSort = 32;  // shorter runs are insertion-sorted

// Where count_run puts the distinct keys: keys[n++] (behind the keys still being read) and counts.
template <class K>
struct KeySink {
    K* keys;
    size_t n;
    std::vector<int64_t>& counts;
    int64_t min_count;
    int64_t max_count;

    void put(K key, int64_t count) {
        if (count < min_count) return;
        keys[n++] = key;
        counts.push_back(count);
        max_count = std::max(max_count, count);
    }
};

// Sets differ to the bits in which the keys a[0, m) differ (m >= 1); when there are none, puts the one
// key with count m and returns true.
template <class K>
bool one_key(const K* a, size_t m, KeySink<K>& sink, K& differ) {
    differ = 0;
    for (size_t i = 1; i < m; ++i) differ |= a[i] ^ a[0];
    if (differ != 0) return false;
    sink.put(a[0], static_cast<int64_t>(m));
    return true;
}

// Counts a[0, m) by MSD radix sort (tmp: scratch of m keys, both overwritten) and puts (key, count) in
// key order. Each level first finds the bits in which the keys differ, so it starts at the highest of
// them and a run of one key (a frequent n-gram) stops at once. The sink may write into a's memory at
// or before a: every key it writes has been read.
template <class K>
void count_run(K* a, K* tmp, size_t m, KeySink<K>& sink) {
    if (m <= kInsertionSort) {
        for (size_t i = 1; i < m; ++i) {
            const K key = a[i];
            size_t j = i;
            for (; j > 0 && key < a[j - 1]; --j) a[j] = a[j - 1];
            a[j] = key;
        }
        for (size_t i = 0; i < m;) {
            size_t j = i + 1;
            while (j < m && a[j] == a[i]) ++j;
            sink.put(a[i], static_cast<int64_t>(j - i));
            i = j;
        }
        return;
    }
    K differ;
    if (one_key(a, m, sink, differ)) return;
    // About 8 keys per bucket: wider digits would leave most buckets empty.
    const int top = key_width(differ);
    const int bits = std::min({kDigitBits, top, std::max(1, key_width(uint64_t(m)) - 3)});
    const int shift = top - bits;
    const uint32_t mask = (uint32_t(1) << bits) - 1;
    // Two counter arrays: runs of one digit (common in text) would otherwise wait on each increment.
    uint32_t count[size_t(1) << kDigitBits], count2[size_t(1) << kDigitBits];
    std::fill(count, count + mask + 1, 0u);
    std::fill(count2, count2 + mask + 1, 0u);
    size_t i = 0;
    for (; i + 1 < m; i += 2) {
        ++count[static_cast<uint32_t>(a[i] >> shift) & mask];
        ++count2[static_cast<uint32_t>(a[i + 1] >> shift) & mask];
    }
    if (i < m) ++count[static_cast<uint32_t>(a[i] >> shift) & mask];
    for (uint32_t d = 0; d <= mask; ++d) count[d] += count2[d];
    uint32_t at[size_t(1) << kDigitBits];
    uint32_t sum = 0;
    for (uint32_t d = 0; d <= mask; ++d) {
        at[d] = sum;
        sum += count[d];
    }
    for (size_t i = 0; i < m; ++i) tmp[at[static_cast<uint32_t>(a[i] >> shift) & mask]++] = a[i];
    for (uint32_t d = 0, begin = 0; d <= mask; begin += count[d], ++d) {
        if (count[d] != 0) count_run(tmp + begin, a + begin, count[d], sink);
    }
}

// Tables past this many slots stop the direct count. Measured (CPU time, one thread): on HPO + GO
// (1.85 M tokens, 72 k distinct n-grams) the direct and the partitioned count both take 20 ms; on
// 4 M random ids in 0..40 (2.8 M distinct) direct tables without this limit took 0.45 s against
// 0.14 s partitioned, of which this probe is about 5 ms.
constexpr size_t kDirectSlots = size_t(1) << 18;
constexpr size_t kDirectBlock = size_t(1) << 13;  // stream positions between two checks for a full table
// Bytes of keys per partition: they and their sort scratch stay within a core's L2 cache.
constexpr uint64_t kPartitionBytes = uint64_t(1) << 18;
constexpr size_t kMaxPartitions = 4096;  // scatter fan-out
// Without a memory budget, one pass's key buffer and sort scratch stay under this; more passes past it.
constexpr uint64_t kPassBytes = uint64_t(1) << 31;

// count_run for a[0, m) with scratch for only tmp_keys keys: while the run is longer, one MSD level
// permutes it in place (American flag sort), then each digit's run recurses. A memory budget thus
// needs room for the keys of a partition, not for a second copy of them.
template <class K>
void count_run_in_place(K* a, size_t m, K* tmp, size_t tmp_keys, KeySink<K>& sink) {
    if (m <= tmp_keys) {
        count_run(a, tmp, m, sink);
        return;
    }
    K differ;
    if (one_key(a, m, sink, differ)) return;
    const int top = key_width(differ);
    const int bits = std::min(kDigitBits, top);
    const int shift = top - bits;
    const uint32_t mask = (uint32_t(1) << bits) - 1;
    auto digit = [shift, mask](K key) { return static_cast<uint32_t>(key >> shift) & mask; };
    std::vector<size_t> start((size_t(1) << bits) + 1, 0);
    for (size_t i = 0; i < m; ++i) ++start[digit(a[i]) + 1];
    for (uint32_t d = 0; d <= mask; ++d) start[d + 1] += start[d];
    std::vector<size_t> next(start.begin(), start.end() - 1);
    for (uint32_t d = 0; d <= mask; ++d) {
        while (next[d] < start[d + 1]) {  // cycle leader: carry each key to the next free place of its digit
            K key = a[next[d]];
            for (uint32_t e = digit(key); e != d; e = digit(key)) std::swap(key, a[next[e]++]);
            a[next[d]++] = key;
        }
    }
    for (uint32_t d = 0; d <= mask; ++d) {
        if (start[d + 1] > start[d]) count_run_in_place(a + start[d], start[d + 1] - start[d], tmp, tmp_keys, sink);
    }
}

// Distinct keys with their counts (>= min_count), as runs that are in key order one after the other.
template <class K>
struct Counted {
    struct Run {
        const K* keys;
        const int64_t* counts;
        size_t n;
    };
    std::vector<std::vector<K>> key_storage;
    std::vector<std::vector<int64_t>> count_storage;
    std::vector<Run> runs;
    size_t size = 0;
    int64_t max_count = 1;

    void add_run(const K* keys, const int64_t* counts, size_t n) {
        if (n == 0) return;
        runs.push_back(Run{keys, counts, n});
        size += n;
    }
};

// Direct count into one table per worker; false when a table outgrew max_slots.
template <class K, class Scan>
bool count_direct(const Scan& scan, size_t work, size_t k, size_t max_slots, int64_t min_count, Counted<K>& out,
                  Table& stats) {
    std::vector<PackedTable<K>> tables(k);
    std::atomic<bool> overflow{false};
    Workers counting;
    counting.run(k, [&](size_t t) {
        PackedTable<K>& table = tables[t];
        table.reset(std::min<size_t>(1024, max_slots));
        bool full = false;
        auto insert = [&](K key, uint64_t hash) {
            if (table.needs_grow()) {
                if (full || table.capacity() * 2 > max_slots) {
                    full = true;
                    return;
                }
                table.grow();
            }
            table.add(key, hash, 1);
        };
        // Keys wait kAhead emits between the prefetch of their slot and their insertion.
        constexpr size_t kAhead = 8;
        K pending_key[kAhead];
        uint64_t pending_hash[kAhead];
        size_t n_pending = 0, next = 0;
        auto emit = [&](K key) {
            const uint64_t hash = key_hash(key);
            table.prefetch(hash);
            if (n_pending == kAhead) {
                insert(pending_key[next], pending_hash[next]);
            } else {
                ++n_pending;
            }
            pending_key[next] = key;
            pending_hash[next] = hash;
            next = (next + 1) % kAhead;
        };
        const size_t begin = work * t / k, end = work * (t + 1) / k;
        for (size_t b = begin; b < end && !full; b += kDirectBlock) {
            if (overflow.load(std::memory_order_relaxed) || counting.stopped()) return;
            scan(b, std::min(end, b + kDirectBlock), emit);
        }
        for (size_t j = 0; j < n_pending; ++j) {
            const size_t at = (next + kAhead - n_pending + j) % kAhead;
            insert(pending_key[at], pending_hash[at]);
        }
        if (full) overflow.store(true);
    });
    uint64_t bytes = 0;
    for (const auto& table : tables) bytes += table.bytes();
    stats.peak_table_bytes = std::max(stats.peak_table_bytes, bytes);
    if (overflow.load()) return false;

    // Sum equal keys across the workers' tables: sort each table's keys, merge the runs, add up.
    std::vector<size_t> cut(k + 1, 0);
    for (size_t t = 0; t < k; ++t) cut[t + 1] = cut[t] + tables[t].size();
    std::vector<KeyCount<K>> all;
    all.reserve(cut[k]);
    for (auto& table : tables) {
        table.append_to(all, k == 1 ? min_count : 1);
        table.release();
    }
    if (k == 1) {
        sort_by_key(all.begin(), all.end());
    } else {
        Workers sorting;
        sorting.run(k, [&](size_t t) { sort_by_key(all.begin() + cut[t], all.begin() + cut[t + 1]); });
        auto less = [](const KeyCount<K>& a, const KeyCount<K>& b) { return a.key < b.key; };
        for (size_t step = 1; step < k; step *= 2) {
            for (size_t t = 0; t + step < k; t += 2 * step) {
                std::inplace_merge(all.begin() + cut[t], all.begin() + cut[t + step],
                                   all.begin() + cut[std::min(k, t + 2 * step)], less);
            }
        }
        size_t kept = 0;
        for (size_t i = 0; i < all.size();) {
            KeyCount<K> sum = all[i];
            for (++i; i < all.size() && all[i].key == sum.key; ++i) sum.count += all[i].count;
            if (sum.count >= min_count) all[kept++] = sum;
        }
        all.resize(kept);
    }
    std::vector<K> keys(all.size());
    std::vector<int64_t> counts(all.size());
    for (size_t i = 0; i < all.size(); ++i) {
        keys[i] = all[i].key;
        counts[i] = all[i].count;
        out.max_count = std::max(out.max_count, all[i].count);
    }
    out.add_run(keys.data(), counts.data(), keys.size());
    out.key_storage.push_back(std::move(keys));
    out.count_storage.push_back(std::move(counts));
    return true;
}

// Partitioned count (section 2 above); false when the limit cannot hold the histograms or one bucket's
// keys (all n-grams with the same leading ids), or a bucket holds 2^32 keys or more.
template <class K, class Scan>
bool count_partitioned(const Scan& scan, Packing packing, size_t work, size_t k, const EngineOptions& opt,
                       Counted<K>& out, Table& stats) {
    const uint64_t limit = opt.memory_budget != 0 ? opt.memory_budget : kPassBytes;
    // The bucket histograms take at most a quarter of the limit: a tight budget gets coarser buckets.
    auto hist_bytes = [k](int bits) { return k * (uint64_t(1) << bits) * sizeof(uint64_t); };
    while (packing.bucket_bits > 1 && hist_bytes(packing.bucket_bits) > limit / 4) --packing.bucket_bits;
    if (hist_bytes(packing.bucket_bits) > limit / 4) return false;
    stats.peak_table_bytes = std::max(stats.peak_table_bytes, hist_bytes(packing.bucket_bits));
    const size_t n_buckets = size_t(1) << packing.bucket_bits;

    // 1. How many keys fall in each bucket, per worker.
    std::vector<std::vector<uint64_t>> hist(k, std::vector<uint64_t>(n_buckets, 0));
    Workers histogram;
    histogram.run(k, [&](size_t t) {
        uint64_t* h = hist[t].data();
        auto emit = [&](K key) { ++h[packing.bucket(key)]; };
        scan_chunk(scan, work, t, k, histogram, emit);
    });
    std::vector<uint64_t> in_bucket(n_buckets, 0);
    for (size_t t = 0; t < k; ++t) {
        for (size_t b = 0; b < n_buckets; ++b) in_bucket[b] += hist[t][b];
    }
    uint64_t occurrences = 0;
    for (uint64_t c : in_bucket) occurrences += c;

    // 2. Partitions: runs of consecutive buckets of about `target` keys (one bucket may hold more).
    // Sort scratch per worker: room for the largest partition, or under a budget at most an eighth of
    // it per worker (count_run_in_place sorts longer partitions in place).
    const uint64_t scratch_cap = opt.memory_budget != 0 ? std::max<uint64_t>(kInsertionSort, limit / (8 * k * sizeof(K)))
                                                        : ~uint64_t(0);
    auto pass_bytes = [k, scratch_cap](uint64_t keys, uint64_t largest) {
        return (keys + k * std::min(largest, scratch_cap)) * sizeof(K);  // the key buffer and the scratch
    };
    uint64_t target = std::max<uint64_t>(kPartitionBytes / sizeof(K), (occurrences + kMaxPartitions - 1) / kMaxPartitions);
    while (target > 64 && pass_bytes(target, target) > limit / 2) target /= 2;
    std::vector<uint32_t> part_of(n_buckets);
    std::vector<uint64_t> part_keys;  // keys per partition
    for (size_t b = 0; b < n_buckets; ++b) {
        if (part_keys.empty() || (part_keys.back() > 0 && part_keys.back() + in_bucket[b] > target)) {
            part_keys.push_back(0);
        }
        part_of[b] = static_cast<uint32_t>(part_keys.size() - 1);
        part_keys.back() += in_bucket[b];
    }
    const size_t n_parts = part_keys.size();
    std::vector<uint64_t> part_worker_keys(n_parts * k, 0);  // [partition][worker]
    for (size_t t = 0; t < k; ++t) {
        for (size_t b = 0; b < n_buckets; ++b) part_worker_keys[part_of[b] * k + t] += hist[t][b];
    }
    std::vector<std::vector<uint64_t>>().swap(hist);

    // 3. Passes: runs of consecutive partitions whose keys and scratch fit the limit, next to the
    //    partition tables (the bucket map, per-worker sizes, write cursors and results).
    const uint64_t fixed = n_buckets * sizeof(uint32_t) + n_parts * (3 * k * sizeof(uint64_t) + 4 * sizeof(size_t));
    std::vector<size_t> pass_start{0};
    uint64_t keys_in_pass = 0, largest = 0;
    for (size_t p = 0; p < n_parts; ++p) {
        // count_run counts a partition's keys in 32 bits
        if (part_keys[p] > UINT32_MAX || fixed + pass_bytes(part_keys[p], part_keys[p]) > limit) return false;
        if (p > pass_start.back() &&
            fixed + pass_bytes(keys_in_pass + part_keys[p], std::max(largest, part_keys[p])) > limit) {
            pass_start.push_back(p);
            keys_in_pass = largest = 0;
        }
        keys_in_pass += part_keys[p];
        largest = std::max(largest, part_keys[p]);
    }
    pass_start.push_back(n_parts);

    // Distinct keys go back into the key buffer, in place; their counts into one array per worker.
    out.count_storage.resize(k);
    // Room for every key to be distinct, reserved (not touched) up front: growing by copies would
    // write the counts twice into fresh pages, which cost more than the copies themselves here.
    for (auto& counts : out.count_storage) counts.reserve(std::min<uint64_t>(occurrences, uint64_t(1) << 28));
    struct Part {
        size_t worker = 0, first_count = 0, n = 0;  // counts at count_storage[worker][first_count, + n)
        const K* keys = nullptr;
    };
    std::vector<Part> parts(n_parts);
    std::vector<int64_t> max_count(k, 1);
    std::vector<std::vector<K>> scratch(k);
    stats.passes = 0;
    for (size_t pass = 0; pass + 1 < pass_start.size(); ++pass) {
        const size_t first = pass_start[pass], n = pass_start[pass + 1] - first;
        ++stats.passes;
        // Partition first + p, worker t writes from at[p * k + t].
        std::vector<uint64_t> at(n * k + 1, 0);
        for (size_t j = 0; j < n * k; ++j) at[j + 1] = at[j] + part_worker_keys[first * k + j];
        std::vector<K> buffer(at[n * k]);
        Workers scatter;
        scatter.run(k, [&](size_t t) {
            std::vector<uint64_t> cursor(n);
            for (size_t p = 0; p < n; ++p) cursor[p] = at[p * k + t];
            K* keys = buffer.data();
            const uint32_t* part = part_of.data();
            auto emit = [&](K key) {
                const size_t p = part[packing.bucket(key)] - first;  // wraps past n in other passes' partitions
                if (p < n) keys[cursor[p]++] = key;
            };
            scan_chunk(scan, work, t, k, scatter, emit);
        });
        std::atomic<size_t> next{0};
        Workers counting;
        counting.run(k, [&](size_t t) {
            for (size_t p = next++; p < n && !counting.stopped(); p = next++) {
                const size_t m = static_cast<size_t>(at[(p + 1) * k] - at[p * k]);
                const size_t tmp_keys = static_cast<size_t>(std::min<uint64_t>(m, scratch_cap));
                if (scratch[t].size() < tmp_keys) {
                    std::vector<K>().swap(scratch[t]);  // sized exactly: the budget counts its capacity
                    scratch[t].resize(tmp_keys);
                }
                K* keys = buffer.data() + at[p * k];
                KeySink<K> sink{keys, 0, out.count_storage[t], opt.min_count, max_count[t]};
                const size_t first_count = sink.counts.size();
                count_run_in_place(keys, m, scratch[t].data(), tmp_keys, sink);
                max_count[t] = sink.max_count;
                parts[first + p] = Part{t, first_count, sink.n, keys};
            }
        });
        uint64_t bytes = fixed + buffer.capacity() * sizeof(K);
        for (auto& s : scratch) {
            bytes += s.capacity() * sizeof(K);
            std::vector<K>().swap(s);
        }
        stats.peak_table_bytes = std::max(stats.peak_table_bytes, bytes);
        if (pass_start.size() == 2) {  // one pass: the distinct keys stay in the buffer
            out.key_storage.push_back(std::move(buffer));
            break;
        }
        // Several passes: the next pass reuses the memory, so this pass's distinct keys move out.
        size_t distinct = 0;
        for (size_t p = first; p < first + n; ++p) distinct += parts[p].n;
        std::vector<K> kept(distinct);
        for (size_t p = first, at_kept = 0; p < first + n; at_kept += parts[p].n, ++p) {
            std::copy(parts[p].keys, parts[p].keys + parts[p].n, kept.data() + at_kept);
            parts[p].keys = kept.data() + at_kept;
        }
        out.key_storage.push_back(std::move(kept));
    }
    for (const Part& part : parts) {
        out.add_run(part.keys, out.count_storage[part.worker].data() + part.first_count, part.n);
    }
    out.max_count = *std::max_element(max_count.begin(), max_count.end());
    return true;
}

// Section 3: the CSR table of the counted keys, by count desc, then key. One pass counts, per worker
// and count, the keys and their ids; a second writes each key's count, offset and ids at its place.
template <class K>
Table packed_to_table(const Counted<K>& keys, const Packing& packing, int threads, Table&& stats) {
    const size_t n = keys.size;
    const size_t k = std::max<size_t>(1, std::min<size_t>(resolve_threads(threads), n / 65536));
    // Worker t handles keys [cut[t], cut[t + 1]) of the concatenated runs.
    std::vector<size_t> cut(k + 1);
    for (size_t t = 0; t <= k; ++t) cut[t] = n * t / k;
    auto for_range = [&keys](size_t begin, size_t end, auto&& fn) {
        size_t skip = begin;
        for (const auto& run : keys.runs) {
            if (begin >= end) return;
            if (skip >= run.n) {
                skip -= run.n;
                continue;
            }
            const size_t take = std::min(run.n - skip, end - begin);
            for (size_t i = skip; i < skip + take; ++i) fn(run.keys[i], run.counts[i]);
            begin += take;
            skip = 0;
        }
    };
    // Counts below `small` get a bucket each, in descending order; the few larger ones sort on their own.
    const int64_t small = std::min<int64_t>(keys.max_count + 1, int64_t(1) << 16);
    auto bucket = [small](int64_t count) { return static_cast<size_t>(small - 1 - count); };
    std::vector<std::vector<uint64_t>> at(k, std::vector<uint64_t>(static_cast<size_t>(small), 0));
    std::vector<std::vector<uint64_t>> id_at(k, std::vector<uint64_t>(static_cast<size_t>(small), 0));
    std::vector<std::vector<KeyCount<K>>> large(k);
    Workers counting;
    counting.run(k, [&](size_t t) {
        uint64_t* h = at[t].data();
        uint64_t* l = id_at[t].data();
        for_range(cut[t], cut[t + 1], [&](K key, int64_t count) {
            if (count < small) {
                ++h[bucket(count)];
                l[bucket(count)] += packing.length(key);
            } else {
                large[t].push_back(KeyCount<K>{key, count});
            }
        });
    });
    std::vector<KeyCount<K>> top;  // the large counts, in key order
    for (const auto& l : large) top.insert(top.end(), l.begin(), l.end());
    std::stable_sort(top.begin(), top.end(), [](const KeyCount<K>& a, const KeyCount<K>& b) { return a.count > b.count; });
    Table out = std::move(stats);
    out.counts.resize(n);
    out.offsets.resize(n + 1);
    out.offsets[0] = 0;
    uint64_t place = 0, id_place = 0;
    for (const KeyCount<K>& e : top) {
        out.counts[place] = e.count;
        id_place += packing.length(e.key);
        out.offsets[++place] = static_cast<int64_t>(id_place);
    }
    for (size_t b = 0; b < static_cast<size_t>(small); ++b) {
        for (size_t t = 0; t < k; ++t) {
            const uint64_t keys_here = at[t][b], ids_here = id_at[t][b];
            at[t][b] = place;
            id_at[t][b] = id_place;
            place += keys_here;
            id_place += ids_here;
        }
    }
    out.ids.resize(id_place);
    for (size_t j = 0; j < top.size(); ++j) {
        const uint32_t length = packing.length(top[j].key);
        packing.unpack(top[j].key, length, out.ids.data() + out.offsets[j + 1] - length);
    }
    Workers writing;
    writing.run(k, [&](size_t t) {
        uint64_t* h = at[t].data();
        uint64_t* l = id_at[t].data();
        int64_t* counts = out.counts.data();
        int64_t* offsets = out.offsets.data();
        uint32_t* ids = out.ids.data();
        for_range(cut[t], cut[t + 1], [&](K key, int64_t count) {
            if (count >= small) return;
            const size_t b = bucket(count);
            const uint64_t i = h[b]++;
            const uint32_t length = packing.length(key);
            packing.unpack(key, length, ids + l[b]);
            l[b] += length;
            counts[i] = count;
            offsets[i + 1] = static_cast<int64_t>(l[b]);
        });
    });
    return out;
}

// count_ngrams with packed keys of type K; false when the memory budget is too small for them (the
// hashed engine then counts).
template <class K>
bool count_packed(const Stream& stream, const CountOptions& options, const Packing& packing, Table& out) {
    const size_t k = std::max<size_t>(1, std::min<size_t>(resolve_threads(options.threads), stream.size));
    const PackedScan<K> scan(stream, options.max_n, options.cross_words, packing);
    const bool bounded = options.memory_budget != 0;
    size_t direct_slots = kDirectSlots;
    if (bounded) {
        // A table's last doubling holds its old and new arrays: 1.5x its final size.
        while (direct_slots >= 16 && k * direct_slots * sizeof(KeyCount<K>) * 3 / 2 > options.memory_budget) {
            direct_slots /= 2;
        }
    }
    Table stats;
    stats.passes = 1;
    Counted<K> keys;
    stats.strategy = "direct";
    bool done = direct_slots >= 16 &&
                count_direct<K>(scan, stream.size, k, direct_slots, options.min_count, keys, stats);
    if (!done) {
        stats.strategy = "partitioned";
        done = count_partitioned<K>(scan, packing, stream.size, k,
                                    {options.threads, options.min_count, options.memory_budget}, keys, stats);
    }
    if (!done) return false;
    out = packed_to_table(keys, packing, options.threads, std::move(stats));
    return true;
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
    uint32_t max_id = 0;
    for (size_t i = 0; i < stream.size; ++i) max_id = std::max(max_id, stream.ids[i]);
    const int id_bits = bit_width(uint64_t(max_id) + 1);
    const Packing packing{id_bits, options.max_n * id_bits};
    Table packed;
    if (packing.used_bits <= 64 && count_packed<uint64_t>(stream, options, packing, packed)) return packed;
    if (packing.used_bits > 64 && packing.used_bits <= 128 && count_packed<u128>(stream, options, packing, packed)) {
        return packed;
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
