"""extend_model on a tiny random Llama over the real SmolLM2 tokenizer (49,152 ids), and on SmolLM2-135M."""
import json
import math

import pytest
import torch
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from igot.model import extend_model

# Domain words the SmolLM2 tokenizer splits into 3-7 pieces, and characters whose intermediate merges are
# partial UTF-8 sequences ("ሴ" = e1 88 b4: the merge "áĪ" is two bytes of it, decoding to U+FFFD).
WORDS = (" hypertelorism", " brachydactyly", " craniosynostosis", " hepatosplenomegaly", " oligohydramnios",
         " macrocephaly", "ሴ", " 𐌰")
ADDED = "<|hpo|>"  # an added (special) token: literal text, split by decoding and re-encoding


def extend_by_hand(base_json, words=WORDS, added=(ADDED,)):
    """Append BPE merges that join each word's base pieces left to right (the appended-merges method).

    Returns the extended Tokenizer and {new id: base piece ids}; the entry made by the k-th merge of a
    word is the concatenation of the word's first k+1 base pieces, so those are its pieces.
    """
    base = Tokenizer.from_str(base_json)
    data = json.loads(base_json)
    vocab, merges = data["model"]["vocab"], data["model"]["merges"]
    for added_token in data["added_tokens"]:  # tokenizers renumbers added tokens missing from the model vocab
        vocab.setdefault(added_token["content"], added_token["id"])
    next_id = max(vocab.values()) + 1
    pieces_of = {}
    for word in words:
        ids = base.encode(word, add_special_tokens=False).ids
        left = base.id_to_token(ids[0])
        for k in range(1, len(ids)):
            right = base.id_to_token(ids[k])
            if left + right not in vocab:
                vocab[left + right] = next_id
                merges.append([left, right] if isinstance(merges[0], list) else f"{left} {right}")
                pieces_of[next_id] = ids[:k + 1]
                next_id += 1
            left += right
    for text in added:
        vocab[text] = next_id
        data["added_tokens"].append(dict(id=next_id, content=text, single_word=False, lstrip=False, rstrip=False,
                                         normalized=False, special=True))
        pieces_of[next_id] = base.encode(text, add_special_tokens=False).ids
        next_id += 1
    return Tokenizer.from_str(json.dumps(data)), pieces_of


@pytest.fixture(scope="module")
def smollm2_tokenizer_path():
    from igot.data import tokenizer_path

    return tokenizer_path("smollm2")


@pytest.fixture(scope="module")
def extension(smollm2_tokenizer_path):
    base_json = open(smollm2_tokenizer_path, encoding="utf-8").read()
    new, pieces_of = extend_by_hand(base_json)
    return Tokenizer.from_str(base_json), new, pieces_of


def tiny_llama(tied, seed=0, vocab_size=49152):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tied)
    return LlamaForCausalLM(config).eval()


def vocab_weights(model):
    return model.get_input_embeddings().weight, model.get_output_embeddings().weight


def expected_row(old, pieces, init):
    """float64 [H]: the mean (or exp(-i/2)-weighted mean) of the pieces' old rows, by a plain loop."""
    w = [1.0 if init == "mean" else math.exp(-i / 2) for i in range(len(pieces))]
    return sum(wi * old[p].double() for wi, p in zip(w, pieces)) / sum(w)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("init", ["mean", "weighted"])
