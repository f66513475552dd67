"""Split a compute budget between general pretraining and domain continued pretraining with a fitted law.

Compute C = 6·N·(D + k·D′): the base model is pretrained once on D general tokens and shared; each of the
k domains continues from it on its own D′ domain tokens. With the token budget T = C/(6N) and the domain
share s = k·D′/T, the plan minimises the predicted domain loss L(N, (1−s)·T, s·T/k) over s ∈ [0, 1] (the
ends only where the law is finite there), and over N when it is not given: among `sizes`, or over a
continuous range of tokens per parameter T/N from 1e-3 to 1e6.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ._util import markdown, require
from .fitting import LawFit
from .laws import get_law

SHARES = (0.1, 0.25, 0.5, 0.75, 0.9)  # the "obvious" fixed splits the plan is compared with
_MAX_COMPUTE_RATIO = 1e6  # beyond this an alternative "never" matches the plan: reported as inf
_TOKENS_PER_PARAM = (1e-3, 1e6)  # the continuous search range for N: T/N between these


@dataclass
class Plan:
    """The chosen model size and split, the predicted loss, and the alternatives it beats."""

    law: str
    compute: float  # FLOPs, 6·N·(D + n_domains·Dp)
    n_domains: int
    N: float  # parameters
    D: float  # general tokens (shared base)
    Dp: float  # domain tokens per domain
    loss: float  # predicted domain loss
    loss_interval: tuple[float, float] | None  # 90% bootstrap interval, when the fit has samples
    gain_vs_general_only: float | None  # loss of "no specialisation" minus the plan's; None where the law is infinite
    gain_vs_domain_only: float | None  # loss of "domain only" minus the plan's; None likewise
    alternatives: list[dict[str, Any]]  # strategy, N, D, Dp, share, loss, delta, compute_to_match
    notes: list[str]  # extrapolation beyond the fitted runs, optimum at the edge of the search range
    fit: LawFit = field(repr=False)

    @property
    def share(self) -> float:
        """Fraction of the tokens that are domain tokens, k·D′/(D + k·D′)."""
        return self.n_domains * self.Dp / (self.D + self.n_domains * self.Dp)

    def to_markdown(self) -> str:
        """A markdown report: the plan, its gains and the table of alternatives."""
        k = self.n_domains
        ci = f" (90% interval {self.loss_interval[0]:.4f}..{self.loss_interval[1]:.4f})" if self.loss_interval else ""
        lines = [f"plan ({self.law}, C = {self.compute:.3g} FLOPs, {k} domain{'s' if k > 1 else ''}): N = {self.N:.3g}, "
                 f"D = {self.D:.3g} general tokens, D' = {self.Dp:.3g} tokens per domain (domain share "
                 f"{self.share:.1%}), predicted loss {self.loss:.4f}{ci}"]
        for label, gain in (("no specialisation", self.gain_vs_general_only), ("domain only", self.gain_vs_domain_only)):
            row = next((r for r in self.alternatives if r["strategy"] == label), None)
            if gain is None or row is None:
                lines.append(f"{label}: not defined by {self.law} (infinite loss there)")
            elif math.isinf(row["compute_to_match"]):
                lines.append(f"{label}: {gain:+.4f} loss, and no amount of compute (up to {_MAX_COMPUTE_RATIO:.0e}x) "
                             "brings it to the plan's loss at this N")
            else:
                lines.append(f"{label}: {gain:+.4f} loss, needs {row['compute_to_match']:.2f}x the compute to match")
        lines += ["", markdown(self.alternatives, [
            ("strategy", "strategy", ""), ("N", "N", ".3g"), ("D", "D", ".3g"), ("Dp", "D' per domain", ".3g"),
            ("share", "domain share", ".1%"), ("loss", "loss", ".4f"), ("delta", "vs plan", "+.4f"),
            ("compute_to_match", "compute to match (x)", ".2f")])]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def plot(self, path: str | os.PathLike) -> Path:
        """Write a PNG of iso-loss curves over (D, D′) at the plan's N with the budget line and the plan."""
        from .plot import plot_split

        return plot_split(self, path)


