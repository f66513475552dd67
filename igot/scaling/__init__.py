"""Scaling-law planner: fit L(N, D, D′) to training runs and split a compute budget between general
pretraining (D tokens, shared) and domain continued pretraining (D′ tokens per domain).

    fit(runs, law="chinchilla_split") -> LawFit      laws: LAWS (chinchilla_split, transfer)
    compare(runs, laws, holdout="largest_N")         extrapolation error of each law on held-out larger runs
    plan(fit, compute, n_domains=1, N=None, sizes=None) -> Plan   (Plan.plot(path) draws the iso-loss PNG)

Reads run logs only: it never imports igot.train. scipy (fitting, planning) and matplotlib (plots) load
when a function needs them: pip install 'igot[scaling]'.
"""
from .fitting import HUBER_DELTA, Comparison, LawFit, compare, fit
from .laws import LAWS, Law, get_law
from .planning import Plan, best_split, plan
from .runs import Runs, load_runs

__all__ = ["HUBER_DELTA", "LAWS", "Comparison", "Law", "LawFit", "Plan", "Runs", "best_split", "compare", "fit",
           "get_law", "load_runs", "plan"]
