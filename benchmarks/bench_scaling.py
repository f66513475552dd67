"""Scaling-law planner on synthetic runs drawn from known laws: fit speed against a blind multi-start
baseline, recovery of the parameters and of the planned split as noise grows, extrapolation error (compare),
and planning time.

Runs: 5 sizes 1e6..1e10 x 4 general token counts 1e8..1e11 x 6 domain token counts 1e6..1e11 (transfer also
at D = 0 and D' = 0: 120 and 170 runs), loss x exp(sigma * standard normal).
Baseline ("blind"): Hoffmann et al.'s recipe as usually copied: raw units (no rescaling of N and tokens),
a full grid of starts over every parameter (2 values each: 128 starts for chinchilla_split, 512 for
transfer), each refined by L-BFGS-B with finite-difference gradients, same Huber objective.

    .venv/bin/python benchmarks/bench_scaling.py [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import statistics
import time
import warnings

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

import igot.scaling.fitting as fit_module
from igot.scaling import LawFit, Runs, compare, fit, get_law, plan

TRUE = {
    "chinchilla_split": dict(E=1.8, A=400.0, alpha=0.34, B=800.0, beta=0.30, C=60.0, gamma=0.25),
    "transfer": dict(E=1.8, A=400.0, alpha=0.34, B=800.0, beta=0.30, rho=0.3, G=1.0, gamma=0.6, K=1e7),
}
SIZES, GENERAL, DOMAIN = np.geomspace(1e6, 1e10, 5), np.geomspace(1e8, 1e11, 4), np.geomspace(1e6, 1e11, 6)
PLAN = dict(compute=1e20, n_domains=4, N=1e9)


def synthetic(law: str, sigma: float, seed: int) -> Runs:
    zero = [0.0] if get_law(law).defined_at_zero_D else []
    grid = np.array([g for g in itertools.product(SIZES, zero + list(GENERAL), zero + list(DOMAIN)) if g[1] + g[2] > 0]).T
    loss = get_law(law).evaluate(TRUE[law], *grid) * np.exp(sigma * np.random.default_rng(seed).standard_normal(grid.shape[1]))
    return Runs(*grid, loss, np.full(len(loss), np.nan), tuple(f"run {i}" for i in range(len(loss))))


def quiet_fit(*args, **kwargs) -> LawFit:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fit(*args, **kwargs)


def worst_error(params: dict[str, float], law: str) -> tuple[float, str]:
    errors = {k: abs(params[k] / v - 1) for k, v in TRUE[law].items()}
    name = max(errors, key=errors.get)
    return errors[name], name


def huber_objective(law: str, params: dict[str, float], runs: Runs) -> float:
    """Σ Huber(log pred − log obs)/δ², the objective both methods minimise (reported in the same units)."""
    r = np.log(get_law(law).evaluate(params, runs.N, runs.D, runs.Dp)) - np.log(runs.loss)
    d, a = fit_module.HUBER_DELTA, np.abs(r)
    return float(np.sum(np.where(a <= d, 0.5 * r * r, d * (a - 0.5 * d))) / d ** 2)


def blind_fit(law: str, runs: Runs) -> dict[str, float]:
    """The baseline: every point of a 2-per-parameter grid refined with finite-difference L-BFGS-B."""
    spec = get_law(law)
    names = spec.param_names
    is_log = [True] * 4 + list(spec.log_nonlinear)
    values = {"E": (0.0, 1.0), "rho": (math.log(0.1), 0.0), "K": (math.log(1e6), math.log(1e9))}
    axes = [values.get(n, (0.0, 10.0) if i < 4 else (0.25, 0.75)) for i, n in enumerate(names)]
    bounds = [(-40.0, 60.0)] * 4 + [(math.log(lo), math.log(hi)) if lg else (lo, hi)
                                    for (lo, hi), lg in zip(spec.bounds, spec.log_nonlinear)]

    def params_of(theta):
        return {n: math.exp(t) if lg else t for n, t, lg in zip(names, theta, is_log)}

    def objective(theta):
        with np.errstate(all="ignore"):
            value = huber_objective(law, params_of(theta), runs)
        return value if math.isfinite(value) else 1e300

    best, best_f = None, math.inf
    with threadpool_limits(1, user_api="blas"):  # the baseline gets the same BLAS fix, or it would lose 100x to it
        for start in itertools.product(*axes):
            res = minimize(objective, np.array(start), method="L-BFGS-B", bounds=bounds)
            if res.fun < best_f:
                best, best_f = res.x, res.fun
    return params_of(best)


def speed_table(quick: bool) -> list[str]:
    rows = ["| law | method | seconds | objective | worst parameter error | seconds / igot's |",
            "|---|---|---:|---:|---:|---:|"]
    for law in TRUE:
        runs = synthetic(law, 0.005, seed=0)
        quiet_fit(runs, law, n_bootstrap=0)  # warm-up: scipy imports
        start = time.perf_counter()
        ours = quiet_fit(runs, law, n_bootstrap=0)
        ours_s = time.perf_counter() - start
        real = fit_module.single_thread_blas
        fit_module.single_thread_blas = contextlib.nullcontext  # the same fit with the BLAS threads left as they are
        try:
            start = time.perf_counter()
            threaded = quiet_fit(runs, law, n_bootstrap=0)
            threaded_s = time.perf_counter() - start
        finally:
            fit_module.single_thread_blas = real
        assert threaded.params == ours.params
        start = time.perf_counter()
        blind = blind_fit(law, runs)
        blind_s = time.perf_counter() - start
        for method, params, seconds in (("igot (grid + least squares starts, top 8, analytic gradient)", ours.params, ours_s),
                                        ("igot, BLAS threads not limited", threaded.params, threaded_s),
                                        (f"blind grid, {2 ** len(TRUE[law])} starts, finite differences", blind, blind_s)):
            err, name = worst_error(params, law)
            rows.append(f"| {law} | {method} | {seconds:.2f} | {huber_objective(law, params, runs):.2f} | "
                        f"{err:.1%} ({name}) | {seconds / ours_s:.1f}x |")
            print(rows[-1], flush=True)
    return rows


def recovery_table(quick: bool) -> list[str]:
    seeds = range(3 if quick else 10)
    rows = ["| law | noise | worst parameter error, median / max over seeds | most often worst | "
            "split error (max of D, D'), median / max | fit s (median) |", "|---|---:|---:|---|---:|---:|"]
    for law in TRUE:
        truth = plan(LawFit(law=law, params=TRUE[law]), **PLAN)
        for sigma in (0.001, 0.005, 0.01):
            worst, names, split, seconds = [], [], [], []
            for seed in seeds:
                start = time.perf_counter()
                result = quiet_fit(synthetic(law, sigma, seed), law, n_bootstrap=0)
                seconds.append(time.perf_counter() - start)
                err, name = worst_error(result.params, law)
                worst.append(err)
                names.append(name)
                chosen = plan(result, **PLAN)
                split.append(max(abs(chosen.D / truth.D - 1), abs(chosen.Dp / truth.Dp - 1)))
            rows.append(f"| {law} | {sigma:.1%} | {statistics.median(worst):.1%} / {max(worst):.1%} | "
                        f"{max(set(names), key=names.count)} | {statistics.median(split):.2%} / {max(split):.2%} | "
                        f"{statistics.median(seconds):.2f} |")
            print(rows[-1], flush=True)
    return rows


def compare_table() -> list[str]:
    lines = []
    for law in TRUE:
        table = compare(synthetic(law, 0.005, seed=0), list(TRUE), holdout="largest_N")
        lines += [f"runs drawn from {law}, 0.5% noise; held out: {table.holdout}", "", table.to_markdown(), ""]
        print("\n".join(lines[-4:]), flush=True)
    return lines


def plan_table() -> list[str]:
    rows = ["| law | plan | seconds | D vs dense grid (2,000,001 splits) | grid seconds |", "|---|---|---:|---:|---:|"]
    for law in TRUE:
        truth = LawFit(law=law, params=TRUE[law])
        plan(truth, **PLAN)  # warm-up
        start = time.perf_counter()
        chosen = plan(truth, **PLAN)
        plan_s = time.perf_counter() - start
        start = time.perf_counter()
        tokens = PLAN["compute"] / (6 * PLAN["N"])
        D = np.linspace(0, tokens, 2_000_001)
        D_best = D[np.argmin(truth.predict(PLAN["N"], D, (tokens - D) / PLAN["n_domains"]))]
        grid_s = time.perf_counter() - start
        rows.append(f"| {law} | N fixed, 4 domains | {plan_s:.3f} | {chosen.D / D_best - 1:+.1e} | {grid_s:.3f} |")
        start = time.perf_counter()
        plan(truth, PLAN["compute"], n_domains=PLAN["n_domains"])
        rows.append(f"| {law} | N chosen too (121-size grid + refinement) | {time.perf_counter() - start:.3f} | - | - |")
        print("\n".join(rows[-2:]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds instead of 10")
    args = parser.parse_args()
    command = "benchmarks/bench_scaling.py" + (" --quick" if args.quick else "")
    out = [f"`{command}`", "", "Fit speed, 0.5% noise, seed 0:", ""] + speed_table(args.quick)
    out += ["", f"Recovery ({'3' if args.quick else '10'} seeds; plan at N = 1e9, C = 1e20, 4 domains):", ""]
    out += recovery_table(args.quick) + ["", "Extrapolation (compare):", ""] + compare_table()
    out += ["Planning:", ""] + plan_table()
    print("\n" + "\n".join(out))


if __name__ == "__main__":
    main()
