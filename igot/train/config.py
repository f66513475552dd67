"""The trainer's configuration: a TOML file parsed into frozen dataclasses, checked before any compute.

    cfg = TrainConfig.from_toml("run.toml", overrides=["train.lr=1e-4", "stage.0.tokens=1e6"])
    cfg.to_toml()   # the resolved config, written verbatim to <out>/config.toml and every checkpoint

Sections: [model], [data] (with [data.sources] and [data.heldout]), [train] and one [[stage]] per stage.
Unknown keys and impossible values raise ValueError naming the key and the fix; what needs the data or the
world size (empty sources, batch divisibility over ranks) is checked by the loop before its first step.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

Schedule = Literal["wsd", "cosine", "constant"]
Curriculum = Literal["none", "ppl_ascending"]
Init = Literal["mean", "weighted", "hf"]
DocMode = Literal["file", "blank_line", "line"]
# A reweighting rule: held-out loss history per source (oldest first) -> factor f_i per source.
ReweightFn = Callable[[Mapping[str, list[float]]], Mapping[str, float]]


@dataclass(frozen=True)
class ModelConfig:
    """[model]: what is trained."""

    path: str  # a Hugging Face causal LM folder (config.json + weights + its tokenizer)
    tokenizer: str | None = None  # an extension of the model's tokenizer (igot extend); the model is grown to it
    init: Init = "mean"  # new embedding rows, passed to igot.extend_model
    pad_to_multiple_of: int = 64  # vocabulary rows rounded up (tensor-core friendly); padding rows are masked


@dataclass(frozen=True)
class DataConfig:
    """[data]: where tokens come from and how they are cut."""

    seq_len: int  # positions per sequence; a patch stage feeds seq_len * patch_size tokens
    sources: dict[str, tuple[str, ...]]  # name -> igot.data corpora ("hpo:train") and/or files, folders, globs
    heldout: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> sources, scored in bits per byte
    eval_docs: int = 200  # the first N documents of each held-out set: the same texts for every tokenizer
    eval_max_tokens: int = 1024  # tokens evaluated per held-out document at most
    separator: str | None = None  # token between packed documents and before each evaluated one; None = eos
    doc_mode: DocMode = "file"  # how .txt sources split into documents (igot.corpus.read_documents)
    text_field: str = "text"  # the text key of .jsonl sources
    cache: str | None = None  # folder of encoded sources; None = $IGOT_CACHE/train-encoded (shared by runs)


@dataclass(frozen=True)
class LoopConfig:
    """[train]: optimisation, evaluation and output of the loop."""

    out: str  # run folder: config.toml, metrics.jsonl, checkpoints/, final/
    batch_tokens: int  # input tokens per optimizer step over all ranks and micro-batches (every stage kind)
    micro_batch_tokens: int  # input tokens per forward/backward on one rank
    lr: float  # peak learning rate
    seed: int = 0  # drives data order, sampling and initialisation
    schedule: Schedule = "wsd"  # warmup, then this shape; restarted at each stage whose patch_size changes
    warmup_steps: int = 0  # linear warmup from 0 at the start of each schedule
    decay_fraction: float = 0.2  # wsd: the final share of the schedule's steps that decays
    min_lr_ratio: float = 0.1  # wsd / cosine decay towards lr * min_lr_ratio
    weight_decay: float = 0.1  # AdamW, on matrices only (not norms or biases)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    eval_every: int = 0  # steps between held-out evaluations (0 = only before training and at stage ends)
    checkpoint_every: int = 0  # steps between checkpoints, and one at the end (0 = none; final/ is always written)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    freeze_body_steps: int = 0  # the first N steps train only the new embedding rows
    fsdp: bool = False  # shard parameters with FSDP2 (fully_shard) instead of DDP replicas
    gradient_checkpointing: bool = False  # recompute each decoder block in the backward: less memory, more compute
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda"
    curriculum_buckets: int = 10  # ppl_ascending: perplexity quantile buckets, shuffled only inside a bucket
    reweight_strength: float = 1.0  # loss_trend: f_i = (loss_now / loss_before) ** strength


@dataclass(frozen=True)
class StageConfig:
    """[[stage]]: one call of the loop with its own mixture, patch size and length."""

    weights: dict[str, float]  # source name -> share of the stage's tokens (normalised)
    tokens: int | None = None  # input tokens the stage consumes ...
    bytes: int | None = None  # ... or UTF-8 bytes of text (matches runs with different tokenizers on data)
    patch_size: int = 1  # K tokens averaged per position (arXiv 2407.12665); 1 = token-level
    curriculum: Curriculum = "none"  # "ppl_ascending": easy -> hard under the stage's starting model
    reweight: str | ReweightFn = "none"  # "none", "loss_trend", "module:function" or a module-level function


@dataclass(frozen=True)
class TrainConfig:
    """The whole run: [model], [data], [train] and the [[stage]] list."""

    model: ModelConfig
    data: DataConfig
    train: LoopConfig
    stages: tuple[StageConfig, ...]

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], overrides: Iterable[str] = ()) -> TrainConfig:
        """Build and check a config from a dict shaped like the TOML file.

        Args:
            raw: {"model": {...}, "data": {...}, "train": {...}, "stage": [{...}, ...]}.
            overrides: "section.key=value" strings applied first ("stage.0.tokens=1e6"); values are TOML
                values, and anything that does not parse as one is taken as a string.
        Returns:
            The frozen TrainConfig.
        Raises:
            ValueError: an unknown key (the valid ones are listed), a missing key, a wrong type or an
                impossible value.
        """
        raw = _apply_overrides(_plain_copy(raw), overrides)
        _refuse_unknown(raw, ("model", "data", "train", "stage"), "the config file")
        for name in ("model", "data", "train", "stage"):
            if name not in raw:
                raise ValueError(f"the config has no [{name}] section" + (" (add at least one [[stage]])" if name == "stage" else ""))
        if not isinstance(raw["stage"], list) or not raw["stage"]:
            raise ValueError("stage must be a list of tables: write each stage as [[stage]]")
        return cls(
            model=_build(ModelConfig, raw["model"], "model"),
            data=_build(DataConfig, raw["data"], "data"),
            train=_build(LoopConfig, raw["train"], "train"),
            stages=tuple(_build(StageConfig, s, f"stage.{i}") for i, s in enumerate(raw["stage"])),
        )

    @classmethod
    def from_toml(cls, path: str | Path, overrides: Iterable[str] = ()) -> TrainConfig:
        """Read a TOML config file (see the module docstring) and check it.

        Args:
            path: the .toml file.
            overrides: "section.key=value" strings, as for from_dict.
        Returns:
            The frozen TrainConfig.
        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not valid TOML, or from_dict refuses its content.
        """
        tomllib = _tomllib()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from None
        return cls.from_dict(raw, overrides)

    def to_dict(self) -> dict[str, Any]:
        """The config as the TOML file's dict (None values left out, callables as "module:qualname")."""
        return {"model": _section_dict(self.model), "data": _section_dict(self.data),
                "train": _section_dict(self.train), "stage": [_section_dict(s) for s in self.stages]}

    def to_toml(self) -> str:
        """The resolved config as TOML text; from_toml of it gives an equal config."""
        import tomli_w

        return tomli_w.dumps(self.to_dict())


