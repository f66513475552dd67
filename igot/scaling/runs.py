"""Training runs as (N, D, D′, loss) points: from a CSV, records, a DataFrame, or igot train run folders.

From an igot train run (its metrics.jsonl, or the folder holding it with config.toml):
- N is `n_params` (or `n_params_non_embedding` with n_params="non_embedding") of the run's first
  `{"event": "start", ...}` line.
- D and D′ are the run's `tokens_by_source` (cumulative tokens per `[data.sources]` name) summed over the
  sources named in `general` and in `domain`; every source a run trained on must be named in one of the two,
  so no tokens are dropped silently. A line without `tokens_by_source` uses the latest earlier one.
- A run whose config.toml `[model] path` is another igot run's `final/` (or `checkpoints/step_K/`) branched
  from it: that run's tokens (at its end, or at step K) are added, recursively, so a domain run counts the
  general tokens of the base it started from. A base model igot did not train (e.g. SmolLM2) adds nothing:
  its own pretraining is not in any log.
- loss is `heldout_bpb[heldout]` (bits per byte on the named held-out set) of the run's last eval line
  (points="final"), or of every eval line (points="evals"; only sound with a schedule that does not decay
  towards the end, e.g. WSD read before its decay); general_loss likewise from `general_heldout`. An eval
  of a model trained on no token at all (a base run's step 0 from random weights) is skipped.
- N counts the embeddings with n_params="total"; for tiny models, whose embeddings are most of the
  parameters (1.57 M of 1.59 M in a 2-layer, 32-wide Llama over SmolLM2's 49,152 ids), n_params=
  "non_embedding" (Kaplan et al.'s choice) follows the body that scaling changes.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

COLUMNS = ("N", "D", "Dp", "loss")  # required; general_loss is optional
ParamCount = Literal["total", "non_embedding"]
Points = Literal["final", "evals"]


@dataclass(frozen=True)
class Runs:
    """Training runs: model size, general and domain tokens, held-out losses, one label per run."""

    N: np.ndarray  # [R] parameters
    D: np.ndarray  # [R] general tokens
    Dp: np.ndarray  # [R] domain tokens (D′)
    loss: np.ndarray  # [R] held-out domain loss
    general_loss: np.ndarray  # [R] held-out general loss, NaN where not given
    labels: tuple[str, ...]  # where each run came from: "file.csv row 3", "run/metrics.jsonl:41"

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: np.ndarray) -> Runs:
        """The runs where mask is true."""
        mask = np.asarray(mask, dtype=bool)
        return Runs(self.N[mask], self.D[mask], self.Dp[mask], self.loss[mask], self.general_loss[mask],
                    tuple(label for label, keep in zip(self.labels, mask) if keep))

    def column(self, name: str) -> np.ndarray:
        """One column by name: N, D, Dp, loss or general_loss."""
        return getattr(self, name)


def load_runs(runs: Any, *, general: Sequence[str] | None = None, domain: Sequence[str] | None = None,
              heldout: str | None = None, general_heldout: str | None = None,
              n_params: ParamCount = "total", points: Points = "final") -> Runs:
    """Read training runs from any supported form into one Runs table.

    Args:
        runs: a Runs; a CSV path; an igot train run (metrics.jsonl or its folder); a list of such paths; a
            list of dicts; or a pandas DataFrame. Tables have columns N, D, Dp, loss (general_loss optional).
        general: the `[data.sources]` names that count as general tokens D (igot train runs only).
        domain: the source names that count as domain tokens D′ (igot train runs only).
        heldout: the `heldout_bpb` set whose bits per byte is the loss (igot train runs only).
        general_heldout: the held-out set read as general_loss (optional).
        n_params: "total" reads `n_params`, "non_embedding" reads `n_params_non_embedding`.
        points: "final" takes each run's last eval line, "evals" every eval line.

    Returns:
        The runs, each labelled with where it came from.

    Raises:
        ValueError: missing columns or fields, unparsable numbers, a source in neither or both of
            general/domain, an unknown held-out set, N <= 0, D or D′ negative or not finite.
        TypeError: runs is of no supported type.
        FileNotFoundError: a path does not exist.
    """
    if isinstance(runs, Runs):
        return runs
    mapping = dict(general=general, domain=domain, heldout=heldout, general_heldout=general_heldout,
                   n_params=n_params, points=points)
    if points not in ("final", "evals"):
        raise ValueError(f"points={points!r}: use 'final' or 'evals'")
    if n_params not in ("total", "non_embedding"):
        raise ValueError(f"n_params={n_params!r}: use 'total' or 'non_embedding'")
    if isinstance(runs, (str, os.PathLike)):
        rows = _read_path(Path(runs), mapping)
    elif hasattr(runs, "to_dict") and hasattr(runs, "columns"):  # a pandas DataFrame, without importing pandas
        rows = [(f"row {i}", dict(r)) for i, r in enumerate(runs.to_dict("records"))]
    elif isinstance(runs, Sequence) and runs and all(isinstance(r, Mapping) for r in runs):
        rows = [(f"run {i}", dict(r)) for i, r in enumerate(runs)]
    elif isinstance(runs, Sequence) and runs and all(isinstance(r, (str, os.PathLike)) for r in runs):
        rows = [row for path in runs for row in _read_path(Path(path), mapping)]
    else:
        raise TypeError(f"runs of type {type(runs).__name__}: pass a CSV path, igot train run folders or "
                        "metrics.jsonl paths, a non-empty list of dicts, or a pandas DataFrame")
    return _to_runs(rows)


def _to_runs(rows: list[tuple[str, dict]]) -> Runs:
    if not rows:
        raise ValueError("no runs: the input holds no rows")
    values = {c: [] for c in COLUMNS + ("general_loss",)}
    for label, row in rows:
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"{label} has no {', '.join(missing)} (columns: {', '.join(map(str, row))}); "
                             f"runs need columns {', '.join(COLUMNS)} and optionally general_loss")
        for c in values:
            values[c].append(_number(row.get(c), label, c))
    arrays = {c: np.array(v, dtype=np.float64) for c, v in values.items()}
    labels = tuple(label for label, _ in rows)
    for name, ok, what in (("N", arrays["N"] > 0, "a positive number"),
                           ("D", arrays["D"] >= 0, "a finite number >= 0"),
                           ("Dp", arrays["Dp"] >= 0, "a finite number >= 0")):
        bad = np.flatnonzero(~(ok & np.isfinite(arrays[name])))
        if bad.size:
            raise ValueError(f"{name} must be {what}: " + describe_rows(labels, arrays[name], bad))
    return Runs(arrays["N"], arrays["D"], arrays["Dp"], arrays["loss"], arrays["general_loss"], labels)


def _number(value: Any, label: str, column: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        if column == "general_loss":
            return math.nan
        raise ValueError(f"{label}: {column} is empty")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label}: {column}={value!r} is not a number") from None


def describe_rows(labels: Sequence[str], values: np.ndarray, bad: np.ndarray, limit: int = 5) -> str:
    """'label (value), ...' for the first few bad rows, and how many there are."""
    shown = ", ".join(f"{labels[i]} ({values[i]:g})" for i in bad[:limit])
    return shown + (f" and {bad.size - limit} more" if bad.size > limit else "") + f" ({bad.size} of {len(labels)})"


def _read_path(path: Path, mapping: dict) -> list[tuple[str, dict]]:
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir() and (path / "metrics.jsonl").is_file():
        return _read_run(path / "metrics.jsonl", mapping)
    if path.suffix == ".jsonl":
        return _read_run(path, mapping)
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [({k.strip(): v for k, v in r.items() if k is not None}) for r in reader]
        return [(f"{path} row {i + 2}", r) for i, r in enumerate(rows)]  # row 1 is the header
    raise ValueError(f"{path}: not a .csv, a metrics.jsonl or an igot train run folder (one holding metrics.jsonl)")


def _read_run(path: Path, mapping: dict) -> list[tuple[str, dict]]:
    general, domain, heldout = mapping["general"], mapping["domain"], mapping["heldout"]
    if general is None or domain is None or heldout is None:
        raise ValueError(f"{path} is an igot train log: say which sources are general and which domain, and "
                         "which held-out set is the loss, with general=[...], domain=[...], heldout='name' "
                         "(CLI: --general, --domain, --heldout)")
    overlap = set(general) & set(domain)
    if overlap:
        raise ValueError(f"sources {sorted(overlap)} are in both general= and domain=; put each in one")
    lines = _read_jsonl(path)
    start = next((rec for _, rec in lines if rec.get("event") == "start"), None)
    key = "n_params" if mapping["n_params"] == "total" else "n_params_non_embedding"
    if start is None or key not in start:
        raise ValueError(f"{path}: no {{\"event\": \"start\"}} line with {key!r}; the model size is unknown, "
                         "so write the runs as a CSV with an N column")
    D0, Dp0 = _inherited_tokens(path.parent, general, domain, seen={path.resolve()})
    points, tokens = [], None
    for lineno, rec in lines:
        tokens = rec.get("tokens_by_source", tokens)
        if "heldout_bpb" in rec:
            points.append((lineno, rec, tokens))
    if not points:
        raise ValueError(f"{path}: no eval line (one with heldout_bpb); set [train] eval_every so the run evaluates")
    if mapping["points"] == "final":
        points = points[-1:]
    rows = []
    for lineno, rec, tokens in points:
        label = f"{path}:{lineno}"
        if tokens is None:
            raise ValueError(f"{label}: no tokens_by_source on or before this line; D and D' are unknown")
        D, Dp = _split_tokens(tokens, general, domain, label)
        if D0 + D + Dp0 + Dp == 0:
            continue  # an eval before any training: the random initial model is no point of any law
        row = {"N": start[key], "D": D0 + D, "Dp": Dp0 + Dp, "loss": _heldout(rec, heldout, label, "heldout")}
        if mapping["general_heldout"] is not None:
            row["general_loss"] = _heldout(rec, mapping["general_heldout"], label, "general_heldout")
        rows.append((label, row))
    return rows


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    lines = []
    with open(path, encoding="utf-8") as f:
        for lineno, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: a JSON {type(rec).__name__}, not an object")
            lines.append((lineno, rec))
    return lines


def _split_tokens(tokens: Mapping[str, float], general: Sequence[str], domain: Sequence[str],
                  label: str) -> tuple[float, float]:
    unknown = sorted(set(tokens) - set(general) - set(domain))
    if unknown:
        raise ValueError(f"{label}: sources {unknown} are in neither general= nor domain=; add each to one "
                         "(CLI: --general / --domain) so its tokens are counted")
    return (float(sum(tokens.get(s, 0) for s in general)), float(sum(tokens.get(s, 0) for s in domain)))


def _heldout(rec: dict, name: str, label: str, argument: str) -> float:
    bpb = rec["heldout_bpb"]
    if not isinstance(bpb, Mapping) or name not in bpb:
        known = sorted(bpb) if isinstance(bpb, Mapping) else []
        raise ValueError(f"{label}: no held-out set {name!r} in heldout_bpb (sets: {known}); fix {argument}=")
    return bpb[name]


def _inherited_tokens(run_dir: Path, general, domain, seen: set[Path]) -> tuple[float, float]:
    """General and domain tokens of the igot run this run branched from (0, 0 if none)."""
    parent = _parent_run(run_dir)
    if parent is None:
        return 0.0, 0.0
    metrics, step = parent
    if metrics.resolve() in seen:
        raise ValueError(f"{run_dir}: [model] path leads back to {metrics.parent}: the runs branch in a cycle")
    tokens, where = None, None
    for lineno, rec in _read_jsonl(metrics):
        if "tokens_by_source" in rec and (step is None or rec.get("step") == step):
            tokens, where = rec["tokens_by_source"], f"{metrics}:{lineno}"
    if tokens is None:
        at = "" if step is None else f" at step {step} (the checkpoint it branched from)"
        raise ValueError(f"{run_dir} branched from {metrics.parent}, whose metrics.jsonl has no tokens_by_source"
                         f"{at}; its tokens cannot be added to D and D'")
    D, Dp = _split_tokens(tokens, general, domain, where)
    D0, Dp0 = _inherited_tokens(metrics.parent, general, domain, seen | {metrics.resolve()})
    return D0 + D, Dp0 + Dp


def _parent_run(run_dir: Path) -> tuple[Path, int | None] | None:
    """(metrics.jsonl of the run the model path points into, checkpoint step or None for final/)."""
    config = run_dir / "config.toml"
    if not config.is_file():
        return None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ImportError("reading config.toml on Python 3.10 needs tomli: pip install tomli") from None
    with open(config, "rb") as f:
        model_path = tomllib.load(f).get("model", {}).get("path")
    if not isinstance(model_path, str):
        return None
    for candidate in (Path(model_path), run_dir / model_path):  # as written (cwd-relative), then run-relative
        if not candidate.is_dir():
            continue
        candidate = candidate.resolve()
        if candidate.name == "final" and (candidate.parent / "metrics.jsonl").is_file():
            return candidate.parent / "metrics.jsonl", None
        match = re.fullmatch(r"step_(\d+)", candidate.name)
        if match and candidate.parent.name == "checkpoints" and (candidate.parent.parent / "metrics.jsonl").is_file():
            return candidate.parent.parent / "metrics.jsonl", int(match.group(1))
    return None
