"""bits_per_byte and sequence_nll against a naive reference: full logits + F.cross_entropy, one document at a time."""
import math

import pytest
import torch
import torch.nn.functional as F

from igot.metrics import bits_per_byte, sequence_nll

TEXTS = ["Abnormality of the humerus.", "", "A short distal phalanx of the thumb, with 2 café aux lait spots.",
         "x" * 3, "Hypoplasia of the nail 🧬"]


@pytest.fixture(scope="module")
def tiny_model_and_tokenizer():
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from igot.data import tokenizer_path

    tokenizer = Tokenizer.from_file(str(tokenizer_path("smollm2")))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).eval(), tokenizer


def _naive_bpb(model, tokenizer, texts, bos_id, max_tokens):
    """Reference: one document at a time; the bytes are counted from the kept tokens' strings (SmolLM2 is
    byte-level BPE: one alphabet character per byte), not from the offsets that bits_per_byte reads."""
    nll, n_bytes = 0.0, 0
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids[:max_tokens]
        if not ids:
            continue
        n_bytes += sum(len(tokenizer.id_to_token(i)) for i in ids)
        seq = torch.tensor([[bos_id] + ids])
        with torch.no_grad():
            logits = model(seq).logits[0, :-1].double()
        nll += float(F.cross_entropy(logits, seq[0, 1:], reduction="sum"))
    return nll / math.log(2) / n_bytes, n_bytes


@pytest.mark.parametrize("max_tokens,batch_tokens", [(1024, 2048), (5, 7), (1024, 1)])
def test_bits_per_byte_matches_naive_reference(tiny_model_and_tokenizer, max_tokens, batch_tokens):
    model, tokenizer = tiny_model_and_tokenizer
    got = bits_per_byte(model, tokenizer, TEXTS, bos_id=0, max_tokens=max_tokens, batch_tokens=batch_tokens)
    want, n_bytes = _naive_bpb(model, tokenizer, TEXTS, 0, max_tokens)
    assert got["bytes"] == n_bytes
    if max_tokens == 1024:  # nothing truncated: every byte of every text counts
        assert n_bytes == sum(len(t.encode()) for t in TEXTS)
    assert got["bpb"] == pytest.approx(want, rel=1e-5)


def test_sequence_nll_per_sequence(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    seqs = [[5, 6, 7], [], [9], [5, 6, 7, 8, 10]]
    got = sequence_nll(model, seqs, bos_id=0, batch_tokens=6)
    for seq, value in zip(seqs, got):
        if not seq:
            assert value == 0.0
            continue
        ids = torch.tensor([[0] + seq])
        with torch.no_grad():
            want = F.cross_entropy(model(ids).logits[0, :-1].double(), ids[0, 1:], reduction="sum")
        assert value == pytest.approx(float(want), rel=1e-5)


def test_bits_per_byte_refuses_a_single_string(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    with pytest.raises(TypeError, match=r"single str.*texts=\[text\]"):
        bits_per_byte(model, tokenizer, "Abnormality of the humerus.", bos_id=0)


@pytest.mark.parametrize("bos_id", [-1, 10**6])
def test_bits_per_byte_refuses_a_bos_id_outside_the_vocabulary(tiny_model_and_tokenizer, bos_id):
    model, tokenizer = tiny_model_and_tokenizer
    with pytest.raises(ValueError, match=f"bos_id={bos_id} is not a token"):
        bits_per_byte(model, tokenizer, TEXTS, bos_id=bos_id)


def test_bits_per_byte_rejects_empty_input(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    with pytest.raises(ValueError, match="no document"):
        bits_per_byte(model, tokenizer, ["", ""], bos_id=0)