def plan(fit: LawFit, compute: float, n_domains: int = 1, N: float | None = None,
         sizes: Sequence[float] | None = None) -> Plan:
    """Choose D and D′ (and N when not given) that minimise the predicted domain loss for a compute budget.

    Args:
        fit: a fitted law (igot.scaling.fit or LawFit.load).
        compute: the budget in FLOPs, C = 6·N·(D + n_domains·D′).
        n_domains: domains sharing one general base, each with its own D′.
        N: a fixed model size; the plan chooses only the split.
        sizes: candidate model sizes; the plan chooses the best of them and its split.

    Returns:
        The Plan, with a table of alternatives at the chosen N (fixed domain shares, no specialisation and
        domain only where the law is finite there, and the best split of every size in `sizes`).

    Raises:
        ValueError: compute not a positive number, n_domains < 1, both N and sizes given, a size <= 0.
        ImportError: scipy is missing.
    """
    if not (isinstance(compute, numbers.Real) and math.isfinite(compute) and compute > 0):
        raise ValueError(f"compute={compute!r}: give the budget in FLOPs as a positive number, e.g. 1e20")
    if int(n_domains) != n_domains or n_domains < 1:
        raise ValueError(f"n_domains={n_domains!r}: use a whole number >= 1")
    if N is not None and sizes is not None:
        raise ValueError("give N (a fixed size) or sizes (candidates), not both")
    candidates = [N] if N is not None else list(sizes) if sizes is not None else None
    if candidates is not None and (not candidates or not all(math.isfinite(n) and n > 0 for n in candidates)):
        raise ValueError(f"model sizes {candidates}: give positive parameter counts")
    k, notes = int(n_domains), []
    if candidates is None:
        best_N, edge = _best_size(fit, compute, k)
        if edge:
            notes.append(f"the best N lies at the edge of the searched range (tokens per parameter "
                         f"{_TOKENS_PER_PARAM[0]:g}..{_TOKENS_PER_PARAM[1]:g}): the law has no interior optimum here; "
                         "pass N or sizes")
    else:
        best_N = min(candidates, key=lambda n: best_split(fit, n, compute / (6 * n), k)[3])
    share, D, Dp, loss = best_split(fit, best_N, compute / (6 * best_N), k)
    law = get_law(fit.law)
    alternatives = _alternatives(fit, compute, k, best_N, share, loss, candidates if sizes is not None else [])
    by_name = {r["strategy"]: r for r in alternatives}
    interval = None
    if fit.bootstrap is not None and len(fit.bootstrap) > 1:
        lo, hi = fit.interval(best_N, D, Dp)
        interval = (float(lo), float(hi))
    notes += _extrapolation(fit, best_N, D, Dp)
    return Plan(law=fit.law, compute=float(compute), n_domains=k, N=float(best_N), D=D, Dp=Dp, loss=loss,
                loss_interval=interval,
                gain_vs_general_only=by_name["no specialisation"]["delta"] if law.defined_at_zero_Dp else None,
                gain_vs_domain_only=by_name["domain only"]["delta"] if law.defined_at_zero_D else None,
                alternatives=alternatives, notes=notes, fit=fit)


def _split_loss(fit: LawFit, N: float, tokens: float, k: int, z: np.ndarray) -> np.ndarray:
    """Loss at domain share s = sigmoid(z): D = T·sigmoid(−z) computed directly, so no 1 − s cancels."""
    return fit.predict(N, tokens / (1 + np.exp(z)), tokens / (1 + np.exp(-z)) / k)