def test_old_rows_kept_new_rows_from_pieces(extension, tied, init):
    base, new, pieces_of = extension
    model = tiny_llama(tied)
    old_emb, old_head = (w.detach().clone() for w in vocab_weights(model))
    n_base, n_new = 49152, new.get_vocab_size()
    assert n_new == n_base + len(pieces_of)

    extend_model(model, base, new, init=init)
    emb, head = vocab_weights(model)
    n_rows = math.ceil(n_new / 64) * 64
    assert emb.shape == head.shape == (n_rows, 64) and model.config.vocab_size == n_rows
    assert (head is emb) == tied
    assert torch.equal(emb[:n_base], old_emb) and torch.equal(head[:n_base], old_head)
    for new_id, pieces in pieces_of.items():
        torch.testing.assert_close(emb[new_id].double(), expected_row(old_emb, pieces, init), **_tolerance(emb))
        torch.testing.assert_close(head[new_id].double(), expected_row(old_head, pieces, init), **_tolerance(head))
    assert not emb[n_new:].any() and not head[n_new:].any()
    assert model.igot_vocab_mask.tolist() == [True] * n_new + [False] * (n_rows - n_new)


@pytest.mark.parametrize("name", ["gpt2", "mistral"])
def test_other_tokenizer_families(name):
    """Byte-level BPE with its special token after the vocab (GPT-2); SentencePiece BPE with "▁" (Mistral)."""
    from igot.data import tokenizer_path

    base_json = open(tokenizer_path(name), encoding="utf-8").read()
    base = Tokenizer.from_str(base_json)
    new, pieces_of = extend_by_hand(base_json, words=WORDS[:6] + (" café",))
    model = tiny_llama(tied=False, vocab_size=base.get_vocab_size())
    old_emb, old_head = (w.detach().clone() for w in vocab_weights(model))
    extend_model(model, base, new)
    emb, head = vocab_weights(model)
    for new_id, pieces in pieces_of.items():
        torch.testing.assert_close(emb[new_id].double(), expected_row(old_emb, pieces, "mean"), **_tolerance(emb))
        torch.testing.assert_close(head[new_id].double(), expected_row(old_head, pieces, "mean"), **_tolerance(head))


def test_padding_ids_never_win(extension):
    base, new, _ = extension
    model = extend_model(tiny_llama(tied=False), base, new)
    n_new, n_rows = new.get_vocab_size(), model.config.vocab_size
    with torch.no_grad():
        model.lm_head.weight[n_new:] = 100.0  # padding rows that would win every step if they were not masked
    prompt = torch.tensor([[1, 400, 5000, 49160]])
    logits = model(prompt).logits  # [1, 4, n_rows]
    assert torch.isneginf(logits[..., n_new:]).all() and torch.isfinite(logits[..., :n_new]).all()
    assert torch.isfinite(model(prompt, labels=prompt).loss)
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert generated.shape[1] == 10 and int(generated.max()) < n_new
    assert model.generation_config.suppress_tokens == list(range(n_new, n_rows))


def test_tokenizer_argument_kinds_give_the_same_rows(extension, smollm2_tokenizer_path, tmp_path):
    from transformers import PreTrainedTokenizerFast

    base, new, _ = extension
    new.save(str(tmp_path / "tokenizer.json"))
    reference = vocab_weights(extend_model(tiny_llama(tied=False), base, new))
    for base_arg, new_arg in ((str(smollm2_tokenizer_path), tmp_path),
                              (PreTrainedTokenizerFast(tokenizer_object=base), tmp_path / "tokenizer.json")):
        weights = vocab_weights(extend_model(tiny_llama(tied=False), base_arg, new_arg))
        assert all(torch.equal(a, b) for a, b in zip(weights, reference))


def test_not_an_extension_raises(extension):
    base, new, _ = extension
    data = json.loads(new.to_str())
    vocab = data["model"]["vocab"]
    a, b = base.id_to_token(300), base.id_to_token(400)
    vocab[a], vocab[b] = 400, 300
    swapped = Tokenizer.from_str(json.dumps(data))
    with pytest.raises(ValueError, match="id 300 is"):
        extend_model(tiny_llama(tied=True), base, swapped)
    with pytest.raises(ValueError, match="id 49152 is"):  # fewer tokens: the roles reversed
        extend_model(tiny_llama(tied=True), new, base)


def test_untied_flag_disagreeing_with_weights_raises(extension):
    base, new, _ = extension
    model = tiny_llama(tied=False)
    model.config.tie_word_embeddings = True
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        extend_model(model, base, new)


