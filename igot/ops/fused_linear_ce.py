"""Fused linear cross-entropy: the public op, its input checks, and its pure-torch twin.

loss = logsumexp(h·Wᵀ + b) − z[y] without ever holding the N×V logits. Targets may be [N] or [N, K]
(K targets per row sharing one softmax, the patch-level loss): each valid (row, target) pair adds
lse_row − z[row, target]. The Triton kernel (igot.kernels.fused_linear_ce) runs on CUDA; the twin here
is the CPU path and the test oracle: forward walks N in chunks of whole rows (the lse needs all of V),
backward recomputes the logits in slabs of V columns for all N rows; its peak memory is a chunk or slab
(about _TWIN_CHUNK_ELEMENTS logits) plus the fp32 gradients, not N×V.
"""
from __future__ import annotations

from typing import Literal

import torch

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")

# Logit given to vocabulary rows that vocab_mask excludes: exp(−1e30 − lse) is exactly 0 in fp32, and,
# unlike −inf, a block made only of excluded rows still has a finite maximum (no inf − inf = NaN).
MASKED_LOGIT = -1e30

# The twin holds a few fp32 buffers of this many logits ([chunk, V] in forward, [N, slab] in backward):
# 2**23 elements is 32 MiB each, small next to the N×V logits it replaces and large enough that the
# per-chunk matmuls stay efficient.
_TWIN_CHUNK_ELEMENTS = 1 << 23


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    vocab_mask: torch.Tensor | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the linear head `hidden @ weight.T + bias`, without materialising the logits.

    Each valid (row, target) pair contributes lse_row − z[row, target], where z = hidden·weightᵀ + bias
    and lse_row = logsumexp over the vocabulary rows that vocab_mask keeps. For targets [N] and
    reduction "mean" this is exactly F.cross_entropy(F.linear(hidden, weight, bias), targets); for
    targets [N, K] it is the patch-level loss lse − mean_k z[y_k] (all K targets share one softmax).
    Forward and backward (grads for hidden, weight, bias) run blockwise; logsumexp and the weight
    gradient are accumulated in fp32. CUDA tensors use the Triton kernel (igot.ops.use_triton), anything
    else the chunked torch twin; float64 always uses the twin. On the Triton path, with reduction "mean"
    or "sum" and grad mode on, the gradients are computed during forward (as in Liger-Kernel) and the
    backward only scales them, so one forward serves one backward (a second one raises RuntimeError).

    Args:
        hidden: [N, H] float16/bfloat16/float32/float64 activations.
        weight: [V, H] head weight, same dtype and device as hidden.
        targets: [N] or [N, K] integer class ids in [0, V), or ignore_index.
        bias: optional [V] head bias, same dtype as hidden.
        ignore_index: target value that contributes nothing (no loss, no gradient).
        reduction: "mean" divides the sum over valid pairs by their number (0 valid pairs give a loss of
            0 with zero gradients, never NaN); "sum" returns the sum; "none" returns the per-row sum [N]
            (0 for rows whose targets are all ignore_index).
        vocab_mask: optional bool [V]: True keeps a vocabulary row in the softmax, False excludes it
            (padding rows of a vocabulary padded to a multiple of 64). Excluded rows get zero gradient.
        return_lse: also return the per-row logsumexp [N] (not differentiable).
    Returns:
        The loss in fp32 (float64 for float64 inputs): a scalar, or [N] for reduction="none"; with
        return_lse, the pair (loss, lse [N]) with lse in the same dtype.
    Raises:
        TypeError: a tensor has the wrong dtype, or an argument is not a tensor.
        ValueError: shapes or devices disagree, reduction is unknown, vocab_mask keeps no row, or a valid
            target lies outside [0, V) or on a row that vocab_mask excludes (checked with one device sync).

    Example:
        >>> import torch
        >>> h, w, y = torch.randn(8, 16), torch.randn(50, 16), torch.randint(0, 50, (8,))
        >>> loss = fused_linear_cross_entropy(h, w, y)
    """
    targets_2d = _check_inputs(hidden, weight, targets, bias, ignore_index, reduction, vocab_mask)
    offset = _logit_offset(bias, vocab_mask)
    from . import use_triton

    if hidden.dtype != torch.float64 and use_triton(hidden, weight):
        from igot.kernels.fused_linear_ce import FusedLinearCEFunction as function
    else:
        function = TorchFusedLinearCEFunction
    loss, lse = function.apply(
        hidden.contiguous(), weight.contiguous(), bias, targets_2d, offset, int(ignore_index), reduction,
        torch.is_grad_enabled(),
    )
    return (loss, lse) if return_lse else loss


def _check_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    vocab_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Validate the arguments of fused_linear_cross_entropy; return targets as contiguous int64 [N, K]."""
    named = {"hidden": hidden, "weight": weight, "targets": targets, "bias": bias, "vocab_mask": vocab_mask}
    for name, value in named.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of {_REDUCTIONS}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    if hidden.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"hidden.dtype={hidden.dtype} is not a float16/bfloat16/float32/float64 dtype")
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"hidden must be [N, H] and weight [V, H]; got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    n_rows, n_hidden = hidden.shape
    n_vocab = weight.shape[0]
    if weight.shape[1] != n_hidden:
        raise ValueError(f"weight.shape={tuple(weight.shape)} does not match hidden's H={n_hidden}: weight must be [V, {n_hidden}]")
    if n_vocab == 0:
        raise ValueError("weight has V=0 rows: the softmax needs at least one vocabulary row")
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None and value.dtype != hidden.dtype:
            raise TypeError(f"{name}.dtype={value.dtype} differs from hidden.dtype={hidden.dtype}; cast it with .to({hidden.dtype})")
    if bias is not None and tuple(bias.shape) != (n_vocab,):
        raise ValueError(f"bias.shape={tuple(bias.shape)} must be (V,) = ({n_vocab},)")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"targets.dtype={targets.dtype} must be an integer dtype (class ids), e.g. torch.long")
    if targets.dim() not in (1, 2) or targets.shape[0] != n_rows or (targets.dim() == 2 and targets.shape[1] == 0):
        raise ValueError(f"targets.shape={tuple(targets.shape)} must be [N] or [N, K>=1] with N={n_rows}")
    if vocab_mask is not None:
        if vocab_mask.dtype != torch.bool:
            raise TypeError(f"vocab_mask.dtype={vocab_mask.dtype} must be torch.bool (True = keep the row)")
        if tuple(vocab_mask.shape) != (n_vocab,):
            raise ValueError(f"vocab_mask.shape={tuple(vocab_mask.shape)} must be (V,) = ({n_vocab},)")
    for name, value in named.items():
        if value is not None and value.device != hidden.device:
            raise ValueError(f"{name} is on {value.device} but hidden is on {hidden.device}; move it with .to({str(hidden.device)!r})")

    targets_2d = (targets if targets.dim() == 2 else targets[:, None]).to(torch.int64).contiguous()  # [N, K]
    valid = targets_2d != ignore_index
    bad = valid & ((targets_2d < 0) | (targets_2d >= n_vocab))
    if vocab_mask is not None:
        if not bool(vocab_mask.any()):
            raise ValueError("vocab_mask keeps no vocabulary row (all False); True marks rows to keep")
        bad |= valid & ~vocab_mask[targets_2d.clamp(0, n_vocab - 1)]
    if bool(bad.any()):  # the one device sync of the op
        first = targets_2d[bad][0].item()
        where = "outside [0, V)" if not 0 <= first < n_vocab else "on a row that vocab_mask excludes"
        raise ValueError(f"targets holds {first}, {where} (V={n_vocab}); use ignore_index={ignore_index} for positions without a target")
    return targets_2d


