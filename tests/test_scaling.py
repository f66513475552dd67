"""igot.scaling: laws recovered from noisy synthetic runs, plans against independently derived optima,
refusals of nonsense fits, igot train logs, save/load and the `igot plan` CLI.

The laws are written out again here (not imported) so the fit is checked against a separate formula, and
the optima are derived without the planner: chinchilla_split from the root of its first-order condition
(closed form when beta = gamma), transfer from a dense grid of 2 million splits.
"""
import itertools
import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

from igot.scaling import LawFit, compare, fit, load_runs, plan

TRUE = {
    "chinchilla_split": dict(E=1.8, A=400.0, alpha=0.34, B=800.0, beta=0.30, C=60.0, gamma=0.25),
    "transfer": dict(E=1.8, A=400.0, alpha=0.34, B=800.0, beta=0.30, rho=0.3, G=1.0, gamma=0.6, K=1e7),
}
SIZES = np.geomspace(1e6, 1e10, 5)
GENERAL = np.geomspace(1e8, 1e11, 4)
DOMAIN = np.geomspace(1e6, 1e11, 6)


def _law(name, p, N, D, Dp):
    """The laws, written independently of igot.scaling.laws."""
    N, D, Dp = (np.asarray(x, dtype=float) for x in (N, D, Dp))
    if name == "chinchilla_split":
        return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"] + p["C"] / Dp ** p["gamma"]
    return (p["E"] + p["A"] / N ** p["alpha"] + p["B"] / (D + p["rho"] * Dp) ** p["beta"]
            + p["G"] / (1 + Dp / p["K"]) ** p["gamma"])


def _runs(name, sigma, seed=0, params=None, sizes=SIZES):
    """Runs on the grid, loss × exp(sigma · standard normal); transfer also gets D = 0 and D′ = 0 runs."""
    zero = [0.0] if name == "transfer" else []
    grid = np.array([g for g in itertools.product(sizes, zero + list(GENERAL), zero + list(DOMAIN)) if g[1] + g[2] > 0])
    loss = _law(name, params or TRUE[name], *grid.T) * np.exp(sigma * np.random.default_rng(seed).standard_normal(len(grid)))
    return [dict(N=n, D=d, Dp=dp, loss=l) for (n, d, dp), l in zip(grid, loss)]


def _optimum(name, p, N, compute, k, points=2_000_001):
    """(D, Dp) minimising the true law on D + k·Dp = C/(6N), derived without igot's planner."""
    tokens = compute / (6 * N)
    if name == "chinchilla_split":
        from scipy.optimize import brentq

        # d/dD of B/D^beta + C/((T - D)/k)^gamma = 0, decreasing in D: one root
        foc = lambda D: p["beta"] * p["B"] * D ** (-p["beta"] - 1) - p["gamma"] * p["C"] / k * ((tokens - D) / k) ** (-p["gamma"] - 1)
        D = brentq(foc, tokens * 1e-12, tokens * (1 - 1e-12), xtol=tokens * 1e-14, rtol=1e-14)
        return D, (tokens - D) / k
    D = np.linspace(0, tokens, points)
    i = int(np.argmin(_law(name, p, N, D, (tokens - D) / k)))
    return D[i], (tokens - D[i]) / k


