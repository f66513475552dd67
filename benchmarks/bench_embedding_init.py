"""Benchmark igot.ops.embedding_init against the embedding_bag twin (the fair baseline: the same FVT
means in one vectorised torch call) and, labelled as naive user code, a per-token loop
(`for j: W[n+j] = W[pieces_j].mean(0)`).

CPU (default): the op (argument checks + the embedding_bag twin; the Triton interpreter is far too slow to
time) vs the twin alone vs the loop at 2,000 and 32,000 new tokens x H=576 (SmolLM2) and H=4096, then
igot.extend_model on SmolLM2-135M for +2,000 tokens from igot.extend_tokenizer on the HPO corpus vs the same
work in plain torch (zero-row growth, embedding_bag over the recorded pieces) and vs naive user code (HF
resize, decode and re-encode each new token, loop), and the held-out HPO bits per byte of each
initialisation before any training (vs the base tokenizer).
--gpu: the Triton kernel vs the embedding_bag twin vs the loop at 32,000 new tokens x H=4096, bf16 and
fp32, input embedding and untied head together, timed with triton.testing.do_bench (medians).

    .venv/bin/python benchmarks/bench_embedding_init.py [--quick] [--gpu] [--no-model] [--no-quality] [--threads N]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from igot.ops.embedding_init import _checked, embedding_init, embedding_init_torch

# Vocabulary sizes the new rows are appended to: SmolLM2 (H=576), Llama-2/Mistral (H=4096, CPU: two
# 4096-wide fp32 matrices of 64k rows stay under 2 GB) and Llama-3 (H=4096 on the GPU).
OLD_ROWS = {576: 49_152, 4096: 32_000}
GPU_OLD_ROWS = 128_256


def make_pieces(n_new: int, n_old: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR pieces like a +n_new extension's: 2 to 6 base pieces per new token (mean 4), ids < n_old."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(2, 7, (n_new,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    return offsets, torch.randint(0, n_old, (int(offsets[-1]),), generator=g)


NAIVE = "naive user code: per-token loop"


def naive_fvt_loop(weights: list[torch.Tensor], pieces: list[list[int]], n_old: int) -> None:
    """Naive FVT code: one Python iteration (gather, mean, row copy) per new token and matrix."""
    with torch.no_grad():
        for matrix in weights:
            for j, ids in enumerate(pieces):
                matrix[n_old + j] = matrix[ids].float().mean(0).to(matrix.dtype)


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, first-call dispatch
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_table(quick: bool) -> list[str]:
    rows = [f"| new tokens | H | old rows | {NAIVE} (ms) | embedding_bag twin (ms) | igot embedding_init (ms) | "
            "ratio twin / igot | ratio loop / igot |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    repeats = 3 if quick else 5
    for width, n_old in OLD_ROWS.items():
        for n_new in (2_000, 32_000):
            offsets, piece_ids = make_pieces(n_new, n_old)
            matrix = torch.randn(n_old + n_new, width)
            pieces = [piece_ids[offsets[j]:offsets[j + 1]].tolist() for j in range(n_new)]
            loop_s = median_seconds(lambda: naive_fvt_loop([matrix], pieces, n_old), 1 if n_new > 2_000 and quick else repeats)
            expected = matrix[n_old:].clone()
            checked = _checked(matrix, offsets, piece_ids, None, n_old)  # the twin alone: no argument checks
            twin_s = median_seconds(lambda: embedding_init_torch(*checked), repeats)
            op_s = median_seconds(lambda: embedding_init(matrix, offsets, piece_ids, out_rows=n_old), repeats)
            torch.testing.assert_close(matrix[n_old:], expected)  # the op, the twin and the loop wrote the same rows
            rows.append(f"| {n_new:,} | {width} | {n_old:,} | {loop_s * 1e3:,.1f} | {twin_s * 1e3:,.2f} | "
                        f"{op_s * 1e3:,.2f} | {twin_s / op_s:.2f}x | {loop_s / op_s:,.0f}x |")
            print(rows[-1], file=sys.stderr, flush=True)
            del matrix, checked
    return rows


def plain_torch_fvt_model(model, extended) -> None:
    """The work extend_model(init="mean") does, in plain torch: the recorded pieces as CSR, both matrices
    grown by zero rows to the same padded size (no random fill), new rows = embedding_bag means."""
    n_base = extended.tokenizer.get_vocab_size() - len(extended.new_tokens)
    n_rows = -(-extended.tokenizer.get_vocab_size() // 64) * 64
    counts = torch.tensor([len(t.pieces) for t in extended.new_tokens])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    piece_ids = torch.tensor([p for t in extended.new_tokens for p in t.pieces])
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    with torch.no_grad():
        for module in [embeddings] if head.weight is embeddings.weight else [embeddings, head]:
            grown = module.weight.new_zeros(n_rows, module.weight.shape[1])  # [n_rows, H]
            grown[: module.weight.shape[0]] = module.weight
            grown[n_base: n_base + len(counts)] = F.embedding_bag(piece_ids, grown, offsets, mode="mean",
                                                                   include_last_offset=True)
            module.weight.data = grown
    embeddings.num_embeddings = head.out_features = model.config.vocab_size = n_rows


def naive_fvt_model(model, base, new) -> None:
    """Naive user code: HF resize (random fill of the whole new matrix), then per new token decode ->
    base encode -> mean, per matrix."""
    n_base, n_new = base.get_vocab_size(), new.get_vocab_size()
    model.resize_token_embeddings(n_new, pad_to_multiple_of=64, mean_resizing=False)
    pieces = [base.encode(new.decode([i]), add_special_tokens=False).ids for i in range(n_base, n_new)]
    weights = [model.get_input_embeddings().weight]
    if model.get_output_embeddings().weight is not weights[0]:
        weights.append(model.get_output_embeddings().weight)
    naive_fvt_loop(weights, pieces, n_base)


def smollm2_extension():
    """(base Tokenizer, ExtendedTokenizer +2,000 entries from igot on the HPO train split, model loader)."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from igot.data import load_corpus, smollm2, tokenizer_path
    from igot.vocab import extend_tokenizer

    base_path = tokenizer_path("smollm2")
    extended = extend_tokenizer(base_path, load_corpus("hpo"), budget=2_000, method="igot", progress=False)
    return Tokenizer.from_file(str(base_path)), extended, lambda: AutoModelForCausalLM.from_pretrained(smollm2()).eval()


