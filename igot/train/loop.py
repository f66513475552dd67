"""`igot train`: continued pretraining in one loop that reads top to bottom (nanoGPT's habit).

    result = igot.train.train(igot.train.TrainConfig.from_toml("run.toml"))
    igot train --config run.toml [--resume] [--set train.lr=1e-4 ...]
    torchrun --nproc_per_node 2 $(which igot) train --config run.toml    # DDP: gloo on CPU, nccl on GPU

A run is a list of stages, each a pass of the same loop with its own source weights, patch size and
length. Consecutive stages with the same patch size share one optimizer and one LR schedule; a change of
patch size starts both afresh with the weights carried over (arXiv 2407.12665's recipe). One step:
evaluate and checkpoint when due, set the LR, draw the step's sequences (every rank draws the same global
list and keeps its own share), run the micro-batches (loss = fused linear CE over the head, summed, divided
by the target tokens of the whole step over all ranks), clip, step, log one metrics line.

Files in train.out: config.toml (the resolved config), metrics.jsonl (one JSON object per line: a "start"
line, one per step, and "eval" lines with heldout_bpb), checkpoints/step_<N>/, curriculum/ (cached
perplexity scores) and final/ (a Hugging Face folder with model and tokenizer).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
import zlib
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import replace_folder
from ..metrics import bits_per_byte, sequence_nll
from .checkpoint import latest_checkpoint, load_checkpoint, remove_partial, save_checkpoint
from .config import TrainConfig, reweight_function
from .data import MixtureSampler, SamplerState, Source, SourceStream, encode_source, heldout_texts, ppl_buckets
from .model import (BodyFreeze, CausalLMLoss, flops_per_position, load_model, load_run_tokenizer,
                    parameter_counts, separator_id)

IGNORE_INDEX = -100


@dataclass
class TrainResult:
    """What a finished run produced."""

    out: Path  # the run folder
    final: Path  # the Hugging Face folder of the trained model and its tokenizer
    steps: int  # optimizer steps
    tokens: int  # input tokens consumed
    bytes: int  # UTF-8 bytes of those tokens
    flops: int  # training FLOPs (DESIGN.md formula)
    wall_s: float  # seconds, all sessions of the run together
    heldout_bpb: dict[str, float]  # the last evaluation


@dataclass(frozen=True)
class StagePlan:
    """A stage's arithmetic, fixed before the first step."""

    index: int
    first_step: int  # global step at which it starts
    steps: int
    patch_size: int
    sequences: int  # per optimizer step, all ranks
    micro_sequences: int  # per micro-batch
    micro_steps: int  # micro-batches per rank per step
    schedule_start: int  # global step at which its LR schedule (and optimizer) started
    schedule_steps: int  # length of that schedule: its stages with the same patch size, back to back


@dataclass
class _Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int
    world: int
    device: torch.device

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()


def _setup_distributed(device_name: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda and device_name in ("auto", "cuda") else
                          device_name if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        # rank 0 encodes new sources while the others wait: allow more than the default 10-30 minutes
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2))
    return _Dist(int(os.environ.get("RANK", "0")), world, device)


def _check_out(cfg: TrainConfig, resume: bool) -> None:
    """Refuse to overwrite a run, and a resume whose config differs from the run's (before any work)."""
    out = Path(cfg.train.out)
    config_file = out / "config.toml"
    if not resume and any((out / name).exists() for name in ("config.toml", "metrics.jsonl", "checkpoints", "final")):
        raise FileExistsError(f"train.out={str(out)!r} already holds a run; pass --resume to continue it, or set "
                              "another train.out")
    if resume and config_file.is_file():
        changed = _changed_keys(TrainConfig.from_toml(config_file).to_dict(), cfg.to_dict())
        if changed:
            raise ValueError(f"--resume with a config that differs from {config_file} in {', '.join(changed)}; "
                             "resume with the same config, or start a new run in another train.out")