def _fit(runs, law, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fit(runs, law, **kw)


def _rel(a, b):
    return abs(a / b - 1)


@pytest.mark.parametrize("law", list(TRUE))
def test_noisy_runs_recover_parameters_and_split(law):
    result = _fit(_runs(law, sigma=0.001), law, n_bootstrap=0)  # 0.1% multiplicative noise on the loss
    errors = {k: _rel(result.params[k], v) for k, v in TRUE[law].items()}
    assert max(errors.values()) < 0.05, errors
    D, Dp = _optimum(law, TRUE[law], 1e9, 1e20, 4)
    chosen = plan(result, 1e20, n_domains=4, N=1e9)
    assert _rel(chosen.D, D) < 0.05 and _rel(chosen.Dp, Dp) < 0.05, (chosen.D, D, chosen.Dp, Dp)
    assert 0.0009 < result.rmse_log < 0.0011  # the noise put in, not a fit of the noise


@pytest.mark.parametrize("law", list(TRUE))
@pytest.mark.parametrize("k", [1, 4])
def test_plan_at_fixed_size_is_the_independent_optimum(law, k):
    truth = LawFit(law=law, params=TRUE[law])
    for N, compute in ((1e8, 1e18), (1e9, 1e20), (3e9, 1e22)):
        D, Dp = _optimum(law, TRUE[law], N, compute, k)
        chosen = plan(truth, compute, n_domains=k, N=N)
        assert chosen.N == N and math.isclose(6 * N * (chosen.D + k * chosen.Dp), compute, rel_tol=1e-9)
        assert _rel(chosen.D, D) < 1e-4 and _rel(chosen.Dp, Dp) < 1e-4, (N, chosen.D, D, chosen.Dp, Dp)
        assert math.isclose(chosen.loss, float(_law(law, TRUE[law], N, D, Dp)), rel_tol=1e-9)


def test_chinchilla_split_closed_form_when_exponents_match():
    p = dict(TRUE["chinchilla_split"], gamma=0.30)  # beta = gamma: D/D′ = (k·B/C)^(1/(beta+1))
    N, compute, k = 1e9, 1e20, 3
    ratio = (k * p["B"] / p["C"]) ** (1 / (p["beta"] + 1))
    Dp = compute / (6 * N) / (ratio + k)
    chosen = plan(LawFit(law="chinchilla_split", params=p), compute, n_domains=k, N=N)
    assert _rel(chosen.Dp, Dp) < 1e-6 and _rel(chosen.D, ratio * Dp) < 1e-6


def test_plan_takes_an_end_when_the_law_prices_it():
    # no domain gap and domain tokens worth a fifth of general ones: specialising never pays
    p = dict(TRUE["transfer"], G=1e-9, rho=0.2)
    chosen = plan(LawFit(law="transfer", params=p), 1e20, n_domains=2, N=1e9)
    assert chosen.Dp == 0 and chosen.share == 0 and chosen.gain_vs_general_only == 0
    assert chosen.gain_vs_domain_only > 0


def test_plan_gains_and_alternatives():
    truth = LawFit(law="transfer", params=TRUE["transfer"])
    chosen = plan(truth, 1e20, n_domains=4, N=1e9)
    rows = {r["strategy"]: r for r in chosen.alternatives}
    assert math.isclose(rows["no specialisation"]["loss"], float(_law("transfer", TRUE["transfer"], 1e9, 1e20 / 6e9, 0)))
    assert math.isclose(rows["domain only"]["loss"], float(_law("transfer", TRUE["transfer"], 1e9, 0, 1e20 / 6e9 / 4)))
    assert chosen.gain_vs_general_only == pytest.approx(rows["no specialisation"]["loss"] - chosen.loss)
    assert chosen.gain_vs_domain_only == pytest.approx(rows["domain only"]["loss"] - chosen.loss)
    assert all(r["loss"] >= chosen.loss for r in chosen.alternatives)
    # no specialisation never reaches the plan (its floor E + A/N^alpha + G is above it), domain only does
    assert rows["no specialisation"]["compute_to_match"] == math.inf
    m = rows["domain only"]["compute_to_match"]
    assert 1 < m < math.inf
    assert math.isclose(float(_law("transfer", TRUE["transfer"], 1e9, 0, m * 1e20 / 6e9 / 4)), chosen.loss, rel_tol=1e-7)
    chinchilla = plan(LawFit(law="chinchilla_split", params=TRUE["chinchilla_split"]), 1e20, n_domains=4, N=1e9)
    assert chinchilla.gain_vs_general_only is None and chinchilla.gain_vs_domain_only is None
    assert {r["share"] for r in chinchilla.alternatives} >= {0.1, 0.9} and 0 not in {r["share"] for r in chinchilla.alternatives}


@pytest.mark.parametrize("law", list(TRUE))
def test_plan_chooses_the_size(law):
    truth, compute, k = LawFit(law=law, params=TRUE[law]), 1e21, 2
    loss_at = {N: float(_law(law, TRUE[law], N, *_optimum(law, TRUE[law], N, compute, k))) for N in (1e8, 3e8, 1e9, 3e9)}
    chosen = plan(truth, compute, n_domains=k, sizes=list(loss_at))
    assert chosen.N == min(loss_at, key=loss_at.get)
    assert sum(r["strategy"].startswith("best split at N") for r in chosen.alternatives) == len(loss_at) - 1
    # free N against a dense grid of sizes, each with its independent optimum
    free = plan(truth, compute, n_domains=k)
    grid = np.geomspace(free.N / 1.5, free.N * 1.5, 121)
    best = grid[np.argmin([_law(law, TRUE[law], N, *_optimum(law, TRUE[law], N, compute, k, 200_001)) for N in grid])]
    assert _rel(free.N, best) < 0.01 and not free.notes


def test_bootstrap_intervals_widen_with_noise_and_bracket_the_fit():
    widths = []
    for sigma in (0.001, 0.01):
        result = _fit(_runs("chinchilla_split", sigma), "chinchilla_split", n_bootstrap=30, seed=1)
        lo, hi = result.interval(np.array([1e9, 3e10]), 1e10, np.array([1e8, 1e9]))
        mid = result.predict(np.array([1e9, 3e10]), 1e10, np.array([1e8, 1e9]))
        assert np.all(lo <= mid) and np.all(mid <= hi)
        intervals = result.param_intervals()
        assert all(intervals[k][0] <= v <= intervals[k][1] for k, v in result.params.items())
        widths.append(hi - lo)
    assert np.all(widths[1] > 3 * widths[0])


def test_predict_broadcasts():
    result = LawFit(law="transfer", params=TRUE["transfer"])
    N, D = np.array([1e8, 1e9])[:, None], np.array([0, 1e9, 1e10])[None, :]
    out = result.predict(N, D, 1e8)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out, _law("transfer", TRUE["transfer"], N, D, 1e8), rtol=1e-12)
    assert np.isinf(LawFit(law="chinchilla_split", params=TRUE["chinchilla_split"]).predict(1e9, 0, 1e8))


