"""Fit a law L(N, D, D′) to training runs: Huber loss on log-loss, L-BFGS-B from a grid of starts, bootstrap.

The method (Hoffmann et al. 2022, approach 3, with three changes):
- residual r = log L_pred − log L_obs, objective Σ w·Huber_δ(r) with δ = 1e-3 (theirs);
- coefficients E, A, B, C are optimised as logs, exponents as they are, ρ and K as logs; N is divided by the
  geometric mean of the runs' sizes and tokens by that of their token counts before fitting, so A and α (and
  B and β, ...) are not the near-collinear pair they are in raw units; the results are converted back;
- starts: a grid over the nonlinear parameters only, each completed with the linear coefficients E, A, B, C
  from least squares (the law is linear in them); the best `n_starts` grid points by the objective are
  refined with L-BFGS-B (analytic gradient), and the best result wins. This spends the optimiser on good
  starts instead of thousands of blind ones;
- intervals: `n_bootstrap` refits on runs resampled with replacement (multinomial weights), each started
  from the full fit; percentile intervals for parameters and predictions.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._util import markdown, require, single_thread_blas, write_atomic
from .laws import LAWS, N_LINEAR, Law, get_law
from .runs import Runs, describe_rows, load_runs

HUBER_DELTA = 1e-3  # Hoffmann et al.'s δ: residuals above 0.1% in log-loss count linearly, not squared
_LOG_COEF_BOUNDS = (-40.0, 40.0)  # E, A, B, C after scaling N and tokens to O(1): e^±40 is never a real value
_MIN_DISTINCT = 3  # E + A/N^alpha: 3 unknowns, so at least 3 distinct sizes (likewise for D and D′)
_WIDE = 1.0  # a bootstrap interval wider than the value itself (relative width > 1) is reported as poorly determined
_NEGLIGIBLE = 1e-6  # a term under this share of every run's loss was dropped by the fit (seen: E -> 1e-12 on real tiny runs)
Target = Literal["loss", "general_loss"]
Holdout = Literal["largest_N", "largest_compute"]
_EXPONENT_OF = {"A": "alpha", "B": "beta", "C": "gamma"}  # coefficient -> exponent of its term


@dataclass
class LawFit:
    """A fitted law: its parameters, how well it fits, and bootstrap samples for intervals."""

    law: str
    params: dict[str, float]  # natural units: loss, parameters and tokens as in the runs
    target: str = "loss"
    n_runs: int = 0
    ranges: dict[str, list[float]] = field(default_factory=dict)  # N, D, Dp: [min, max] over the fitted runs
    rmse_log: float = math.nan  # root mean square of log(pred/obs): about the relative error
    objective: float = math.nan  # Σ w·Huber(r)/δ² at the optimum
    huber_delta: float = HUBER_DELTA
    fixed: tuple[str, ...] = ()
    bootstrap: np.ndarray | None = field(default=None, repr=False)  # [B, P] params, columns in law order
    warnings: tuple[str, ...] = ()

    def predict(self, N, D, Dp) -> np.ndarray:
        """Predicted loss; N, D and Dp broadcast against each other like numpy arrays.

        Args:
            N: parameters. D: general tokens. Dp: domain tokens (D′).

        Returns:
            An array of the broadcast shape; inf where the law is not defined (chinchilla_split at D or D′ = 0).
        """
        return get_law(self.law).evaluate(self.params, N, D, Dp)

    def interval(self, N, D, Dp, *, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Percentile bootstrap interval of the predicted loss.

        Args:
            N, D, Dp: as for predict.
            level: the central probability, e.g. 0.9 for the 5th to 95th percentile.

        Returns:
            (low, high) arrays of the broadcast shape.

        Raises:
            ValueError: the fit has no bootstrap samples (fit with n_bootstrap > 0), or level not in (0, 1).
        """
        samples = self._samples(level)
        law = get_law(self.law)
        preds = np.stack([law.evaluate(dict(zip(law.param_names, row)), N, D, Dp) for row in samples])
        tail = 50 * (1 - level)
        return np.percentile(preds, tail, axis=0), np.percentile(preds, 100 - tail, axis=0)

    def param_intervals(self, *, level: float = 0.9) -> dict[str, tuple[float, float]]:
        """Percentile bootstrap interval of each parameter, {name: (low, high)}; raises like interval()."""
        samples = self._samples(level)
        tail = 50 * (1 - level)
        lo, hi = np.percentile(samples, tail, axis=0), np.percentile(samples, 100 - tail, axis=0)
        return {name: (float(a), float(b)) for name, a, b in zip(get_law(self.law).param_names, lo, hi)}

    def _samples(self, level: float) -> np.ndarray:
        if not 0 < level < 1:
            raise ValueError(f"level={level}: use a probability in (0, 1), e.g. 0.9")
        if self.bootstrap is None or len(self.bootstrap) < 2:
            raise ValueError("this fit has no bootstrap samples: fit with n_bootstrap > 0 (e.g. 100)")
        return self.bootstrap

    def summary(self, *, level: float = 0.9) -> str:
        """A markdown report: the law, the fit quality and each parameter with its interval."""
        law = get_law(self.law)
        intervals = self.param_intervals(level=level) if self.bootstrap is not None and len(self.bootstrap) > 1 else {}
        rows = [{"name": name, "value": value, "lo": intervals.get(name, (None, None))[0],
                 "hi": intervals.get(name, (None, None))[1], "fixed": "fixed" if name in self.fixed else ""}
                for name, value in self.params.items()]
        pct = f"{level:.0%}"
        ranges = "".join(f", {name} {lo:.3g}..{hi:.3g}" for name, (lo, hi) in self.ranges.items())
        lines = [f"{law.name}: {law.formula}  ({self.target}, {self.n_runs} runs, RMSE of log loss "
                 f"{self.rmse_log:.4f}{ranges})", "",
                 markdown(rows, [("name", "parameter", ""), ("value", "value", ".5g"), ("lo", f"{pct} low", ".4g"),
                                 ("hi", f"{pct} high", ".4g"), ("fixed", "", "")])]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the format save() writes)."""
        return {"format": "igot.scaling.LawFit", "version": 1, "law": self.law, "params": self.params,
                "target": self.target, "n_runs": self.n_runs, "ranges": self.ranges, "rmse_log": self.rmse_log,
                "objective": self.objective, "huber_delta": self.huber_delta, "fixed": list(self.fixed),
                "bootstrap": None if self.bootstrap is None else self.bootstrap.tolist(),
                "warnings": list(self.warnings)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LawFit:
        """The inverse of to_dict.

        Raises:
            ValueError: not a LawFit dict, or its law or parameters do not match a known law.
        """
        if data.get("format") != "igot.scaling.LawFit":
            raise ValueError("not a saved igot LawFit (no 'format': 'igot.scaling.LawFit'); write it with LawFit.save")
        law = get_law(data["law"])
        if set(data["params"]) != set(law.param_names):
            raise ValueError(f"parameters {sorted(data['params'])} do not match law {law.name} "
                             f"({', '.join(law.param_names)})")
        boot = data.get("bootstrap")
        return cls(law=law.name, params={k: float(data["params"][k]) for k in law.param_names},
                   target=data.get("target", "loss"), n_runs=int(data.get("n_runs", 0)),
                   ranges={k: list(v) for k, v in data.get("ranges", {}).items()},
                   rmse_log=float(data.get("rmse_log", math.nan)), objective=float(data.get("objective", math.nan)),
                   huber_delta=float(data.get("huber_delta", HUBER_DELTA)), fixed=tuple(data.get("fixed", ())),
                   bootstrap=None if boot is None else np.array(boot, dtype=np.float64).reshape(len(boot), -1),
                   warnings=tuple(data.get("warnings", ())))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fit as JSON (atomically) and return the path."""
        text = json.dumps(self.to_dict(), indent=1)
        return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LawFit:
        """Read a fit written by save().

        Raises:
            FileNotFoundError: no such file. ValueError: not a saved LawFit.
        """
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not JSON ({exc.msg}); pass the file `igot plan fit --out` wrote") from None
        return cls.from_dict(data)


