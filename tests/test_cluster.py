"""igot.cluster on a local Dask cluster of 2 worker processes against the one-process count of the same files."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from igot import counting
from igot.corpus import encode_corpus, read_documents
from igot.counting import NgramTable, WordTable
from igot.data import load_corpus, smollm2

cluster = pytest.importorskip("igot.cluster")  # the module itself needs no Dask; the tests below do
pytest.importorskip("distributed", reason="pip install 'igot[cluster]'")
from distributed.diagnostics.plugin import WorkerPlugin  # noqa: E402

N_HPO = 12_000  # HPO definitions in one .jsonl file (about 1.7 MB), cut into byte ranges
SHARD_BYTES = 400_000


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """Real corpus slices as files: HPO as JSON lines, SOTU addresses one per .txt file and as one blank-line file."""
    folder = tmp_path_factory.mktemp("corpus")
    with open(folder / "hpo.jsonl", "w", encoding="utf-8") as f:
        for doc in load_corpus("hpo", "train")[:N_HPO]:
            f.write(json.dumps({"text": doc}) + "\n")
    sotu = load_corpus("sotu", "train")[:8]
    (folder / "sotu").mkdir()
    for i, doc in enumerate(sotu):
        (folder / "sotu" / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    # paragraphs, with whitespace-only separator lines and CRLF endings in places: what doc_mode cuts on
    blocks = [p for doc in sotu for p in doc.split("\n\n")]
    text = "".join(block + ("\n \t\n" if i % 3 else "\r\n\r\n\n") for i, block in enumerate(blocks))
    (folder / "paragraphs.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def client():
    with cluster.connect("local:2") as c:
        yield c


def one_process(sources, doc_mode: str = "file"):
    return encode_corpus(smollm2(), read_documents(sources, doc_mode=doc_mode), progress=False)


def assert_same_table(got, want) -> None:
    assert type(got) is type(want)
    for name in ("offsets", "ids", "counts"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        assert getattr(got, name).dtype == getattr(want, name).dtype


@pytest.mark.parametrize("doc_mode", ["line", "blank_line"])
def test_shards_cut_between_documents(corpus_dir, doc_mode):
    sources = [corpus_dir / "hpo.jsonl", corpus_dir / "paragraphs.txt"]
    shards = cluster.plan_shards(sources, doc_mode=doc_mode, shard_bytes=50_000)
    assert {s.path for s in shards if s.stop is not None} == set(map(str, sources))  # both files are cut
    assert len(shards) > 30
    docs = []
    for shard in shards:
        docs += list(cluster._shard_documents(shard, doc_mode, "text", "strict", cluster.ReadStats()))
    assert docs == list(read_documents(sources, doc_mode=doc_mode))


def test_count_ngrams_equals_one_process(corpus_dir, client):
    sources = [corpus_dir / "hpo.jsonl", corpus_dir / "sotu"]
    assert len(cluster.plan_shards(sources, shard_bytes=SHARD_BYTES)) == 5 + 8
    corpus = one_process(sources)
    for options in ({"max_n": 8, "min_count": 2}, {"max_n": 5, "min_count": 3, "cross_words": True}):
        want = counting.count_ngrams(corpus.ids, corpus.word_starts, corpus.doc_starts, **options)
        # fan_in=2: 13 shards merge in four levels, and min_count must wait for the last one
        got = cluster.count_ngrams(sources, smollm2(), cluster=client, shard_bytes=SHARD_BYTES, fan_in=2,
                                   progress=False, **options)
        assert_same_table(got, want)
        assert (got.max_n, got.min_count, got.cross_words) == (want.max_n, want.min_count, want.cross_words)


def test_count_words_and_lookup_equal_one_process(corpus_dir, client):
    domain, general = corpus_dir / "hpo.jsonl", [corpus_dir / "paragraphs.txt", corpus_dir / "hpo.jsonl"]
    d, g = one_process(domain), one_process(general, "blank_line")
    words = cluster.count_words(domain, smollm2(), cluster=client, shard_bytes=SHARD_BYTES, progress=False)
    assert_same_table(words, counting.count_words(d.ids, d.word_starts, d.doc_starts))
    table = counting.count_ngrams(d.ids, d.word_starts, d.doc_starts, max_n=6, min_count=2)
    got = cluster.lookup_ngrams(table, general, smollm2(), cluster=client, doc_mode="blank_line",
                                shard_bytes=100_000, progress=False)
    want = table.lookup(g.ids, g.word_starts, g.doc_starts)
    assert want.sum() > 50_000
    np.testing.assert_array_equal(got, want)


def test_word_table_file_round_trip_and_kinds(tmp_path, corpus_dir):
    d = one_process(corpus_dir / "sotu")
    words = counting.count_words(d.ids, d.word_starts, d.doc_starts)
    halves = np.flatnonzero(d.doc_starts)[4]
    parts = [counting.count_words(d.ids[a:b], d.word_starts[a:b], d.doc_starts[a:b])
             for a, b in ((0, halves), (halves, None))]
    assert_same_table(WordTable.merge(*parts), words)
    assert_same_table(WordTable.load(words.save(tmp_path / "w.igc")), words)
    ngrams = counting.count_ngrams(d.ids, d.word_starts, d.doc_starts, max_n=4)
    ngrams.save(tmp_path / "n.igc")
    with pytest.raises(ValueError, match="word table: read it with WordTable.load"):
        NgramTable.load(tmp_path / "w.igc")
    with pytest.raises(ValueError, match="n-gram table, not a word table"):
        WordTable.load(tmp_path / "n.igc")


class _KillOnce(WorkerPlugin):
    """Worker plugin: SIGKILL the worker 0.2 s after the first shard task starts, if it is still running then.

    A marker file created with O_EXCL makes it happen once in the whole cluster; it records the outcome.
    """

    name = "igot-test-kill-once"

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def setup(self, worker) -> None:
        self.worker = worker

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish != "executing" or not str(key).startswith("igot-shard-"):
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        threading.Timer(0.2, self._kill, (fd, key)).start()

    def _kill(self, fd: int, key) -> None:
        task = self.worker.state.tasks.get(key)
        running = task is not None and task.state == "executing"
        os.write(fd, f"{'killed' if running else 'finished first'} {key}".encode())
        os.close(fd)
        if running:
            os.kill(os.getpid(), signal.SIGKILL)


def test_worker_killed_mid_shard_is_retried(corpus_dir, client, tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # spawned workers cannot import this file
    marker = tmp_path / "killed"
    client.register_plugin(_KillOnce(str(marker)))
    try:
        sources = [corpus_dir / "hpo.jsonl"]
        got = cluster.count_ngrams(sources, smollm2(), cluster=client, min_count=2, shard_bytes=800_000,
                                   progress=False)
    finally:
        client.unregister_worker_plugin(_KillOnce.name)
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert marker.read_text().startswith("killed igot-shard-")  # the worker died while counting a shard
    corpus = one_process(sources)
    assert_same_table(got, counting.count_ngrams(corpus.ids, corpus.word_starts, corpus.doc_starts, min_count=2))
    client.wait_for_workers(2, timeout=60)


def test_failing_shard_is_named_and_nothing_written(corpus_dir, client, tmp_path, capsys):
    from igot.cli import main

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"valid text, then a byte that is not UTF-8: \xff\n")
    sources = [corpus_dir / "sotu", bad]
    with pytest.raises(cluster.ShardError) as caught:
        cluster.count_ngrams(sources, smollm2(), cluster=client, retries=1, progress=False)
    assert [str(s) for s, _ in caught.value.failures] == [str(bad)]
    assert isinstance(caught.value.failures[0][1], UnicodeDecodeError)

    out = tmp_path / "out" / "table.igc"
    out.parent.mkdir()
    code = main(["count", str(corpus_dir / "sotu"), str(bad), "--tokenizer", str(smollm2()), "--out", str(out),
                 "--cluster", client.scheduler.address, "--no-progress"])  # a running scheduler's address
    assert code == 1
    assert str(bad) in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []  # no table, no temporary file
    assert client.run(lambda: 1)  # the cluster is still usable: nothing was killed for it


def test_replaced_utf8_is_counted_and_warned_per_file(corpus_dir, client, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 and \xff\xfe twice\n\nthird \xc3 here\n")
    sources = [corpus_dir / "sotu", bad]
    with pytest.warns(UnicodeWarning, match=f"{bad}: replaced 4 invalid"):
        got = cluster.count_words(sources, smollm2(), cluster=client, doc_mode="blank_line", errors="replace",
                                  progress=False)
    with pytest.warns(UnicodeWarning, match=f"{bad}: replaced 4 invalid"):  # what one process says too
        docs = list(read_documents(sources, doc_mode="blank_line", errors="replace"))
    want = encode_corpus(smollm2(), docs, progress=False)
    assert_same_table(got, counting.count_words(want.ids, want.word_starts, want.doc_starts))


def test_cli_count_on_cluster_writes_the_same_file(corpus_dir, client, tmp_path):
    from igot.cli import main

    sources = [str(corpus_dir / "hpo.jsonl"), str(corpus_dir / "sotu")]
    common = ["--tokenizer", str(smollm2()), "--max-n", "6", "--no-progress"]
    for extra in ([], ["--words"]):
        assert main(["count", *sources, *common, *extra, "--out", str(tmp_path / "one.igc")]) == 0
        assert main(["count", *sources, *common, *extra, "--out", str(tmp_path / "many.igc"), "--shard-size",
                     "300K", "--cluster", client.scheduler.address]) == 0
        assert (tmp_path / "one.igc").read_bytes() == (tmp_path / "many.igc").read_bytes()


@pytest.mark.parametrize("tokenizer", ["smollm2", "mistral"])  # Mistral: words with byte-fallback ids
def test_extend_from_cluster_word_tables_equals_extend_from_text(corpus_dir, client, tmp_path, tokenizer):
    from igot.data import tokenizer_path
    from igot.vocab import extend_tokenizer

    base = tokenizer_path(tokenizer).parent
    domain = tmp_path / "domain.jsonl"
    with open(domain, "w", encoding="utf-8") as f:
        rare = "temperature 37 \u00b0C, \u2265 2 \u03bcm, na\u00efve \U0001f9ec"  # byte fallback in Mistral
        for doc in load_corpus("hpo", "train")[:3000] + [rare]:
            f.write(json.dumps({"text": doc}) + "\n")
    general, heldout = corpus_dir / "sotu", tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"text": d}) + "\n" for d in load_corpus("hpo", "heldout")[:500]))
    options = {"budget": 150, "tau": "auto", "progress": False}
    from_text = extend_tokenizer(base, [domain], [general], heldout=[heldout], **options)

    tables = {}
    for name, source in (("domain", domain), ("general", general), ("heldout", heldout)):
        words = cluster.count_words(source, base, cluster=client, shard_bytes=100_000, progress=False)
        tables[name] = WordTable.load(words.save(tmp_path / f"{name}.igc"))
    if tokenizer == "mistral":  # the table path has to split words around byte-fallback ids itself
        from igot._vocab_check import count_corpus
        from igot._vocab_models import unmergeable_ids
        from igot.vocab import _table_words

        tok_json = json.loads(from_text.base.to_str())
        assert np.isin(tables["domain"].ids, unmergeable_ids(tok_json)).any()
        want = count_corpus(from_text.base, list(read_documents(domain)), tok_json, progress=False)
        got = _table_words(tables["domain"], tok_json, "domain")
        assert_same_table(got.select, want.select)  # what the selection reads
        assert_same_table(got.words, want.words)
        assert got.n_tokens == want.n_tokens and len(want.whole_docs) == 0
    from_tables = extend_tokenizer(base, tables["domain"], tables["general"], heldout=tables["heldout"], **options)

    assert from_tables.tokenizer.to_str() == from_text.tokenizer.to_str()
    assert [(t.id, t.token) for t in from_tables.new_tokens] == [(t.id, t.token) for t in from_text.new_tokens]
    assert len(from_text.new_tokens) > 20
    np.testing.assert_array_equal(from_tables.selection.curve, from_text.selection.curve)
    for key in ("tokens", "tau", "checked", "entries_added"):
        assert from_tables.report[key] == from_text.report[key], key
    assert from_tables.report["word_tables"] == ["domain", "general", "heldout"]


def test_extend_refuses_tables_it_cannot_check(corpus_dir):
    from igot.vocab import extend_tokenizer

    sotu = one_process(corpus_dir / "sotu")
    words = counting.count_words(sotu.ids, sotu.word_starts, sotu.doc_starts)
    with pytest.raises(ValueError, match="needs held-out domain text"):
        extend_tokenizer(smollm2(), words, tau="auto", progress=False)
    with pytest.raises(ValueError, match="pass texts, not word tables"):
        extend_tokenizer(smollm2(), words, method="added_tokens", progress=False)
    shuffled = WordTable(words.offsets, (words.ids + 7).astype(np.uint32), words.counts)  # another tokenizer's ids
    with pytest.raises(ValueError, match="counted with another tokenizer"):
        extend_tokenizer(smollm2(), shuffled, budget=20, progress=False)
