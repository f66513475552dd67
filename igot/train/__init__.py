"""igot.train: the continued-pretraining trainer (`igot train --config run.toml`).

    from igot.train import TrainConfig, train
    result = train(TrainConfig.from_toml("run.toml"))

Modules: config (TOML -> frozen dataclasses, checked), data (sources, packing, mixture sampler,
curriculum buckets), model (the run's tokenizer and model, the loss over tokens or patches, FLOPs),
checkpoint (atomic, complete state) and loop (the loop). Importing this package loads no torch; the names
below load their module on first access.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "TrainConfig": ".config",
    "ModelConfig": ".config",
    "DataConfig": ".config",
    "LoopConfig": ".config",
    "StageConfig": ".config",
    "loss_trend": ".config",
    "train": ".loop",
    "TrainResult": ".loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'igot.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