def test_save_load_round_trip(tmp_path):
    result = _fit(_runs("transfer", 0.002), "transfer", n_bootstrap=5)
    path = result.save(tmp_path / "fit.json")
    loaded = LawFit.load(path)
    assert loaded.params == result.params and loaded.ranges == result.ranges and loaded.warnings == result.warnings
    np.testing.assert_array_equal(loaded.bootstrap, result.bootstrap)
    np.testing.assert_array_equal(loaded.interval(1e9, 1e10, 1e8), result.interval(1e9, 1e10, 1e8))
    (tmp_path / "bad.json").write_text(json.dumps({"law": "transfer"}))
    with pytest.raises(ValueError, match="LawFit"):
        LawFit.load(tmp_path / "bad.json")


def test_compare_reports_extrapolation_error():
    table = compare(_runs("transfer", 0.001), ["transfer", "chinchilla_split"], holdout="largest_N")
    rows = {r["law"]: r for r in table.rows}
    assert rows["transfer"]["n_test"] == len([r for r in _runs("transfer", 0.001) if r["N"] == SIZES[-1]])
    assert rows["transfer"]["mean_abs_rel_err"] < 0.003  # the true law, 0.1% noise
    assert rows["chinchilla_split"]["n_train"] < rows["transfer"]["n_train"]  # no D = 0 or D′ = 0 runs for it
    assert "| transfer |" in table.to_markdown()
    with pytest.raises(ValueError, match="holdout"):
        compare(_runs("transfer", 0.001), holdout="smallest")


# --- refusals: never a silent nonsense fit ---------------------------------------------------------------

def test_fewer_runs_than_parameters():
    with pytest.raises(ValueError, match="6 runs for 9 free parameters"):
        fit(_runs("transfer", 0.001)[:6], "transfer")


@pytest.mark.parametrize("bad", [math.nan, 0.0, -1.0, math.inf])
def test_bad_losses_are_named(bad):
    runs = _runs("chinchilla_split", 0.001)
    runs[7]["loss"] = bad
    with pytest.raises(ValueError, match=r"loss must be a positive finite number.*: run 7 "):
        fit(runs, "chinchilla_split")


