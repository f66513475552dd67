"""Helpers shared by the scaling modules: optional imports, atomic writes, markdown tables."""
from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence


def require(module: str) -> ModuleType:
    """Import an optional dependency of igot.scaling, or raise ImportError with the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise ImportError(f"igot.scaling needs {package}: pip install 'igot[scaling]' (or pip install {package})") from None


def single_thread_blas() -> Any:
    """A context that runs BLAS on one thread: scipy >= 1.15's L-BFGS-B calls BLAS on vectors of a few
    entries, and multi-threaded OpenBLAS made each fit here 100-400x slower (scipy issue 22438)."""
    return require("threadpoolctl").threadpool_limits(limits=1, user_api="blas")


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary file beside path, then move it into place; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def markdown(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table: columns are (key, header, format spec); None and inf print as '-' and 'inf'."""
    def cell(value: Any, spec: str) -> str:
        if value is None:
            return "-"
        if isinstance(value, float) and value == float("inf"):
            return "inf"
        return format(value, spec)

    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" if spec == "" else "---:" for _, _, spec in columns) + "|"
    body = ["| " + " | ".join(cell(r.get(key), spec) for key, _, spec in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])