def fit(runs: Any, law: str = "chinchilla_split", *, target: Target = "loss",
        fixed: Mapping[str, float] | None = None, huber_delta: float = HUBER_DELTA, n_starts: int = 8,
        n_bootstrap: int = 100, seed: int = 0, **mapping: Any) -> LawFit:
    """Fit a scaling law to training runs.

    Args:
        runs: anything load_runs reads: a CSV path, run folders or metrics.jsonl paths, a list of dicts, a
            DataFrame (columns N, D, Dp, loss, general_loss optional), or a Runs.
        law: a name in igot.scaling.LAWS ("chinchilla_split", "transfer").
        target: "loss" (held-out domain loss) or "general_loss".
        fixed: parameters held at given values (natural units), e.g. {"A": 406.4, "alpha": 0.34} to plan at
            a single model size; fixing a coefficient A, B or C needs its exponent fixed too.
        huber_delta: δ of the Huber loss on log-loss residuals.
        n_starts: grid starts refined with L-BFGS-B.
        n_bootstrap: bootstrap refits for intervals (0: none).
        seed: seeds the bootstrap resampling.
        **mapping: load_runs' options for igot train runs: general, domain, heldout, general_heldout,
            n_params, points.

    Returns:
        The LawFit; its warnings (also raised as UserWarning) flag parameters the runs do not pin down.

    Raises:
        ValueError: fewer runs than free parameters, fewer than 3 distinct values of N, D or D′ (a single
            model size cannot be extrapolated in N), NaN or non-positive losses, runs where the law is not
            defined (D or D′ = 0 for chinchilla_split), bad fixed values.
        ImportError: scipy is missing.
    """
    law_ = get_law(law)
    data = load_runs(runs, **mapping)
    _check_runs(data, law_, target, fixed or {})
    if n_starts < 1 or n_bootstrap < 0 or huber_delta <= 0:
        raise ValueError(f"n_starts={n_starts} (>= 1), n_bootstrap={n_bootstrap} (>= 0), "
                         f"huber_delta={huber_delta} (> 0): fix the one out of range")
    problem = _Problem(law_, data, target, dict(fixed or {}), huber_delta)
    with single_thread_blas():
        theta = problem.solve(problem.starts(n_starts))
        notes = problem.notes(theta)
        boot = None
        if n_bootstrap:
            rng = np.random.default_rng(seed)
            R = len(data)
            boot = np.array([problem.natural(problem.solve([theta], weights=rng.multinomial(R, np.full(R, 1 / R))))
                             for _ in range(n_bootstrap)])
            notes += _wide_intervals(law_, problem.natural(theta), boot, problem.fixed)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    pred, obs = problem.predict(theta), data.column(target)
    return LawFit(law=law_.name, params=dict(zip(law_.param_names, map(float, problem.natural(theta)))),
                  target=target, n_runs=len(data),
                  ranges={c: [float(data.column(c).min()), float(data.column(c).max())] for c in ("N", "D", "Dp")},
                  rmse_log=float(np.sqrt(np.mean(np.log(pred / obs) ** 2))),
                  objective=float(problem.objective(theta[problem.free])[0]), huber_delta=huber_delta,
                  fixed=tuple(sorted(problem.fixed)), bootstrap=boot, warnings=tuple(notes))