def _logit_offset(bias: torch.Tensor | None, vocab_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[V] term added to every row's logits (fp32; float64 for a float64 bias): the bias, and MASKED_LOGIT
    where vocab_mask is False."""
    if bias is None and vocab_mask is None:
        return None
    if bias is not None:
        offset = bias.detach().to(_acc_dtype(bias))
    else:
        offset = torch.zeros(vocab_mask.shape[0], device=vocab_mask.device)
    if vocab_mask is not None:
        offset = offset.masked_fill(~vocab_mask, MASKED_LOGIT)
    return offset.contiguous()


def _twin_chunk_rows(n_vocab: int) -> int:
    return max(1, _TWIN_CHUNK_ELEMENTS // n_vocab)


def _twin_slab_columns(n_rows: int) -> int:
    return max(1, _TWIN_CHUNK_ELEMENTS // max(n_rows, 1))


def _acc_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)


def _chunk_logits(hidden_chunk: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """Logits [C, V] of one chunk of rows, in fp32 (float64 for float64 inputs)."""
    logits = (hidden_chunk @ weight.T).to(_acc_dtype(hidden_chunk))
    return logits if offset is None else logits + offset


class TorchFusedLinearCEFunction(torch.autograd.Function):
    """Chunked pure-torch fused linear CE: forward keeps only the per-row lse, backward recomputes
    the logits slab by slab of the vocabulary. Takes the prepared arguments of fused_linear_cross_entropy (grad_enabled is
    unused: nothing here depends on whether a backward will come)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, offset, ignore_index, reduction, grad_enabled):  # type: ignore[no-untyped-def]
        n_rows = hidden.shape[0]
        chunk = _twin_chunk_rows(weight.shape[0])
        lse = torch.empty(n_rows, dtype=_acc_dtype(hidden), device=hidden.device)  # [N]
        loss_rows = torch.empty_like(lse)  # [N]
        valid = targets != ignore_index  # [N, K]
        for start in range(0, n_rows, chunk):
            rows = slice(start, start + chunk)
            logits = _chunk_logits(hidden[rows], weight, offset)  # [C, V]
            lse[rows] = torch.logsumexp(logits, dim=-1)
            target_logits = logits.gather(1, targets[rows].clamp(min=0) * valid[rows])  # [C, K]
            loss_rows[rows] = (valid[rows] * (lse[rows, None] - target_logits)).sum(1)
        n_valid = valid.sum()
        ctx.save_for_backward(hidden, weight, bias, targets, offset, lse, n_valid)
        ctx.ignore_index, ctx.reduction = ignore_index, reduction
        ctx.mark_non_differentiable(lse)
        if reduction == "none":
            return loss_rows, lse
        loss = loss_rows.sum()
        return (loss / n_valid.clamp(min=1) if reduction == "mean" else loss), lse

    @staticmethod
    def backward(ctx, grad_loss, grad_lse):  # type: ignore[no-untyped-def]
        hidden, weight, bias, targets, offset, lse, n_valid = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        n_rows, n_vocab = hidden.shape[0], weight.shape[0]
        acc_dtype = _acc_dtype(hidden)
        scale = grad_loss.to(acc_dtype)
        if ctx.reduction == "mean":
            scale = scale / n_valid.clamp(min=1)
        valid = targets != ctx.ignore_index  # [N, K]
        pair_scale = valid * scale.expand(n_rows)[:, None]  # [N, K] upstream gradient of each pair
        row_scale = pair_scale.sum(1, keepdim=True)  # [N, 1]
        hidden_acc = hidden.to(acc_dtype)
        grad_hidden = torch.zeros(hidden.shape, dtype=acc_dtype, device=hidden.device) if need_hidden else None
        grad_weight = torch.empty(weight.shape, dtype=acc_dtype, device=weight.device) if need_weight else None
        grad_bias = torch.empty(n_vocab, dtype=acc_dtype, device=weight.device) if need_bias else None
        # Backward walks V in slabs of all N rows (the lse is known): each slab's grad_W rows come from
        # one matmul, where walking N in chunks would read and write the whole fp32 grad_W per chunk.
        slab = _twin_slab_columns(n_rows)
        for start in range(0, n_vocab, slab):
            cols = slice(start, start + slab)
            # the same logits as forward (in the input dtype, then widened), so that they match its lse
            logits = _chunk_logits(hidden, weight[cols], None if offset is None else offset[cols])  # [N, S]
            weight_slab = weight[cols].to(acc_dtype)  # [S, H]
            # d loss_r / d z_rj = n_r·softmax_rj − #{k: y_rk = j}, times the row's upstream gradient
            grad_logits = torch.exp(logits - lse[:, None]) * row_scale
            in_slab = (targets >= start) & (targets < start + logits.shape[1]) & valid  # [N, K]
            grad_logits.scatter_add_(1, (targets - start) * in_slab, -pair_scale * in_slab)
            if need_hidden:
                grad_hidden.addmm_(grad_logits, weight_slab)
            if need_weight:
                torch.mm(grad_logits.T, hidden_acc, out=grad_weight[cols])
            if need_bias:
                grad_bias[cols] = grad_logits.sum(0)
        return (
            grad_hidden.to(hidden.dtype) if need_hidden else None,
            grad_weight.to(weight.dtype) if need_weight else None,
            grad_bias.to(bias.dtype) if need_bias else None,
            None, None, None, None, None,
        )