def model_table(quick: bool, base, extended, fresh_model) -> list[str]:
    from igot.model import extend_model

    n_added = len(extended.new_tokens)
    repeats = 1 if quick else 3

    def timed(fn) -> float:
        times = []
        for _ in range(repeats):
            model = fresh_model()  # loading is not timed
            start = time.perf_counter()
            fn(model)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    plain, ours = fresh_model(), fresh_model()
    plain_torch_fvt_model(plain, extended)
    extend_model(ours, base, extended, init="mean")
    # the baseline does igot's work: the same grown matrix, row for row
    torch.testing.assert_close(plain.get_input_embeddings().weight, ours.get_input_embeddings().weight, rtol=0, atol=0)
    del plain, ours
    baseline_s = timed(lambda m: plain_torch_fvt_model(m, extended))
    naive_s = timed(lambda m: naive_fvt_model(m, base, extended.tokenizer))
    rows = [f"| SmolLM2-135M +{n_added:,} tokens (CPU) | wall time (s) | ratio plain torch / this |", "|---|---:|---:|",
            f"| plain torch, same work: zero-row growth + embedding_bag over the recorded pieces (baseline) | "
            f"{baseline_s:.3f} | 1.0x |",
            f"| naive user code: resize_token_embeddings + per-token decode/encode + loop | {naive_s:.3f} | "
            f"{baseline_s / naive_s:.2f}x |"]
    for init in ("mean", "weighted", "hf"):
        seconds = timed(lambda m: extend_model(m, base, extended, init=init))
        rows.append(f"| igot extend_model init={init} | {seconds:.3f} | {baseline_s / seconds:.2f}x |")
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def heldout_bits(model, tokenizer, docs: list[str], batch_size: int = 32) -> tuple[float, int]:
    """(total NLL in bits, tokens) of each held-out doc after an <|endoftext|> (id 0) context token."""
    total_nats, n_tokens = 0.0, 0
    with torch.no_grad():
        for first in range(0, len(docs), batch_size):
            encoded = [[0] + tokenizer.encode(doc, add_special_tokens=False).ids for doc in docs[first:first + batch_size]]
            width = max(map(len, encoded))
            ids = torch.tensor([e + [0] * (width - len(e)) for e in encoded])  # [B, T]
            real = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded])  # [B, T]
            logprobs = torch.log_softmax(model(ids, attention_mask=real).logits[:, :-1].float(), dim=-1)
            target_logprobs = logprobs.gather(-1, ids[:, 1:, None])[..., 0]  # [B, T-1]
            total_nats -= float((target_logprobs * real[:, 1:]).sum())
            n_tokens += int(real[:, 1:].sum())
    return total_nats / math.log(2), n_tokens


