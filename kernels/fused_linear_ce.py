"""Fused linear cross-entropy on the GPU: Triton row kernels, chunk launchers, autograd Function.

Design (one pass over the tokens in chunks of rows, never the N×V logits):
  per chunk of C rows: logits = h_c·Wᵀ (cuBLAS, tensor cores) into one reused [C, V] buffer;
  `_fused_linear_ce_fwd_kernel` (one program per row) streams over V in blocks with an online
  logsumexp in fp32, reads the K target logits, and, when gradients are wanted, overwrites the buffer
  with d_logits = (n_valid·softmax − onehot_count)·scale; then grad_h_c = d·W and
  grad_W += dᵀ·h_c (fp32 accumulator), grad_b += Σ_rows d.
With reduction "mean"/"sum" and a backward guaranteed (some input requires grad), the gradients are made
inside forward (as Liger-Kernel and torch's chunked linear_cross_entropy do): 3 matmuls of N·V·H
(6·N·V·H flops, like naive torch) instead of 4 for a recompute in backward; backward only scales them by
the upstream gradient. With reduction "none" the upstream gradient differs per row, so forward keeps the
per-row lse and `_fused_linear_ce_bwd_kernel` recomputes each chunk in backward.
A fully fused tl.dot kernel (Apple's Cut Cross-Entropy) needs the lse before the softmax, hence 4 matmuls
of N·V·H plus atomics on both gradients; at these shapes cuBLAS on 3 matmuls is the faster route.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from igot.ops.fused_linear_ce import _function_backward, _function_forward

# Measured on an H100 (bf16, V=131,072, N=8,192, H=4,096, fwd+bwd; benchmarks/bench_fused_linear_ce.py
# --gpu --tune): BLOCK_V 1024..8192 × num_warps 4/8/16 all gave 51.3-53.6 ms with 1,024-row chunks and
# 43.4-43.5 ms with 2,048-row chunks (the row kernel is memory-bound and small next to the matmuls).
_BLOCK_V = 4096
_NUM_WARPS = 8
# Rows per chunk: max(H, _MIN_CHUNK_ROWS). Each chunk reads and writes the fp32 grad_W once
# (8·V·H bytes) against 2·C·V·H flops of its grad_W matmul, so small C turns chunks memory-bound; and
# with C <= H the [C, V] logits buffer is no larger than the bf16 grad_W that the final cast allocates,
# so it does not raise the peak. H100 sweep at V=131,072, H=4,096 (fwd+bwd ms, peak GiB):
#   N=8,192:  1,024 rows 50.1; 2,048 rows 43.5; 4,096 rows 42.4 (4.16); 8,192 rows 42.4 (5.16)
#   N=32,768: 1,024 rows 195.0; 2,048 rows 174.3; 4,096 rows 165.7 (4.53); 8,192 rows 163.7 (5.53)
_MIN_CHUNK_ROWS = 2048

# probed once per device type: does torch.addmm(..., out_dtype=torch.float32) run on 16-bit operands?
_addmm_out_dtype_works: dict[str, bool] = {}


@triton.jit
def _write_logits_grad(
    row_ptr, offset_ptr, target_ptr, lse, n_valid, scale, n_vocab, ignore_index,
    K: tl.constexpr, HAS_OFFSET: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Overwrite one row of logits with scale·(n_valid·softmax − count of each valid target)."""
    for start in range(0, n_vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        in_range = cols < n_vocab
        logits = tl.load(row_ptr + cols, mask=in_range, other=0.0).to(tl.float32)
        if HAS_OFFSET:
            logits += tl.load(offset_ptr + cols, mask=in_range, other=0.0)
        grad = tl.exp(logits - lse) * (n_valid * scale)
        for k in tl.static_range(K):
            target = tl.load(target_ptr + k)
            grad -= tl.where((cols == target) & (target != ignore_index), scale, 0.0)
        tl.store(row_ptr + cols, grad.to(row_ptr.dtype.element_ty), mask=in_range)


@triton.jit
def _fused_linear_ce_fwd_kernel(
    logits_ptr, stride_logits, offset_ptr, targets_ptr, stride_targets, scale_ptr, stride_scale,
    lse_ptr, loss_ptr, n_vocab, ignore_index,
    K: tl.constexpr, HAS_OFFSET: tl.constexpr, COMPUTE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """One row: online fp32 logsumexp over V blocks, the row's loss, and (COMPUTE_GRAD) d_logits in place."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_logits
    target_ptr = targets_ptr + row * stride_targets
    running_max = float("-inf")
    running_sum = 0.0
    for start in range(0, n_vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        in_range = cols < n_vocab
        logits = tl.load(row_ptr + cols, mask=in_range, other=float("-inf")).to(tl.float32)
        if HAS_OFFSET:
            logits += tl.load(offset_ptr + cols, mask=in_range, other=0.0)
        # every block holds an in-range column, so new_max is finite (excluded rows sit at −1e30, not −inf)
        new_max = tl.maximum(running_max, tl.max(logits, 0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max), 0)
        running_max = new_max
    lse = running_max + tl.log(running_sum)

    n_valid = 0.0
    target_logit_sum = 0.0
    for k in tl.static_range(K):
        target = tl.load(target_ptr + k)
        valid = target != ignore_index
        safe_target = tl.where(valid, target, 0)
        target_logit = tl.load(row_ptr + safe_target).to(tl.float32)
        if HAS_OFFSET:
            target_logit += tl.load(offset_ptr + safe_target)
        target_logit_sum += tl.where(valid, target_logit, 0.0)
        n_valid += valid.to(tl.float32)
    tl.store(lse_ptr + row, lse)
    tl.store(loss_ptr + row, n_valid * lse - target_logit_sum)

    if COMPUTE_GRAD:
        scale = tl.load(scale_ptr + row * stride_scale)
        _write_logits_grad(row_ptr, offset_ptr, target_ptr, lse, n_valid, scale, n_vocab, ignore_index,
                           K, HAS_OFFSET, BLOCK_V)


@triton.jit
def _fused_linear_ce_bwd_kernel(
    logits_ptr, stride_logits, offset_ptr, targets_ptr, stride_targets, scale_ptr, stride_scale,
    lse_ptr, n_vocab, ignore_index,
    K: tl.constexpr, HAS_OFFSET: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """One row of recomputed logits, given its lse: overwrite it with d_logits."""
    row = tl.program_id(0).to(tl.int64)
    target_ptr = targets_ptr + row * stride_targets
    n_valid = 0.0
    for k in tl.static_range(K):
        n_valid += (tl.load(target_ptr + k) != ignore_index).to(tl.float32)
    _write_logits_grad(logits_ptr + row * stride_logits, offset_ptr, target_ptr, tl.load(lse_ptr + row),
                       n_valid, tl.load(scale_ptr + row * stride_scale), n_vocab, ignore_index,
                       K, HAS_OFFSET, BLOCK_V)


def fused_linear_ce_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    offset: torch.Tensor | None,
    targets: torch.Tensor,
    ignore_index: int,
    scale: torch.Tensor | None = None,
    need_grads: tuple[bool, bool, bool] = (False, False, False),
    lse: torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Per-row loss and lse; with `scale`, also the gradients (hidden, weight, bias) scaled by it; with
    `lse` (the backward of reduction "none"), only the gradients, recomputing each chunk's logits.

    Args:
        hidden: [N, H] contiguous; weight: [V, H] contiguous, same dtype.
        offset: fp32 [V] added to every row's logits (bias and vocab_mask), or None.
        targets: int64 [N, K]; ignore_index: target value that counts for nothing.
        scale: fp32 upstream gradient of each row's loss, 0-d (all rows) or [N]; None for no gradients.
        need_grads: which of (hidden, weight, bias) gradients to make when scale is given.
        lse: fp32 [N] from an earlier call, or None to compute it (and the loss).
        chunk_rows: rows per chunk (None: max(H, _MIN_CHUNK_ROWS)).
    Returns:
        (loss_rows fp32 [N] or None when lse was given, lse fp32 [N], grad_hidden, grad_weight,
        grad_bias); a gradient is None when not asked for; grad_weight and grad_bias are fp32.
    """
    n_rows, n_vocab = hidden.shape[0], weight.shape[0]
    device = hidden.device
    recompute = lse is not None
    compute_grad = scale is not None
    need_hidden, need_weight, need_bias = need_grads if compute_grad else (False, False, False)
    if not recompute:
        lse = torch.empty(n_rows, dtype=torch.float32, device=device)  # [N]
    loss_rows = None if recompute else torch.empty(n_rows, dtype=torch.float32, device=device)  # [N]
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = torch.empty(weight.shape, dtype=torch.float32, device=device) if need_weight else None
    grad_bias = torch.zeros(n_vocab, dtype=torch.float32, device=device) if need_bias else None
    if compute_grad:
        scale = scale.float()
        stride_scale = scale.stride(0) if scale.dim() == 1 else 0
    else:
        scale, stride_scale = lse, 0  # never read: COMPUTE_GRAD is off
    chunk = min(chunk_rows or _default_chunk_rows(hidden.shape[1]), max(n_rows, 1))
    logits_buffer = torch.empty((chunk, n_vocab), dtype=hidden.dtype, device=device)  # [C, V]
    block_v = min(_BLOCK_V, triton.next_power_of_2(n_vocab))
    offset_arg = offset if offset is not None else lse  # dummy pointer when HAS_OFFSET is off
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        hidden_chunk = hidden[start:stop]  # [C, H]
        logits = logits_buffer[: stop - start]  # [C, V]
        torch.mm(hidden_chunk, weight.T, out=logits)
        scale_chunk = scale[start:stop] if stride_scale else scale
        common = dict(K=targets.shape[1], HAS_OFFSET=offset is not None, BLOCK_V=block_v, num_warps=_NUM_WARPS)
        if recompute:
            _fused_linear_ce_bwd_kernel[(stop - start,)](
                logits, logits.stride(0), offset_arg, targets[start:stop], targets.stride(0),
                scale_chunk, stride_scale, lse[start:stop], n_vocab, ignore_index, **common,
            )
        else:
            _fused_linear_ce_fwd_kernel[(stop - start,)](
                logits, logits.stride(0), offset_arg, targets[start:stop], targets.stride(0),
                scale_chunk, stride_scale, lse[start:stop], loss_rows[start:stop], n_vocab, ignore_index,
                COMPUTE_GRAD=compute_grad, **common,
            )
        if need_hidden:
            torch.mm(logits, weight, out=grad_hidden[start:stop])
        if need_weight:
            _accumulate_weight_grad(grad_weight, logits, hidden_chunk, first=start == 0)
        if need_bias:
            grad_bias += logits.sum(0, dtype=torch.float32)
    if need_weight and n_rows == 0:
        grad_weight.zero_()
    return loss_rows, lse, grad_hidden, grad_weight, grad_bias


def _default_chunk_rows(n_hidden: int) -> int:
    return max(n_hidden, _MIN_CHUNK_ROWS)


def _accumulate_weight_grad(grad_weight: torch.Tensor, grad_logits: torch.Tensor, hidden_chunk: torch.Tensor,
                            first: bool) -> None:
    """grad_weight (fp32 [V, H]) += grad_logitsᵀ·hidden_chunk (= on the first chunk: no zero-fill pass),
    summed in fp32 also for 16-bit inputs."""
    beta = 0.0 if first else 1.0  # beta=0: the uninitialised accumulator is not read
    if grad_logits.dtype == torch.float32:
        torch.addmm(grad_weight, grad_logits.T, hidden_chunk, beta=beta, out=grad_weight)
        return
    device_type = grad_weight.device.type
    if _addmm_out_dtype_works.get(device_type, True):
        try:  # cuBLAS: 16-bit operands, fp32 accumulator read and written in place
            torch.addmm(grad_weight, grad_logits.T, hidden_chunk, beta=beta, out_dtype=torch.float32, out=grad_weight)
            _addmm_out_dtype_works[device_type] = True
            return
        except (RuntimeError, TypeError, NotImplementedError):
            _addmm_out_dtype_works[device_type] = False
    # No 16-bit x 16-bit -> fp32 addmm here (CPU, where CI runs the kernels interpreted): widen the
    # operands instead (a [C, V] fp32 copy), so that no partial sum is ever rounded to 16 bits.
    torch.addmm(grad_weight, grad_logits.T.float(), hidden_chunk.float(), beta=beta, out=grad_weight)


class FusedLinearCEFunction(torch.autograd.Function):
    """Autograd Function over the launcher; takes the prepared arguments of
    igot.ops.fused_linear_cross_entropy (hidden, weight, bias, targets [N, K] int64, offset, ignore_index,
    reduction, grad_enabled) and returns (loss fp32, lse fp32 [N]). Its forward and backward are the
    torch twin's (igot.ops.fused_linear_ce) with this launcher in place of the twin's chunk loop."""

    @staticmethod
    def forward(ctx, *args):  # type: ignore[no-untyped-def]
        return _function_forward(ctx, fused_linear_ce_forward, *args)

    @staticmethod
    def backward(ctx, grad_loss, grad_lse):  # type: ignore[no-untyped-def]
        return _function_backward(ctx, fused_linear_ce_forward, grad_loss)
