"""Evaluation metrics that compare models with different tokenizers.

Bits per byte (BPB) = Σ NLL / ln 2 / UTF-8 bytes of the evaluated text (DESIGN.md "Metrics"). Each
document is evaluated on its own, prefixed with one `bos_id` token so that its first real token is
predicted too; the loss runs through igot.ops.fused_linear_cross_entropy, so the N×V logits of a large
vocabulary are never materialised, and padding rows (model.igot_vocab_mask from igot.extend_model) are
kept out of the softmax.
"""
from __future__ import annotations

import math
from typing import Any, Iterable


def bits_per_byte(
    model: Any,
    tokenizer: Any,
    texts: Iterable[str],
    *,
    bos_id: int,
    max_tokens: int = 1024,
    batch_tokens: int = 2048,
) -> dict[str, float]:
    """Measure a causal LM's bits per byte on documents.

    Args:
        model: a transformers causal LM whose get_output_embeddings() is a bias-free linear head and
            whose `.model` returns last_hidden_state (Llama-style); a model grown by igot.extend_model
            has its padding rows excluded through model.igot_vocab_mask.
        tokenizer: a tokenizers.Tokenizer (or anything with .encode(text, add_special_tokens=False).ids).
        texts: the documents; each is truncated to its first `max_tokens` tokens, and only the bytes of
            the kept tokens are counted.
        bos_id: the id prefixed to each document (e.g. the model's bos or end-of-text token).
        max_tokens: the most tokens evaluated per document (the model's context minus one at most).
        batch_tokens: documents are packed into forward passes of about this many tokens.
    Returns:
        {"bpb": bits per byte, "nll_nats": total NLL, "tokens": predicted tokens, "bytes": UTF-8 bytes,
         "bytes_per_token": bytes / tokens}.
    Raises:
        ValueError: no document has a token, or max_tokens < 1.
    """
    import torch

    from .ops import fused_linear_cross_entropy

    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be >= 1")
    head = model.get_output_embeddings()
    vocab_mask = getattr(model, "igot_vocab_mask", None)
    device = head.weight.device
    docs = []  # (ids, n_bytes) per non-empty document
    for text in texts:
        encoding = tokenizer.encode(text, add_special_tokens=False)
        ids = encoding.ids[:max_tokens]
        if ids:
            end = encoding.offsets[len(ids) - 1][1]
            docs.append((ids, len(text[:end].encode("utf-8"))))
    if not docs:
        raise ValueError("no document has a token to evaluate; pass non-empty texts")

    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in _length_sorted_batches([[bos_id] + ids for ids, _ in docs], batch_tokens):
            width = len(batch[-1])  # the longest: batches are sorted by length, so padding stays small
            inputs = torch.full((len(batch), width), bos_id, dtype=torch.long)  # [B, T], right-padded
            targets = torch.full((len(batch), width), -100, dtype=torch.long)  # [B, T]
            attention = torch.zeros((len(batch), width), dtype=torch.long)  # [B, T]
            for row, seq in enumerate(batch):
                inputs[row, : len(seq)] = torch.tensor(seq)
                targets[row, : len(seq) - 1] = torch.tensor(seq[1:])
                attention[row, : len(seq)] = 1
            hidden = model.model(input_ids=inputs.to(device), attention_mask=attention.to(device)).last_hidden_state
            valid = (targets != -100).to(device)  # [B, T]; only these rows reach the head
            total_nll += float(fused_linear_cross_entropy(
                hidden[valid], head.weight, targets.to(device)[valid], reduction="sum", vocab_mask=vocab_mask,
            ))
            total_tokens += int(valid.sum())
    model.train(was_training)
    total_bytes = sum(n for _, n in docs)
    return {
        "bpb": total_nll / math.log(2) / total_bytes,
        "nll_nats": total_nll,
        "tokens": float(total_tokens),
        "bytes": float(total_bytes),
        "bytes_per_token": total_bytes / total_tokens,
    }


def _length_sorted_batches(seqs: list[list[int]], batch_tokens: int) -> list[list[list[int]]]:
    """Group sequences, shortest first, so that each padded batch holds at most about batch_tokens ids."""
    batches: list[list[list[int]]] = []
    for seq in sorted(seqs, key=len):
        if batches and (len(batches[-1]) + 1) * len(seq) <= max(batch_tokens, len(seq)):
            batches[-1].append(seq)
        else:
            batches.append([seq])
    return batches