def _check_runs(runs: Runs, law: Law, target: str, fixed: Mapping[str, float]) -> None:
    """Refuse what would give a nonsense fit, naming the runs and the fix."""
    if target not in ("loss", "general_loss"):
        raise ValueError(f"target={target!r}: use 'loss' or 'general_loss'")
    y = runs.column(target)
    bad = np.flatnonzero(~(np.isfinite(y) & (y > 0)))
    if bad.size:
        raise ValueError(f"{target} must be a positive finite number (log-loss is fitted): "
                         + describe_rows(runs.labels, y, bad) + "; drop these runs or fix their loss")
    untrained = np.flatnonzero((runs.D == 0) & (runs.Dp == 0))
    if untrained.size:
        raise ValueError("runs with D = 0 and D' = 0 (an untrained model) fit no law: "
                         + describe_rows(runs.labels, runs.D, untrained) + "; drop them")
    for column, ok in (("D", law.defined_at_zero_D), ("Dp", law.defined_at_zero_Dp)):
        zero = np.flatnonzero(runs.column(column) == 0)
        if zero.size and not ok:
            raise ValueError(f"law {law.name} is infinite at {column} = 0, which these runs have: "
                             + describe_rows(runs.labels, runs.column(column), zero)
                             + "; drop them or use law='transfer', which is defined there")
    unknown = sorted(set(fixed) - set(law.param_names))
    if unknown:
        raise ValueError(f"fixed={dict(fixed)}: {unknown} are not parameters of {law.name} "
                         f"({', '.join(law.param_names)})")
    for name, value in fixed.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"fixed[{name!r}]={value}: every parameter of {law.name} is a positive number")
        if name in _EXPONENT_OF and _EXPONENT_OF[name] not in fixed:
            raise ValueError(f"fixed {name} without {_EXPONENT_OF[name]}: a coefficient can only be held "
                             f"together with its exponent; fix both or neither")
    n_free = len(law.param_names) - len(fixed)
    if len(runs) < n_free:
        raise ValueError(f"{len(runs)} runs for {n_free} free parameters of {law.name}: the fit would be "
                         f"underdetermined; add runs, fix parameters (fixed=...) or use a smaller law")
    for column, terms, what in (("N", ("A", "alpha"), "model sizes"), ("D", ("B", "beta"), "general token counts"),
                                ("Dp", (law.linear[3], "gamma"), "domain token counts")):
        values = np.unique(runs.column(column))
        if len(values) < _MIN_DISTINCT and not set(terms) <= set(fixed):
            hint = (" (a single size: extrapolation in N is impossible, and A, alpha and E cannot be told apart)"
                    if column == "N" and len(values) == 1 else "")
            raise ValueError(f"only {len(values)} distinct {what} ({', '.join(f'{v:.3g}' for v in values)})"
                             f"{hint}; {terms[0]}, {terms[1]} and E need at least {_MIN_DISTINCT}: add runs, or fix "
                             f"the term with fixed={{'{terms[0]}': ..., '{terms[1]}': ...}} to use the law "
                             f"only at the {what} fitted")


