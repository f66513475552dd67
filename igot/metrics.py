"""Evaluation metrics that compare models with different tokenizers.

Bits per byte (BPB) = Σ NLL / ln 2 / UTF-8 bytes of the evaluated text (DESIGN.md "Metrics"). Each
document is evaluated on its own, prefixed with one `bos_id` token so that its first real token is
predicted too; the loss runs through igot.ops.fused_linear_cross_entropy, so the N×V logits of a large
vocabulary are never materialised, and padding rows (model.igot_vocab_mask from igot.extend_model) are
kept out of the softmax.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


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
        model: a transformers causal LM with a linear output head (see igot.model.causal_lm_parts); a
            model grown by igot.extend_model has its padding rows excluded through model.igot_vocab_mask.
        tokenizer: a tokenizers.Tokenizer (or anything with .encode(text, add_special_tokens=False) giving
            .ids and .offsets).
        texts: the documents (a list or other iterable of str; a single str is refused); each is
            truncated to its first `max_tokens` tokens, and only the bytes of the kept tokens are counted.
        bos_id: the id prefixed to each document (e.g. the model's bos or end-of-text token).
        max_tokens: the most tokens evaluated per document (the model's context minus one at most).
        batch_tokens: documents are packed into forward passes of about this many tokens.
    Returns:
        {"bpb": bits per byte, "nll_nats": total NLL, "tokens": predicted tokens, "bytes": UTF-8 bytes,
         "bytes_per_token": bytes / tokens}.
    Raises:
        TypeError: texts is a single str (it would be read as one document per character).
        ValueError: no document has a token, max_tokens < 1, or bos_id is not a row of the model's head.
    """
    if isinstance(texts, str):
        raise TypeError("texts is a single str; pass a list of documents, e.g. texts=[text]")
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be >= 1")
    docs, n_bytes = [], 0  # token ids of each non-empty document, and the bytes they cover
    for text in texts:
        encoding = tokenizer.encode(text, add_special_tokens=False)
        ids = encoding.ids[:max_tokens]
        if ids:
            docs.append(ids)
            n_bytes += len(text[: encoding.offsets[len(ids) - 1][1]].encode("utf-8"))
    if not docs:
        raise ValueError("no document has a token to evaluate; pass non-empty texts")
    nll = sequence_nll(model, docs, bos_id=bos_id, batch_tokens=batch_tokens)
    total_nll, total_tokens = float(sum(nll)), sum(map(len, docs))
    return {
        "bpb": total_nll / math.log(2) / n_bytes,
        "nll_nats": total_nll,
        "tokens": float(total_tokens),
        "bytes": float(n_bytes),
        "bytes_per_token": n_bytes / total_tokens,
    }


def sequence_nll(model: Any, sequences: Sequence[Sequence[int]], *, bos_id: int,
                 batch_tokens: int = 2048) -> list[float]:
    """Sum of the negative log-likelihoods (nats) of each token sequence, each prefixed with bos_id.

    Args:
        model: a transformers causal LM with a linear output head (see igot.model.causal_lm_parts).
        sequences: token id sequences (lists or 1-D integer arrays), each evaluated on its own; an empty
            one gets 0.
        bos_id: the id put before each sequence so that its first token is predicted too.
        batch_tokens: sequences are packed, shortest first, into forward passes of about this many ids.
    Returns:
        One float per sequence, in the order given.
    Raises:
        ValueError: bos_id is not a row of the model's head (or a row its vocab_mask excludes).
    """
    import numpy as np
    import torch

    from .model import causal_lm_parts
    from .ops import fused_linear_cross_entropy

    body, head = causal_lm_parts(model)
    vocab_mask = getattr(model, "igot_vocab_mask", None)
    n_rows = head.weight.shape[0]
    if not 0 <= bos_id < n_rows or (vocab_mask is not None and not bool(vocab_mask[bos_id])):
        raise ValueError(f"bos_id={bos_id} is not a token of the model (its head has {n_rows} rows); pass the "
                         "model's bos or end-of-text id, e.g. model.config.bos_token_id")
    device = head.weight.device
    nll = [0.0] * len(sequences)
    order = [i for i in sorted(range(len(sequences)), key=lambda i: len(sequences[i])) if len(sequences[i])]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in _length_sorted_batches(order, [len(sequences[i]) + 1 for i in order], batch_tokens):
            width = len(sequences[batch[-1]]) + 1  # the longest: batches are sorted, so padding stays small
            inputs = torch.full((len(batch), width), bos_id, dtype=torch.long)  # [B, T], right-padded
            targets = torch.full((len(batch), width), -100, dtype=torch.long)  # [B, T]
            attention = torch.zeros((len(batch), width), dtype=torch.long)  # [B, T]
            for row, index in enumerate(batch):
                seq = torch.tensor(np.asarray(sequences[index], dtype=np.int64))  # copies a read-only memmap
                inputs[row, 1: len(seq) + 1] = seq
                targets[row, : len(seq)] = seq
                attention[row, : len(seq) + 1] = 1
            hidden = body(input_ids=inputs.to(device), attention_mask=attention.to(device)).last_hidden_state
            valid = (targets != -100).to(device)  # [B, T]; only these rows reach the head
            rows = fused_linear_cross_entropy(
                hidden[valid], head.weight, targets.to(device)[valid], bias=getattr(head, "bias", None), reduction="none",
                vocab_mask=vocab_mask,
            ).double()  # [N_valid] in row-major order of (sequence, position)
            per_seq = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(
                0, valid.nonzero()[:, 0], rows)
            for row, index in enumerate(batch):
                nll[index] = float(per_seq[row])
    model.train(was_training)
    return nll


def _length_sorted_batches(order: list[int], lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Group items (already sorted by length) so that each padded batch holds at most about batch_tokens ids."""
    batches: list[list[int]] = []
    for index, length in zip(order, lengths):
        if batches and (len(batches[-1]) + 1) * length <= max(batch_tokens, length):
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches
