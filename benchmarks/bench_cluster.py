"""igot.cluster against the one-process count: throughput with 1 and 2 local workers, merge cost, start-up.

Corpus: the train splits of the fetched corpora (HPO, GO, SOTU, Moby-Dick, CPython stdlib, Python docs), in
that order until --max-mb of text, written as one .jsonl file per corpus; files larger than --shard-mb are cut
into shards. Each repeat runs, in turn: the one-process path of `igot count` (encode_corpus with all cores,
then count_ngrams, max_n 8, min_count 2), and cluster.count_ngrams on a local Dask cluster of 1 worker and
of 2 workers (both started once, before the repeats, and kept; their start-up is timed on its own). Every
cluster table is checked equal to the one-process table. The merge cost is read from Dask's task stream
(compute seconds of the merge tasks against the shard tasks) and, as a one-process figure, NgramTable.merge
of the same shard tables.

--engines also starts Dask and Ray (when installed) with 2 local workers each, in fresh interpreters, and
reports import and start-up time, the memory of the processes each leaves running, a 200 MB numpy result
fetched back, and a task whose worker is SIGKILLed on the first attempt (seconds until its retried result).

Usage: python benchmarks/bench_cluster.py [--quick] [--repeats N] [--max-mb MB] [--shard-mb MB] [--engines]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CORPORA = ("hpo", "go", "sotu", "moby_dick", "pystdlib", "pydoc")


def write_corpus(folder: Path, max_bytes: int) -> list[Path]:
    """One .jsonl per corpus, in CORPORA order, until max_bytes of text."""
    from igot.data import load_corpus

    files, total = [], 0
    for name in CORPORA:
        if total >= max_bytes:
            break
        path = folder / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for doc in load_corpus(name, "train"):
                if total >= max_bytes:
                    break
                f.write(json.dumps({"text": doc}) + "\n")
                total += len(doc.encode("utf-8"))
        files.append(path)
    return files


def one_process(files: list[Path], tokenizer) -> tuple:
    """What `igot count` does without --cluster: read, encode with all cores, count."""
    from igot.corpus import encode_corpus, read_documents
    from igot.counting import count_ngrams

    corpus = encode_corpus(tokenizer, read_documents(files), progress=False)
    return corpus, count_ngrams(corpus.ids, corpus.word_starts, corpus.doc_starts, max_n=8, min_count=2)


def same(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("offsets", "ids", "counts"))


def stream_seconds(records: list[dict]) -> dict[str, float]:
    """Compute seconds of shard and merge tasks, and transfer seconds, from a Dask task stream."""
    out = {"shard": 0.0, "merge": 0.0, "transfer": 0.0}
    for record in records:
        key = str(record["key"])
        kind = "shard" if "igot-shard-" in key else "merge" if "igot-merge-" in key else None
        for ss in record["startstops"]:
            if ss["action"] == "compute" and kind:
                out[kind] += ss["stop"] - ss["start"]
            elif ss["action"] == "transfer":
                out["transfer"] += ss["stop"] - ss["start"]
    return out


def worker_memory_mib(client) -> float:
    """Mean unique set size (USS) of the worker processes, MiB."""
    import psutil

    uss = client.run(lambda: psutil.Process().memory_full_info().uss)
    return sum(uss.values()) / len(uss) / 2**20


def bench_counts(files, shard_bytes, repeats) -> None:
    from distributed import get_task_stream

    from igot import cluster
    from igot.counting import NgramTable, count_ngrams
    from igot.data import smollm2

    tok = smollm2()
    shards = cluster.plan_shards(files, shard_bytes=shard_bytes)
    start = time.perf_counter()
    corpus, want = one_process(files, tok)
    print(f"corpus: {len(files)} files, {sum(f.stat().st_size for f in files) / 2**20:.1f} MiB, {corpus.n_docs:,} "
          f"documents, {corpus.n_tokens:,} tokens, {len(shards)} shards; table {len(want):,} n-grams "
          f"(first one-process run {time.perf_counter() - start:.1f} s)")

    startup, clients = {}, {}
    stack = []
    for n in (1, 2):
        start = time.perf_counter()
        ctx = cluster.connect(f"local:{n}")
        clients[n] = ctx.__enter__()
        clients[n].run(lambda: __import__("igot.cluster"))  # workers import igot once, as a first task would
        startup[n] = time.perf_counter() - start
        stack.append(ctx)
    try:
        times: dict[str, list[float]] = {"one process": [], "cluster, 1 worker": [], "cluster, 2 workers": []}
        streams = {1: [], 2: []}
        for _ in range(repeats):
            start = time.perf_counter()
            one_process(files, tok)
            times["one process"].append(time.perf_counter() - start)
            for n in (1, 2):
                with get_task_stream(clients[n]) as ts:
                    start = time.perf_counter()
                    got = cluster.count_ngrams(files, tok, cluster=clients[n], max_n=8, min_count=2,
                                               shard_bytes=shard_bytes, progress=False)
                    times[f"cluster, {n} worker{'s' if n > 1 else ''}"].append(time.perf_counter() - start)
                if not same(got, want):
                    raise SystemExit(f"cluster of {n} worker(s) gave a different table")
                streams[n].append(stream_seconds(ts.data))
        memory = {n: worker_memory_mib(clients[n]) for n in (1, 2)}
    finally:
        for ctx in reversed(stack):
            ctx.__exit__(None, None, None)

    base = statistics.median(times["one process"])
    print("\n| path | median s | min-max s | tokens/s | speed vs one process | start-up s | worker USS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, ts_ in times.items():
        med = statistics.median(ts_)
        n = 2 if "2" in label else 1 if "1" in label else None
        extra = f"{startup[n]:.2f} | {memory[n]:.0f}" if n else "- | -"
        print(f"| {label} | {med:.2f} | {min(ts_):.2f}-{max(ts_):.2f} | {corpus.n_tokens / med:,.0f} | "
              f"{base / med:.2f}x | {extra} |")

    print("\nMerge cost (median over repeats; compute seconds summed over tasks, from Dask's task stream):\n")
    print("| cluster | shard tasks s | merge tasks s | merge share | transfers s |")
    print("|---|---:|---:|---:|---:|")
    for n in (1, 2):
        s = {k: statistics.median(r[k] for r in streams[n]) for k in ("shard", "merge", "transfer")}
        print(f"| {n} worker(s) | {s['shard']:.2f} | {s['merge']:.3f} | {s['merge'] / (s['shard'] + s['merge']):.1%} "
              f"| {s['transfer']:.3f} |")

    from igot.corpus import encode_corpus, read_documents

    parts = []
    for shard in shards:  # the shard tables, counted here once, to time the merge alone in one process
        docs = list(cluster._shard_documents(shard, "file", "text", "strict", cluster.ReadStats()))
        c = encode_corpus(tok, docs, progress=False)
        parts.append(count_ngrams(c.ids, c.word_starts, c.doc_starts, max_n=8, min_count=1))
    merge_s = []
    for _ in range(max(repeats, 3)):
        start = time.perf_counter()
        merged = NgramTable.merge(*parts, min_count=2)
        merge_s.append(time.perf_counter() - start)
    assert same(merged, want)
    print(f"\nNgramTable.merge of the {len(parts)} shard tables ({sum(len(p) for p in parts):,} rows) in one "
          f"process: {statistics.median(merge_s) * 1e3:.1f} ms median, {statistics.median(merge_s) / base:.2%} of "
          "the one-process count")


_PROBE = r'''
import os, sys, time, signal, numpy as np, psutil

def big(n):
    return np.arange(n, dtype=np.int64)

def die_once(marker):
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return "retried"
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)

def children_uss():
    total = 0
    for p in psutil.Process().children(recursive=True):
        try:
            total += p.memory_full_info().uss
        except psutil.Error:
            pass
    return total / 2**20

def main(engine, marker):
    t0 = time.perf_counter()
    if engine == "dask":
        import logging
        from distributed import Client, LocalCluster
        t_import = time.perf_counter() - t0
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                               scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, silence_logs=logging.CRITICAL)
        client = Client(cluster)
        client.wait_for_workers(2)
        run = lambda f, *a: client.submit(f, *a, pure=False).result()
    else:
        import ray
        t_import = time.perf_counter() - t0
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        run = lambda f, *a: ray.get(ray.remote(max_retries=3)(f).remote(*a))
    run(big, 1)
    run(big, 1)
    t_start = time.perf_counter() - t0
    t = time.perf_counter(); result = run(big, 25_000_000); t_big = time.perf_counter() - t
    assert result[-1] == 25_000_000 - 1
    del result
    t = time.perf_counter(); assert run(die_once, marker) == "retried"; t_retry = time.perf_counter() - t
    print({"import_s": t_import, "start_s": t_start, "result_200mb_s": t_big, "kill_retry_s": t_retry,
           "processes_mib": children_uss()})

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
'''


def bench_engines(repeats: int) -> None:
    import importlib.util

    print("\nEngines: 2 local workers each, fresh interpreter per run (median over runs):\n")
    print("| engine | version | import s | start-up s | 200 MB result s | retry after SIGKILL s | "
          "processes MiB (USS) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.py"
        probe.write_text(_PROBE)
        for engine, module in (("dask", "distributed"), ("ray", "ray")):
            if importlib.util.find_spec(module) is None:
                print(f"| {engine} | not installed | | | | | |")
                continue
            from importlib.metadata import version

            runs = []
            for i in range(repeats):
                marker = Path(tmp) / f"{engine}-{i}.marker"
                done = subprocess.run([sys.executable, str(probe), engine, str(marker)], capture_output=True,
                                      text=True, timeout=600, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
                lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
                if done.returncode != 0 or not lines:
                    raise SystemExit(f"{engine} probe failed:\n{done.stderr[-3000:]}")
                runs.append(eval(lines[-1]))  # a dict of floats printed by our own probe
            m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"| {engine} | {version(module)} | {m['import_s']:.2f} | {m['start_s']:.2f} | "
                  f"{m['result_200mb_s']:.2f} | {m['kill_retry_s']:.2f} | {m['processes_mib']:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 MiB of text, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-mb", type=float, default=16.0, help="MiB of text")
    parser.add_argument("--shard-mb", type=float, default=2.0, help="cut files larger than this")
    parser.add_argument("--engines", action="store_true", help="also compare Dask and Ray (start-up, memory, ...)")
    args = parser.parse_args()
    if args.quick:
        args.max_mb, args.repeats = 4.0, 1
    print(f"python benchmarks/bench_cluster.py {' '.join(sys.argv[1:])}  (cpus {os.cpu_count()}, load average "
          f"{os.getloadavg()[0]:.1f} at start)")
    with tempfile.TemporaryDirectory() as tmp:
        files = write_corpus(Path(tmp), int(args.max_mb * 2**20))
        bench_counts(files, int(args.shard_mb * 2**20), args.repeats)
    if args.engines:
        bench_engines(args.repeats)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