def _prepare_out(cfg: TrainConfig, resume: bool, dist: _Dist) -> Path | None:
    """Write config.toml, clear what a killed run left half-done; return the checkpoint to resume from."""
    out = Path(cfg.train.out)
    checkpoints = out / "checkpoints"
    checkpoint = latest_checkpoint(checkpoints) if resume else None
    dist.barrier()  # every rank has chosen the checkpoint before rank 0 tidies the folder
    if dist.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        remove_partial(checkpoints)
        _write_atomic(out / "config.toml", cfg.to_toml())
        if checkpoint is None:
            (out / "metrics.jsonl").unlink(missing_ok=True)
    dist.barrier()
    return checkpoint


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [k for i, (a, b) in enumerate(zip(old, new)) for k in _changed_keys(a, b, f"{prefix}{i}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _plan_stages(cfg: TrainConfig, sources: dict[str, Source], world: int) -> list[StagePlan]:
    """Steps and batch shapes of every stage; ValueError when the batch does not split over the ranks."""
    train, seq_len = cfg.train, cfg.data.seq_len
    if train.batch_tokens % (train.micro_batch_tokens * world):
        raise ValueError(f"train.batch_tokens={train.batch_tokens} is not divisible by train.micro_batch_tokens x "
                         f"ranks = {train.micro_batch_tokens} x {world}; change one of them")
    plans: list[StagePlan] = []
    step = 0
    for index, stage in enumerate(cfg.stages):
        sequence_tokens = seq_len * stage.patch_size
        if stage.tokens is not None:
            steps = math.ceil(stage.tokens / train.batch_tokens)
        else:  # bytes: expected bytes per stream token of the mixture (separators carry none)
            total = sum(stage.weights.values())
            bytes_per_token = sum(w / total * sources[name].n_bytes / (sources[name].n_tokens + sources[name].n_docs)
                                  for name, w in stage.weights.items())
            steps = math.ceil(stage.bytes / (train.batch_tokens * bytes_per_token))
        continues = bool(plans) and plans[-1].patch_size == stage.patch_size
        plans.append(StagePlan(
            index=index, first_step=step, steps=steps, patch_size=stage.patch_size,
            sequences=train.batch_tokens // sequence_tokens,
            micro_sequences=train.micro_batch_tokens // sequence_tokens,
            micro_steps=train.batch_tokens // (train.micro_batch_tokens * world),
            schedule_start=plans[-1].schedule_start if continues else step, schedule_steps=0))
        step += steps
    # each schedule spans its run of stages with one patch size
    return [StagePlan(**{**p.__dict__, "schedule_steps": sum(q.steps for q in plans if q.schedule_start == p.schedule_start)})
            for p in plans]


def _lr_at(cfg: TrainConfig, plan: StagePlan, step: int) -> float:
    """Warmup, then constant / cosine / WSD, over the schedule that `plan` belongs to."""
    t, total = step - plan.schedule_start, plan.schedule_steps
    peak, low = cfg.train.lr, cfg.train.lr * cfg.train.min_lr_ratio
    warmup = min(cfg.train.warmup_steps, total)
    if t < warmup:
        return peak * (t + 1) / warmup
    if cfg.train.schedule == "constant":
        return peak
    # both shapes reach `low` one step after the last, so the last step still learns (nanoGPT's convention)
    if cfg.train.schedule == "cosine":
        progress = (t - warmup) / max(total - warmup, 1)
        return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * progress))
    decay = round(cfg.train.decay_fraction * total)  # wsd: stable, then linear decay over the last steps
    start = total - decay
    return peak if t <= start else peak - (peak - low) * (t - start) / decay


