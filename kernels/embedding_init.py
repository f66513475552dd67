"""Embedding initialisation on the GPU: every new row becomes the weighted mean of its pieces' rows.

New token j (of M) owns the base-token pieces piece_ids[offsets[j]:offsets[j+1]] (CSR). Its row is
    W[out_rows[j]] = sum_p w_p * W[piece_ids[p]] / sum_p w_p        (w_p = 1 without piece weights)
accumulated in fp32 and stored in the matrix's own dtype (fp32, bf16 or fp16). One launch writes the new
rows of two matrices at once (the input embedding and an untied output head): each program loads its
pieces' ids and weights once and gathers from both matrices. The pure-torch twin (embedding_bag) and the
argument checks live in igot.ops.embedding_init; this module trusts its caller.

Order (STYLE.md section 3): kernel, launcher. There is no autograd Function: the op is an in-place
initialisation done under torch.no_grad, so it has no backward.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

# Pieces gathered per loop step. New tokens from merges have 2-4 base pieces, so one step covers most of
# them while the [BLOCK_P, BLOCK_H] gather keeps several row loads in flight per program.
_BLOCK_P = 4
# Columns per program: rows up to 1024 wide (SmolLM2 H=576 -> 1024) take one program per new row; wider
# rows (H=4096) split into column blocks so 32k new rows still give >100k programs to fill the GPU.
_MAX_BLOCK_H = 1024


@triton.jit
def _embedding_init_fwd_kernel(
    w0_ptr,  # [V0, H] first matrix, read at piece rows and written at out_rows
    w1_ptr,  # [V1, H] second matrix (only when TWO_MATRICES)
    stride_w0,  # row stride of w0 in elements
    stride_w1,  # row stride of w1 in elements
    offsets_ptr,  # int64 [M+1] CSR offsets into piece_ids
    piece_ids_ptr,  # int64 [P] base-token rows to average
    piece_weights_ptr,  # fp32 [P] weight of each piece (only when HAS_WEIGHTS)
    out_rows_ptr,  # int64 [M] destination row of each new token
    H,  # row width
    HAS_WEIGHTS: tl.constexpr,
    TWO_MATRICES: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    new_row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H]
    col_mask = cols < H
    start = tl.load(offsets_ptr + new_row)
    end = tl.load(offsets_ptr + new_row + 1)

    acc0 = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_H], dtype=tl.float32)
    weight_sum = tl.zeros([BLOCK_P], dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)  # [BLOCK_P]
        p_mask = p < end
        ids = tl.load(piece_ids_ptr + p, mask=p_mask, other=0)  # int64 [BLOCK_P]
        if HAS_WEIGHTS:
            w = tl.load(piece_weights_ptr + p, mask=p_mask, other=0.0)
        else:
            w = p_mask.to(tl.float32)
        weight_sum += w
        tile_mask = p_mask[:, None] & col_mask[None, :]  # [BLOCK_P, BLOCK_H]
        rows0 = tl.load(w0_ptr + ids[:, None] * stride_w0 + cols[None, :], mask=tile_mask, other=0.0)
        acc0 += tl.sum(rows0.to(tl.float32) * w[:, None], axis=0)
        if TWO_MATRICES:
            rows1 = tl.load(w1_ptr + ids[:, None] * stride_w1 + cols[None, :], mask=tile_mask, other=0.0)
            acc1 += tl.sum(rows1.to(tl.float32) * w[:, None], axis=0)

    inv_total = 1.0 / tl.sum(weight_sum, axis=0)
    dest = tl.load(out_rows_ptr + new_row)  # int64: V * H may pass 2**31
    tl.store(w0_ptr + dest * stride_w0 + cols, (acc0 * inv_total).to(w0_ptr.dtype.element_ty), mask=col_mask)
    if TWO_MATRICES:
        tl.store(w1_ptr + dest * stride_w1 + cols, (acc1 * inv_total).to(w1_ptr.dtype.element_ty), mask=col_mask)


def embedding_init_forward(
    weights: Sequence[torch.Tensor],
    offsets: torch.Tensor,
    piece_ids: torch.Tensor,
    piece_weights: torch.Tensor | None,
    out_rows: torch.Tensor,
) -> None:
    """Write the new rows of every matrix in `weights` in place, two matrices per launch.

    Args:
        weights: distinct [V_i, H] matrices (fp32/bf16/fp16, unit column stride), all on one device.
        offsets: int64 [M+1] CSR offsets into piece_ids, offsets[0] == 0, every bag non-empty.
        piece_ids: int64 [P] rows to average; none of them is in out_rows.
        piece_weights: fp32 [P] weight of each piece (positive sum per bag), or None for the plain mean.
        out_rows: int64 [M] distinct destination rows.
    Returns:
        None; the rows out_rows of each matrix are overwritten.
    """
    n_new = out_rows.numel()
    if n_new == 0:
        return
    width = weights[0].shape[1]
    block_h = min(triton.next_power_of_2(width), _MAX_BLOCK_H)
    grid = (n_new, triton.cdiv(width, block_h))
    has_weights = piece_weights is not None
    weights_arg = piece_weights if has_weights else piece_ids  # never read when HAS_WEIGHTS is False
    for first in range(0, len(weights), 2):
        w0 = weights[first]
        w1 = weights[first + 1] if first + 1 < len(weights) else w0
        _embedding_init_fwd_kernel[grid](
            w0, w1, w0.stride(0), w1.stride(0),
            offsets, piece_ids, weights_arg, out_rows, width,
            HAS_WEIGHTS=has_weights, TWO_MATRICES=w1 is not w0,
            BLOCK_P=_BLOCK_P, BLOCK_H=block_h, num_warps=4,
        )