def test_single_model_size_refused_unless_the_size_term_is_fixed():
    runs = _runs("chinchilla_split", 0.001, sizes=[1e8])
    with pytest.raises(ValueError, match="single size: extrapolation in N is impossible"):
        fit(runs, "chinchilla_split")
    with pytest.raises(ValueError, match="without alpha"):
        fit(runs, "chinchilla_split", fixed={"A": 400.0})
    p = TRUE["chinchilla_split"]
    result = _fit(runs, "chinchilla_split", fixed={"A": p["A"], "alpha": p["alpha"]}, n_bootstrap=0)
    assert result.params["A"] == p["A"] and result.params["alpha"] == p["alpha"] and result.fixed == ("A", "alpha")
    assert _rel(result.params["E"], p["E"]) < 0.01


def test_two_token_counts_refused():
    runs = [r for r in _runs("chinchilla_split", 0.001) if r["D"] in GENERAL[:2]]
    with pytest.raises(ValueError, match="only 2 distinct general token counts"):
        fit(runs, "chinchilla_split")


def test_law_undefined_at_zero_tokens_refused():
    with pytest.raises(ValueError, match="infinite at D = 0.*law='transfer'"):
        fit(_runs("transfer", 0.001), "chinchilla_split")
    runs = _runs("transfer", 0.001)
    runs[3].update(D=0.0, Dp=0.0)
    with pytest.raises(ValueError, match="untrained model.*run 3 "):
        fit(runs, "transfer")


def test_runs_without_domain_signal_warn():
    flat = _runs("chinchilla_split", 0.001, params=dict(TRUE["chinchilla_split"], C=1e-12))
    with pytest.warns(UserWarning, match="(gamma|C) = .* (is at the bound|is poorly determined)"):
        fit(flat, "chinchilla_split", n_bootstrap=10)


def test_bad_arguments():
    runs = _runs("chinchilla_split", 0.001)
    with pytest.raises(ValueError, match="unknown law 'kaplan'"):
        fit(runs, "kaplan")
    with pytest.raises(ValueError, match="not parameters"):
        fit(runs, "chinchilla_split", fixed={"rho": 0.1})
    truth = LawFit(law="transfer", params=TRUE["transfer"])
    with pytest.raises(ValueError, match="not both"):
        plan(truth, 1e20, N=1e9, sizes=[1e9])
    with pytest.raises(ValueError, match="compute"):
        plan(truth, -1.0)
    with pytest.raises(ValueError, match="n_domains"):
        plan(truth, 1e20, n_domains=0)


# --- reading runs -----------------------------------------------------------------------------------------

def test_csv_records_and_dataframe_like_inputs_agree(tmp_path):
    runs = _runs("chinchilla_split", 0.001)[:10]
    path = tmp_path / "runs.csv"
    path.write_text("N,D,Dp,loss,general_loss\n" + "".join(f"{float(r['N'])!r},{float(r['D'])!r},{float(r['Dp'])!r},{float(r['loss'])!r},\n" for r in runs))

    class Frame:  # what load_runs reads of a pandas DataFrame, without needing pandas
        columns = ["N", "D", "Dp", "loss"]

        def to_dict(self, orient):
            assert orient == "records"
            return runs

    for source in (str(path), runs, Frame()):
        loaded = load_runs(source)
        np.testing.assert_array_equal(loaded.loss, [r["loss"] for r in runs])
        assert np.all(np.isnan(loaded.general_loss))
    assert load_runs(str(path)).labels[0] == f"{path} row 2"
    (tmp_path / "short.csv").write_text("N,D,loss\n1,2,3\n")
    with pytest.raises(ValueError, match="has no Dp"):
        load_runs(tmp_path / "short.csv")
    with pytest.raises(TypeError, match="runs of type int"):
        load_runs(3)


def _write_run(folder, n_params, model_path, lines):
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(f'[model]\npath = "{model_path}"\n\n[data]\nseq_len = 64\n')
    start = {"event": "start", "step": 0, "n_params": n_params, "n_params_non_embedding": n_params // 2,
             "tokens_by_source": {name: 0 for name in lines[0][1]}}
    text = [json.dumps(start)]
    for step, tokens, bpb in lines:
        text.append(json.dumps({"step": step, "tokens": sum(tokens.values()), "loss": 3.0, "tokens_by_source": tokens}))
        if bpb is not None:
            text.append(json.dumps({"step": step, "event": "eval", "tokens_by_source": tokens, "heldout_bpb": bpb}))
    (folder / "metrics.jsonl").write_text("\n".join(text) + "\n")
    (folder / "final").mkdir()


