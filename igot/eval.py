"""Domain evaluation beyond bits per byte: a multiple-choice benchmark over held-out ontology terms.

For each held-out HPO / GO term the model sees "<name>:" and four candidate continuations, " <definition>"
of the term itself and of three other held-out terms of the same ontology (drawn with a seed). Each is scored
by its log-likelihood given the prefix, normalised by its UTF-8 bytes (so tokenizers of different
granularity and definitions of different length compare); the best-scored choice is the answer. Chance is
1/4. The conditional log-likelihood is NLL(prefix + continuation) - NLL(prefix), exact for a causal LM when
the prefix's tokens are a prefix of the whole text's tokens (the pre-tokenizer splits at the ':'); questions
where a tokenizer merges across that boundary are left out and counted.
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

N_CHOICES = 4


def ontology_questions(corpora: Sequence[str] = ("hpo", "go"), *, n_questions: int | None = 500,
                       seed: int = 0) -> list[dict[str, Any]]:
    """Build the multiple-choice questions from the held-out split of the ontologies.

    Args:
        corpora: ontology corpora of igot.data ("hpo", "go").
        n_questions: how many questions (a seeded sample, split evenly over the corpora); None = every
            held-out term with a name.
        seed: drives the sample, the distractors and the order of the choices.
    Returns:
        A list of {"corpus", "name", "choices": [4 definitions], "answer": index of the right one}.
    Raises:
        ValueError: an unknown corpus, or fewer than 4 distinct held-out definitions.
    """
    from .data import load_terms

    rng = random.Random(seed)
    questions = []
    for index, corpus in enumerate(corpora):
        terms = [(name, definition) for name, definition in load_terms(corpus, "heldout") if name]
        definitions = sorted({definition for _, definition in terms})
        if len(definitions) < N_CHOICES:
            raise ValueError(f"{corpus}: only {len(definitions)} held-out definitions; {N_CHOICES} are needed")
        if n_questions is not None:
            share = n_questions // len(corpora) + (index < n_questions % len(corpora))
            terms = rng.sample(terms, min(share, len(terms)))
        for name, definition in terms:
            others = set()
            while len(others) < N_CHOICES - 1:
                other = rng.choice(definitions)
                if other != definition:
                    others.add(other)
            choices = [definition, *sorted(others)]
            rng.shuffle(choices)
            questions.append({"corpus": corpus, "name": name, "choices": choices, "answer": choices.index(definition)})
    return questions


def ontology_benchmark(model: Any, tokenizer: Any, questions: list[dict[str, Any]], *, bos_id: int,
                       batch_tokens: int = 4096, calibrated: bool = False) -> dict[str, Any]:
    """Score a causal LM on multiple-choice questions (see ontology_questions).

    Args:
        model: a transformers causal LM (see igot.model.causal_lm_parts).
        tokenizer: its tokenizers.Tokenizer (or anything with .encode(text, add_special_tokens=False).ids).
        questions: from ontology_questions.
        bos_id: the token put before each prompt (the document separator the model was trained with).
        batch_tokens: tokens per forward pass.
        calibrated: also score each choice by how much the name raises its likelihood (log p(choice | name)
            minus log p(choice) after bos alone), which a model cannot win by preferring typical definitions;
            costs about twice the forward passes.
    Returns:
        {"accuracy", "stderr" (binomial standard error), "n": questions scored, "skipped": questions whose
         prefix tokens were not a prefix of the whole text's tokens, "chance": 1/4, "by_corpus": {corpus:
         {"accuracy", "n"}}}, plus "calibrated_accuracy" and "calibrated_stderr" when calibrated.
    Raises:
        ValueError: no question could be scored.
    """
    from .metrics import sequence_nll

    sequences: list[list[int]] = []
    # question; the indices in `sequences` of its prefix, its choices after the prefix, its bare choices
    scored: list[tuple[dict[str, Any], int, range, range]] = []
    skipped = 0
    for question in questions:
        prefix_text = f"{question['name']}:"
        prefix = tokenizer.encode(prefix_text, add_special_tokens=False).ids
        wholes = [tokenizer.encode(f"{prefix_text} {choice}", add_special_tokens=False).ids for choice in question["choices"]]
        if any(whole[: len(prefix)] != prefix or len(whole) == len(prefix) for whole in wholes):
            skipped += 1
            continue
        bare = [tokenizer.encode(f" {choice}", add_special_tokens=False).ids
                for choice in question["choices"]] if calibrated else []
        first = len(sequences) + 1
        scored.append((question, first - 1, range(first, first + len(wholes)),
                       range(first + len(wholes), first + len(wholes) + len(bare))))
        sequences += [prefix, *wholes, *bare]
    if not scored:
        raise ValueError(f"none of the {len(questions)} questions could be scored with this tokenizer")
    nll = sequence_nll(model, sequences, bos_id=bos_id, batch_tokens=batch_tokens)
    correct: dict[str, list[bool]] = {}
    calibrated_hits: list[bool] = []
    for question, prefix_index, choice_indices, bare_indices in scored:
        scores = [-(nll[i] - nll[prefix_index]) / len(f" {choice}".encode("utf-8"))
                  for i, choice in zip(choice_indices, question["choices"])]
        correct.setdefault(question["corpus"], []).append(_argmax(scores) == question["answer"])
        if calibrated:  # pointwise mutual information of name and choice
            gains = [-(nll[i] - nll[prefix_index]) + nll[j] for i, j in zip(choice_indices, bare_indices)]
            calibrated_hits.append(_argmax(gains) == question["answer"])
    hits = [hit for values in correct.values() for hit in values]
    accuracy = sum(hits) / len(hits)
    result = {"accuracy": accuracy, "stderr": math.sqrt(accuracy * (1 - accuracy) / len(hits)), "n": len(hits),
              "skipped": skipped, "chance": 1 / N_CHOICES,
              "by_corpus": {c: {"accuracy": sum(v) / len(v), "n": len(v)} for c, v in correct.items()}}
    if calibrated:
        value = sum(calibrated_hits) / len(calibrated_hits)
        result |= {"calibrated_accuracy": value,
                   "calibrated_stderr": math.sqrt(value * (1 - value) / len(calibrated_hits))}
    return result


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def evaluate(model_dir: str | Path, *, tokenizer: str | Path | None = None, bench: str = "ontology",
             n_questions: int | None = 500, seed: int = 0, bos: str | None = None,
             heldout: Sequence[str] = ("hpo:heldout", "go:heldout"), eval_docs: int = 200,
             device: str = "cpu", calibrated: bool = False) -> dict[str, Any]:
    """Load a Hugging Face model folder and run one benchmark on it (what `igot eval` does).

    Args:
        model_dir: the model (e.g. an `igot train` run's final/ folder).
        tokenizer: its tokenizer (default: the tokenizer.json in model_dir).
        bench: "ontology" (multiple choice) or "bpb" (bits per byte on `heldout`).
        n_questions, seed: as for ontology_questions.
        bos: the token put before each text; default the tokenizer's eos token (igot train's separator).
        heldout: for bench="bpb", igot.data corpora or files.
        eval_docs: for bench="bpb", the first documents of `heldout` evaluated.
        device: where the model runs.
        calibrated: for bench="ontology", also the calibrated score (see ontology_benchmark).
    Returns:
        The benchmark's result dict plus "model", "tokenizer" and "bench".
    Raises:
        ValueError: an unknown bench, or a tokenizer with more ids than the model has rows.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .corpus import load_tokenizer
    from .metrics import bits_per_byte
    from .train.config import ModelConfig
    from .train.data import heldout_texts
    from .train.model import load_run_tokenizer, separator_id

    if bench not in ("ontology", "bpb"):
        raise ValueError(f"bench={bench!r} is not one of 'ontology', 'bpb'")
    run_tokenizer = load_run_tokenizer(ModelConfig(path=str(model_dir)))
    tok = load_tokenizer(tokenizer) if tokenizer is not None else run_tokenizer.tokenizer
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    n_rows = model.get_input_embeddings().weight.shape[0]
    if tok.get_vocab_size() > n_rows:
        raise ValueError(f"the tokenizer has {tok.get_vocab_size()} ids but the model {n_rows} rows; grow the model "
                         "first (igot extend-model) or pass the model's own tokenizer")
    bos_id = tok.token_to_id(bos) if bos is not None else separator_id(run_tokenizer, None, str(model_dir))
    if bos_id is None:
        raise ValueError(f"bos={bos!r} is not a token of the tokenizer")
    result: dict[str, Any] = {"model": str(model_dir), "tokenizer": str(tokenizer or model_dir), "bench": bench}
    if bench == "ontology":
        questions = ontology_questions(n_questions=n_questions, seed=seed)
        result |= ontology_benchmark(model, tok, questions, bos_id=bos_id, calibrated=calibrated)
    else:
        result["bpb"] = {spec: bits_per_byte(model, tok, heldout_texts([spec], eval_docs), bos_id=bos_id)["bpb"]
                         for spec in heldout}
    return result


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    """Write a result dict as JSON (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    tmp.replace(path)
    return path
