"""igot's training loop against a plain Hugging Face loop on SmolLM2-135M: throughput and peak memory.

    python benchmarks/bench_train.py [--quick] [--device cpu|cuda] [--steps 3]

Arms, each in a fresh process of its own (so peak memory is the arm's own), all with the same batch and
micro-batch, the same packed HPO text (igot's cached encoding of "hpo:train" with SmolLM2's tokenizer),
AdamW and gradient clipping:
- hf: `model(input_ids, labels=input_ids)` per micro-batch, loss / micro-steps, backward; the logits of
  the whole micro-batch are materialised (what users run today);
- hf+liger (CUDA only, when liger-kernel is installed): the same loop with Liger-Kernel's fused linear CE;
- igot: `igot.train.train` with one token-level stage (fused loss over the head, no logits);
- igot, gradient_checkpointing: the token-level run with `[train] gradient_checkpointing = true` (each
  decoder block recomputed in the backward: activations of the block boundaries only);
- igot patch K=4: the same with patch_size = 4 (a quarter of the positions per token).
Throughput is the median of the steps after the first; peak memory is the process's peak RSS on CPU
(model, optimizer and data included) or torch.cuda.max_memory_allocated on a GPU. On CUDA the table adds
model FLOPs utilisation against the bf16 dense peak given by --peak-tflops.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEPARATOR = "<|endoftext|>"


def _peak(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _source():
    """The packed HPO stream, encoded once into igot's cache (shared by every arm)."""
    from igot.corpus import load_tokenizer
    from igot.data import smollm2
    from igot.train.data import SourceStream, encode_source

    tokenizer = load_tokenizer(smollm2())
    source = encode_source("domain", ["hpo:train"], tokenizer, tokenizer.to_str(), progress=False)
    return SourceStream(source, tokenizer.token_to_id(SEPARATOR), seed=0)


def run_hf(args: argparse.Namespace, liger: bool) -> dict:
    """The plain loop: model(input_ids, labels=...), gradient accumulation, AdamW, clipping."""
    import torch
    from transformers import AutoModelForCausalLM

    from igot.data import smollm2

    stream = _source()
    model = AutoModelForCausalLM.from_pretrained(smollm2(), dtype=torch.float32).to(args.device)
    if liger:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(model=model, fused_linear_cross_entropy=True, cross_entropy=False, rope=False,
                                    rms_norm=False, swiglu=False)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=args.device.startswith("cuda"))
    micro_seqs = args.micro_batch_tokens // args.seq_len
    n_micro = args.batch_tokens // args.micro_batch_tokens
    position, times = 0, []
    for _ in range(args.steps):
        start = time.perf_counter()
        for _ in range(n_micro):
            rows = []
            for _ in range(micro_seqs):
                rows.append(stream.window(position, args.seq_len + 1)[0])
                position += args.seq_len
            batch = torch.tensor(rows).to(args.device)  # [B, T + 1]; labels are shifted inside the model
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.startswith("cuda")):
                loss = model(input_ids=batch, labels=batch).loss / n_micro
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times[1:]), "tokens_per_s": args.batch_tokens / statistics.median(times[1:]),
            "peak_mem_bytes": _peak(args.device)}