def reweight_function(stage: StageConfig, strength: float = 1.0) -> ReweightFn | None:
    """The stage's reweighting rule as a callable, or None for reweight="none".

    Args:
        stage: the stage; its reweight is "none", "loss_trend", "module:function" (imported) or a callable.
        strength: the exponent of loss_trend (LoopConfig.reweight_strength).
    Returns:
        A function history -> factors, or None.
    """
    rule = stage.reweight
    if callable(rule):
        return rule
    if rule == "none":
        return None
    if rule == "loss_trend":
        return functools.partial(loss_trend, strength=strength)
    module, _, name = rule.partition(":")
    return getattr(importlib.import_module(module), name)


def loss_trend(history: Mapping[str, list[float]], strength: float = 1.0) -> dict[str, float]:
    """The built-in reweighting factor: f_i = (L_i now / L_i at the previous evaluation) ** strength.

    L_i is source i's held-out bits per byte. A source whose loss fell less than the others' (or rose:
    forgetting) gains weight, one that is being learnt fast gives weight back; with
    r_i <- r_i * f_i / sum_j r_j * f_j (Llama-3-SynE's update) the weights stay a distribution.
    Before two evaluations exist every f_i is 1.

    Args:
        history: source name -> held-out losses of this stage, oldest first.
        strength: the exponent; larger moves the weights faster.
    Returns:
        source name -> f_i.
    """
    return {name: (losses[-1] / losses[-2]) ** strength if len(losses) >= 2 else 1.0
            for name, losses in history.items()}


