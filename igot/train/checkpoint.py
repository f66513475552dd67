"""Atomic, complete checkpoints: checkpoints/step_<N>/ exists only once everything in it is written.

A checkpoint holds the model and optimizer (state.pt; under FSDP2 a torch.distributed.checkpoint folder
dcp/ with every rank's shards), the trainer's counters, sampler and curriculum state (trainer.json), every
rank's RNG states (rng_rank<R>.pt) and the resolved config (config.toml). It is written into
checkpoints/.tmp-step_<N>/ and renamed into place by rank 0 after all ranks are done, so a process killed
at any moment leaves either the previous checkpoints or the new one complete; leftovers are removed on resume.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_DIR = re.compile(r"^step_(\d+)$")
# Fault injection for the resume tests: kill this process (SIGKILL) in the middle of writing the checkpoint of
# this step, after the model and optimizer are written and before the rename.
KILL_IN_CHECKPOINT_ENV = "IGOT_TEST_KILL_IN_CHECKPOINT"


def checkpoint_steps(folder: Path) -> list[int]:
    """Steps of the complete checkpoints in folder, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(int(m[1]) for p in folder.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name)))


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    steps = checkpoint_steps(folder)
    return folder / f"step_{steps[-1]}" if steps else None


def remove_partial(folder: Path) -> None:
    """Delete the temporary folders of checkpoints that a killed process did not finish."""
    if folder.is_dir():
        for path in folder.glob(".tmp-step_*"):
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(folder: Path, step: int, module: Any, optimizer: Any, trainer_state: dict[str, Any],
                    config_toml: str, *, rank: int, barrier: Any, fsdp: bool, keep: int) -> Path:
    """Write checkpoints/step_<step>/ atomically; every rank calls it.

    Args:
        folder: the run's checkpoints/ folder.
        step: optimizer steps done.
        module: the trained module, unwrapped (its state_dict keys are the checkpoint's) or FSDP-sharded.
        optimizer: its optimizer.
        trainer_state: JSON-serialisable counters, sampler and curriculum state.
        config_toml: the resolved config.
        rank: this process's rank; rank 0 writes the shared files and renames.
        barrier: a callable that waits for every rank (no-op for one process).
        fsdp: module is sharded with FSDP2: every rank writes its shards through torch.distributed.checkpoint.
        keep: how many checkpoints to keep (older ones are deleted after the new one lands).
    Returns:
        The checkpoint folder.
    """
    tmp, final = folder / f".tmp-step_{step}", folder / f"step_{step}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    if fsdp:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        if optimizer.state:
            model_state, optim_state = get_state_dict(module, optimizer)
            dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / "dcp"))
        else:  # get_state_dict would take a zero-gradient step to create state, which moves Adam's step count
            dcp.save({"model": get_model_state_dict(module)}, checkpoint_id=str(tmp / "dcp"))
        trainer_state = {**trainer_state, "optimizer_fresh": not optimizer.state}
    elif rank == 0:
        _save_torch({"model": module.state_dict(), "optimizer": optimizer.state_dict()}, tmp / "state.pt")
    _save_torch(_rng_state(), tmp / f"rng_rank{rank}.pt")
    if rank == 0:
        _write_text(tmp / "trainer.json", json.dumps(trainer_state, indent=1))
        _write_text(tmp / "config.toml", config_toml)
    if os.environ.get(KILL_IN_CHECKPOINT_ENV) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
    barrier()
    if rank == 0:
        os.replace(tmp, final)
        for old in checkpoint_steps(folder)[:-keep]:
            shutil.rmtree(folder / f"step_{old}", ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: Path, module: Any, optimizer: Any, *, rank: int, fsdp: bool) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNGs from a checkpoint; return the trainer state.

    Raises:
        FileNotFoundError: the rank's RNG file is missing (the checkpoint was written by another world size).
    """
    trainer_state = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
    if fsdp:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict,
                                                             set_model_state_dict, set_state_dict)

        if trainer_state.get("optimizer_fresh"):  # saved before the optimizer's first step: keep it fresh
            state = {"model": get_model_state_dict(module)}
            dcp.load(state, checkpoint_id=str(path / "dcp"))
            set_model_state_dict(module, state["model"])
        else:
            model_state, optim_state = get_state_dict(module, optimizer)
            state = {"model": model_state, "optimizer": optim_state}
            dcp.load(state, checkpoint_id=str(path / "dcp"))
            set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    else:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    rng_file = path / f"rng_rank{rank}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file} is missing: resume with the world size that wrote {path}")
    _set_rng_state(torch.load(rng_file, weights_only=False))
    return trainer_state


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_torch(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