def _optimizer(module: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (nanoGPT's rule: not on norms and biases)."""
    params = list(module.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.train.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=cfg.train.betas, fused=device.type == "cuda")


def _shard(module: CausalLMLoss, dist: _Dist) -> None:
    """FSDP2: each block the model names in _no_split_modules is its own unit, the rest the root's."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world,))
    blocks = set(getattr(module.model, "_no_split_modules", None) or ())
    for sub in module.model.modules():
        if type(sub).__name__ in blocks:
            fully_shard(sub, mesh=mesh)
    fully_shard(module, mesh=mesh)
    with torch.no_grad():  # FSDP2 initialises on the root's first forward; evaluation calls the body directly
        module(torch.zeros((1, 1), dtype=torch.long, device=dist.device), torch.zeros((1, 1, 1), dtype=torch.long,
                                                                                      device=dist.device))
    module.reshard()  # no backward follows: put the root's sharded parameters back (the optimizer takes those)


def _replicate(module: CausalLMLoss, dist: _Dist) -> torch.nn.Module:
    """DDP over the ranks (plain module for one process); built again when the trainable set changes."""
    if dist.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)


def _clip_gradients(module: torch.nn.Module, max_norm: float, sharded: bool) -> float:
    """Clip the global gradient norm to max_norm (0 = measure only); return the norm before clipping.

    The norm is summed in float64, shard by shard under FSDP2 (then over the ranks), so that one process,
    DDP replicas and FSDP shards agree on it to rounding: float32 partial norms of differently cut shards
    differed by up to 1e-4 relative on a 1.6 M-parameter model.
    """
    grads = [p.grad.to_local() if sharded else p.grad for p in module.parameters() if p.grad is not None]
    squares = sum(torch.linalg.vector_norm(g, dtype=torch.float64) ** 2 for g in grads)
    if sharded:
        torch.distributed.all_reduce(squares)
    norm = float(squares) ** 0.5
    if max_norm and norm > max_norm:
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))
    return norm


def _evaluate(model: Any, heldout: dict[str, list[str]], tokenizer: Any, bos_id: int, cfg: TrainConfig,
              dist: _Dist) -> dict[str, float]:
    """Held-out bits per byte per set; DDP ranks split the documents, FSDP ranks all run them (in step)."""
    results = {}
    for name, texts in heldout.items():
        mine = texts if cfg.train.fsdp else texts[dist.rank::dist.world]
        nll = n_bytes = 0.0
        if mine:
            measured = bits_per_byte(model, tokenizer, mine, bos_id=bos_id, max_tokens=cfg.data.eval_max_tokens,
                                     batch_tokens=cfg.train.micro_batch_tokens)
            nll, n_bytes = measured["nll_nats"], measured["bytes"]
        if not cfg.train.fsdp:
            nll, n_bytes = dist.sum([nll, n_bytes])
        results[name] = nll / math.log(2) / n_bytes
    return results


def _curriculum_buckets(model: Any, source: Source, stage_index: int, bos_id: int, cfg: TrainConfig,
                        dist: _Dist, out: Path) -> list[np.ndarray]:
    """ppl_ascending: score each document (first seq_len tokens) under the stage's starting model, once.

    DDP ranks score disjoint documents (FSDP ranks all of them, in step); the scores are cached in
    out/curriculum/, so a resumed run reuses them instead of scoring again.
    """
    cache = out / "curriculum" / f"stage{stage_index}-{source.name}.npy"
    if not cache.is_file():
        docs = [source.ids[a:b][: cfg.data.seq_len] for a, b in zip(source.doc_offsets[:-1], source.doc_offsets[1:])]
        mine = range(len(docs)) if cfg.train.fsdp else range(dist.rank, len(docs), dist.world)
        n_tokens = sum(map(len, docs))
        start = time.perf_counter()
        _print(dist, f"stage {stage_index}: scoring {len(docs):,} documents of {source.name} ({n_tokens:,} tokens, "
                     "forward only) for the ppl_ascending curriculum ...")
        nll = sequence_nll(model, [docs[i] for i in mine], bos_id=bos_id, batch_tokens=cfg.train.micro_batch_tokens)
        scores = np.zeros(len(docs))
        parts = [(list(mine), nll)]
        if dist.world > 1 and not cfg.train.fsdp:
            parts = [None] * dist.world
            torch.distributed.all_gather_object(parts, (list(mine), nll))
        for indices, values in parts:
            scores[indices] = np.asarray(values) / np.maximum([len(docs[i]) for i in indices], 1)
        if dist.rank == 0:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=cache.parent, suffix=".npy", delete=False) as f:
                np.save(f, scores)
            os.replace(f.name, cache)
        seconds = time.perf_counter() - start
        _print(dist, f"stage {stage_index}: scored in {seconds:.1f} s ({n_tokens / seconds:,.0f} tokens/s)")
    dist.barrier()
    return ppl_buckets(np.load(cache), cfg.train.curriculum_buckets)


def _reset_peak_memory(device: torch.device) -> None:
    """Start this run's peak memory from what the process holds now, so that runs in one process (an
    experiment's arms) each report their own peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with suppress(OSError):  # Linux: "5" resets the peak resident set size that getrusage reports
        Path("/proc/self/clear_refs").write_text("5")


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _print(dist: _Dist, text: str) -> None:
    if dist.rank == 0:
        print(text, file=sys.stderr, flush=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics lines up to `step` (those after the checkpoint are done again), drop a torn line."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the process was killed while writing this line
        if record["step"] <= step:
            kept.append(line)
    _write_atomic(path, "".join(line + "\n" for line in kept))


def _save_final(module: CausalLMLoss, tokenizer_files: dict[str, Path], out: Path, dist: _Dist, fsdp: bool) -> Path:
    """final/: save_pretrained of the model (full weights) and the run's tokenizer files, atomically."""
    state = None
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    final = out / "final"
    if dist.rank == 0:
        staging = Path(tempfile.mkdtemp(prefix=".final.tmp-", dir=out))
        try:
            module.model.save_pretrained(staging, state_dict=state)
            for name, path in tokenizer_files.items():
                shutil.copy2(path, staging / name)
            replace_folder(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    dist.barrier()
    return final


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Run continued pretraining as the config says (see the module docstring); the same under torchrun.

    Args:
        config: the run (TrainConfig.from_toml).
        resume: continue the run in train.out from its newest complete checkpoint (bit-exact); without a
            checkpoint it starts from the beginning.
        progress: show a progress bar (rank 0).
    Returns:
        TrainResult of the finished run.
    Raises:
        FileExistsError: train.out already holds a run and resume is False.
        ValueError: a config that the data, the model or the world size make impossible (the message says
            which key to change), or a resume with a different config.
        FileNotFoundError: a missing model, tokenizer or source.
    """
    cfg, t0 = config, time.perf_counter()
    dist = _setup_distributed(cfg.train.device)
    out = Path(cfg.train.out)
    _check_out(cfg, resume)
    if resume and (out / "final" / "config.json").is_file():
        _print(dist, f"{out} holds a finished run (final/ is written); nothing to resume")
        return _finished(out)
    _reset_peak_memory(dist.device)
    tokenizer = load_run_tokenizer(cfg.model)  # refuses a tokenizer that does not extend the model's
    bos_id = separator_id(tokenizer, cfg.data.separator, cfg.model.path)

    # data: every source encoded once into the shared cache (rank 0 first; the others then read it)
    sources: dict[str, Source] = {}
    for turn in range(2 if dist.world > 1 else 1):
        if (dist.rank == 0) == (turn == 0):
            sources = {name: encode_source(name, specs, tokenizer.tokenizer, tokenizer.json,
                                           cache=Path(cfg.data.cache) if cfg.data.cache else None,
                                           doc_mode=cfg.data.doc_mode, text_field=cfg.data.text_field,
                                           progress=progress and dist.rank == 0)
                       for name, specs in cfg.data.sources.items()}
        dist.barrier()
    heldout = {name: heldout_texts(specs, cfg.data.eval_docs, doc_mode=cfg.data.doc_mode, text_field=cfg.data.text_field)
               for name, specs in cfg.data.heldout.items()} if cfg.data.eval_docs else {}
    plans = _plan_stages(cfg, sources, dist.world)
    total_steps = plans[-1].first_step + plans[-1].steps

    # model: loaded in fp32, grown to the run's tokenizer, wrapped for the ranks
    torch.manual_seed(cfg.train.seed)
    model = load_model(cfg.model, tokenizer, needs_embeds=any(p.patch_size > 1 for p in plans))
    if cfg.train.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(model).__name__} does not support gradient checkpointing; set "
                             "train.gradient_checkpointing = false")
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (non-reentrant by default)
            model.activation_checkpointing_enable()
        else:  # non-reentrant: works under DDP, FSDP2 and with frozen inputs (freeze_body_steps)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    module = CausalLMLoss(model).to(dist.device).train()  # from_pretrained returns eval mode (no dropout)
    counts = parameter_counts(model)
    flops_per_pos = flops_per_position(model, cfg.data.seq_len)
    freeze = None
    if cfg.train.fsdp:
        if cfg.train.freeze_body_steps:
            raise ValueError("train.freeze_body_steps is not supported with train.fsdp = true; set one of them off")
        _shard(module, dist)

    checkpoint = _prepare_out(cfg, resume, dist)  # everything is checked: from here on out/ holds the run
    cost = sum(p.steps / p.patch_size for p in plans) / sum(p.steps for p in plans)
    _print(dist, f"igot train: {type(model).__name__}, {counts['total']:,} parameters ({counts['non_embedding']:,} "
                 f"non-embedding), vocabulary {model.get_input_embeddings().weight.shape[0]:,} rows"
                 f"{' (extended tokenizer, ' + str(tokenizer.n_base) + ' base ids)' if tokenizer.extended else ''}, "
                 f"{dist.world} rank(s) on {dist.device}{', FSDP2' if cfg.train.fsdp else ''}")
    for name, source in sources.items():
        _print(dist, f"  source {name}: {source.n_docs:,} documents, {source.n_tokens:,} tokens, {source.n_bytes:,} bytes")
    _print(dist, f"  {cfg.train.batch_tokens:,} tokens per step ({plans[0].micro_steps} micro-batch(es) of "
                 f"{cfg.train.micro_batch_tokens:,} tokens per rank); patch cost ratio {cost:.3f} (sum tokens/K over "
                 "sum tokens)")
    for p, stage in zip(plans, cfg.stages):
        _print(dist, f"  stage {p.index}: {p.steps:,} steps, patch_size {p.patch_size}, weights {stage.weights}"
                     f"{', curriculum ' + stage.curriculum if stage.curriculum != 'none' else ''}"
                     f"{', reweight ' + str(stage.reweight) if stage.reweight != 'none' else ''}")

    # state: fresh, or restored from the newest checkpoint
    step, counters, sampler_state, history = 0, {"tokens": 0, "bytes": 0, "flops": 0, "wall_s": 0.0, "train_s": 0.0}, SamplerState(), {}
    tokens_by_source: dict[str, int] = {name: 0 for name in sources}
    last_eval: dict[str, float] = {}
    optimizer = _optimizer(module, cfg, dist.device)
    optimizer_plan = 0  # the schedule_start the optimizer belongs to
    if checkpoint is not None:
        step = int(checkpoint.name.removeprefix("step_"))
        optimizer_plan = next(p for p in plans if p.first_step <= step < p.first_step + p.steps or p is plans[-1]).schedule_start
        state = load_checkpoint(checkpoint, module, optimizer, rank=dist.rank, fsdp=cfg.train.fsdp)
        counters, sampler_state = state["counters"], SamplerState.from_dict(state["sampler"])
        history, tokens_by_source, last_eval = state["history"], state["tokens_by_source"], state["last_eval"]
        if dist.rank == 0:
            _truncate_metrics(out / "metrics.jsonl", step)
        _print(dist, f"resumed from {checkpoint} (step {step:,} of {total_steps:,})")
    elif dist.rank == 0:
        _log_line(out, {"event": "start", "step": 0, "stage": 0, "patch_size": plans[0].patch_size, "tokens": 0,
                        "bytes": 0, "flops": 0, "lr": 0.0, "loss": None, "tokens_per_s": 0.0, "wall_s": 0.0,
                        "peak_mem_bytes": _peak_memory(dist.device), "n_params": counts["total"],
                        "n_params_non_embedding": counts["non_embedding"], "world_size": dist.world,
                        "steps": total_steps, "sources": {n: s.n_tokens for n, s in sources.items()},
                        "tokens_by_source": tokens_by_source})
    wall_offset = counters["wall_s"] - (time.perf_counter() - t0)  # wall_s counts every session of the run
    resumed_at = step if checkpoint is not None else None
    if cfg.train.freeze_body_steps > step:
        freeze = BodyFreeze(model, tokenizer.n_base)
    wrapped = _replicate(module, dist) if not cfg.train.fsdp else module
    bar = None
    if progress and dist.rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, unit="step", desc="train", file=sys.stderr)

    def autocast() -> Any:  # bf16 matmuls on CUDA (fp32 master weights); plain fp32 on CPU
        return torch.autocast("cuda", dtype=torch.bfloat16) if dist.device.type == "cuda" else nullcontext()

    def evaluate(plan: StagePlan, lr: float) -> dict[str, float]:  # held-out bits per byte, logged as an eval line
        if cfg.train.fsdp:
            module.unshard()  # the root's parameters; each block gathers its own
        result = _evaluate(model, heldout, tokenizer.tokenizer, bos_id, cfg, dist)
        if cfg.train.fsdp:
            module.reshard()
        if dist.rank == 0:
            _log_line(out, {**_line(step, plan, counters, tokens_by_source, lr, None, 0.0,
                                    wall_offset + time.perf_counter() - t0, dist, sampler_state),
                            "event": "eval", "heldout_bpb": result})
        return result

    def save() -> None:  # checkpoints/step_<step>/, atomically, every rank
        counters["wall_s"] = wall_offset + time.perf_counter() - t0
        save_checkpoint(out / "checkpoints", step, module, optimizer,
                        _trainer_state(counters, sampler_state, history, tokens_by_source, last_eval),
                        cfg.to_toml(), rank=dist.rank, barrier=dist.barrier, fsdp=cfg.train.fsdp,
                        keep=cfg.train.keep_checkpoints)

    for plan, stage in zip(plans, cfg.stages):
        if step >= plan.first_step + plan.steps:
            continue  # a stage finished before the checkpoint we resumed from
        # the stage's streams: shuffled documents, or the curriculum's order (its own pass of each source)
        streams = {}
        for name in stage.weights:
            buckets = None
            if stage.curriculum == "ppl_ascending":
                buckets = _curriculum_buckets(model, sources[name], plan.index, bos_id, cfg, dist, out)
            key = f"{name}@stage{plan.index}" if buckets is not None else name
            seed = zlib.crc32(f"{cfg.train.seed}:{name}".encode())  # stable across processes (unlike hash())
            streams[name] = (key, SourceStream(sources[name], bos_id, seed=seed, buckets=buckets))
        if step == plan.first_step and step != resumed_at:  # a fresh stage: its weights, fresh credits
            sampler_state.weights, sampler_state.credits, history = {}, {}, {}
        sampler = MixtureSampler(streams, sampler_state)
        sampler.set_weights(sampler_state.weights or stage.weights)
        reweight = reweight_function(stage, cfg.train.reweight_strength)
        if plan.schedule_start != optimizer_plan:  # a new patch size: fresh optimizer and schedule
            optimizer, optimizer_plan = _optimizer(module, cfg, dist.device), plan.schedule_start
        n_inputs = cfg.data.seq_len * plan.patch_size  # tokens per sequence; its positions are seq_len

        while step < plan.first_step + plan.steps:
            # evaluate at the start of each stage and every eval_every steps; checkpoint every checkpoint_every
            due = cfg.train.eval_every and step % cfg.train.eval_every == 0
            if heldout and step != resumed_at and (step == plan.first_step or due):
                last_eval = evaluate(plan, _lr_at(cfg, plan, step))
                if reweight is not None:  # r_i <- r_i * f_i / sum_j r_j * f_j (set_weights normalises)
                    for name in stage.weights:
                        history.setdefault(name, []).append(last_eval[name])
                    factors = reweight(history)
                    sampler.set_weights({n: sampler_state.weights[n] * factors[n] for n in stage.weights})
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and 0 < step != resumed_at:
                save()
            resumed_at = None
            if freeze is not None and step >= cfg.train.freeze_body_steps:  # the body trains from here on
                freeze.release()
                freeze = None
                wrapped = _replicate(module, dist)
            t_step = time.perf_counter()
            lr = _lr_at(cfg, plan, step)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # this rank's share of the step's sequences, as micro-batches
            draws = sampler.draw(plan.sequences, advance=n_inputs)
            for draw in draws:
                tokens_by_source[draw.source] += n_inputs
            share = plan.sequences // dist.world
            inputs, targets, nbytes = sampler.batch(draws[dist.rank * share:(dist.rank + 1) * share],
                                                    cfg.data.seq_len, plan.patch_size)
            inputs, targets = torch.from_numpy(inputs).to(dist.device), torch.from_numpy(targets).to(dist.device)
            n_targets = dist.sum([float((targets != IGNORE_INDEX).sum())])[0]  # the step's, over all ranks
            loss_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
            for micro in range(plan.micro_steps):
                rows = slice(micro * plan.micro_sequences, (micro + 1) * plan.micro_sequences)
                last = micro == plan.micro_steps - 1
                sync = (wrapped.no_sync() if hasattr(wrapped, "no_sync") and not last else nullcontext())
                if cfg.train.fsdp:
                    module.set_requires_gradient_sync(last)
                with sync:
                    with autocast():
                        loss = wrapped(inputs[rows], targets[rows])  # summed over the micro-batch's targets
                    # DDP / FSDP average gradients over ranks: scale by world / the step's global target count
                    (loss * (dist.world / max(n_targets, 1.0))).backward()
                loss_sum += loss.detach()
            grad_norm = _clip_gradients(module, cfg.train.grad_clip, sharded=cfg.train.fsdp)
            optimizer.step()
            if freeze is not None:
                freeze.restore()
            optimizer.zero_grad(set_to_none=True)

            loss_total, step_bytes = dist.sum([float(loss_sum), float(nbytes.sum())])  # one sync per step
            step += 1
            step_s = time.perf_counter() - t_step
            counters["tokens"] += cfg.train.batch_tokens
            counters["bytes"] += int(step_bytes)
            counters["flops"] += flops_per_pos * plan.sequences * cfg.data.seq_len
            counters["train_s"] += step_s
            loss_value = loss_total / max(n_targets, 1.0)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"the loss is {loss_value} at step {step}; lower train.lr or check the data")
            if dist.rank == 0:
                _log_line(out, {**_line(step, plan, counters, tokens_by_source, lr, loss_value,
                                        cfg.train.batch_tokens / step_s, wall_offset + time.perf_counter() - t0, dist,
                                        sampler_state), "grad_norm": grad_norm})
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"stage {plan.index} loss {loss_value:.4f} {cfg.train.batch_tokens / step_s:,.0f} tok/s",
                                    refresh=False)

    # the end: a last evaluation, a last checkpoint when checkpoints are kept, and final/
    if bar is not None:
        bar.close()
    if heldout and step != resumed_at:
        last_eval = evaluate(plans[-1], _lr_at(cfg, plans[-1], step - 1))
    if cfg.train.checkpoint_every and step != resumed_at:
        save()
    counters["wall_s"] = wall_offset + time.perf_counter() - t0
    final = _save_final(module, tokenizer.files, out, dist, cfg.train.fsdp)
    _print(dist, f"done: {step:,} steps, {counters['tokens']:,} tokens, {counters['bytes']:,} bytes, "
                 f"{counters['flops']:.3e} FLOPs in {counters['wall_s']:.1f} s; "
                 + (", ".join(f"{k} {v:.4f} bpb" for k, v in last_eval.items()) or "no held-out set") + f"; model in {final}")
    return TrainResult(out, final, step, counters["tokens"], counters["bytes"], counters["flops"],
                       counters["wall_s"], last_eval)


def _finished(out: Path) -> TrainResult:
    """The TrainResult of a finished run, from its metrics.jsonl."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    last = [r for r in lines if r.get("event") is None][-1]
    evals = [r["heldout_bpb"] for r in lines if r.get("event") == "eval"]
    return TrainResult(out, out / "final", last["step"], last["tokens"], last["bytes"], last["flops"], last["wall_s"],
                       evals[-1] if evals else {})


def _line(step: int, plan: StagePlan, counters: dict[str, Any], tokens_by_source: dict[str, int], lr: float,
          loss: float | None, tokens_per_s: float, wall_s: float, dist: _Dist, sampler: SamplerState) -> dict[str, Any]:
    return {"step": step, "stage": plan.index, "patch_size": plan.patch_size, "tokens": counters["tokens"],
            "bytes": counters["bytes"], "flops": counters["flops"], "lr": lr, "loss": loss,
            "tokens_per_s": tokens_per_s, "wall_s": wall_s, "train_s": counters["train_s"],
            "peak_mem_bytes": _peak_memory(dist.device), "tokens_by_source": dict(tokens_by_source),
            "weights": dict(sampler.weights)}


def _log_line(out: Path, record: dict[str, Any]) -> None:
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _trainer_state(counters: dict[str, Any], sampler: SamplerState, history: dict[str, list[float]],
                   tokens_by_source: dict[str, int], last_eval: dict[str, float]) -> dict[str, Any]:
    return {"counters": dict(counters), "sampler": sampler.to_dict(), "history": history,
            "tokens_by_source": dict(tokens_by_source), "last_eval": last_eval}