def run_igot(args: argparse.Namespace, patch_size: int, checkpointing: bool = False) -> dict:
    """igot.train.train with one stage of `steps` steps at this patch size (blocks recomputed if checkpointing)."""
    from igot.data import smollm2
    from igot.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig.from_dict({
            "model": {"path": str(smollm2())},
            "data": {"seq_len": args.seq_len // patch_size if patch_size > 1 else args.seq_len, "separator": SEPARATOR,
                     "sources": {"domain": ["hpo:train"]}},
            "train": {"out": f"{tmp}/run", "batch_tokens": args.batch_tokens, "micro_batch_tokens": args.micro_batch_tokens,
                      "lr": 3e-4, "weight_decay": 0.1, "grad_clip": 1.0, "device": args.device,
                      "gradient_checkpointing": checkpointing},
            "stage": [{"tokens": args.batch_tokens * args.steps, "weights": {"domain": 1.0}, "patch_size": patch_size}]})
        train(cfg, progress=False)
        lines = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r.get("event") is None]
    rates = [r["tokens_per_s"] for r in steps[1:]]
    flops_per_step = steps[-1]["flops"] / len(steps)
    return {"step_s": args.batch_tokens / statistics.median(rates), "tokens_per_s": statistics.median(rates),
            "peak_mem_bytes": max(r["peak_mem_bytes"] for r in lines), "flops_per_step": flops_per_step}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batch, two measured steps")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (a patch stage keeps the "
                        "same tokens per sequence: seq_len / K patches)")
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--micro-batch-tokens", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=4, help="steps per arm; the first is not timed")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak of the GPU (H100/H200 SXM)")
    parser.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # internal: run one arm, print JSON
    args = parser.parse_args()
    if args.quick:
        args.seq_len, args.batch_tokens, args.micro_batch_tokens, args.steps = 256, 2048, 1024, 3

    if args.arm is not None:
        kind, _, value = args.arm.partition(":")
        patch, _, option = value.partition(":")
        result = (run_hf(args, liger=value == "liger") if kind == "hf" else
                  run_igot(args, int(patch), checkpointing=option == "checkpointing"))
        print("RESULT " + json.dumps(result))
        return 0

    _source()  # encode once, outside every arm's timing and memory
    arms = [("hf", "plain HF loop, model(labels=...)"), ("igot:1", "igot train, token-level"),
            ("igot:1:checkpointing", "igot train, token-level, gradient_checkpointing"),
            ("igot:4", "igot train, patch K=4")]
    if args.device.startswith("cuda"):
        try:
            import liger_kernel  # noqa: F401

            arms.insert(1, ("hf:liger", "HF loop + Liger fused linear CE"))
        except ImportError:
            print("liger-kernel is not installed: no hf+liger row", file=sys.stderr)
    results = {}
    base = [sys.executable, __file__, "--device", args.device, "--seq-len", str(args.seq_len), "--batch-tokens",
            str(args.batch_tokens), "--micro-batch-tokens", str(args.micro_batch_tokens), "--steps", str(args.steps)]
    for arm, label in arms:
        proc = subprocess.run(base + ["--arm", arm], capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{label}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        results[arm] = (label, json.loads(line.removeprefix("RESULT ")))
        print(f"{label}: {results[arm][1]}", file=sys.stderr, flush=True)

    hf = results["hf"][1]
    print(f"\nSmolLM2-135M on {args.device}: batch {args.batch_tokens:,} tokens, micro-batch {args.micro_batch_tokens:,}, "
          f"seq_len {args.seq_len}, {args.steps} steps per arm (median of the last {args.steps - 1})\n")
    header = "| loop | tokens/s | s/step | peak memory | throughput vs HF | memory vs HF |"
    if args.device.startswith("cuda"):
        header += " MFU |"
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    for arm, (label, r) in results.items():
        row = (f"| {label} | {r['tokens_per_s']:,.0f} | {r['step_s']:.2f} | {r['peak_mem_bytes'] / 2**30:.2f} GiB | "
               f"{r['tokens_per_s'] / hf['tokens_per_s']:.2f}x | {r['peak_mem_bytes'] / hf['peak_mem_bytes']:.2f}x |")
        if args.device.startswith("cuda"):
            mfu = r.get("flops_per_step", 0) / r["step_s"] / (args.peak_tflops * 1e12)
            row += f" {mfu:.1%} |" if mfu else " |"
        print(row)
    patch, token = results["igot:4"][1], results["igot:1"][1]
    print(f"\npatch stage (K=4) tokens/s / token stage tokens/s: {patch['tokens_per_s'] / token['tokens_per_s']:.2f}x "
          "(goal >= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