def best_split(fit: LawFit, N: float, tokens: float, n_domains: int) -> tuple[float, float, float, float]:
    """The domain share minimising the loss at size N with D + n_domains·D′ = tokens.

    Args:
        fit: the law. N: parameters. tokens: the token budget T. n_domains: k.

    Returns:
        (share, D, Dp, loss).
    """
    optimize = require("scipy.optimize")
    law = get_law(fit.law)
    z = np.linspace(-35.0, 35.0, 701)  # logit of the share: resolves shares down to ~1e-15 on either side
    losses = _split_loss(fit, N, tokens, n_domains, z)
    i = int(np.nanargmin(np.where(np.isfinite(losses), losses, np.inf)))
    lo, hi = z[max(i - 1, 0)], z[min(i + 1, len(z) - 1)]
    res = optimize.minimize_scalar(lambda t: float(_split_loss(fit, N, tokens, n_domains, np.array(t))),
                                   bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    best = [(float(res.fun), 1 / (1 + math.exp(-res.x)))] if res.fun <= losses[i] else [(float(losses[i]),
                                                                                         1 / (1 + math.exp(-z[i])))]
    for share, ok in ((0.0, law.defined_at_zero_Dp), (1.0, law.defined_at_zero_D)):
        if ok:
            best.append((float(fit.predict(N, tokens * (1 - share), tokens * share / n_domains)), share))
    loss, share = min(best)
    return share, tokens * (1 - share), tokens * share / n_domains, loss


def _best_size(fit: LawFit, compute: float, k: int) -> tuple[float, bool]:
    """The N minimising the best-split loss over the tokens-per-parameter range; (N, at the range's edge)."""
    optimize = require("scipy.optimize")
    lo, hi = (0.5 * math.log(compute / 6 / r) for r in reversed(_TOKENS_PER_PARAM))  # N = sqrt(C/6/(T/N))
    grid = np.linspace(lo, hi, 121)

    def loss(log_n: float) -> float:
        n = math.exp(log_n)
        return best_split(fit, n, compute / (6 * n), k)[3]

    values = [loss(x) for x in grid]
    i = int(np.argmin(values))
    res = optimize.minimize_scalar(loss, bounds=(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]),
                                   method="bounded", options={"xatol": 1e-8})
    best = res.x if res.fun <= values[i] else grid[i]
    return math.exp(best), i in (0, len(grid) - 1)


def _alternatives(fit: LawFit, compute: float, k: int, N: float, share: float, loss: float,
                  sizes: Sequence[float]) -> list[dict[str, Any]]:
    law = get_law(fit.law)
    fixed = [s for s in SHARES]
    if law.defined_at_zero_Dp:
        fixed.insert(0, 0.0)
    if law.defined_at_zero_D:
        fixed.append(1.0)
    rows = []

    def at_share(s: float, n: float = N) -> Callable[[float], float]:
        return lambda m: float(fit.predict(n, m * compute / (6 * n) * (1 - s), m * compute / (6 * n) * s / k))

    for s in fixed:
        name = {0.0: "no specialisation", 1.0: "domain only"}.get(s, f"{s:.0%} of tokens to domains")
        rows.append(_row(name, N, s, compute, k, at_share(s), loss))
    rows.append(_row("plan", N, share, compute, k, at_share(share), loss))
    rows.sort(key=lambda r: r["share"])
    for n in sizes:
        if n == N:
            continue
        s = best_split(fit, n, compute / (6 * n), k)[0]
        rows.append(_row(f"best split at N = {n:.3g}", n, s, compute, k,
                         lambda m, n=n: best_split(fit, n, m * compute / (6 * n), k)[3], loss))
    return rows


def _row(name: str, N: float, share: float, compute: float, k: int, loss_at: Callable[[float], float],
         plan_loss: float) -> dict[str, Any]:
    """One alternative: its loss at the budget and the compute multiple it needs to match the plan's loss."""
    optimize = require("scipy.optimize")
    tokens = compute / (6 * N)
    loss = loss_at(1.0)
    if loss <= plan_loss * (1 + 1e-12):
        ratio = 1.0
    elif not loss_at(_MAX_COMPUTE_RATIO) < plan_loss:
        ratio = math.inf
    else:
        ratio = math.exp(optimize.brentq(lambda t: loss_at(math.exp(t)) - plan_loss, 0.0,
                                         math.log(_MAX_COMPUTE_RATIO), xtol=1e-10))
    return {"strategy": name, "N": N, "D": tokens * (1 - share), "Dp": tokens * share / k, "share": share,
            "loss": loss, "delta": loss - plan_loss, "compute_to_match": ratio}


def _extrapolation(fit: LawFit, N: float, D: float, Dp: float) -> list[str]:
    notes = []
    for name, value in (("N", N), ("D", D), ("Dp", Dp)):
        lo, hi = fit.ranges.get(name, (0.0, math.inf))
        if value > hi > 0:
            notes.append(f"{name} = {value:.3g} is {value / hi:.3g}x the largest fitted value ({hi:.3g}): extrapolated")
        elif 0 < value < lo:
            notes.append(f"{name} = {value:.3g} is below the smallest fitted value ({lo:.3g}): extrapolated")
    return notes
