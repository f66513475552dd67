"""igot: domain-adaptive continued pretraining.

Count domain n-grams (C++), pick tokens by information gain (Numba), write an extended Hugging Face
tokenizer, grow and initialise the model's embeddings (Triton / torch), continue pretraining.

`import igot` is cheap: every public name below is imported from the stage module that owns it on first
access, so torch, transformers, triton and numba load only when a function that needs them is called.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that owns it (relative to this package)
_EXPORTS: dict[str, str] = {
    "load_corpus": ".data",
    "read_documents": ".corpus",
    "encode_corpus": ".corpus",
    "EncodedCorpus": ".corpus",
    "count_ngrams": ".counting",
    "count_words": ".counting",
    "NgramTable": ".counting",
    "WordTable": ".counting",
    "select_tokens": ".scoring",
    "Selection": ".scoring",
    "extend_tokenizer": ".vocab",
    "ExtendedTokenizer": ".vocab",
    "extend_model": ".model",
    "fused_linear_cross_entropy": ".ops",
    "bits_per_byte": ".metrics",
}
_SUBMODULES = ("data", "corpus", "counting", "scoring", "vocab", "model", "ops", "metrics", "kernels", "train",
               "scaling", "synth", "cli")

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'igot' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
