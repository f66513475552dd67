"""igot train on tiny random Llama models and slices of the real corpora.

References: model(labels=...) for the token loss, the written formula for the patch loss, one big batch for
gradient accumulation, an uninterrupted run for resume after SIGKILL, one process for two torchrun ranks.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from igot.train import TrainConfig, loss_trend, train
from igot.train.checkpoint import KILL_IN_CHECKPOINT_ENV
from igot.train.data import MixtureSampler, SamplerState, Source, SourceStream, ppl_buckets
from igot.train.loop import _lr_at, _plan_stages
from igot.train.model import CausalLMLoss

IGOT = [sys.executable, "-m", "igot.cli"]
METRIC_KEYS = {"step", "stage", "patch_size", "tokens", "bytes", "flops", "lr", "loss", "tokens_per_s", "wall_s",
               "peak_mem_bytes"}


# ------------------------------------------------------------------------------------------- fixtures


def tiny_llama(folder: Path, tokenizer_dir: Path, *, tied: bool = True, seed: int = 0) -> Path:
    """A random 2-layer Llama over the real SmolLM2 tokenizer (49,152 ids), saved as an HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def write_jsonl(path: Path, docs: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny model, real corpus slices as files, and an extended tokenizer of the model's."""
    import igot
    from igot.data import load_corpus, smollm2

    root = tmp_path_factory.mktemp("train")
    model = tiny_llama(root / "tiny", smollm2())
    hpo, sotu = load_corpus("hpo", "train"), load_corpus("sotu", "train")
    files = {
        "domain": write_jsonl(root / "domain.jsonl", hpo[:400]),
        "general": write_jsonl(root / "general.jsonl", [d[:3000] for d in sotu[:20]]),
        "domain_heldout": write_jsonl(root / "domain_heldout.jsonl", load_corpus("hpo", "heldout")[:6]),
        "general_heldout": write_jsonl(root / "general_heldout.jsonl", [d[:800] for d in load_corpus("sotu", "heldout")[:4]]),
    }
    ext = igot.extend_tokenizer(model, hpo[:2000], sotu[:5], budget=40, progress=False)
    ext.save(root / "ext")
    return {"root": root, "model": str(model), "ext": str(root / "ext"), **files}


def config_dict(ws, out: Path, **train_overrides) -> dict:
    """Two stages: a patch stage (K = 2) and a token stage, 4 steps each, 4 micro-batches per step."""
    return {
        "model": {"path": ws["model"]},
        "data": {"seq_len": 32, "separator": "<|endoftext|>", "eval_docs": 4, "eval_max_tokens": 48,
                 "cache": str(ws["root"] / "encoded"),
                 "sources": {"domain": [ws["domain"]], "general": [ws["general"]]},
                 "heldout": {"domain": [ws["domain_heldout"]], "general": [ws["general_heldout"]]}},
        "train": {"out": str(out), "batch_tokens": 512, "micro_batch_tokens": 128, "lr": 3e-3, "warmup_steps": 1,
                  "eval_every": 2, "checkpoint_every": 2, "seed": 1, **train_overrides},
        "stage": [{"tokens": 2048, "weights": {"domain": 0.75, "general": 0.25}, "patch_size": 2},
                  {"tokens": 2048, "weights": {"domain": 0.75, "general": 0.25}}],
    }


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def finished_run(workspace):
    out = workspace["root"] / "run"
    result = train(TrainConfig.from_dict(config_dict(workspace, out)), progress=False)
    return out, result


# ------------------------------------------------------------------------------------------- the loss


@pytest.fixture(scope="module")
def small_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).double()


def test_token_loss_equals_model_labels_loss(small_model):
    tokens = torch.randint(0, 300, (3, 17))  # [B, T + 1]
    got = CausalLMLoss(small_model)(tokens[:, :-1], tokens[:, 1:, None])
    want = small_model(input_ids=tokens, labels=tokens).loss  # mean over B * T shifted targets (fp32 inside)
    torch.testing.assert_close(got / (3 * 16), want.double(), rtol=1e-6, atol=1e-6)
    logits = small_model(input_ids=tokens).logits[:, :-1]  # float64, as the model
    exact = torch.nn.functional.cross_entropy(logits.reshape(-1, 300), tokens[:, 1:].reshape(-1), reduction="sum")
    torch.testing.assert_close(got, exact, rtol=1e-10, atol=1e-10)