# ---------------------------------------------------------------------------------------- parsing


def _tomllib() -> types.ModuleType:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib


def _plain_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_copy(v) for v in value]
    return value


def _apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set each "a.b.c=value" in raw; a numeric part indexes a list ("stage.0.tokens")."""
    tomllib = _tomllib()
    for override in overrides:
        key, sep, text = override.partition("=")
        parts = [p.strip() for p in key.split(".")]
        if not sep or not all(parts):
            raise ValueError(f"--set {override!r} must look like section.key=value, e.g. train.lr=1e-4")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()  # a bare word: a string
        node: Any = raw
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ValueError(f"--set {override!r}: {'.'.join(parts[:depth])} has {len(node)} entries; "
                                     f"{part!r} is not an index of one")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
        if isinstance(node, list):
            raise ValueError(f"--set {override!r}: name a key inside one entry, e.g. {key}.0.tokens=...")
        node[parts[-1]] = value
    return raw


def _refuse_unknown(table: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    valid = tuple(valid)
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise ValueError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {where}; "
                         f"valid keys: {', '.join(valid)}")


def _build(cls: type, table: Any, where: str) -> Any:
    """Instantiate dataclass cls from a TOML table, refusing unknown and missing keys, converting types."""
    if not isinstance(table, Mapping):
        raise ValueError(f"[{where}] must be a table of keys, got {type(table).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _refuse_unknown(table, fields, f"[{where}]")
    hints = get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name in table:
            values[name] = _convert(table[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"[{where}] needs the key {name!r}")
    return cls(**values)


def _convert(value: Any, hint: Any, where: str) -> Any:
    """value as type hint (int, float, str, bool, Literal, X | None, tuple, dict); ValueError otherwise."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where} = {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple and args[-1] is Ellipsis:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise ValueError(f"{where} must be a non-empty list, got {value!r}")
        return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(items))
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must be a table (name = value), got {value!r}")
        return {str(k): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if origin is not None and callable(value):  # Callable hint: the Python API passes functions
        return value
    if origin is not None:
        raise ValueError(f"{where} = {value!r} must be a string or a function")
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 2e6 in TOML is a float
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"{where}: no conversion for {hint}")  # internal: a field type this parser lacks


def _section_dict(section: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if value is None:
            continue
        if callable(value):
            value = f"{value.__module__}:{value.__qualname__}"
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, dict):
            value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
        out[f.name] = value
    return out


# ------------------------------------------------------------------------------------------ checks


