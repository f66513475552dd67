"""Grow a causal LM to an extended tokenizer: new embedding rows initialised from their base pieces.

extend_model keeps every base token's row bit-identical, appends one row per new token to the input
embedding and the output head (once when they are tied), initialises each new row from the rows of the
base tokens the new token's text splits into (igot.ops.embedding_init: one kernel launch for both
matrices on a GPU), and pads the vocabulary to a multiple of `pad_to_multiple_of` with rows that can
never be predicted.

How padding rows are kept out (Llama heads have no bias to set to -inf):
- their rows in both matrices are zero;
- a forward hook on the output head sets their logits to -inf, so model(...).loss, greedy and sampled
  model.generate never see them;
- model.generation_config.suppress_tokens lists them, which survives save_pretrained/from_pretrained
  (the hook does not);
- model.igot_vocab_mask (bool [V_padded], True for real tokens; a non-persistent buffer, so it follows
  model.to(...)) is what a trainer passes to a fused loss that reads lm_head.weight directly.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch

from .corpus import load_tokenizer
from .ops.embedding_init import embedding_init
from .vocab import ExtendedTokenizer

InitMethod = Literal["mean", "weighted", "hf"]
_INITS = ("mean", "weighted", "hf")
# init="weighted": piece i (0-based, reading order) of a new token gets w_i = exp(-i / 2), normalised over
# the token's pieces. The first piece carries the word start ("Ġ"/"▁") and most of the token's identity
# in a left-to-right model, so it dominates: 2 pieces -> 0.62/0.38, 3 -> 0.51/0.31/0.19.
_WEIGHT_DECAY = 2.0
_MASK_BUFFER = "igot_vocab_mask"


def extend_model(
    model: Any,
    base_tokenizer: Any,
    new_tokenizer: Any,
    init: InitMethod = "mean",
    pad_to_multiple_of: int | None = 64,
) -> Any:
    """Grow a Hugging Face causal LM's embeddings to an extended tokenizer and initialise the new rows.

    Args:
        model: a transformers causal LM (e.g. LlamaForCausalLM), tied or untied head; changed in place.
        base_tokenizer: the model's tokenizer: tokenizers.Tokenizer, tokenizer.json path, HF folder, or a
            transformers fast tokenizer.
        new_tokenizer: its extension (same kinds, or an igot ExtendedTokenizer whose new_tokens carry
            their pieces): every base token keeps its id and new tokens follow.
        init: "mean" (FVT: mean of the pieces' rows), "weighted" (piece i weighted exp(-i/2), normalised),
            or "hf" (transformers' resize_token_embeddings default: samples around the mean/covariance
            of the old rows; for comparison).
        pad_to_multiple_of: round the row count up to this multiple (tensor-core friendly); None = no
            padding. Padding rows are zero, masked to -inf logits and listed in suppress_tokens.
    Returns:
        The same model: config.vocab_size and the matrices grown, model.igot_vocab_mask set.
    Raises:
        ValueError: unknown init, new_tokenizer is not an extension of base_tokenizer (names the first
            differing id), the model has fewer rows than the base tokenizer, the tie flag in the config
            disagrees with the weights, or a new token cannot be split into base tokens.
        TypeError / FileNotFoundError: a tokenizer argument of an unknown type / a missing path.

    Example:
        >>> model = extend_model(model, "SmolLM2/tokenizer.json", "out/tokenizer.json")  # doctest: +SKIP
    """
    if init not in _INITS:
        raise ValueError(f"init={init!r} is not one of {_INITS}")
    if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
        raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of!r}; pass a positive int or None")
    base = load_tokenizer(base_tokenizer)
    recorded = new_tokenizer.new_tokens if isinstance(new_tokenizer, ExtendedTokenizer) else None
    new = new_tokenizer.tokenizer if isinstance(new_tokenizer, ExtendedTokenizer) else load_tokenizer(new_tokenizer)
    n_base, n_new = _check_extension(base, new)
    offsets, piece_ids = _new_token_pieces(base, new, n_base, n_new, recorded)

    embeddings = model.get_input_embeddings()
    n_old = embeddings.weight.shape[0]
    if n_old < n_base:
        raise ValueError(f"the model has {n_old} embedding rows but base_tokenizer has {n_base} tokens; "
                         "pass the tokenizer the model was trained with")
    tied = _is_tied(model)
    n_rows = n_new if pad_to_multiple_of is None else math.ceil(n_new / pad_to_multiple_of) * pad_to_multiple_of
    n_rows = max(n_rows, n_old)  # never drop rows: a model already padded past n_new keeps its size
    if n_rows != n_old and init == "hf":
        model.resize_token_embeddings(n_rows, mean_resizing=True)
    elif n_rows != n_old:
        _grow_vocab_matrices(model, n_rows)
    if _is_tied(model) != tied:
        raise RuntimeError("growing the vocabulary changed whether the head is tied")  # internal invariant
    matrices = _vocab_matrices(model)

    with torch.no_grad():
        if init != "hf":
            # rows n_base..n_old-1 (padding of the old model, if any) are reused for new tokens
            embedding_init(matrices, offsets, piece_ids, _piece_weights(offsets, init), out_rows=n_base)
        for matrix in matrices:
            matrix[n_new:].zero_()
        head = model.get_output_embeddings()
        if head is not None and getattr(head, "bias", None) is not None:
            head.bias[n_new:].zero_()
    _mask_padding(model, n_new, n_rows)
    return model


# Config fields of models whose logits are not head(hidden): a fused loss that reads the head's weight
# would compute a different loss for them (Gemma 2/3 soft-capping, Cohere logit_scale, Granite scaling).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def causal_lm_parts(model: Any) -> tuple[Any, Any]:
    """Split a Hugging Face causal LM into the body that makes hidden states and the linear output head.

    Args:
        model: a transformers causal LM (LlamaForCausalLM, GPT2LMHeadModel, ...).
    Returns:
        (body, head): body(input_ids=... or inputs_embeds=..., attention_mask=..., position_ids=...)
        returns an output with .last_hidden_state; head is the output layer whose .weight [V, H] (and .bias)
        give the logits hidden @ weight.T + bias.
    Raises:
        ValueError: the model has no separate body or linear head, or transforms its logits after the head
            (soft-capping or scaling), which a loss over head.weight would not reproduce.
    """
    body = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or body is model or head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise ValueError(f"{type(model).__name__} is not a causal LM with a body (model.base_model) and a linear "
                         "output head (model.get_output_embeddings()); pass e.g. an AutoModelForCausalLM")
    config = model.config.get_text_config()
    for name in _LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            raise ValueError(f"{type(model).__name__} transforms its logits after the head ({name}={value}); "
                             "igot's fused loss reads the head's weight directly and does not support it")
    return body, head


def _grow_vocab_matrices(model: Any, n_rows: int) -> None:
    """Append zero rows to the input embedding and the head (and its bias) in place, keeping old rows.

    What resize_token_embeddings(mean_resizing=False) does, without its two random inits of the whole new
    matrix (nn.Embedding's own and _init_weights: 1.2 s of SmolLM2-135M's 1.8 s extend_model) whose new
    rows igot overwrites anyway. The Parameters stay the same objects (.data is swapped, as transformers
    does for the embedding), so a tied head stays tied and existing references stay valid.
    """
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embeddings.weight
    embeddings.weight.data = _with_zero_rows(embeddings.weight.data, n_rows)
    embeddings.num_embeddings = n_rows
    if head is not None:
        if not tied:
            head.weight.data = _with_zero_rows(head.weight.data, n_rows)
        if getattr(head, "bias", None) is not None:
            head.bias.data = _with_zero_rows(head.bias.data, n_rows)
        head.out_features = n_rows
    model.config.get_text_config().vocab_size = n_rows
    if hasattr(model, "vocab_size"):
        model.vocab_size = n_rows


def _with_zero_rows(matrix: torch.Tensor, n_rows: int) -> torch.Tensor:
    grown = matrix.new_zeros((n_rows, *matrix.shape[1:]))  # [n_rows, H] or [n_rows]
    grown[: matrix.shape[0]] = matrix
    return grown


def _mask_padding(model: Any, n_vocab: int, n_rows: int) -> None:
    """Keep rows n_vocab..n_rows-1 out of loss and generation (see the module docstring)."""
    device = model.get_input_embeddings().weight.device
    vocab_mask = torch.arange(n_rows, device=device) < n_vocab  # [V_padded] True for real tokens
    if _MASK_BUFFER in model._buffers:
        model._buffers[_MASK_BUFFER] = vocab_mask
    else:
        model.register_buffer(_MASK_BUFFER, vocab_mask, persistent=False)
    old_hook = getattr(model, "_igot_logits_hook", None)
    if old_hook is not None:
        old_hook.remove()
    head = model.get_output_embeddings()
    model._igot_logits_hook = head.register_forward_hook(_PaddedLogitsMask(n_vocab)) if head is not None else None
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        kept = [t for t in (generation_config.suppress_tokens or []) if t < n_vocab]
        generation_config.suppress_tokens = kept + list(range(n_vocab, n_rows)) or None


class _PaddedLogitsMask:
    """Forward hook on the output head: logits of padding ids (>= n_vocab) become -inf."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab

    def __call__(self, module: Any, args: Any, logits: torch.Tensor) -> torch.Tensor:
        # in place: the head's backward needs its input, not its output, so autograd is unaffected
        logits[..., self.n_vocab:] = float("-inf")
        return logits


def _is_tied(model: Any) -> bool:
    """Whether the head shares the input embedding's weight; raises if config and weights disagree."""
    head = model.get_output_embeddings()
    shared = head is not None and head.weight is model.get_input_embeddings().weight
    config = model.config.get_text_config()
    flag = bool(getattr(config, "tie_word_embeddings", False))
    if head is not None and shared != flag:
        raise ValueError(
            f"model.config.tie_word_embeddings={flag} but the output head {'shares' if shared else 'does not share'} "
            "the input embedding's weight; call model.tie_weights() or set config.tie_word_embeddings to match"
        )
    return shared


def _vocab_matrices(model: Any) -> list[torch.Tensor]:
    """The input embedding weight, plus the head's weight when it is a separate tensor."""
    matrices = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not matrices[0]:
        matrices.append(head.weight)
    return matrices


def _piece_weights(offsets: torch.Tensor, init: str) -> torch.Tensor | None:
    """None for the plain mean; for "weighted", exp(-i / _WEIGHT_DECAY) for piece i of each token."""
    if init == "mean":
        return None
    counts = offsets.diff()  # [M]
    position = torch.arange(int(offsets[-1])) - torch.repeat_interleave(offsets[:-1], counts)  # [P]
    return torch.exp(-position.double() / _WEIGHT_DECAY).float()


def _check_extension(base: Any, new: Any) -> tuple[int, int]:
    """(n_base, n_new) after checking that every base token keeps its id in new; ValueError otherwise."""
    base_vocab = base.get_vocab(with_added_tokens=True)
    new_vocab = new.get_vocab(with_added_tokens=True)
    n_base = max(base_vocab.values()) + 1
    n_new = max(new_vocab.values()) + 1
    changed = [i for token, i in base_vocab.items() if new_vocab.get(token) != i]
    if changed:
        first = min(changed)
        token = base.id_to_token(first)
        raise ValueError(
            f"new_tokenizer is not an extension of base_tokenizer: id {first} is {token!r} in the base but "
            f"{new.id_to_token(first)!r} in the new one; extend the model's own tokenizer (igot.extend_tokenizer)"
        )
    if n_new < n_base or len(new_vocab) < len(base_vocab):
        raise ValueError(f"new_tokenizer has {n_new} ids, fewer than the base's {n_base}; it is not an extension")
    return n_base, n_new


def _new_token_pieces(base: Any, new: Any, n_base: int, n_new: int, given: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR (offsets int64 [M+1], piece_ids int64 [P]) of base-token pieces for new ids n_base..n_new-1.

    Pieces an igot ExtendedTokenizer recorded (`given`: entries with .id and .pieces) are taken as they
    are. Otherwise a vocabulary token's string is in the model's alphabet (byte-level "Ġ..." or
    SentencePiece "▁..."), so the base BPE model splits that string directly and the pieces' strings must
    concatenate back to it: exact bytes, even for tokens that are partial UTF-8 characters. Added tokens
    (literal text) are decoded and re-encoded with the base tokenizer and must decode back to that text.
    """
    given_pieces = {int(t.id): [int(p) for p in t.pieces] for t in given or ()}
    added_ids = set(new.get_added_tokens_decoder())
    offsets, piece_ids = [0], []
    for new_id in range(n_base, n_new):
        token = new.id_to_token(new_id)
        if token is None:
            raise ValueError(f"new_tokenizer has no token with id {new_id}; new ids must follow the base ids without gaps")
        pieces = given_pieces.get(new_id)
        if pieces is None and new_id not in added_ids:
            pieces = _split_in_alphabet(base, token)
        if pieces is None:
            pieces = _split_as_text(base, new, new_id)
        if not pieces or min(pieces) < 0 or max(pieces) >= n_base:
            raise ValueError(f"new token {new_id} ({token!r}) has pieces {pieces}; each must be a base id < {n_base}")
        piece_ids += pieces
        offsets.append(len(piece_ids))
    return torch.tensor(offsets, dtype=torch.int64), torch.tensor(piece_ids, dtype=torch.int64)


def _split_in_alphabet(base: Any, token: str) -> list[int] | None:
    """Base ids whose strings concatenate to the vocabulary string token, or None when the model cannot."""
    try:
        pieces = [piece.id for piece in base.model.tokenize(token)]
    except Exception:  # a model that cannot tokenize this alphabet string (e.g. no unk token): use text
        return None
    if not pieces or "".join(base.id_to_token(p) or "" for p in pieces) != token:
        return None
    return pieces


def _split_as_text(base: Any, new: Any, new_id: int) -> list[int]:
    """Base ids of the decoded text of new_id, checked to decode back to the same text."""
    text = new.decode([new_id], skip_special_tokens=False)
    pieces = base.encode(text, add_special_tokens=False).ids if text else []
    if not pieces or "\ufffd" in text or base.decode(pieces, skip_special_tokens=False) != text:
        raise ValueError(
            f"cannot split new token {new_id} ({new.id_to_token(new_id)!r}) into base tokens that give back its bytes"
        )
    return pieces
