"""Initialise new embedding rows from the rows of their pieces: the public op and its pure-torch twin.

New token j (of M) owns the pieces piece_ids[offsets[j]:offsets[j+1]] (CSR, base-token ids). Its row in
every given matrix becomes the weighted mean of its pieces' rows,
    W[out_rows[j]] = sum_p w_p * W[piece_ids[p]] / sum_p w_p      (w_p = 1 without piece weights: FVT),
accumulated in fp32 and stored in the matrix's dtype. The Triton kernel (igot.kernels.embedding_init)
writes all matrices in one launch; the twin here uses torch.nn.functional.embedding_bag and is the CPU
path and the kernel's test oracle.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import use_triton

_STORAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def embedding_init(
    weights: torch.Tensor | Sequence[torch.Tensor],
    offsets: torch.Tensor,
    piece_ids: torch.Tensor,
    piece_weights: torch.Tensor | None = None,
    *,
    out_rows: int | torch.Tensor,
) -> None:
    """Overwrite the new rows of one or more embedding matrices with the (weighted) mean of their pieces.

    Pass the input embedding and the output head together so one kernel launch writes both; a tied head
    (the same tensor twice) is written once. Runs the Triton kernel for CUDA tensors (or under
    IGOT_KERNELS=triton), the embedding_bag twin otherwise; either way in place, without autograd.

    Args:
        weights: a [V, H] matrix or a sequence of them (same H, same device; fp32, bf16 or fp16).
        offsets: int64 [M+1] CSR offsets into piece_ids: new token j owns piece_ids[offsets[j]:offsets[j+1]].
        piece_ids: int64 [P] rows to average (base-token ids).
        piece_weights: float [P] weight of each piece, normalised per new token by the op; None = plain mean.
        out_rows: first destination row n_old (new token j goes to row n_old + j), or int64 [M] rows.
    Returns:
        None; rows out_rows of every matrix hold the new embeddings.
    Raises:
        TypeError: a matrix is not fp32/bf16/fp16, or an index array is not int64.
        ValueError: shapes disagree, a new token has no pieces, an index is out of range, destination rows
            repeat or overlap the pieces, or a token's piece weights do not sum to a positive number.

    Example:
        >>> emb = torch.randn(10, 4)
        >>> embedding_init(emb, torch.tensor([0, 2, 3]), torch.tensor([1, 2, 5]), out_rows=8)
        >>> torch.allclose(emb[8], emb[[1, 2]].mean(0))
        True
    """
    matrices, offsets, piece_ids, piece_weights, out_rows = _checked(weights, offsets, piece_ids, piece_weights, out_rows)
    if use_triton(*matrices, offsets, piece_ids, out_rows):
        from igot.kernels.embedding_init import embedding_init_forward

        embedding_init_forward(matrices, offsets, piece_ids, piece_weights, out_rows)
    else:
        embedding_init_torch(matrices, offsets, piece_ids, piece_weights, out_rows)


def embedding_init_torch(
    weights: Sequence[torch.Tensor],
    offsets: torch.Tensor,
    piece_ids: torch.Tensor,
    piece_weights: torch.Tensor | None,
    out_rows: torch.Tensor,
) -> None:
    """The pure-torch twin of the kernel: embedding_bag (mean, or sum with normalised weights), in place.

    Expects checked arguments (see embedding_init): distinct matrices, int64 offsets [M+1], piece_ids [P],
    fp32 piece_weights [P] or None, int64 out_rows [M].

    Args:
        weights: distinct [V_i, H] matrices to write.
        offsets: int64 [M+1] CSR offsets.
        piece_ids: int64 [P] rows to average.
        piece_weights: fp32 [P] or None.
        out_rows: int64 [M] destination rows.
    Returns:
        None.
    """
    n_new = out_rows.numel()
    if n_new == 0:
        return
    bag_weights = None
    if piece_weights is not None:
        bag_of_piece = _bag_of_piece(offsets)  # [P]
        bag_sum = torch.zeros(n_new, device=offsets.device).index_add_(0, bag_of_piece, piece_weights)  # [M]
        bag_weights = piece_weights / bag_sum[bag_of_piece]  # [P], sums to 1 per new token
    mode = "mean" if bag_weights is None else "sum"
    with torch.no_grad():
        for matrix in weights:
            if matrix.dtype == torch.float32:
                table, bag_ids = matrix, piece_ids
            else:  # accumulate in fp32: gather only the rows in use, not a float copy of the whole matrix
                used_rows, bag_ids = torch.unique(piece_ids, return_inverse=True)
                table = matrix.index_select(0, used_rows).float()  # [U, H]
            new_rows = F.embedding_bag(  # [M, H] fp32
                bag_ids, table, offsets, mode=mode, per_sample_weights=bag_weights, include_last_offset=True
            )
            matrix.index_copy_(0, out_rows, new_rows.to(matrix.dtype))


def _checked(weights, offsets, piece_ids, piece_weights, out_rows):
    """Validate and normalise embedding_init's arguments; returns (matrices, offsets, ids, weights, rows)."""
    matrices = [weights] if isinstance(weights, torch.Tensor) else list(weights)
    if not matrices:
        raise ValueError("weights is empty; pass the embedding matrix (and the output head when untied)")
    distinct: list[torch.Tensor] = []
    for matrix in matrices:
        if not isinstance(matrix, torch.Tensor):
            raise TypeError(f"weights holds a {type(matrix).__name__}; pass torch tensors")
        if matrix.dtype not in _STORAGE_DTYPES:
            raise TypeError(f"weights has dtype {matrix.dtype}; embedding_init stores fp32, bf16 or fp16")
        if matrix.dim() != 2 or matrix.shape[1] != matrices[0].shape[1] or matrix.device != matrices[0].device:
            raise ValueError(
                f"weights must be 2-D matrices of one width on one device; got {tuple(matrix.shape)} on {matrix.device} "
                f"next to {tuple(matrices[0].shape)} on {matrices[0].device}"
            )
        if matrix.stride(1) != 1:
            raise ValueError(f"weights with column stride {matrix.stride(1)}; pass row-major matrices (.contiguous())")
        if not any(matrix is seen or _same_storage(matrix, seen) for seen in distinct):
            distinct.append(matrix)  # a tied head is the embedding itself: write it once
    device = distinct[0].device

    for name, index in (("offsets", offsets), ("piece_ids", piece_ids)):
        if not isinstance(index, torch.Tensor) or index.dtype != torch.int64 or index.dim() != 1:
            got = index.dtype if isinstance(index, torch.Tensor) else type(index).__name__
            raise TypeError(f"{name} must be a 1-D int64 tensor, got {got}")
    offsets, piece_ids = offsets.to(device).contiguous(), piece_ids.to(device).contiguous()
    n_new, n_pieces = offsets.numel() - 1, piece_ids.numel()
    if n_new < 0 or int(offsets[0]) != 0 or int(offsets[-1]) != n_pieces:
        raise ValueError(f"offsets must start at 0 and end at len(piece_ids)={n_pieces}; got {offsets.tolist()[:3]}...")
    counts = offsets.diff()  # [M]
    if n_new and int(counts.min()) < 1:
        raise ValueError(f"new token {int(torch.argmin(counts))} has no pieces; every new token needs at least one")
    n_rows = min(m.shape[0] for m in distinct)
    if n_pieces and (int(piece_ids.min()) < 0 or int(piece_ids.max()) >= n_rows):
        raise ValueError(f"piece_ids must lie in [0, {n_rows}); got [{int(piece_ids.min())}, {int(piece_ids.max())}]")

    if isinstance(out_rows, int):
        out_rows = torch.arange(out_rows, out_rows + n_new, device=device)
    elif not isinstance(out_rows, torch.Tensor) or out_rows.dtype != torch.int64 or out_rows.dim() != 1:
        raise TypeError("out_rows must be the first new row (int) or a 1-D int64 tensor of destination rows")
    out_rows = out_rows.to(device).contiguous()
    if out_rows.numel() != n_new:
        raise ValueError(f"out_rows holds {out_rows.numel()} rows for {n_new} new tokens (len(offsets) - 1)")
    if n_new and (int(out_rows.min()) < 0 or int(out_rows.max()) >= n_rows):
        raise ValueError(f"out_rows must lie in [0, {n_rows}); got [{int(out_rows.min())}, {int(out_rows.max())}]")
    if torch.unique(out_rows).numel() != n_new:
        raise ValueError("out_rows repeats a row; every new token needs its own destination row")
    if bool(torch.isin(piece_ids, out_rows).any()):
        raise ValueError("piece_ids names a row that out_rows overwrites; pieces must be existing (old) rows")

    if piece_weights is not None:
        if not isinstance(piece_weights, torch.Tensor) or not piece_weights.is_floating_point():
            raise TypeError("piece_weights must be a floating-point tensor [P] or None")
        if piece_weights.shape != piece_ids.shape:
            raise ValueError(f"piece_weights has shape {tuple(piece_weights.shape)}, piece_ids {tuple(piece_ids.shape)}")
        piece_weights = piece_weights.to(device=device, dtype=torch.float32).contiguous()
        bag_sum = torch.zeros(n_new, device=device).index_add_(0, _bag_of_piece(offsets), piece_weights)  # [M]
        if n_new and not bool(torch.isfinite(bag_sum).all() and (bag_sum > 0).all()):
            raise ValueError("piece_weights must be finite with a positive sum for every new token")
    return distinct, offsets, piece_ids, piece_weights, out_rows


def _bag_of_piece(offsets: torch.Tensor) -> torch.Tensor:
    """int64 [P]: the new token (bag) each piece belongs to."""
    n_new = offsets.numel() - 1
    return torch.repeat_interleave(torch.arange(n_new, device=offsets.device), offsets.diff())


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