def quality_table(quick: bool, base, extended, fresh_model) -> list[str]:
    """Held-out HPO bits per byte right after growing, before any training: how much each init keeps."""
    from igot.data import load_corpus
    from igot.model import extend_model

    docs = load_corpus("hpo", split="heldout")[: 48 if quick else 160]  # 135M forwards on a CPU: ~15 s per 32 docs
    n_bytes = sum(len(doc.encode("utf-8")) for doc in docs)
    base_bits, base_tokens = heldout_bits(fresh_model(), base, docs)
    rows = [f"| SmolLM2-135M, {len(docs)} held-out HPO docs, no training | tokens | token saving | BPB | "
            "ratio base BPB / this |", "|---|---:|---:|---:|---:|",
            f"| base tokenizer (baseline) | {base_tokens:,} | - | {base_bits / n_bytes:.4f} | 1.00 |"]
    variants = {f"+{len(extended.new_tokens):,} init={init}": (lambda m, init=init: extend_model(m, base, extended, init=init))
                for init in ("mean", "weighted", "hf")}
    variants["+2,000 random rows (resize_token_embeddings, mean_resizing=False)"] = (
        lambda m: m.resize_token_embeddings(extended.tokenizer.get_vocab_size(), mean_resizing=False))
    for name, grow in variants.items():
        model = fresh_model()
        grow(model)
        bits, tokens = heldout_bits(model, extended.tokenizer, docs)
        rows.append(f"| {name} | {tokens:,} | {1 - tokens / base_tokens:.1%} | {bits / n_bytes:.4f} | "
                    f"{base_bits / bits:.2f} |")
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def gpu_table(quick: bool, n_new: int = 32_000, width: int = 4096, n_old: int = GPU_OLD_ROWS,
              device: str = "cuda") -> list[str]:
    import triton.testing

    from igot.kernels.embedding_init import embedding_init_forward

    offsets, piece_ids = make_pieces(n_new, n_old)
    pieces = [piece_ids[offsets[j]:offsets[j + 1]].tolist() for j in range(n_new)]
    rows = [f"| dtype | path ({n_new:,} new x H={width}, emb + untied head, {n_old:,} old rows) | time (ms) | "
            "GB/s | ratio twin / path | max abs diff vs twin |", "|---|---|---:|---:|---:|---:|"]
    for dtype in (torch.bfloat16, torch.float32):
        weights = [torch.randn(n_old + n_new, width, device=device, dtype=dtype) for _ in range(2)]
        args = _checked(weights, offsets, piece_ids, None, n_old)
        embedding_init_torch(*args)
        twin_rows = [w[n_old:].clone() for w in weights]
        paths = {
            NAIVE: lambda: naive_fvt_loop(weights, pieces, n_old),
            "embedding_bag twin (baseline)": lambda: embedding_init_torch(*args),
            "Triton kernel (launch only)": lambda: embedding_init_forward(*args),
            "igot.ops.embedding_init (checks + kernel)": lambda: embedding_init(weights, offsets, piece_ids, out_rows=n_old),
        }
        moved = 2 * (piece_ids.numel() + n_new) * width * weights[0].element_size()  # bytes read + written
        timings, diffs = {}, {}
        for name, fn in paths.items():
            slow = name == NAIVE
            quantiles = triton.testing.do_bench(fn, warmup=1 if slow else 25, rep=1 if slow else (50 if quick else 200),
                                                quantiles=[0.5, 0.2, 0.8])
            timings[name] = quantiles[0]
            diffs[name] = max(float((w[n_old:].float() - t.float()).abs().max()) for w, t in zip(weights, twin_rows))
        for name, ms in timings.items():
            rows.append(f"| {str(dtype).removeprefix('torch.')} | {name} | {ms:,.3f} | {moved / ms / 1e6:,.0f} | "
                        f"{timings['embedding_bag twin (baseline)'] / ms:,.3g}x | {diffs[name]:.2e} |")
            print(rows[-1], file=sys.stderr, flush=True)
        del weights, args, twin_rows
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--gpu", action="store_true", help="time the Triton kernel on CUDA instead of the CPU tables")
    parser.add_argument("--no-model", action="store_true", help="CPU: skip the SmolLM2-135M extend_model timing")
    parser.add_argument("--no-quality", action="store_true", help="CPU: skip the held-out BPB table (135M forwards)")
    # One thread by default: on a shared, oversubscribed box two OpenMP threads made every small op of
    # the loop 20x slower (6.5 ms vs 0.28 ms per new token, load average 10 on 2 cores).
    parser.add_argument("--threads", type=int, default=1, help="CPU: torch intra-op threads (default 1)")
    args = parser.parse_args()
    command = "python benchmarks/bench_embedding_init.py " + " ".join(sys.argv[1:])
    if args.gpu:
        if not torch.cuda.is_available():
            sys.exit("--gpu needs a CUDA device (torch.cuda.is_available() is False)")
        tables = [gpu_table(args.quick)]
        where = torch.cuda.get_device_name()
    else:
        os.environ["IGOT_KERNELS"] = "torch"  # the Triton interpreter is far too slow to time on a CPU
        torch.set_num_threads(args.threads)
        tables = [cpu_table(args.quick)]
        if not args.no_model:
            smollm2 = smollm2_extension()
            tables.append(model_table(args.quick, *smollm2))
            if not args.no_quality:
                tables.append(quality_table(args.quick, *smollm2))
        where = f"CPU, {torch.get_num_threads()} threads"
    print(f"`{command.strip()}` ({where}, torch {torch.__version__})\n")
    for table in tables:
        print("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
