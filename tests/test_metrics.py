"""bits_per_byte against a naive reference: full logits + F.cross_entropy, one document at a time."""
import math

import pytest
import torch
import torch.nn.functional as F

from igot.metrics import bits_per_byte

TEXTS = ["Abnormality of the humerus.", "", "A short distal phalanx of the thumb, with 2 café aux lait spots.",
         "x" * 3, "Hypoplasia 🧬 of the nail"]


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
    nll, n_bytes = 0.0, 0
    for text in texts:
        enc = tokenizer.encode(text, add_special_tokens=False)
        ids = enc.ids[:max_tokens]
        if not ids:
            continue
        n_bytes += len(text[: enc.offsets[len(ids) - 1][1]].encode())
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
    assert got["bpb"] == pytest.approx(want, rel=1e-5)


def test_bits_per_byte_rejects_empty_input(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    with pytest.raises(ValueError, match="no document"):
        bits_per_byte(model, tokenizer, ["", ""], bos_id=0)
