"""The candidate laws L(N, D, D′): domain loss of a model of N parameters after D general and D′ domain tokens.

Every law is linear in four coefficients (E, A, B and C or G) once its exponents and shape parameters are
fixed: L = E·1 + A·x_N + B·x_D + C·x_Dp, where the columns x depend only on the nonlinear parameters. The fit
uses that twice: the linear coefficients of each start come from least squares over a grid of the nonlinear
ones, and the gradient is assembled from the columns and their derivatives. Names carry units: A pairs with
alpha over N, B with beta and C with gamma over tokens, K is in tokens, E, G and rho are unitless.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

N_LINEAR = 4  # E, A, B and C (or G): the coefficients every law is linear in


@dataclass(frozen=True)
class Law:
    """One functional form: its parameters, their bounds and start grid, and its columns."""

    name: str
    formula: str
    why: str
    linear: tuple[str, ...]  # the four coefficients L is linear in, in column order
    nonlinear: tuple[str, ...]  # exponents and shape parameters, after the linear coefficients
    log_nonlinear: tuple[bool, ...]  # optimised as log (scale parameters) or as is (exponents)
    bounds: tuple[tuple[float, float], ...]  # natural units, one per nonlinear parameter
    start_grid: tuple[tuple[float, ...], ...]  # natural units, one tuple per nonlinear parameter
    start_scale: tuple[str | None, ...]  # "Dp": the starts are multiples of the runs' median positive D′
    defined_at_zero_D: bool  # finite at D = 0 (domain-only training)
    defined_at_zero_Dp: bool  # finite at D′ = 0 (the base model, no specialisation)
    columns: Callable[..., np.ndarray]  # (nl [..., P], N, D, Dp [R]) -> X [..., R, 4]
    dcolumns: Callable[..., list[tuple[int, np.ndarray]]]  # (nl [P], N, D, Dp) -> per parameter (column, dX [R])

    @property
    def param_names(self) -> tuple[str, ...]:
        """All parameter names: the linear coefficients, then the nonlinear ones."""
        return self.linear + self.nonlinear

    def defined(self, D, Dp) -> np.ndarray:
        """bool mask over runs (numpy broadcasting): where the law is finite, i.e. D > 0 and D′ > 0 unless it is
        defined at zero."""
        return ((np.asarray(D) > 0) | self.defined_at_zero_D) & ((np.asarray(Dp) > 0) | self.defined_at_zero_Dp)

    def evaluate(self, params: dict[str, float], N, D, Dp) -> np.ndarray:
        """Predicted loss for natural-unit params, with numpy broadcasting over N, D and Dp."""
        N, D, Dp = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (N, D, Dp)))
        nl = np.array([params[p] for p in self.nonlinear])
        coef = np.array([params[p] for p in self.linear])
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            X = self.columns(nl, N.ravel(), D.ravel(), Dp.ravel())  # [R, 4]
            return (X @ coef).reshape(N.shape)


def _power(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """x^-p with x^-p = inf at x = 0 (p > 0), broadcast as p[..., None] against x [R]."""
    return np.exp(-p[..., None] * np.log(x))


def _chinchilla_columns(nl, N, D, Dp):
    alpha, beta, gamma = nl[..., 0], nl[..., 1], nl[..., 2]
    x_n, x_d, x_dp = _power(N, alpha), _power(D, beta), _power(Dp, gamma)
    return np.stack([np.ones_like(x_n), x_n, x_d, x_dp], axis=-1)


def _chinchilla_dcolumns(nl, N, D, Dp):
    alpha, beta, gamma = nl
    return [(1, -np.log(N) * N ** -alpha), (2, -np.log(D) * D ** -beta), (3, -np.log(Dp) * Dp ** -gamma)]


def _transfer_columns(nl, N, D, Dp):
    alpha, beta, rho, gamma, K = (nl[..., i] for i in range(5))
    u = D + rho[..., None] * Dp  # general-language tokens: a domain token counts rho of a general one
    v = 1 + Dp / K[..., None]  # the domain gap closes once D′ passes K
    x_n = _power(N, alpha)
    x_u = np.exp(-beta[..., None] * np.log(u))
    x_v = np.exp(-gamma[..., None] * np.log(v))
    return np.stack([np.ones_like(x_n), x_n, x_u, x_v], axis=-1)


def _transfer_dcolumns(nl, N, D, Dp):
    alpha, beta, rho, gamma, K = nl
    u, v = D + rho * Dp, 1 + Dp / K
    x_u, x_v = u ** -beta, v ** -gamma
    return [(1, -np.log(N) * N ** -alpha),
            (2, -np.log(u) * x_u),
            (2, -beta * x_u * rho * Dp / u),  # d/d log rho
            (3, -np.log(v) * x_v),
            (3, gamma * x_v * (Dp / K) / v)]  # d/d log K


_EXPONENT_BOUNDS = (0.01, 3.0)  # below 0.01 a power term is a second constant, indistinguishable from E
_EXPONENT_STARTS = (0.1, 0.25, 0.45, 0.7, 1.0)

LAWS: dict[str, Law] = {
    "chinchilla_split": Law(
        name="chinchilla_split",
        linear=("E", "A", "B", "C"),
        formula="L = E + A/N^alpha + B/D^beta + C/D'^gamma",
        why="Hoffmann et al.'s form with the data term split by source: each source has its own power law "
            "and the terms add, so general tokens never stand in for domain tokens. It is the simplest form "
            "that prices a split, and is infinite at D = 0 or D' = 0, so it cannot price 'no specialisation' "
            "or 'domain only' and needs every run to have both kinds of tokens.",
        nonlinear=("alpha", "beta", "gamma"),
        log_nonlinear=(False, False, False),
        bounds=(_EXPONENT_BOUNDS,) * 3,
        start_grid=(_EXPONENT_STARTS,) * 3,
        start_scale=(None,) * 3,
        defined_at_zero_D=False,
        defined_at_zero_Dp=False,
        columns=_chinchilla_columns,
        dcolumns=_chinchilla_dcolumns,
    ),
    "transfer": Law(
        name="transfer",
        linear=("E", "A", "B", "G"),
        formula="L = E + A/N^alpha + B/(D + rho*D')^beta + G/(1 + D'/K)^gamma",
        why="Every token teaches the general language, a domain token worth rho general ones (D and D' "
            "interact: one stands in for the other in the third term), and domain tokens also close a "
            "domain-specific gap G: the base model's own excess domain loss at D' = 0, shrinking as a power "
            "law once D' >> K. Finite at D' = 0 (general pretraining only) and at D = 0 (domain-only "
            "training, where the language term runs on rho*D'), so it prices both ends. G is the gap "
            "itself rather than the tail coefficient G*K^gamma: the runs pin the gap to under 1%, while "
            "the tail coefficient inherits gamma's error times ln(D') (about 20x) and is the worst-"
            "determined number of the law (linearised standard errors on the test grid).",
        nonlinear=("alpha", "beta", "rho", "gamma", "K"),
        log_nonlinear=(False, False, True, False, True),
        bounds=(_EXPONENT_BOUNDS, _EXPONENT_BOUNDS, (1e-6, 1e3), _EXPONENT_BOUNDS, (1.0, 1e16)),
        start_grid=(_EXPONENT_STARTS, _EXPONENT_STARTS, (0.03, 0.3, 1.0), _EXPONENT_STARTS, (0.03, 0.3, 3.0)),
        start_scale=(None, None, None, None, "Dp"),
        defined_at_zero_D=True,
        defined_at_zero_Dp=True,
        columns=_transfer_columns,
        dcolumns=_transfer_dcolumns,
    ),
}


def get_law(law: str) -> Law:
    """Return the law called `law`.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if law not in LAWS:
        raise ValueError(f"unknown law {law!r}; pick one of {', '.join(LAWS)}")
    return LAWS[law]
