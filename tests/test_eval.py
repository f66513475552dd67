"""The ontology benchmark against a plain reference: full logits, log-softmax, the continuation's tokens."""
from __future__ import annotations

import json

import pytest
import torch

from igot.eval import N_CHOICES, ontology_benchmark, ontology_questions


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from igot.data import tokenizer_path

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(config).eval(), Tokenizer.from_file(str(tokenizer_path("smollm2")))


def _reference_answer(model, tokenizer, question, bos_id):
    """Per-byte log-likelihood of each continuation from one full forward pass per choice."""
    prefix = f"{question['name']}:"
    scores = []
    for choice in question["choices"]:
        encoding = tokenizer.encode(f"{prefix} {choice}", add_special_tokens=False)
        ids = torch.tensor([[bos_id] + encoding.ids])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)  # [T, V]
        token_log_probs = log_probs.gather(1, ids[0, 1:, None])[:, 0]
        in_choice = torch.tensor([start >= len(prefix) for start, _ in encoding.offsets])
        scores.append(float(token_log_probs[in_choice].sum()) / len(f" {choice}".encode()))
    return max(range(len(scores)), key=scores.__getitem__)


def test_questions_come_from_the_heldout_split_with_seeded_distractors():
    from igot.data import load_corpus, load_terms

    questions = ontology_questions(n_questions=40, seed=3)
    assert len(questions) == 40 and {q["corpus"] for q in questions} == {"hpo", "go"}
    heldout = {c: set(load_corpus(c, "heldout")) for c in ("hpo", "go")}
    names = {c: dict(load_terms(c, "heldout")) for c in ("hpo", "go")}
    for q in questions:
        assert len(q["choices"]) == N_CHOICES == len(set(q["choices"]))
        assert all(choice in heldout[q["corpus"]] for choice in q["choices"])
        assert names[q["corpus"]][q["name"]] == q["choices"][q["answer"]]
    assert ontology_questions(n_questions=40, seed=3) == questions != ontology_questions(n_questions=40, seed=4)
    assert sum(q["answer"] == 0 for q in questions) < 25  # the right answer is not always first


def test_benchmark_matches_the_reference(tiny):
    model, tokenizer = tiny
    questions = ontology_questions(n_questions=16, seed=1)
    result = ontology_benchmark(model, tokenizer, questions, bos_id=0, batch_tokens=256)
    want = [_reference_answer(model, tokenizer, q, 0) == q["answer"] for q in questions]
    assert result["n"] == 16 and result["skipped"] == 0
    assert result["accuracy"] == pytest.approx(sum(want) / len(want))
    assert result["stderr"] == pytest.approx((result["accuracy"] * (1 - result["accuracy"]) / 16) ** 0.5)
    assert sum(v["n"] for v in result["by_corpus"].values()) == 16


def _reference_calibrated_answer(model, tokenizer, question, bos_id):
    """log p(choice | name) - log p(choice), each from full forward passes."""
    def log_likelihood(prefix_text, text):
        encoding = tokenizer.encode(prefix_text + text, add_special_tokens=False)
        ids = torch.tensor([[bos_id] + encoding.ids])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        token_log_probs = log_probs.gather(1, ids[0, 1:, None])[:, 0]
        in_text = torch.tensor([start >= len(prefix_text) for start, _ in encoding.offsets])
        return float(token_log_probs[in_text].sum())

    prefix = f"{question['name']}:"
    gains = [log_likelihood(prefix, f" {c}") - log_likelihood("", f" {c}") for c in question["choices"]]
    return max(range(len(gains)), key=gains.__getitem__)


def test_calibrated_score_matches_the_reference(tiny):
    model, tokenizer = tiny
    questions = ontology_questions(n_questions=12, seed=5)
    result = ontology_benchmark(model, tokenizer, questions, bos_id=0, batch_tokens=256, calibrated=True)
    want = [_reference_calibrated_answer(model, tokenizer, q, 0) == q["answer"] for q in questions]
    assert result["calibrated_accuracy"] == pytest.approx(sum(want) / len(want))
    plain = ontology_benchmark(model, tokenizer, questions, bos_id=0, batch_tokens=256)
    assert plain["accuracy"] == result["accuracy"] and "calibrated_accuracy" not in plain


def test_calibration_ignores_how_typical_a_choice_is(tiny, monkeypatch):
    """A model that likes one wrong definition whatever the name, and the right one a little more after its name:
    the plain per-byte score picks the typical one, the calibrated score the right one."""
    import igot.metrics

    model, tokenizer = tiny
    questions = ontology_questions(n_questions=12, seed=2)
    encode = lambda text: tuple(tokenizer.encode(text, add_special_tokens=False).ids)  # noqa: E731
    typical = {encode(f" {q['choices'][(q['answer'] + 1) % 4]}") for q in questions}
    right = {encode(f"{q['name']}: {q['choices'][q['answer']]}"): len(encode(f"{q['name']}:")) for q in questions}

    def fake_nll(model, seqs, **kw):  # 5 nats a token; 1 for a typical choice's tokens; 4 for the right one's
        out = []
        for seq in map(tuple, seqs):
            tail = next((len(t) for t in typical if len(t) <= len(seq) and seq[-len(t):] == t), 0)
            boost = len(seq) - right[seq] if seq in right else 0
            out.append(5.0 * len(seq) - 4.0 * tail - 1.0 * boost)
        return out

    monkeypatch.setattr(igot.metrics, "sequence_nll", fake_nll)
    result = ontology_benchmark(model, tokenizer, questions, bos_id=0, calibrated=True)
    assert result["accuracy"] == 0.0 and result["calibrated_accuracy"] == 1.0


def test_knowing_the_answers_scores_perfectly(tiny, monkeypatch):
    """A model whose log-likelihood favours exactly the right definitions gets 100%: the scoring is not noise."""
    import igot.metrics

    model, tokenizer = tiny
    questions = ontology_questions(n_questions=12, seed=2)
    right = {tuple(tokenizer.encode(f"{q['name']}: {q['choices'][q['answer']]}", add_special_tokens=False).ids)
             for q in questions}
    monkeypatch.setattr(igot.metrics, "sequence_nll",
                        lambda model, seqs, **kw: [0.0 if tuple(s) in right else 50.0 * len(s) for s in seqs])
    assert ontology_benchmark(model, tokenizer, questions, bos_id=0)["accuracy"] == 1.0


def test_cli_eval_writes_json(tmp_path):
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    from igot.cli import main
    from igot.data import smollm2

    torch.manual_seed(0)
    folder = tmp_path / "tiny"
    LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(smollm2() / name, folder / name)
    assert main(["eval", "--model", str(folder), "--questions", "8", "--out", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["n"] == 8 and 0 <= result["accuracy"] <= 1 and result["chance"] == 0.25
    assert main(["eval", "--model", str(folder), "--bench", "bpb", "--heldout", "hpo:heldout", "--eval-docs", "3",
                 "--out", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["bpb"]["hpo:heldout"] > 0