def test_patch_loss_equals_the_formula(small_model):
    batch, positions, k = 2, 5, 3
    tokens = torch.randint(0, 300, (batch, (positions + 1) * k))
    inputs, targets = tokens[:, : positions * k], tokens[:, k:].reshape(batch, positions, k)
    got = CausalLMLoss(small_model)(inputs, targets)
    # the paper's loss: patch embedding = mean of its K token embeddings, positions count patches, and each
    # position predicts the K tokens of the next patch from one softmax: -(1/K) sum_k log p(x_k), per target here
    embeds = small_model.get_input_embeddings()(inputs).view(batch, positions, k, -1).mean(2)
    logits = small_model(inputs_embeds=embeds, position_ids=torch.arange(positions)[None].expand(batch, -1)).logits
    log_probs = torch.log_softmax(logits, -1)  # [B, T, V]
    want = -log_probs.gather(-1, targets).sum()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_micro_batch_with_every_target_ignored_gives_zero_not_nan(small_model):
    inputs = torch.randint(0, 300, (2, 8))
    loss = CausalLMLoss(small_model)(inputs, torch.full((2, 8, 1), -100))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert all(torch.isfinite(p.grad).all() for p in small_model.parameters() if p.grad is not None)
    small_model.zero_grad()


# --------------------------------------------------------------------------------------- data and plan


def test_stream_windows_equal_the_packed_concatenation():
    ids = np.arange(100, 130, dtype=np.uint32)
    offsets = np.array([0, 3, 10, 11, 30])
    source = Source("s", ids, np.ones(30, np.uint32), offsets, Path("."))
    stream = SourceStream(source, separator=7, seed=3)
    packed = np.concatenate([np.concatenate([ids[offsets[d]:offsets[d + 1]], [7]])
                             for epoch in range(3) for d in stream.order(epoch)])  # [3 * 34]
    assert stream.epoch_len == 34
    for start, length in [(0, 5), (2, 40), (33, 3), (30, 50), (67, 35)]:
        window, nbytes = stream.window(start, length)
        np.testing.assert_array_equal(window, packed[start:start + length])
        np.testing.assert_array_equal(nbytes, (packed[start:start + length] != 7).astype(np.int64))
    assert sorted(stream.order(1)) == [0, 1, 2, 3] and not np.array_equal(stream.order(0), stream.order(5))


def test_curriculum_order_is_buckets_ascending():
    scores = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 0.5])
    buckets = ppl_buckets(scores, 3)
    assert [sorted(b.tolist()) for b in buckets] == [[1, 5], [2, 3], [0, 4]]
    source = Source("s", np.zeros(6, np.uint32), np.zeros(6, np.uint32), np.arange(7), Path("."))
    order = SourceStream(source, 0, seed=0, buckets=buckets).order(0)
    assert [sorted(order[i:i + 2].tolist()) for i in (0, 2, 4)] == [[1, 5], [2, 3], [0, 4]]


def test_sampler_keeps_the_weights_in_every_prefix():
    source = Source("s", np.zeros(10, np.uint32), np.zeros(10, np.uint32), np.array([0, 10]), Path("."))
    streams = {name: (name, SourceStream(source, 0, seed=0)) for name in ("a", "b", "c")}
    sampler = MixtureSampler(streams, SamplerState())
    sampler.set_weights({"a": 5, "b": 3, "c": 2})
    draws = sampler.draw(100, advance=4)
    for n in (10, 50, 100):
        counts = {name: sum(d.source == name for d in draws[:n]) for name in "abc"}
        assert all(abs(counts[name] - n * w) <= 1 for name, w in zip("abc", (0.5, 0.3, 0.2)))
    assert sampler.state.positions == {"a": 200, "b": 120, "c": 80}