class _Problem:
    """The optimisation over θ = [log E, log A, log B, log C, nonlinear...] in scaled units (N/N0, tokens/T0)."""

    def __init__(self, law: Law, runs: Runs, target: str, fixed: dict[str, float], delta: float):
        self.law, self.delta = law, delta
        self.N0 = float(np.exp(np.mean(np.log(runs.N))))
        tokens = np.concatenate([runs.D, runs.Dp])
        self.T0 = float(np.exp(np.mean(np.log(tokens[tokens > 0]))))
        self.N, self.D, self.Dp = runs.N / self.N0, runs.D / self.T0, runs.Dp / self.T0
        self.y = np.log(runs.column(target))
        self.loss = runs.column(target)
        self.is_log = np.array((True,) * N_LINEAR + law.log_nonlinear)
        self.fixed = fixed
        names = law.param_names
        self.free = np.array([n not in fixed for n in names])
        self.template = np.zeros(len(names))
        if fixed:
            # fill every fixed entry: scale with the fixed exponents (present whenever a coefficient is fixed)
            natural = {n: fixed.get(n, 1.0) for n in names}
            self.template[~self.free] = self._theta(self._scaled(natural))[~self.free]
        bounds = [_LOG_COEF_BOUNDS] * N_LINEAR
        for name, (lo, hi), is_log in zip(law.nonlinear, law.bounds, law.log_nonlinear):
            scale = self.T0 if name == "K" else 1.0
            bounds.append((math.log(lo / scale), math.log(hi / scale)) if is_log else (lo, hi))
        self.bounds = np.array(bounds)

    # conversions: natural dict <-> scaled dict <-> θ
    def _scaled(self, natural: Mapping[str, float], sign: int = -1) -> dict[str, float]:
        p = dict(natural)
        for coef, exponent in _EXPONENT_OF.items():
            if coef in p:
                p[coef] *= (self.N0 if coef == "A" else self.T0) ** (sign * p[exponent])  # A/N^a = A·N0^-a/(N/N0)^a
        if "K" in p:
            p["K"] *= self.T0 ** sign
        return p

    def _theta(self, scaled: Mapping[str, float]) -> np.ndarray:
        values = np.array([scaled[n] for n in self.law.param_names])
        return np.where(self.is_log, np.log(values), values)

    def natural(self, theta: np.ndarray) -> np.ndarray:
        """Natural-unit parameter values in law order."""
        values = np.where(self.is_log, np.exp(theta), theta)
        natural = self._scaled(dict(zip(self.law.param_names, values)), sign=+1)
        return np.array([natural[n] for n in self.law.param_names])

    def _parts(self, theta: np.ndarray):
        coef = np.exp(theta[:N_LINEAR])
        nl = np.where(self.is_log[N_LINEAR:], np.exp(theta[N_LINEAR:]), theta[N_LINEAR:])
        X = self.law.columns(nl, self.N, self.D, self.Dp)  # [R, 4]
        return coef, nl, X, X @ coef

    def predict(self, theta: np.ndarray) -> np.ndarray:
        return self._parts(theta)[3]

    def objective(self, theta_free: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """Σ w·Huber(log L_pred − log L_obs)/δ² and its gradient over the free entries of θ."""
        theta = self.template.copy()
        theta[self.free] = theta_free
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            coef, nl, X, L = self._parts(theta)
            r = np.log(L) - self.y
        if not np.all(np.isfinite(r)):
            return 1e300, np.zeros(int(self.free.sum()))
        w = np.ones_like(r) if weights is None else weights
        d = self.delta
        a = np.abs(r)
        f = np.sum(w * np.where(a <= d, 0.5 * r * r, d * (a - 0.5 * d))) / d ** 2
        gL = w * np.clip(r, -d, d) / L / d ** 2  # dF/dL per run
        grad = np.empty(len(theta))
        grad[:N_LINEAR] = coef * (gL @ X)  # d/d log coef
        for k, (col, dX) in enumerate(self.law.dcolumns(nl, self.N, self.D, self.Dp)):
            grad[N_LINEAR + k] = coef[col] * (dX @ gL)
        return float(f), grad[self.free]

    def starts(self, n_starts: int) -> list[np.ndarray]:
        """The best n_starts points of the nonlinear grid, each with least-squares linear coefficients."""
        law, nl_fixed = self.law, self._scaled({n: self.fixed.get(n, 1.0) for n in self.law.param_names})
        positive_dp = self.Dp[self.Dp > 0]
        axes = []
        for name, grid, scale_from, (lo, hi) in zip(law.nonlinear, law.start_grid, law.start_scale, law.bounds):
            if name in self.fixed:
                axes.append((nl_fixed[name],))
                continue
            scale = float(np.median(positive_dp)) if scale_from == "Dp" and positive_dp.size else 1.0
            axes.append(tuple(v * scale for v in grid))
        nl = np.array(list(itertools.product(*axes)))  # [S, P]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            X = law.columns(nl, self.N, self.D, self.Dp)  # [S, R, 4]
        X = np.nan_to_num(X, nan=0.0, posinf=1e300)
        lin_free = self.free[:N_LINEAR]
        c_fixed = np.exp(self.template[:N_LINEAR]) * ~lin_free
        target = self.loss - X @ c_fixed  # [S, R]
        wt = 1 / self.loss ** 2  # relative errors, close to the log-loss residuals fitted
        Xf = X[..., lin_free]  # [S, R, k]
        scale = np.sqrt(np.einsum("srk,r->sk", Xf ** 2, wt) / len(self.y)) + 1e-300
        Xs = Xf / scale[:, None, :]
        A = np.einsum("srk,r,srl->skl", Xs, wt, Xs) + 1e-10 * np.eye(Xs.shape[-1])
        b = np.einsum("srk,r,sr->sk", Xs, wt, target)
        coef = np.linalg.solve(A, b[..., None])[..., 0] / scale
        coef = np.maximum(coef, 1e-8 * np.mean(self.loss) / np.maximum(Xf.mean(axis=1), 1e-300))
        full = np.repeat(c_fixed[None], len(nl), axis=0)
        full[:, lin_free] = coef
        theta = np.concatenate([np.log(full), np.where(self.is_log[N_LINEAR:], np.log(nl), nl)], axis=1)
        theta = np.clip(theta, self.bounds[:, 0], self.bounds[:, 1])
        theta[:, ~self.free] = self.template[~self.free]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.log(np.einsum("srk,sk->sr", X, np.exp(theta[:, :N_LINEAR]))) - self.y
        a = np.abs(np.nan_to_num(r, nan=np.inf))
        scores = np.sum(np.where(a <= self.delta, 0.5 * a * a, self.delta * (a - 0.5 * self.delta)), axis=1)
        return [theta[i] for i in np.argsort(scores, kind="stable")[:n_starts]]

    def solve(self, starts: Sequence[np.ndarray], weights: np.ndarray | None = None) -> np.ndarray:
        """L-BFGS-B from each start; the best θ."""
        optimize = require("scipy.optimize")
        best, best_f = None, math.inf
        for start in starts:
            res = optimize.minimize(self.objective, start[self.free], args=(weights,), jac=True, method="L-BFGS-B",
                                    bounds=self.bounds[self.free],
                                    options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-10})
            if res.fun < best_f:
                best, best_f = res.x, res.fun
        theta = self.template.copy()
        theta[self.free] = best
        return theta

    def notes(self, theta: np.ndarray) -> list[str]:
        """Warnings on the full fit: parameters at a bound, dropped terms, too few runs per parameter."""
        out = []
        natural = self.natural(theta)
        coef, _, X, L = self._parts(theta)
        share = coef * X / L[:, None]  # [R, 4] each term's share of each run's predicted loss
        for i, name in enumerate(self.law.linear):
            # d/d log(coef) vanishes with the term, so neither the fit nor a bootstrap refit can bring it back:
            # its bootstrap interval collapses to a point that says nothing
            if self.free[i] and np.all(share[:, i] < _NEGLIGIBLE):
                out.append(f"{name} = {natural[i]:.4g} is under {_NEGLIGIBLE:g} of every run's loss: the fit dropped "
                           "its term (the runs do not show it), and its bootstrap interval is meaningless")
        for i, name in enumerate(self.law.param_names):
            lo, hi = self.bounds[i]
            if self.free[i] and min(theta[i] - lo, hi - theta[i]) < 1e-6 * max(1.0, abs(theta[i])):
                out.append(f"{name} = {natural[i]:.4g} is at the bound of its search range: the runs do not pin "
                           "it down (add runs over a wider range, or fix it)")
        n_free = int(self.free.sum())
        if len(self.y) < 2 * n_free:
            out.append(f"{len(self.y)} runs for {n_free} free parameters: the fit is close to an interpolation; "
                       "treat its extrapolations with care and add runs")
        return out


