"""Picture of a plan: iso-loss curves over (D, D′) at the plan's N, the compute budget line and the plan.

The curves are the plan's loss and 0.5% to 40% above it, so their spacing shows how flat the optimum is. A plan
at D = 0 or D′ = 0 lies off the log axes; its legend entry still gives it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._util import require, write_atomic

if TYPE_CHECKING:
    from .planning import Plan


def plot_split(plan: Plan, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Write a PNG of the predicted loss over general tokens D and domain tokens D′ (log axes).

    Args:
        plan: the plan to draw (its fit gives the loss surface at plan.N).
        path: the PNG file to write (atomically).
        dpi: resolution.

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is missing.
    """
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")  # files only: no display on servers or in CI
    plt = require("matplotlib.pyplot")

    k, tokens = plan.n_domains, plan.compute / (6 * plan.N)
    D = np.geomspace(tokens * 1e-4, tokens * 3, 240)
    Dp = np.geomspace(tokens / k * 1e-4, tokens / k * 3, 240)
    loss = plan.fit.predict(plan.N, D[None, :], Dp[:, None])  # [Dp, D]
    levels = plan.loss * (1 + np.array([0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]))  # the plan's, then +0.5%..+40%

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    try:
        contours = ax.contour(D, Dp, loss, levels=levels, cmap="viridis", linewidths=1)
        ax.clabel(contours, fmt="%.3f", fontsize=7)
        line_D = np.geomspace(D[0], tokens * (1 - 1e-4), 400)
        ax.plot(line_D, (tokens - line_D) / k, color="crimson", lw=1.5,
                label=f"budget: D + {k}·D' = {tokens:.3g} tokens")
        ax.plot([plan.D], [plan.Dp], marker="*", ms=14, color="crimson", ls="none",
                label=f"plan: D = {plan.D:.3g}, D' = {plan.Dp:.3g}, loss {plan.loss:.4f}")
        ax.set(xscale="log", yscale="log", xlim=(D[0], D[-1]), ylim=(Dp[0], Dp[-1]), xlabel="general tokens D",
               ylabel="domain tokens D' (per domain)",
               title=f"{plan.law}: iso-loss at N = {plan.N:.3g}, C = {plan.compute:.3g} FLOPs, {k} domain(s)")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        plt.close(fig)