def test_lr_schedules():
    cfg = TrainConfig.from_dict({
        "model": {"path": "m"}, "data": {"seq_len": 4, "sources": {"a": ["x"]}},
        "train": {"out": "o", "batch_tokens": 8, "micro_batch_tokens": 8, "lr": 1.0, "warmup_steps": 2,
                  "decay_fraction": 0.5, "min_lr_ratio": 0.0},
        "stage": [{"tokens": 80, "weights": {"a": 1}}, {"tokens": 80, "weights": {"a": 1}, "patch_size": 2}]})
    source = Source("a", np.zeros(10, np.uint32), np.ones(10, np.uint32), np.array([0, 10]), Path("."))
    plans = _plan_stages(cfg, {"a": source}, world=1)
    assert [(p.first_step, p.steps, p.schedule_start, p.schedule_steps) for p in plans] == [(0, 10, 0, 10), (10, 10, 10, 10)]
    wsd = [_lr_at(cfg, plans[0], s) for s in range(10)]
    assert wsd == pytest.approx([0.5, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])  # warmup, stable, decay; the last step learns
    assert _lr_at(cfg, plans[1], 10) == 0.5  # a new patch size restarts the schedule
    cosine = TrainConfig.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "schedule": "cosine"}})
    values = [_lr_at(cosine, plans[0], s) for s in range(2, 10)]
    assert values[0] == 1.0 and all(a > b > 0 for a, b in zip(values, values[1:]))


def test_bytes_stage_plans_steps_from_the_sources_bytes_per_token():
    cfg = TrainConfig.from_dict({
        "model": {"path": "m"}, "data": {"seq_len": 4, "sources": {"a": ["x"], "b": ["y"]}},
        "train": {"out": "o", "batch_tokens": 8, "micro_batch_tokens": 8, "lr": 1.0},
        "stage": [{"bytes": 1000, "weights": {"a": 1, "b": 3}}]})
    a = Source("a", np.zeros(9, np.uint32), np.full(9, 2, np.uint32), np.array([0, 9]), Path("."))  # 18 B / 10 stream tokens
    b = Source("b", np.zeros(4, np.uint32), np.full(4, 5, np.uint32), np.array([0, 4]), Path("."))  # 20 B / 5
    (plan,) = _plan_stages(cfg, {"a": a, "b": b}, world=1)
    assert plan.steps == math.ceil(1000 / (8 * (0.25 * 1.8 + 0.75 * 4.0)))


# ----------------------------------------------------------------------------------------- whole runs


def test_run_trains_logs_and_writes_a_loadable_final(finished_run, workspace):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result = finished_run
    lines = read_metrics(out)
    assert lines[0]["event"] == "start" and lines[0]["n_params"] > 0
    steps = [r for r in lines if r.get("event") is None]
    evals = [r for r in lines if r.get("event") == "eval"]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert all(METRIC_KEYS <= set(r) for r in lines)
    assert [r["patch_size"] for r in steps] == [2] * 4 + [1] * 4
    assert [r["tokens"] for r in steps] == [512 * i for i in range(1, 9)]
    assert all(b > a for a, b in zip([0] + [r["bytes"] for r in steps], [r["bytes"] for r in steps]))
    # the patch steps cost half the positions of the token steps (K = 2): FLOPs count positions
    flops = np.diff([0] + [r["flops"] for r in steps])
    assert flops[0] * 2 == pytest.approx(flops[-1], rel=0.05)
    assert [r["step"] for r in evals] == [0, 2, 4, 6, 8]
    assert evals[-1]["heldout_bpb"]["domain"] < evals[0]["heldout_bpb"]["domain"]  # it learns
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert result.steps == 8 and result.heldout_bpb == evals[-1]["heldout_bpb"]
    assert TrainConfig.from_toml(out / "config.toml") == TrainConfig.from_dict(config_dict(workspace, out))

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    generated = model.generate(**tokenizer("Abnormality of the", return_tensors="pt"), max_new_tokens=5,
                               do_sample=False)
    assert generated.shape[1] > 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_6", "step_8"]  # keep_checkpoints = 2
    again = train(TrainConfig.from_dict(config_dict(workspace, out)), resume=True, progress=False)  # finished: no-op
    assert (again.steps, again.tokens, again.heldout_bpb) == (result.steps, result.tokens, result.heldout_bpb)
    assert len(read_metrics(out)) == len(lines)


