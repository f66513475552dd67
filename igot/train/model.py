"""The trainer's model side: the run's tokenizer, the grown model, the loss over patches, FLOPs, freezing."""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..corpus import load_tokenizer, untruncated
from ..model import _check_extension, causal_lm_parts, extend_model
from ..ops import fused_linear_cross_entropy
from .config import ModelConfig

# HF tokenizer files copied into final/ beside the model (whichever the tokenizer's folder has).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass
class RunTokenizer:
    """The tokenizer a run trains with: the model's own, or an extension of it."""

    tokenizer: Any  # tokenizers.Tokenizer, truncation and padding off
    json: str  # its tokenizer.json text
    files: dict[str, Path]  # HF file name -> path, copied into final/
    n_base: int  # ids of the model's own tokenizer; rows below this exist in the model already
    extended: bool  # whether model.tokenizer names an extension


def load_run_tokenizer(cfg: ModelConfig) -> RunTokenizer:
    """Load the run's tokenizer and check that it extends the model's (before the model is loaded).

    Raises:
        FileNotFoundError: model.path or model.tokenizer is missing or has no tokenizer.json.
        ValueError: model.tokenizer is not an extension of the model's tokenizer (names the first changed id).
    """
    model_dir = Path(cfg.path)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"model.path={cfg.path!r} is not a Hugging Face model folder (no config.json)")
    base = load_tokenizer(model_dir)
    new, tokenizer_dir = base, model_dir
    if cfg.tokenizer is not None:
        new = load_tokenizer(cfg.tokenizer)
        tokenizer_dir = Path(cfg.tokenizer) if Path(cfg.tokenizer).is_dir() else Path(cfg.tokenizer).parent
        try:
            _check_extension(base, new)
        except ValueError as exc:
            raise ValueError(f"model.tokenizer={cfg.tokenizer!r} does not extend the tokenizer of model.path: {exc}") from None
    files = {name: model_dir / name for name in _TOKENIZER_FILES if (model_dir / name).is_file()}
    if cfg.tokenizer is not None:
        files["tokenizer.json"] = tokenizer_dir / "tokenizer.json" if Path(cfg.tokenizer).is_dir() else Path(cfg.tokenizer)
        files |= {name: tokenizer_dir / name for name in _TOKENIZER_FILES[1:] if (tokenizer_dir / name).is_file()}
    n_base = max(base.get_vocab(with_added_tokens=True).values()) + 1
    new = untruncated(new)
    return RunTokenizer(new, new.to_str(), files, n_base, cfg.tokenizer is not None)


def separator_id(tokenizer: RunTokenizer, token: str | None, model_dir: str) -> int:
    """The id of data.separator, or of the tokenizer's eos token (tokenizer_config.json, else config.json).

    Raises:
        ValueError: the token is not in the vocabulary, or no eos token is known (set data.separator).
    """
    if token is None:
        config_file = tokenizer.files.get("tokenizer_config.json")
        eos = json.loads(config_file.read_text(encoding="utf-8")).get("eos_token") if config_file else None
        token = eos.get("content") if isinstance(eos, dict) else eos
    if token is None:
        eos_id = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get("eos_token_id")
        if isinstance(eos_id, int):
            return eos_id
        raise ValueError("the tokenizer names no eos token; set data.separator to the token placed between documents")
    token_id = tokenizer.tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"data.separator={token!r} is not a token of the run's tokenizer")
    return token_id


