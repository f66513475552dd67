"""Fused linear cross-entropy: the public op, its input checks, and its pure-torch twin.

loss = logsumexp(h·Wᵀ + b) − z[y] without ever holding the N×V logits. Targets may be [N] or [N, K]
(K targets per row sharing one softmax, the patch-level loss): each valid (row, target) pair adds
lse_row − z[row, target]. The Triton kernel (igot.kernels.fused_linear_ce) runs on CUDA; the twin here
is the CPU path and the test oracle. Both walk N in chunks of whole rows (the lse needs all of V) and,
when a backward will follow a "mean"/"sum" loss, make the gradients in the same pass: per chunk one
matmul for the logits and two for grad_hidden and grad_weight (3 in all, as naive torch and torch's
chunked F.linear_cross_entropy; a recompute in backward would take 4). The twin's peak memory is one
[chunk, V] buffer plus the gradients, not N×V.
"""
from __future__ import annotations

from typing import Literal

import torch

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")

# Logit given to vocabulary rows that vocab_mask excludes: exp(−1e30 − lse) is exactly 0 in fp32, and,
# unlike −inf, a block made only of excluded rows still has a finite maximum (no inf − inf = NaN).
MASKED_LOGIT = -1e30

# The twin's one [chunk, V] buffer holds at least _TWIN_CHUNK_ELEMENTS logits (64 MiB in fp32) and at
# least _TWIN_MIN_CHUNK_ROWS rows: every chunk reads and writes the whole fp32 grad_W once (8·V·H bytes
# against 2·C·V·H flops of its matmul), so short chunks cost grad_W traffic. At SmolLM2's shape
# (N = 4,096, H = 576, V = 51,200, fwd+bwd; bench_fused_linear_ce.py --twin-rows 256 1024, 2-core box)
# 256 / 512 / 1,024 rows took 8.56 / 7.82 / 7.53 CPU-seconds at a peak of 181 / 231 / 331 MiB, torch's
# chunked F.linear_cross_entropy with its 512-row chunks 8.03 CPU-seconds at 255 MiB.
_TWIN_CHUNK_ELEMENTS = 1 << 24
_TWIN_MIN_CHUNK_ROWS = 512


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
    else the chunked torch twin; float64 always uses the twin. With reduction "mean" or "sum" and grad
    mode on, the gradients are computed during forward (as in Liger-Kernel and torch's chunked
    F.linear_cross_entropy) and the backward only scales them, so one forward serves one backward (a
    second one raises RuntimeError); reduction "none" recomputes in backward and allows retain_graph.

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


