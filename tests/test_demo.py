"""The whole pipeline of `igot demo` (count, extend, grow, two igot train runs, report) on a tiny random Llama
with SmolLM2's tokenizer and a slice of the real corpora: the report's invariants, not its figures."""
from __future__ import annotations

import json
import math

import pytest


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from igot.data import smollm2

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (smollm2() / name).exists():
            shutil.copy(smollm2() / name, folder / name)
    return folder


def test_demo_pipeline_on_a_tiny_model(tiny_model, tmp_path, capsys):
    from igot.demo import run
    from igot.report import read_run

    out = tmp_path / "demo"
    report = run(out, budget=100, domain_bytes=6000, eval_docs=4, model=tiny_model, max_docs=3000, progress=False)

    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert (out / "bpb.png").stat().st_size > 0 and (out / "tokenizer" / "tokenizer.json").is_file()
    assert 0 < report["tokenizer"]["entries_added"] <= 100
    assert report["tokenizer"]["tokens"]["domain"]["saving"] > 0
    base, igot = report["base"], report["igot"]
    for arm in (base, igot):
        assert all(math.isfinite(arm[k]) and arm[k] > 0 for k in
                   ("heldout_domain_bpb", "heldout_general_bpb", "heldout_domain_bpb_before", "heldout_general_bpb_before"))
        assert arm["wall_s"] > 0 and arm["peak_mem_bytes"] > 0
    # the same domain bytes (to within a step of text), in fewer tokens with igot's tokenizer
    assert abs(igot["bytes"] / base["bytes"] - 1) < 0.25
    assert igot["tokens"] / igot["bytes"] < base["tokens"] / base["bytes"]
    for arm in ("base", "igot"):
        assert (out / "runs" / arm / "final" / "config.json").is_file()
        assert read_run(out / "runs" / arm)["tokens"] == report[arm]["tokens"]
    # the igot run's model really has the grown vocabulary (rows padded to a multiple of 64)
    grown = json.loads((out / "runs" / "igot" / "final" / "config.json").read_text())["vocab_size"]
    assert 0 <= grown - (49152 + report["tokenizer"]["entries_added"]) < 64
    assert "| run | tokens |" in capsys.readouterr().out


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    from igot.demo import run

    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not made by igot demo"):
        run(tmp_path, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