def test_igot_train_runs_branching_from_a_general_base(tmp_path):
    base, domain = tmp_path / "base", tmp_path / "domain"
    _write_run(base, 1_000_000, "/models/SmolLM2", [
        (0, {"sotu": 0, "moby": 0}, {"hpo": 9.0, "sotu": 9.0}),  # random weights: skipped
        (10, {"sotu": 600, "moby": 400}, {"hpo": 2.0, "sotu": 1.5}),
        (20, {"sotu": 1200, "moby": 800}, {"hpo": 1.9, "sotu": 1.4})])
    _write_run(domain, 1_000_000, str(base / "final"), [
        (5, {"hpo": 300, "sotu": 50}, {"hpo": 1.6, "sotu": 1.45}),
        (10, {"hpo": 600, "sotu": 100}, {"hpo": 1.5, "sotu": 1.5})])
    mapping = dict(general=["sotu", "moby"], domain=["hpo"], heldout="hpo", general_heldout="sotu")
    runs = load_runs([base, domain / "metrics.jsonl"], **mapping)
    np.testing.assert_array_equal(runs.N, [1e6, 1e6])
    np.testing.assert_array_equal(runs.D, [2000, 2000 + 100])  # the domain run adds its base's general tokens
    np.testing.assert_array_equal(runs.Dp, [0, 600])
    np.testing.assert_array_equal(runs.loss, [1.9, 1.5])
    np.testing.assert_array_equal(runs.general_loss, [1.4, 1.5])
    every = load_runs([base, domain], **mapping, points="evals", n_params="non_embedding")
    np.testing.assert_array_equal(every.D, [1000, 2000, 2050, 2100])
    np.testing.assert_array_equal(every.Dp, [0, 0, 300, 600])
    np.testing.assert_array_equal(every.N, [5e5] * 4)
    with pytest.raises(ValueError, match=r"sources \['moby'\] are in neither"):
        load_runs([base], general=["sotu"], domain=["hpo"], heldout="hpo")
    with pytest.raises(ValueError, match="no held-out set 'go'.*'hpo', 'sotu'"):
        load_runs([base], general=["sotu", "moby"], domain=["hpo"], heldout="go")
    with pytest.raises(ValueError, match="general=.*domain=.*heldout="):
        load_runs([base])
    with pytest.raises(FileNotFoundError):
        load_runs([tmp_path / "missing"], **mapping)


# --- the CLI and the picture ------------------------------------------------------------------------------

def test_cli_fit_split_and_plot(tmp_path, capsys):
    from igot.cli import main

    runs = tmp_path / "runs.csv"
    runs.write_text("N,D,Dp,loss\n" + "".join(f"{r['N']},{r['D']},{r['Dp']},{r['loss']}\n"
                                              for r in _runs("transfer", 0.001)))
    fit_json, png = tmp_path / "fit.json", tmp_path / "split.png"
    assert main(["plan", "fit", str(runs), "--law", "transfer", "--out", str(fit_json), "--bootstrap", "4"]) == 0
    assert "| rho |" in capsys.readouterr().out
    assert main(["plan", "split", "--fit", str(fit_json), "--compute", "1e20", "--domains", "4", "--size", "1e9",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    expected = plan(LawFit.load(fit_json), 1e20, n_domains=4, N=1e9)
    assert f"D = {expected.D:.3g} general tokens, D' = {expected.Dp:.3g} tokens per domain" in out
    assert "| domain only |" in out and "no specialisation:" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 300 and height > 300
    import matplotlib.image

    assert matplotlib.image.imread(png).std() > 0  # decodes, and is not a blank canvas
    assert main(["plan", "split", "--fit", str(runs), "--compute", "1e20"]) == 2
    assert "not JSON" in capsys.readouterr().err


def test_import_igot_scaling_loads_neither_scipy_nor_matplotlib():
    out = subprocess.run([sys.executable, "-c", "import igot.scaling, igot.cli; igot.cli.build_parser(); import sys; "
                          "print(' '.join(sys.modules))"], capture_output=True, text=True, check=True).stdout.split()
    assert "scipy" not in out and "matplotlib" not in out