def _twin_chunk_rows(n_rows: int, n_vocab: int) -> int:
    return max(1, min(n_rows, max(_TWIN_CHUNK_ELEMENTS // n_vocab, _TWIN_MIN_CHUNK_ROWS)))


def _acc_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)


def _twin_chunks(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    offset: torch.Tensor | None,
    targets: torch.Tensor,
    ignore_index: int,
    scale: torch.Tensor | None,
    need_grads: tuple[bool, bool, bool],
    lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """The twin's one loop over chunks of whole rows: per chunk, the logits (one matmul into a reused
    buffer), their logsumexp and loss, and with `scale` the gradients (two more matmuls).

    Args:
        hidden, weight, offset, targets, ignore_index: the prepared arguments of fused_linear_cross_entropy.
        scale: upstream gradient of each row's loss (0-d for all rows, or [N]), or None for no gradients.
        need_grads: which of the (hidden, weight, bias) gradients to make when scale is given.
        lse: the forward's per-row logsumexp when recomputing in backward (then no loss is made).
    Returns:
        (loss_rows [N], lse [N], grad_hidden, grad_weight, grad_bias) in the accumulation dtype (fp32, or
        float64 for float64 inputs); loss_rows is None when lse was given, a gradient None when not made.
    """
    n_rows, n_vocab = hidden.shape[0], weight.shape[0]
    acc_dtype, device = _acc_dtype(hidden), hidden.device
    need_hidden, need_weight, need_bias = need_grads if scale is not None else (False, False, False)
    recompute = lse is not None
    if not recompute:
        lse = torch.empty(n_rows, dtype=acc_dtype, device=device)  # [N]
    loss_rows = None if recompute else torch.empty(n_rows, dtype=acc_dtype, device=device)  # [N]
    grad_hidden = torch.empty((n_rows, hidden.shape[1]), dtype=acc_dtype, device=device) if need_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=device) if need_weight else None
    grad_bias = torch.zeros(n_vocab, dtype=acc_dtype, device=device) if need_bias else None
    # 16-bit inputs: the logits are made in the input dtype and widened (as the kernel and naive torch
    # do); the gradient matmuls run on fp32 operands, so fp32 copies of the weight and of each chunk.
    weight_acc = weight.to(acc_dtype) if need_hidden else None
    valid = targets != ignore_index  # [N, K]
    safe_targets = targets.clamp(min=0) * valid  # [N, K] ignored pairs read (and add 0 to) column 0
    if scale is not None:
        pair_scale = valid * scale.to(acc_dtype).expand(n_rows)[:, None]  # [N, K] d loss / d (lse − z) per pair
        row_scale = pair_scale.sum(1, keepdim=True)  # [N, 1]
    chunk = _twin_chunk_rows(n_rows, n_vocab)
    buffer = torch.empty((chunk, n_vocab), dtype=acc_dtype, device=device)  # [C, V], reused by every chunk
    for start in range(0, n_rows, chunk):
        rows = slice(start, min(start + chunk, n_rows))
        hidden_chunk = hidden[rows]  # [C, H]
        logits = buffer[: hidden_chunk.shape[0]]  # [C, V]
        if hidden.dtype == acc_dtype:
            torch.mm(hidden_chunk, weight.T, out=logits)
        else:
            logits.copy_(hidden_chunk @ weight.T)
        if offset is not None:
            logits += offset
        # The buffer is turned in place into exp(z − max), then softmax·scale: each pass reads and
        # writes it once, and no second [C, V] tensor is ever allocated.
        if recompute:
            logits.sub_(lse[rows, None]).exp_()  # softmax
        else:
            target_logits = logits.gather(1, safe_targets[rows])  # [C, K]
            row_max = logits.amax(1, keepdim=True)  # [C, 1]
            sum_exp = logits.sub_(row_max).exp_().sum(1, keepdim=True)  # [C, 1]
            lse[rows] = (row_max + sum_exp.log()).squeeze(1)
            loss_rows[rows] = (valid[rows] * (lse[rows, None] - target_logits)).sum(1)
        if scale is None:
            continue
        # d loss_r / d z_rj = scale_r·(n_valid_r·softmax_rj − #{k valid: y_rk = j})
        logits.mul_(row_scale[rows] if recompute else row_scale[rows] / sum_exp)
        logits.scatter_add_(1, safe_targets[rows], -pair_scale[rows])
        if need_hidden:
            torch.mm(logits, weight_acc, out=grad_hidden[rows])
        if need_weight:
            grad_weight.addmm_(logits.T, hidden_chunk.to(acc_dtype))
        if need_bias:
            grad_bias += logits.sum(0)
    return loss_rows, lse, grad_hidden, grad_weight, grad_bias


class TorchFusedLinearCEFunction(torch.autograd.Function):
    """The twin as an autograd Function over the prepared arguments of fused_linear_cross_entropy
    (hidden, weight, bias, targets [N, K] int64, offset, ignore_index, reduction, grad_enabled); returns
    (loss, lse [N]). The kernel's Function (igot.kernels.fused_linear_ce) is the same over its launcher."""

    @staticmethod
    def forward(ctx, *args):  # type: ignore[no-untyped-def]
        return _function_forward(ctx, _twin_chunks, *args)

    @staticmethod
    def backward(ctx, grad_loss, grad_lse):  # type: ignore[no-untyped-def]
        return _function_backward(ctx, _twin_chunks, grad_loss)


def _function_forward(ctx, chunks, hidden, weight, bias, targets, offset, ignore_index, reduction, grad_enabled):  # type: ignore[no-untyped-def]
    """Forward of both Functions; `chunks` is _twin_chunks or the kernel's launcher (same arguments).

    grad_enabled is the caller's torch.is_grad_enabled(): inside forward grad mode is always off, and
    ctx.needs_input_grad stays True under torch.no_grad, so without it an evaluation would pay for
    gradients. With reduction "mean"/"sum" and a gradient wanted, the gradients are made here (scaled
    by d loss / d pair) and kept for backward; otherwise the tensors a recompute needs are saved.
    """
    need_grads = tuple(grad_enabled and need for need in ctx.needs_input_grad[:3])
    unit_scale = _unit_scale(targets, ignore_index, reduction, _acc_dtype(hidden))
    ctx.grads_in_forward = reduction != "none" and any(need_grads)
    loss_rows, lse, *grads = chunks(hidden, weight, offset, targets, ignore_index,
                                    unit_scale if ctx.grads_in_forward else None, need_grads)
    ctx.mark_non_differentiable(lse)
    if ctx.grads_in_forward:
        ctx.grads = grads
    else:
        ctx.save_for_backward(hidden, weight, targets, offset, lse)
    ctx.ignore_index, ctx.need_grads = ignore_index, need_grads
    ctx.grad_dtypes = (weight.dtype, weight.dtype, None if bias is None else bias.dtype)  # hidden's is weight's
    if reduction == "none":
        return loss_rows, lse
    return loss_rows.sum() * unit_scale, lse


def _function_backward(ctx, chunks, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[no-untyped-def]
    """Backward of both Functions: scale the gradients made in forward (once only), or recompute them."""
    if ctx.grads_in_forward:
        if ctx.grads is None:
            raise RuntimeError("fused_linear_cross_entropy: backward ran twice; its gradients were made in "
                               "forward and are consumed by the first backward (run the forward again)")
        grads, ctx.grads, scale = ctx.grads, None, grad_loss
    else:
        hidden, weight, targets, offset, lse = ctx.saved_tensors
        grads = chunks(hidden, weight, offset, targets, ctx.ignore_index, grad_loss, ctx.need_grads, lse=lse)[2:]
        scale = None  # already folded in
    return (*(_scale_cast(grad, scale, dtype) for grad, dtype in zip(grads, ctx.grad_dtypes)),
            None, None, None, None, None)


def _unit_scale(targets: torch.Tensor, ignore_index: int, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    """0-d d loss / d pair_loss: 1 / (valid pairs) for "mean" (0 valid pairs: 1, all gradients are 0),
    else 1. Shared by the twin's and the kernel's Functions."""
    if reduction == "mean":
        return 1 / (targets != ignore_index).sum().clamp(min=1).to(dtype)
    return torch.ones((), dtype=dtype, device=targets.device)


def _scale_cast(grad: torch.Tensor | None, scale: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    """A gradient times scale, cast to dtype, in one pass (in place when the dtype is already right:
    the buffer belongs to this call alone)."""
    if grad is None:
        return None
    if scale is None:
        return grad.to(dtype)
    if dtype == grad.dtype:
        return grad.mul_(scale)
    return torch.mul(grad, scale, out=torch.empty(grad.shape, dtype=dtype, device=grad.device))
