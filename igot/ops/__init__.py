"""Compute ops with two paths each: a Triton kernel (igot.kernels) and its pure-torch twin.

Dispatch: CUDA tensors with Triton importable use the Triton kernel, anything else the torch twin.
IGOT_KERNELS=torch forces the twin; IGOT_KERNELS=triton forces the kernel (with TRITON_INTERPRET=1 it
then runs on CPU tensors too, which is how CI tests the kernels without a GPU).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

_BACKENDS = ("auto", "torch", "triton")


def use_triton(*tensors: Any) -> bool:
    """Return True when the Triton kernel should run for these tensors.

    Args:
        tensors: the op's input tensors; all must live on the same device.
    Returns:
        True for IGOT_KERNELS=triton, False for IGOT_KERNELS=torch; otherwise (auto) True only when
        every tensor is on CUDA and triton is importable.
    Raises:
        ValueError: IGOT_KERNELS holds something other than auto, torch or triton.
    """
    backend = os.environ.get("IGOT_KERNELS", "auto").strip().lower() or "auto"
    if backend not in _BACKENDS:
        raise ValueError(f"IGOT_KERNELS={backend!r} is not one of {_BACKENDS}; unset it or pick one of those")
    if backend != "auto":
        return backend == "triton"
    return all(t.is_cuda for t in tensors) and importlib.util.find_spec("triton") is not None


from .fused_linear_ce import fused_linear_cross_entropy  # noqa: E402  (after use_triton, which it calls)
from .embedding_init import embedding_init  # noqa: E402  (after use_triton, which it calls)