def load_model(cfg: ModelConfig, tokenizer: RunTokenizer, needs_embeds: bool) -> Any:
    """Load the causal LM in float32, grow it to the run's tokenizer, and check the fused loss applies.

    Args:
        cfg: [model].
        tokenizer: from load_run_tokenizer.
        needs_embeds: a stage trains on patches, so the body must accept inputs_embeds.
    Returns:
        The model on the CPU (model.igot_vocab_mask set when it was grown).
    Raises:
        ValueError: the model cannot be trained with the fused loss or on patches (the message says why).
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(cfg.path, dtype=torch.float32)
    body, _ = causal_lm_parts(model)
    if needs_embeds:
        check_accepts_embeds(body)
    if tokenizer.extended:
        extend_model(model, cfg.path, tokenizer.tokenizer, init=cfg.init, pad_to_multiple_of=cfg.pad_to_multiple_of)
    _check_head_gives_logits(model)
    return model


def check_accepts_embeds(body: Any) -> None:
    """Refuse a body whose forward takes no inputs_embeds (patch stages feed averaged embeddings).

    Raises:
        ValueError: naming the body's class and the way out (patch_size = 1).
    """
    if "inputs_embeds" not in inspect.signature(body.forward).parameters:
        raise ValueError(f"{type(body).__name__}.forward takes no inputs_embeds, so patch_size > 1 cannot train "
                         "it; use patch_size = 1 for this model")


def _check_head_gives_logits(model: Any) -> None:
    """Refuse a model whose logits are not head(last hidden state): the fused loss would train it wrongly."""
    body, head = causal_lm_parts(model)
    ids = torch.arange(1, 9)[None] % model.get_input_embeddings().weight.shape[0]  # [1, 8]
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits.float()
        got = head(body(input_ids=ids, use_cache=False).last_hidden_state).float()
        mask = getattr(model, "igot_vocab_mask", None)
        if mask is not None:
            want, got = want[..., mask], got[..., mask]
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise ValueError(f"{type(model).__name__}'s logits are not its head applied to the last hidden state "
                         "(a scaling or soft-capping step follows the head); igot's fused loss does not support it")


class CausalLMLoss(nn.Module):
    """The trained module: the model's body, then the fused loss against its head, over tokens or patches.

    forward(inputs [B, T*K], targets [B, T, K]) returns the summed loss of the B*T*K targets (fp32 scalar):
    for K = 1 the ordinary next-token loss; for K > 1 each position is the mean of K consecutive token
    embeddings, positions count patches, and each predicts all K tokens of the next patch from one softmax
    (loss per position = K * logsumexp - sum_k z[y_k]). Running the loss inside forward keeps DDP and FSDP2
    (which un-shards the head's weight for the root's forward) in charge of the head's gradient.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.body, self.head = causal_lm_parts(model)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        batch, positions, patch = targets.shape
        if patch == 1:
            hidden = self.body(input_ids=inputs, use_cache=False).last_hidden_state  # [B, T, H]
        else:
            embeds = self.body.get_input_embeddings()(inputs)  # [B, T*K, H]
            embeds = embeds.view(batch, positions, patch, -1).mean(2)  # [B, T, H]: one patch per position
            position_ids = torch.arange(positions, device=inputs.device)[None].expand(batch, -1)  # [B, T]
            hidden = self.body(inputs_embeds=embeds, position_ids=position_ids, use_cache=False).last_hidden_state
        weight, bias = self.head.weight, getattr(self.head, "bias", None)
        hidden = hidden.reshape(batch * positions, -1)  # [N, H]
        if torch.is_autocast_enabled(hidden.device.type):  # the head in the autocast dtype, fp32 accumulation
            dtype = torch.get_autocast_dtype(hidden.device.type)
            hidden, weight = hidden.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        elif hidden.dtype != weight.dtype:
            hidden = hidden.to(weight.dtype)
        return fused_linear_cross_entropy(hidden, weight, targets.reshape(batch * positions, patch), bias=bias,
                                          reduction="sum", vocab_mask=getattr(self.model, "igot_vocab_mask", None))


def parameter_counts(model: Any) -> dict[str, int]:
    """Parameters by role: total (each shared tensor once), embedding (input), head, non_embedding."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    total = sum(p.numel() for p in model.parameters())  # model.parameters() yields a tied weight once
    head_params = head.weight.numel() + (head.bias.numel() if getattr(head, "bias", None) is not None else 0)
    tied = head.weight is embedding
    non_embedding = total - head_params - (0 if tied else embedding.numel())
    return {"total": total, "embedding": embedding.numel(), "head": head_params, "non_embedding": non_embedding}


def flops_per_position(model: Any, seq_len: int) -> int:
    """Training FLOPs of one position (forward + backward), the DESIGN.md formula.

    6 * non-embedding parameters + 6 * head parameters + attention 12 * n_layer * d_model * seq_len; a
    patch position counts once (its K tokens share one forward and one softmax).
    """
    counts = parameter_counts(model)
    config = model.config.get_text_config()
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq_len
    return 6 * counts["non_embedding"] + 6 * counts["head"] + attention


class BodyFreeze:
    """Train only the new embedding rows: body frozen, rows below n_base kept exactly as they were.

    Gradients of the old rows are zeroed by a hook, and after each optimizer step the old rows are put
    back, since AdamW's decoupled weight decay would still shrink them.
    """

    def __init__(self, model: Any, n_base: int) -> None:
        self.model, self.n_base = model, n_base
        self.matrices = [model.get_input_embeddings().weight]
        head = model.get_output_embeddings()
        if head.weight is not self.matrices[0]:
            self.matrices.append(head.weight)
        self.saved = [m.detach()[:n_base].clone() for m in self.matrices]
        self.hooks = [m.register_hook(self._zero_old_rows) for m in self.matrices]
        matrix_ids = {id(m) for m in self.matrices}
        for p in model.parameters():
            p.requires_grad_(id(p) in matrix_ids)

    def _zero_old_rows(self, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[: self.n_base] = 0
        return grad

    def restore(self) -> None:
        """Put the old rows back after an optimizer step."""
        with torch.no_grad():
            for matrix, saved in zip(self.matrices, self.saved):
                matrix[: self.n_base] = saved

    def release(self) -> None:
        """End the freeze: every parameter trains again."""
        for hook in self.hooks:
            hook.remove()
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.saved = []