def test_report_reads_runs_and_plots_them(finished_run, tmp_path):
    from igot.report import plot_runs, read_run

    out, result = finished_run
    summary = read_run(out)
    assert (summary["steps"], summary["tokens"], summary["bytes"]) == (result.steps, result.tokens, result.bytes)
    assert summary["heldout_bpb_after"] == result.heldout_bpb
    assert summary["heldout_bpb_before"]["domain"] > summary["heldout_bpb_after"]["domain"]
    png = plot_runs([out, out], tmp_path / "p.png", labels=["a", "b"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no run has an evaluation of held-out set 'nope'"):
        plot_runs([out], tmp_path / "q.png", heldout="nope")
    with pytest.raises(FileNotFoundError, match="not an igot train run folder"):
        read_run(tmp_path)


def test_accumulation_over_micro_batches_equals_one_big_batch(workspace, finished_run):
    out = workspace["root"] / "one-micro-batch"
    cfg = config_dict(workspace, out, micro_batch_tokens=512)  # 1 micro-batch of 512 tokens instead of 4 of 128
    train(TrainConfig.from_dict(cfg), progress=False)
    ours, big = final_weights(finished_run[0]), final_weights(out)
    for name in ours:
        torch.testing.assert_close(ours[name], big[name], rtol=2e-5, atol=2e-6)
    loss_a = [r["loss"] for r in read_metrics(finished_run[0]) if r.get("event") is None]
    loss_b = [r["loss"] for r in read_metrics(out) if r.get("event") is None]
    assert loss_a == pytest.approx(loss_b, rel=1e-5)


def _write_config(ws, out: Path, **overrides) -> Path:
    import tomli_w

    path = out.parent / f"{out.name}.toml"
    path.write_text(tomli_w.dumps(config_dict(ws, out, **overrides)))
    return path


def _igot_train(config: Path, *extra: str, env: dict | None = None, wait: bool = True):
    command = IGOT + ["train", "--config", str(config), "--no-progress", *extra]
    env = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_resume_after_sigkill_is_bit_exact(workspace):
    root = workspace["root"]
    whole = _igot_train(_write_config(workspace, root / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]

    # killed in the middle of writing the checkpoint of step 4 (after the model files, before the rename)
    config = _write_config(workspace, root / "killed")
    first = _igot_train(config, env={KILL_IN_CHECKPOINT_ENV: "4"})
    assert first.returncode == -signal.SIGKILL
    assert (root / "killed/checkpoints/.tmp-step_4").is_dir() and not (root / "killed/checkpoints/step_4").exists()
    # then killed again at a random moment after step 5 (in a step, an evaluation or a checkpoint)
    second = _igot_train(config, "--resume", wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and second.poll() is None:
        metrics = root / "killed/metrics.jsonl"
        if metrics.is_file() and any(json.loads(line).get("step", 0) >= 5 for line in metrics.read_text().splitlines()
                                     if line.endswith("}")):
            break
        time.sleep(0.05)
    second.kill()
    second.wait()
    third = _igot_train(config, "--resume")
    assert third.returncode == 0, third.stderr[-2000:]
    assert "resumed from" in third.stderr

    a, b = final_weights(root / "whole"), final_weights(root / "killed")
    assert all(torch.equal(a[name], b[name]) for name in a)
    drop = ("wall_s", "tokens_per_s", "peak_mem_bytes", "train_s")
    strip = lambda lines: [{k: v for k, v in r.items() if k not in drop} for r in lines]  # noqa: E731
    assert strip(read_metrics(root / "whole")) == strip(read_metrics(root / "killed"))


def test_torchrun_two_ranks_match_one_process(workspace, finished_run):
    out = workspace["root"] / "ddp"
    config = _write_config(workspace, out)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "igot.cli", "train", "--config", str(config), "--no-progress"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = final_weights(finished_run[0]), final_weights(out)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=2e-5, atol=2e-6)
    assert [r["tokens"] for r in read_metrics(out)] == [r["tokens"] for r in read_metrics(finished_run[0])]


def test_extended_tokenizer_freeze_body_and_curriculum(workspace):
    out = workspace["root"] / "extended"
    cfg = config_dict(workspace, out, freeze_body_steps=3)
    cfg["model"]["tokenizer"] = workspace["ext"]
    cfg["stage"][1]["curriculum"] = "ppl_ascending"
    cfg["stage"][1]["reweight"] = "loss_trend"
    before = final_weights_of_model(workspace["model"])
    result = train(TrainConfig.from_dict(cfg), progress=False)
    assert (out / "curriculum" / "stage1-domain.npy").is_file()
    lines = read_metrics(out)
    weights = [r["weights"] for r in lines if r.get("event") is None and r["stage"] == 1]
    assert weights[0] != weights[-1]  # loss_trend moved the mixture at the evaluations of stage 1
    assert sum(weights[-1].values()) == pytest.approx(1.0)
    final = final_weights(out)
    n_base = before["model.embed_tokens.weight"].shape[0]
    grown = final["model.embed_tokens.weight"]
    assert grown.shape[0] % 64 == 0 and grown.shape[0] > n_base
    assert result.steps == 8


def final_weights_of_model(folder: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def test_freeze_trains_only_new_rows(workspace):
    out = workspace["root"] / "frozen"
    cfg = config_dict(workspace, out, freeze_body_steps=100, eval_every=0, checkpoint_every=0)
    cfg["model"]["tokenizer"] = workspace["ext"]
    cfg["data"]["heldout"] = {}
    cfg["stage"] = [cfg["stage"][1]]
    train(TrainConfig.from_dict(cfg), progress=False)
    from transformers import AutoModelForCausalLM

    from igot.model import extend_model

    grown = extend_model(AutoModelForCausalLM.from_pretrained(workspace["model"]), workspace["model"], workspace["ext"])
    before, after = final_weights_of_model(workspace["model"]), final_weights(out)
    for name, tensor in before.items():
        if name == "model.embed_tokens.weight":
            n_base = tensor.shape[0]
            assert torch.equal(after[name][:n_base], tensor)  # old rows untouched, also by weight decay
            initial = grown.get_input_embeddings().weight.detach()
            n_real = int(grown.igot_vocab_mask.sum())
            assert not torch.equal(after[name][n_base:n_real], initial[n_base:n_real])  # the new rows trained
            assert torch.equal(after[name][n_real:], initial[n_real:])  # padding rows stay zero
        else:
            assert torch.equal(after[name], tensor), name


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("change,message", [
    (lambda c: c["train"].update(lr_max=1), r"unknown key 'lr_max' in \[train\]; valid keys: out, batch_tokens"),
    (lambda c: c["stage"][0]["weights"].update(news=1.0), r"names 'news', which is not a source"),
    (lambda c: c["stage"][0]["weights"].update(general=0.0), r"weights.general = 0.0 must be > 0"),
    (lambda c: c["stage"][0]["weights"].update(general=-1), r"must be > 0"),
    (lambda c: c["train"].update(batch_tokens=500), r"batch_tokens=500 is not a multiple of train.micro_batch_tokens"),
    (lambda c: c["train"].update(micro_batch_tokens=96, batch_tokens=192), r"not a multiple of data.seq_len x stage.0.patch_size = 64"),
    (lambda c: (c["stage"][1].update(reweight="loss_trend"), c["data"].update(heldout={"domain": ["x"]})),
     r"general has no \[data.heldout\] set"),
    (lambda c: c["stage"][0].update(bytes=100), r"exactly one of tokens = N or bytes = N"),
    (lambda c: c["train"].update(freeze_body_steps=5), r"model.tokenizer is not set"),
    (lambda c: c.update(stage=[]), r"each stage as \[\[stage\]\]"),
])
def test_bad_config_is_refused_before_any_compute(workspace, change, message):
    cfg = config_dict(workspace, workspace["root"] / "never")
    change(cfg)
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(cfg)


def test_bad_runs_are_refused_before_training(workspace, finished_run, tmp_path):
    def refused(cfg, error, message):
        with pytest.raises(error, match=message):
            train(TrainConfig.from_dict(cfg), progress=False)
        assert not (Path(cfg["train"]["out"]) / "metrics.jsonl").exists()

    out = tmp_path / "bad"
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": "   "}) + "\n")
    cfg = config_dict(workspace, out)
    cfg["data"]["sources"]["general"] = [str(empty)]
    refused(cfg, ValueError, r"data.sources.general .*no non-empty document")
    cfg = config_dict(workspace, out)
    cfg["data"]["sources"]["general"] = [str(tmp_path / "missing.txt")]
    refused(cfg, FileNotFoundError, r"missing.txt")
    cfg = config_dict(workspace, out)
    cfg["model"]["tokenizer"] = str(Path(__file__).parent / "nope")
    refused(cfg, FileNotFoundError, "nope")
    from igot.data import tokenizer_path

    cfg["model"]["tokenizer"] = str(tokenizer_path("gpt2"))
    refused(cfg, ValueError, r"does not extend the tokenizer of model.path")
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        train(TrainConfig.from_dict(config_dict(workspace, finished_run[0])), progress=False)
    changed = config_dict(workspace, finished_run[0], lr=1e-3)
    with pytest.raises(ValueError, match=r"differs from .* in train.lr"):
        train(TrainConfig.from_dict(changed), resume=True, progress=False)


def test_cli_set_overrides_and_errors(workspace, tmp_path):
    config = _write_config(workspace, tmp_path / "cli")
    bad = _igot_train(config, "--set", "train.lr_max=1")
    assert bad.returncode == 2 and "unknown key 'lr_max' in [train]" in bad.stderr
    cfg = TrainConfig.from_toml(config, overrides=["train.lr=1e-4", "stage.1.tokens=4e3", "stage.0.curriculum=ppl_ascending"])
    assert cfg.train.lr == 1e-4 and cfg.stages[1].tokens == 4000 and cfg.stages[0].curriculum == "ppl_ascending"


def test_batch_that_does_not_split_over_the_ranks_is_refused(workspace):
    cfg = TrainConfig.from_dict(config_dict(workspace, workspace["root"] / "never"))  # 512 = 4 x 128 on one rank
    source = Source("s", np.zeros(10, np.uint32), np.ones(10, np.uint32), np.array([0, 10]), Path("."))
    assert len(_plan_stages(cfg, {"domain": source, "general": source}, world=2)) == 2
    with pytest.raises(ValueError, match=r"batch_tokens=512 is not divisible by train.micro_batch_tokens x ranks = 128 x 3"):
        _plan_stages(cfg, {"domain": source, "general": source}, world=3)


def test_models_the_fused_loss_cannot_train_are_refused():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from igot.model import causal_lm_parts
    from igot.train.model import check_accepts_embeds

    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=8))
    with pytest.raises(ValueError, match="final_logit_softcapping=30.0"):
        causal_lm_parts(gemma)

    class NoEmbedsBody(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return input_ids

    with pytest.raises(ValueError, match="NoEmbedsBody.forward takes no inputs_embeds.*patch_size = 1"):
        check_accepts_embeds(NoEmbedsBody())


def test_gpt2_architecture_trains_with_patches(workspace, tmp_path):
    """Not only Llama: GPT-2 (learned positions, a Conv1D body, tied head) through both stage kinds."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from igot.data import smollm2

    torch.manual_seed(0)
    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=49152, n_embd=32, n_layer=2, n_head=2, n_positions=128)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(smollm2() / name, folder / name)
    cfg = config_dict(workspace, tmp_path / "run", eval_every=0, checkpoint_every=0)
    cfg["model"]["path"] = str(folder)
    cfg["data"]["heldout"] = {"domain": [workspace["domain_heldout"]]}
    result = train(TrainConfig.from_dict(cfg), progress=False)
    evals = [r for r in read_metrics(tmp_path / "run") if r.get("event") == "eval"]
    assert result.steps == 8 and evals[-1]["heldout_bpb"]["domain"] < evals[0]["heldout_bpb"]["domain"]


def test_fsdp2_under_torchrun_resumes_and_matches_one_process(workspace, finished_run):
    """FSDP2 on two gloo ranks, killed while writing a checkpoint, resumed with the same world size."""
    out = workspace["root"] / "fsdp"
    config = _write_config(workspace, out, fsdp=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "igot.cli", "train", "--config", str(config), "--no-progress"]
    killed = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, KILL_IN_CHECKPOINT_ENV: "6"})
    assert killed.returncode != 0 and (out / "checkpoints/step_4/dcp").is_dir()
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one, sharded = final_weights(finished_run[0]), final_weights(out)
    for name in one:
        torch.testing.assert_close(sharded[name], one[name], rtol=2e-5, atol=2e-6)


def test_reweighting_rules_are_checked(workspace):
    cfg = config_dict(workspace, workspace["root"] / "never")
    cfg["stage"][1]["reweight"] = "loss_trend"
    cfg["data"]["eval_docs"] = 0
    with pytest.raises(ValueError, match="data.eval_docs = 0"):
        TrainConfig.from_dict(cfg)
    source = Source("s", np.zeros(10, np.uint32), np.zeros(10, np.uint32), np.array([0, 10]), Path("."))
    sampler = MixtureSampler({n: (n, SourceStream(source, 0, seed=0)) for n in ("a", "b")}, SamplerState())
    for bad in ({"a": 0.0, "b": 0.0}, {"a": float("nan"), "b": 1.0}, {"a": -1.0, "b": 2.0}):
        with pytest.raises(ValueError, match="must be finite, >= 0 and not all 0"):
            sampler.set_weights(bad)
    assert loss_trend({"a": [2.0, 1.0], "b": [1.0]}, strength=2.0) == {"a": 0.25, "b": 1.0}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only: resets the peak RSS")
def test_peak_memory_is_the_runs_own_not_the_processes(workspace, tmp_path):
    """Runs in one process (an experiment's arms) must not inherit an earlier peak of the process."""
    import re

    import numpy as np

    resident = int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    spike = np.ones(2 * 10**8)  # 1.6 GB on top of what the process holds, touched, then freed
    spike[::512] = 2
    del spike
    cfg = config_dict(workspace, tmp_path / "run", eval_every=0, checkpoint_every=0)
    train(TrainConfig.from_dict({**cfg, "stage": [{"tokens": 512, "weights": {"domain": 1.0}}]}), progress=False)
    peak = max(line["peak_mem_bytes"] for line in read_metrics(tmp_path / "run"))
    assert peak < resident + 0.8e9  # the tiny run adds far less than the 1.6 GB spike before it


def test_gradient_checkpointing_gives_the_same_run(workspace, finished_run, tmp_path, monkeypatch):
    """Recomputing the blocks in the backward changes memory, not the result."""
    from transformers.models.llama import modeling_llama

    calls = []
    forward = modeling_llama.LlamaMLP.forward

    def counted(self, x):
        calls.append(torch.is_grad_enabled())  # held-out evaluation runs without grad
        return forward(self, x)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)
    out = tmp_path / "ckpt"
    train(TrainConfig.from_dict(config_dict(workspace, out, gradient_checkpointing=True)), progress=False)
    layers = json.loads((out / "final" / "config.json").read_text())["num_hidden_layers"]
    assert sum(calls) == 2 * (8 * 4) * layers  # 8 steps of 4 micro-batches, each block run again in the backward
    want, got = final_weights(finished_run[0]), final_weights(out)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
