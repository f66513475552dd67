// pybind11 bindings of igot's counting core (csrc/counter.h): numpy views in, numpy arrays out.
// Arrays enter as C-contiguous, non-converting array_t (a wrong dtype is a TypeError, never a hidden
// copy); all work runs with the GIL released; results are moved into capsules, not copied.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "counter.h"

namespace py = pybind11;

namespace {

using IdArray = py::array_t<uint32_t, py::array::c_style>;
using FlagArray = py::array_t<bool, py::array::c_style>;
using OffsetArray = py::array_t<int64_t, py::array::c_style>;

template <class T>
py::array_t<T> to_numpy(std::vector<T>&& values) {
    auto* owned = new std::vector<T>(std::move(values));
    py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
    return py::array_t<T>({static_cast<py::ssize_t>(owned->size())}, owned->data(), owner);
}

template <class Array>
size_t length_1d(const Array& a, const char* name) {
    if (a.ndim() != 1) {
        throw std::invalid_argument(std::string(name) + " must be 1-D, got " + std::to_string(a.ndim()) + " dims");
    }
    return static_cast<size_t>(a.shape(0));
}

// An empty flag array means "no such boundaries".
igot::Stream stream_of(const IdArray& ids, const FlagArray& word_starts, const FlagArray& doc_starts) {
    igot::Stream s;
    s.ids = ids.data();
    s.size = length_1d(ids, "ids");
    auto flags = [&s](const FlagArray& a, const char* name) -> const bool* {
        const size_t n = length_1d(a, name);
        if (n == 0) return nullptr;
        if (n != s.size) {
            throw std::invalid_argument(std::string(name) + " has length " + std::to_string(n) +
                                        " but ids has length " + std::to_string(s.size));
        }
        return a.data();
    };
    s.word_starts = flags(word_starts, "word_starts");
    s.doc_starts = flags(doc_starts, "doc_starts");
    return s;
}

size_t entries_of(const OffsetArray& offsets) {
    const size_t n = length_1d(offsets, "offsets");
    if (n == 0) throw std::invalid_argument("offsets must hold n + 1 >= 1 values");
    return n - 1;
}

py::tuple to_python(igot::Table&& t) {
    const uint64_t passes = t.passes, peak = t.peak_table_bytes;
    const std::string strategy = t.strategy;
    return py::make_tuple(to_numpy(std::move(t.offsets)), to_numpy(std::move(t.ids)), to_numpy(std::move(t.counts)),
                          passes, peak, strategy);
}

py::tuple count_ngrams(const IdArray& ids, const FlagArray& word_starts, const FlagArray& doc_starts, int max_n,
                       int64_t min_count, int threads, bool cross_words, uint64_t memory_budget) {
    const igot::Stream s = stream_of(ids, word_starts, doc_starts);
    igot::Table t;
    {
        py::gil_scoped_release release;
        t = igot::count_ngrams(s, {max_n, min_count, threads, cross_words, memory_budget});
    }
    return to_python(std::move(t));
}

py::tuple count_words(const IdArray& ids, const FlagArray& word_starts, const FlagArray& doc_starts, int threads) {
    const igot::Stream s = stream_of(ids, word_starts, doc_starts);
    igot::Table t;
    {
        py::gil_scoped_release release;
        t = igot::count_words(s, threads);
    }
    return to_python(std::move(t));
}

py::tuple merge_tables(const OffsetArray& offsets, const IdArray& ids, const OffsetArray& counts, int64_t min_count,
                       int threads) {
    const size_t n = entries_of(offsets);
    if (length_1d(counts, "counts") != n) throw std::invalid_argument("counts must have len(offsets) - 1 values");
    igot::Table t;
    {
        py::gil_scoped_release release;
        t = igot::merge_tables(offsets.data(), n, ids.data(), length_1d(ids, "ids"), counts.data(), min_count,
                               threads);
    }
    return to_python(std::move(t));
}

py::array_t<int64_t> lookup_ngrams(const OffsetArray& offsets, const IdArray& table_ids, const IdArray& ids,
                                   const FlagArray& word_starts, const FlagArray& doc_starts, bool cross_words,
                                   int threads) {
    const size_t n = entries_of(offsets);
    const igot::Stream s = stream_of(ids, word_starts, doc_starts);
    std::vector<int64_t> counts;
    {
        py::gil_scoped_release release;
        counts = igot::lookup_ngrams(offsets.data(), n, table_ids.data(), length_1d(table_ids, "table_ids"), s,
                                     cross_words, threads);
    }
    return to_numpy(std::move(counts));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "igot's C++ counting core. Use igot.counting; these functions take pre-checked arrays.";
    m.attr("__version__") = VERSION_INFO;
    m.attr("MAX_N") = igot::kMaxN;
    m.attr("MIN_MEMORY_BUDGET") = igot::kMinMemoryBudget;

    m.def("count_ngrams", &count_ngrams,
          "Count the n-grams (2 <= n <= max_n) inside segments of ids; empty flag arrays mean no boundaries.\n"
          "Returns (offsets int64 [n+1], ids uint32, counts int64 [n], passes, peak_table_bytes, strategy).",
          py::arg("ids").noconvert(), py::arg("word_starts").noconvert(), py::arg("doc_starts").noconvert(),
          py::arg("max_n"), py::arg("min_count"), py::arg("threads"), py::arg("cross_words"),
          py::arg("memory_budget"));
    m.def("count_words", &count_words,
          "Count the distinct pre-tokens of ids (runs from one word or document start to the next).\n"
          "Returns (offsets int64 [W+1], ids uint32, counts int64 [W], passes, peak_table_bytes, strategy).",
          py::arg("ids").noconvert(), py::arg("word_starts").noconvert(), py::arg("doc_starts").noconvert(),
          py::arg("threads"));
    m.def("merge_tables", &merge_tables,
          "Sum the counts of equal keys of a concatenated CSR table and keep sums >= min_count, sorted.\n"
          "Returns (offsets, ids, counts, passes, peak_table_bytes, strategy).",
          py::arg("offsets").noconvert(), py::arg("ids").noconvert(), py::arg("counts").noconvert(),
          py::arg("min_count"), py::arg("threads"));
    m.def("lookup_ngrams", &lookup_ngrams,
          "Count the occurrences of each distinct key of a CSR table in the segments of ids.\n"
          "Returns counts int64 [n].",
          py::arg("offsets").noconvert(), py::arg("table_ids").noconvert(), py::arg("ids").noconvert(),
          py::arg("word_starts").noconvert(), py::arg("doc_starts").noconvert(), py::arg("cross_words"),
          py::arg("threads"));
}