def _check(cfg: TrainConfig) -> None:
    """Refuse impossible values, naming the key and the fix (what needs data or ranks is checked later)."""
    data, train = cfg.data, cfg.train
    _at_least("data.seq_len", data.seq_len, 1)
    _at_least("data.eval_docs", data.eval_docs, 0)
    _at_least("data.eval_max_tokens", data.eval_max_tokens, 1)
    _at_least("model.pad_to_multiple_of", cfg.model.pad_to_multiple_of, 1)
    if not data.sources:
        raise ValueError("[data.sources] is empty; name at least one source, e.g. domain = [\"hpo:train\"]")
    for section, table in (("data.sources", data.sources), ("data.heldout", data.heldout)):
        for name, specs in table.items():
            if not specs or not all(isinstance(s, str) and s.strip() for s in specs):
                raise ValueError(f"{section}.{name} must list at least one corpus or path")
    for name in ("batch_tokens", "micro_batch_tokens", "keep_checkpoints", "curriculum_buckets"):
        _at_least(f"train.{name}", getattr(train, name), 1)
    for name in ("warmup_steps", "eval_every", "checkpoint_every", "freeze_body_steps", "seed"):
        _at_least(f"train.{name}", getattr(train, name), 0)
    if train.batch_tokens % train.micro_batch_tokens:
        raise ValueError(f"train.batch_tokens={train.batch_tokens} is not a multiple of train.micro_batch_tokens="
                         f"{train.micro_batch_tokens}; make it one (times the number of ranks under torchrun)")
    if not train.lr > 0:
        raise ValueError(f"train.lr={train.lr} must be > 0")
    for name in ("decay_fraction", "min_lr_ratio"):
        if not 0 <= getattr(train, name) <= 1:
            raise ValueError(f"train.{name}={getattr(train, name)} must lie in [0, 1]")
    for name in ("weight_decay", "grad_clip", "reweight_strength"):
        if getattr(train, name) < 0:
            raise ValueError(f"train.{name}={getattr(train, name)} must be >= 0")
    if not all(0 <= b < 1 for b in train.betas):
        raise ValueError(f"train.betas={list(train.betas)} must each lie in [0, 1)")
    if train.device not in ("auto", "cpu", "cuda") and not train.device.startswith("cuda:"):
        raise ValueError(f"train.device={train.device!r} must be auto, cpu or cuda")
    if train.freeze_body_steps and cfg.model.tokenizer is None:
        raise ValueError("train.freeze_body_steps trains only new embedding rows, but model.tokenizer is not set: "
                         "set model.tokenizer to an extended tokenizer or freeze_body_steps = 0")
    for i, stage in enumerate(cfg.stages):
        _check_stage(i, stage, cfg)


def _check_stage(i: int, stage: StageConfig, cfg: TrainConfig) -> None:
    where = f"stage.{i}"
    if (stage.tokens is None) == (stage.bytes is None):
        raise ValueError(f"{where} needs exactly one of tokens = N or bytes = N")
    _at_least(f"{where}.{'tokens' if stage.tokens is not None else 'bytes'}", stage.tokens or stage.bytes or 0, 1)
    _at_least(f"{where}.patch_size", stage.patch_size, 1)
    if not stage.weights:
        raise ValueError(f"{where}.weights is empty; give each source it draws from a positive weight")
    for name, weight in stage.weights.items():
        if name not in cfg.data.sources:
            raise ValueError(f"{where}.weights names {name!r}, which is not a source; sources: "
                             f"{', '.join(cfg.data.sources)} (add it under [data.sources])")
        if not weight > 0:
            raise ValueError(f"{where}.weights.{name} = {weight} must be > 0; leave a source out to skip it")
    sequence_tokens = cfg.data.seq_len * stage.patch_size
    if cfg.train.micro_batch_tokens % sequence_tokens:
        raise ValueError(f"train.micro_batch_tokens={cfg.train.micro_batch_tokens} is not a multiple of data.seq_len "
                         f"x {where}.patch_size = {sequence_tokens} (the input tokens of one sequence)")
    if stage.reweight != "none":
        if isinstance(stage.reweight, str) and stage.reweight != "loss_trend" and ":" not in stage.reweight:
            raise ValueError(f"{where}.reweight = {stage.reweight!r} must be none, loss_trend or module:function")
        if isinstance(stage.reweight, str) and ":" in stage.reweight:
            try:
                function = reweight_function(stage)
            except (ImportError, AttributeError) as exc:
                raise ValueError(f"{where}.reweight = {stage.reweight!r} cannot be imported ({exc})") from None
            if not callable(function):
                raise ValueError(f"{where}.reweight = {stage.reweight!r} is not a function")
        if cfg.data.eval_docs == 0:
            raise ValueError(f"{where}.reweight needs held-out evaluations, but data.eval_docs = 0; set it above 0")
        missing = [name for name in stage.weights if name not in cfg.data.heldout]
        if missing:
            raise ValueError(f"{where}.reweight needs the held-out loss of every source it weighs, but "
                             f"{', '.join(missing)} has no [data.heldout] set of the same name; add one")
        if len(stage.weights) < 2:
            raise ValueError(f"{where}.reweight needs at least two sources to move weight between")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{name}={value} must be >= {low}")