def test_cli_writes_a_model_that_reloads_with_its_padding_suppressed(extension, tmp_path):
    from transformers import AutoModelForCausalLM

    from igot.cli import main

    base, new, pieces_of = extension
    model = tiny_llama(tied=True)
    model.save_pretrained(tmp_path / "base")
    base.save(str(tmp_path / "base" / "tokenizer.json"))
    (tmp_path / "new").mkdir()
    new.save(str(tmp_path / "new" / "tokenizer.json"))
    assert main(["extend-model", "--model", str(tmp_path / "base"), "--new", str(tmp_path / "new"),
                 "--out", str(tmp_path / "out")]) == 0
    grown = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    n_new = new.get_vocab_size()
    assert grown.config.vocab_size == math.ceil(n_new / 64) * 64 and grown.lm_head.weight is grown.model.embed_tokens.weight
    assert torch.equal(grown.model.embed_tokens.weight[:49152], model.model.embed_tokens.weight)
    assert grown.generation_config.suppress_tokens == list(range(n_new, grown.config.vocab_size))
    assert Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json")).get_vocab_size() == n_new


def test_hf_init_keeps_old_rows(extension):
    base, new, _ = extension
    model = tiny_llama(tied=False)
    old_emb, old_head = (w.detach().clone() for w in vocab_weights(model))
    extend_model(model, base, new, init="hf", pad_to_multiple_of=None)
    emb, head = vocab_weights(model)
    n_new = new.get_vocab_size()
    assert emb.shape[0] == head.shape[0] == n_new == model.config.vocab_size
    assert torch.equal(emb[:49152], old_emb) and torch.equal(head[:49152], old_head)
    assert torch.isfinite(emb[49152:]).all() and emb[49152:].abs().sum() > 0


def test_pieces_recorded_by_extend_tokenizer(smollm2_tokenizer_path):
    from igot.vocab import extend_tokenizer

    domain = ["Hypertelorism with brachydactyly and craniosynostosis; hepatosplenomegaly in oligohydramnios."] * 40
    extended = extend_tokenizer(smollm2_tokenizer_path, domain, budget=12, method="frequency", progress=False)
    assert extended.new_tokens
    base = Tokenizer.from_file(str(smollm2_tokenizer_path))
    model = tiny_llama(tied=True)
    old = model.get_input_embeddings().weight.detach().clone()
    extend_model(model, smollm2_tokenizer_path, extended)
    emb = model.get_input_embeddings().weight
    for token in extended.new_tokens:
        assert "".join(base.id_to_token(p) for p in token.pieces) == token.token
        torch.testing.assert_close(emb[token.id].double(), expected_row(old, token.pieces, "mean"), **_tolerance(emb))


@pytest.mark.slow
def test_real_smollm2_135m(extension):
    from transformers import AutoModelForCausalLM

    from igot.data import smollm2

    base, new, pieces_of = extension
    model = AutoModelForCausalLM.from_pretrained(smollm2()).eval()
    assert model.lm_head.weight is model.get_input_embeddings().weight  # SmolLM2 ties its head
    old = model.get_input_embeddings().weight.detach().clone()
    extend_model(model, base, new)
    emb = model.get_input_embeddings().weight
    assert model.lm_head.weight is emb and torch.equal(emb[:49152], old)
    for new_id, pieces in pieces_of.items():
        torch.testing.assert_close(emb[new_id].double(), expected_row(old, pieces, "mean"), **_tolerance(emb))
    prompt = torch.tensor([base.encode("Hypertelorism is").ids])
    generated = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert int(generated.max()) < new.get_vocab_size()


def _tolerance(weight):
    """fp32 (or bf16) storage of a row accumulated in fp32, against the float64 reference."""
    return dict(atol=1e-6, rtol=1e-5) if weight.dtype == torch.float32 else dict(atol=1e-2, rtol=1.6e-2)