def _wide_intervals(law: Law, params: np.ndarray, boot: np.ndarray, fixed: Mapping[str, float]) -> list[str]:
    lo, hi = np.percentile(boot, 5, axis=0), np.percentile(boot, 95, axis=0)
    return [f"{name} = {value:.4g} is poorly determined: its 90% bootstrap interval is [{a:.4g}, {b:.4g}]"
            for name, value, a, b in zip(law.param_names, params, lo, hi)
            if name not in fixed and (b - a) > _WIDE * abs(value)]


@dataclass
class Comparison:
    """Each law's error on runs held out from its fit (the larger ones), as rows and a markdown table."""

    holdout: str
    rows: list[dict[str, Any]]

    def to_markdown(self) -> str:
        """The comparison as a markdown table."""
        return markdown(self.rows, [("law", "law", ""), ("n_train", "fitted runs", "d"),
                                    ("n_test", "held-out runs", "d"), ("rmse_log_train", "RMSE log (fit)", ".4f"),
                                    ("mean_abs_rel_err", "held-out mean abs. rel. error", ".2%"),
                                    ("max_abs_rel_err", "max abs. rel. error", ".2%"),
                                    ("mean_rel_err", "mean rel. err (bias)", "+.2%"), ("error", "error", "")])

    def __str__(self) -> str:
        return f"held out: {self.holdout}\n\n{self.to_markdown()}"


def compare(runs: Any, laws: Sequence[str] = tuple(LAWS), holdout: Holdout = "largest_N", *,
            huber_delta: float = HUBER_DELTA, n_starts: int = 8, **mapping: Any) -> Comparison:
    """Fit each law without the largest runs and measure its error on them (extrapolation error).

    Args:
        runs: as for fit.
        laws: law names to compare.
        holdout: "largest_N" holds out every run at the largest model size; "largest_compute" the quarter
            of runs with the most compute 6·N·(D + D′).
        huber_delta, n_starts: as for fit (no bootstrap here).
        **mapping: load_runs' options for igot train runs.

    Returns:
        A Comparison; a law that cannot be fitted (too few runs where it is defined, ...) gets its error text.

    Raises:
        ValueError: unknown holdout or law, or nothing left to fit or to test.
    """
    data = load_runs(runs, **mapping)
    if holdout == "largest_N":
        test = data.N == data.N.max()
        what = f"the {int(test.sum())} runs at N = {data.N.max():.3g}"
    elif holdout == "largest_compute":
        compute = 6 * data.N * (data.D + data.Dp)
        test = compute >= np.quantile(compute, 0.75)
        what = f"the {int(test.sum())} runs with compute >= {np.quantile(compute, 0.75):.3g} FLOPs"
    else:
        raise ValueError(f"holdout={holdout!r}: use 'largest_N' or 'largest_compute'")
    if test.all() or not test.any():
        raise ValueError(f"holdout={holdout!r} leaves {'nothing to fit' if test.all() else 'nothing to test'}: "
                         "add runs at more sizes")
    rows = []
    for name in laws:
        law = get_law(name)
        defined = law.defined(data.D, data.Dp)
        train, held = data.subset(defined & ~test), data.subset(defined & test)
        row: dict[str, Any] = {"law": name, "n_train": len(train), "n_test": len(held)}
        try:
            if not len(held):
                raise ValueError("no held-out run where the law is defined")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                result = fit(train, name, huber_delta=huber_delta, n_starts=n_starts, n_bootstrap=0)
        except ValueError as exc:
            row["error"] = str(exc)
            rows.append(row)
            continue
        rel = result.predict(held.N, held.D, held.Dp) / held.loss - 1
        row.update(rmse_log_train=result.rmse_log, mean_abs_rel_err=float(np.mean(np.abs(rel))),
                   max_abs_rel_err=float(np.max(np.abs(rel))), mean_rel_err=float(np.mean(rel)))
        rows.append(row)
    return Comparison(holdout=what, rows=rows)
