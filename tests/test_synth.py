"""igot.synth: generation backend against a one-by-one greedy reference, output format, resume, a killed
write, every filter on crafted replies, the contamination guard, and the n-gram / dedup helpers against
brute-force references. The model is a tiny random Llama with a ChatML template built here."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from igot.synth import (DROP_REASONS, Deduplicator, Filters, Generation, NgramIndex, Sampling, Template,
                        TransformersGenerator, copied_fraction, load_template, read_sources, source_hash,
                        synthesize)

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
WORDS = ("cell membrane protein kidney bone growth abnormal enzyme binding activity process gene "
         "structure tissue nerve muscle heart liver transport signal receptor").split()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer Llama and a 300-token byte-level BPE tokenizer with a ChatML chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-chat-llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS), "Question: Answer: system user assistant"] * 10, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>")
    hf.chat_template = CHATML
    hf.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(hf), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id, pad_token_id=hf.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _greedy_reference(model, tokenizer, conversation, max_new_tokens):
    """One prompt, no padding, no KV cache, no generate(): argmax of the full forward at every step."""
    import torch

    text = tokenizer.apply_chat_template(conversation, tokenize=False, continue_final_message=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            new.append(int(model(torch.tensor([ids + new])).logits[0, -1].argmax()))
            if new[-1] == tokenizer.eos_token_id:
                return tokenizer.decode(new, skip_special_tokens=True).strip(), len(new), True, new
    return tokenizer.decode(new, skip_special_tokens=True).strip(), len(new), False, new


def test_batched_left_padded_generation_matches_one_by_one_greedy_reference(tiny_model):
    import torch

    gen = TransformersGenerator(tiny_model)
    template = load_template("science")
    convs = [template.messages(doc) for doc in ("kidney", "abnormal growth of the bone " * 6, "gene binding")]
    lengths = {len(gen.tokenizer(gen.tokenizer.apply_chat_template(c, tokenize=False, continue_final_message=True),
                                 add_special_tokens=False)["input_ids"]) for c in convs}
    assert len(lengths) == 3  # really different prompt lengths, so the batch is left padded
    # Make the end-of-turn token win where one of the first reply's tokens would, so that some replies
    # finish early and others run to max_new_tokens: both endings are compared.
    head = gen.model.get_output_embeddings().weight
    original = head.detach().clone()
    for token in _greedy_reference(gen.model, gen.tokenizer, convs[0], 12)[3][1:]:
        with torch.no_grad():
            head.copy_(original)
            head[gen.tokenizer.eos_token_id] = 1.5 * original[token]
        want = [_greedy_reference(gen.model, gen.tokenizer, c, 12)[:3] for c in convs]
        if {w[2] for w in want} == {True, False}:
            break
    got = gen(convs, 1, Sampling(temperature=0, max_new_tokens=12))
    assert [(g[0].text, g[0].n_tokens, g[0].finished) for g in got] == want
    assert {w[2] for w in want} == {True, False} and all(w[1] > 1 for w in want)


def test_sampling_returns_n_replies_per_prompt_reproducibly(tiny_model):
    convs = [load_template("science").messages(doc) for doc in ("kidney", "bone growth")]
    sampling = Sampling(max_new_tokens=7, temperature=1.0, top_p=1.0, top_k=0, seed=3)
    first = TransformersGenerator(tiny_model)(convs, 3, sampling)
    again = TransformersGenerator(tiny_model)(convs, 3, sampling)
    assert first == again and [len(r) for r in first] == [3, 3]
    replies = [g for r in first for g in r]
    assert len({g.text for g in replies}) > 1  # sampled, not one greedy reply six times
    assert all(1 <= g.n_tokens <= 7 and (g.finished or g.n_tokens == 7) for g in replies)


def test_model_without_chat_template_is_refused_with_the_fix(tiny_model, tmp_path):
    import shutil

    folder = tmp_path / "no-template"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="no chat template.*--chat-template"):
        TransformersGenerator(folder)
    (tmp_path / "chatml.jinja").write_text(CHATML)
    gen = TransformersGenerator(folder, chat_template=tmp_path / "chatml.jinja")
    assert len(gen([[{"role": "user", "content": "kidney"}]], 1, Sampling(temperature=0, max_new_tokens=2))[0]) == 1


# ------------------------------------------------------------------------------ crafted replies


class Scripted:
    """A generator returning crafted replies: reply(document) -> list of str or Generation per call."""

    name = "scripted-model"

    def __init__(self, reply):
        self.reply, self.seen = reply, []

    def __call__(self, conversations, n, sampling):
        out = []
        for conv in conversations:
            assert conv[-1] == {"role": "assistant", "content": "Question:"}  # the reply continues it
            doc = conv[-2]["content"].split("Text:\n", 1)[1].split("\n\nWrite one question", 1)[0]
            self.seen.append(doc)
            replies = self.reply(doc)
            replies = replies if isinstance(replies, list) else [replies] * n
            out.append([r if isinstance(r, Generation) else Generation(r, len(r.split()), True) for r in replies])
        return out


def _write_docs(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def _good_reply(doc):
    return f"Question: Which topic does the passage numbered {doc.split()[-1]} cover?\n" \
           f"Answer: It covers {doc.split()[0]} biology as discussed in passage {doc.split()[-1]} in detail."


def _two_replies(doc):
    return [_good_reply(doc), f"Question: How long is this passage?\nAnswer: Passage {doc.split()[-1]} is one short "
                              f"sentence about {doc.split()[0]} and organs."]


def _docs(n):
    return [f"{WORDS[i % len(WORDS)]} text about organs and cells, passage {i}" for i in range(n)]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_output_lines_have_every_field_and_the_trainer_reads_their_text(tmp_path):
    from igot.corpus import read_documents

    docs = _docs(5)
    src, out = _write_docs(tmp_path / "docs.jsonl", docs), tmp_path / "qa.jsonl"
    gen = Scripted(_two_replies)
    summary = synthesize(src, out, generator=gen, per_doc=2, batch_size=2, progress=False)
    lines = _lines(out)
    assert summary.kept == len(lines) == 10 and summary.generated == 10 and summary.used == 5
    template = load_template("science")
    for i, line in enumerate(lines):
        doc = docs[i // 2]
        assert list(line) == ["question", "answer", "text", "source", "model", "template"]
        assert line["source"] == source_hash(doc) and line["model"] == "scripted-model"
        assert line["template"] == "science-v1" == template.id
        assert line["text"] == f"Question: {line['question']}\nAnswer: {line['answer']}"
        assert line["question"] == ("Which topic does the passage numbered {} cover?" if i % 2 == 0 else
                                    "How long is this passage?").format(i // 2)
    assert gen.seen == docs  # every document reached the prompt whole
    assert list(read_documents(out, text_field="text")) == [line["text"] for line in lines]
    assert summary.tokens == sum(len(r.split()) for d in docs for r in _two_replies(d))
    assert "tokens/s" in summary.format() and all(reason in summary.format() for reason in DROP_REASONS)


def test_resume_skips_done_documents_and_writes_no_duplicates(tmp_path):
    docs = _docs(7)
    src, out = _write_docs(tmp_path / "docs.jsonl", docs), tmp_path / "qa.jsonl"
    dropped_all = docs[1]  # yields no line at all: only the .done file remembers it
    reply = lambda d: "no pair here" if d == dropped_all else _good_reply(d)  # noqa: E731
    first = Scripted(reply)
    s1 = synthesize(src, out, generator=first, per_doc=1, max_docs=3, batch_size=2, progress=False)
    assert first.seen == docs[:3] and s1.kept == 2 and s1.dropped["malformed"] == 1
    second = Scripted(reply)
    s2 = synthesize(src, out, generator=second, per_doc=1, max_docs=5, batch_size=2, progress=False)
    assert second.seen == docs[3:5] and s2.already_done == 3 and s2.existing_pairs == 2
    third = Scripted(reply)
    s3 = synthesize(src, out, generator=third, per_doc=1, progress=False)
    assert third.seen == docs[5:] and s3.already_done == 5
    sources = [line["source"] for line in _lines(out)]
    assert sorted(sources) == sorted(source_hash(d) for d in docs if d != dropped_all)
    fourth = Scripted(reply)
    assert synthesize(src, out, generator=fourth, progress=False).used == 0 and fourth.seen == []


def test_resume_dedups_against_the_pairs_already_in_the_file(tmp_path):
    src, out = _write_docs(tmp_path / "docs.jsonl", _docs(3)), tmp_path / "qa.jsonl"
    same = "Question: Which organ filters the blood?\nAnswer: The kidney filters the blood and makes urine."
    synthesize(src, out, generator=Scripted(lambda d: same), per_doc=1, max_docs=1, progress=False)
    summary = synthesize(src, out, generator=Scripted(lambda d: same.upper()), per_doc=1, progress=False)
    assert summary.used == 2 and summary.dropped["exact_duplicate"] == 2 and len(_lines(out)) == 1


def test_resume_refuses_a_file_of_another_model_or_template(tmp_path):
    src, out = _write_docs(tmp_path / "docs.jsonl", _docs(2)), tmp_path / "qa.jsonl"
    synthesize(src, out, generator=Scripted(_good_reply), per_doc=1, max_docs=1, progress=False)
    with pytest.raises(ValueError, match="template 'science-v1'.*'code-v1': pass another out"):
        synthesize(src, out, generator=Scripted(_good_reply), template="code", per_doc=1, progress=False)


def test_a_partial_last_line_is_cut_before_appending(tmp_path):
    src, out = _write_docs(tmp_path / "docs.jsonl", _docs(4)), tmp_path / "qa.jsonl"
    synthesize(src, out, generator=Scripted(_good_reply), per_doc=1, max_docs=2, progress=False)
    half = b'{"question": "What is the kid'
    with open(out, "ab") as f:
        f.write(half)
    summary = synthesize(src, out, generator=Scripted(_good_reply), per_doc=1, progress=False)
    assert summary.repaired_bytes == len(half) and summary.existing_pairs == 2
    assert len(_lines(out)) == 4  # every line parses


def test_a_run_killed_in_the_middle_of_a_write_resumes_cleanly(tmp_path):
    docs = _docs(6)
    src, out = _write_docs(tmp_path / "docs.jsonl", docs), tmp_path / "qa.jsonl"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import igot.synth as synth
        from test_synth import Scripted, _two_replies
        real, calls = synth._write_all, []
        def dying_write(fd, data):
            calls.append(fd)
            if len(calls) == 5:  # third document's lines: write half of them, then SIGKILL
                os.write(fd, data[:len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            real(fd, data)
        synth._write_all = dying_write
        synth.synthesize({str(src)!r}, {str(out)!r}, generator=Scripted(_two_replies), per_doc=2, batch_size=1,
                         progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.read_bytes().endswith(b"\n")  # the kill left a half line
    gen = Scripted(_two_replies)
    summary = synthesize(src, out, generator=gen, per_doc=2, progress=False)
    assert summary.repaired_bytes > 0 and summary.existing_pairs == 4
    assert gen.seen == docs[2:]  # the document whose write was cut is done again, the two before are not
    sources = [line["source"] for line in _lines(out)]
    assert sorted(sources) == sorted(source_hash(d) for d in docs for _ in range(2))


def test_every_filter_on_crafted_replies_and_the_contamination_guard(tmp_path):
    heldout_doc = "The zygomatic arch is a bony bridge on each side of the skull formed by two fused processes."
    good_answer = "It affects the cells that line the kidney tubules and changes how they move salts."
    replies = {
        "doc unfinished": Generation("Question: What happens next in the kidney?\nAnswer: The cells", 9, False),
        "doc malformed": "I'm ready to help! What's your next question?",
        "doc short": "Question: Why?\nAnswer: Because the kidney filters blood continuously.",
        "doc long": "Question: What does the kidney do?\nAnswer: " + "It filters blood. " * 200,
        "doc contaminated": "Question: What is the zygomatic arch?\nAnswer: The ZYGOMATIC arch is a bony bridge "
                            "on each side of the skull, formed by two processes.",
        "Renal tubular dysgenesis is a developmental defect of the tubules of the kidney seen at birth.":
            "Question: What is renal tubular dysgenesis?\nAnswer: Renal tubular dysgenesis is a developmental "
            "defect of the tubules of the kidney.",
        "doc kept": f"**Question:** What does the disorder change in the kidney?\n**Answer:** {good_answer}",
        "doc exact": f"question: what does the disorder CHANGE in the kidney?\nanswer:  {good_answer.upper()}",
        "doc near": "Question: What does the disorder change in the kidney?\nAnswer: "
                    + good_answer.replace("salts", "water"),
        "doc different": "Question: Where is the zygomatic bone?\nAnswer: It forms the prominence of the cheek.",
    }
    docs = list(replies) + [heldout_doc]
    src, out = _write_docs(tmp_path / "docs.jsonl", docs), tmp_path / "qa.jsonl"
    held = _write_docs(tmp_path / "heldout.jsonl", [heldout_doc])
    gen = Scripted(lambda d: replies[d])
    summary = synthesize(src, out, generator=gen, heldout=held, per_doc=1, batch_size=3, progress=False,
                         filters=Filters(contamination_ngram=8))
    assert heldout_doc not in gen.seen and summary.source_heldout == 1 and summary.used == len(replies)
    assert summary.dropped == {"unfinished": 1, "malformed": 1, "too_short": 1, "too_long": 1, "contaminated": 1,
                               "copies_source": 1, "exact_duplicate": 1, "near_duplicate": 1}
    assert [line["question"] for line in _lines(out)] == ["What does the disorder change in the kidney?",
                                                          "Where is the zygomatic bone?"]
    assert _lines(out)[0]["answer"] == good_answer  # markdown bold around the labels is not kept
    assert summary.examples["malformed"] == "Question:" + replies["doc malformed"]
    assert summary.kept == 2 and summary.generated == summary.kept + sum(summary.dropped.values())


def test_contamination_is_off_without_heldout_and_shorter_runs_do_not_count(tmp_path):
    reply = "Question: What is the zygomatic arch?\nAnswer: The zygomatic arch is a bony bridge of the face."
    held = _write_docs(tmp_path / "heldout.jsonl", ["The zygomatic arch is a bony bridge on each side of the skull."])
    src = _write_docs(tmp_path / "docs.jsonl", ["doc"])
    for heldout, n, dropped in (((), 6, 0), (held, 8, 0), (held, 7, 1)):
        out = tmp_path / f"qa-{n}-{bool(heldout)}.jsonl"
        summary = synthesize(src, out, generator=Scripted(lambda d: reply), heldout=heldout, per_doc=1,
                             filters=Filters(contamination_ngram=n), progress=False)
        assert summary.dropped["contaminated"] == dropped, (heldout, n)  # the shared run is 7 words long


def test_generator_returning_the_wrong_count_is_an_error(tmp_path):
    src = _write_docs(tmp_path / "docs.jsonl", _docs(2))
    with pytest.raises(ValueError, match="must return per_doc=2"):
        synthesize(src, tmp_path / "qa.jsonl", generator=Scripted(lambda d: [_good_reply(d)]), per_doc=2,
                   progress=False)


def test_bad_arguments_are_refused(tmp_path):
    src, gen = _write_docs(tmp_path / "docs.jsonl", _docs(1)), Scripted(_good_reply)
    with pytest.raises(ValueError, match="must end with .jsonl"):
        synthesize(src, tmp_path / "qa.txt", generator=gen, progress=False)
    with pytest.raises(ValueError, match="temperature 0"):
        synthesize(src, tmp_path / "qa.jsonl", generator=gen, sampling=Sampling(temperature=0), progress=False)
    with pytest.raises(ValueError, match="per_doc=0"):
        synthesize(src, tmp_path / "qa.jsonl", generator=gen, per_doc=0, progress=False)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0)
    with pytest.raises(ValueError, match="min_answer_words=9 > max_answer_words=5"):
        Filters(min_answer_words=9, max_answer_words=5)
    with pytest.raises(ValueError, match="copy_ngram=0"):
        Filters(copy_ngram=0)
    with pytest.raises(ValueError, match="split 'test' is not one of"):
        read_sources(["hpo:test"])
    with pytest.raises(FileNotFoundError):
        read_sources(["no/such/file.jsonl"])


def test_a_second_run_on_the_same_file_is_refused_while_one_holds_it(tmp_path):
    import fcntl

    src, out = _write_docs(tmp_path / "docs.jsonl", _docs(1)), tmp_path / "qa.jsonl"
    with open(out, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OSError, match="another igot synth run"):
            synthesize(src, out, generator=Scripted(_good_reply), per_doc=1, progress=False)


# ------------------------------------------------------------------------------ templates and parsing


@pytest.mark.parametrize("reply,want", [
    ("Question: What is X?\nAnswer: X is Y.", ("What is X?", "X is Y.")),
    ("Sure!\n**Question:** What is X?\n**Answer:** X is Y.", ("What is X?", "X is Y.")),
    ("### question : What is X?  ANSWER: X is Y.\nQuestion: A second one?\nAnswer: ignored",
     ("What is X?", "X is Y.")),
    ("Answer: X is Y.\nQuestion: What is X?", None),  # no answer after the question
    ("Question: What is X?\nAnswer:", None),
    ("Subquestion: What is X? Answer: X.", None),
    ("The question is what X is, and the answer is Y.", None),
])
def test_parse(reply, want):
    import dataclasses

    assert dataclasses.replace(load_template("science"), reply_prefix="").parse(reply) == want


@pytest.mark.parametrize("reply,want", [
    (" What is X?\nAnswer: X is Y.", ("What is X?", "X is Y.")),
    ("Question: What is X?\nAnswer: X is Y.", ("What is X?", "X is Y.")),  # the label repeated
    ("I'm ready to help! What's your next question?", None),
])
def test_parse_continues_the_reply_prefix(reply, want):
    assert load_template("science").reply_prefix == "Question:"
    assert load_template("science").parse(reply) == want


def test_builtin_templates_and_template_files(tmp_path):
    code = load_template("code")
    assert code.id == "code-v1" and "def f(): return {}" in code.messages("def f(): return {}")[-2]["content"]
    assert [m["role"] for m in load_template("science").messages("x")] == ["system", "user", "assistant"]
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\nversion = 3\nuser = "Read {document}"\ntext = "Q {question} A {answer}"\n'
                    'question_label = "Problem"\nanswer_label = "Solution"\n')
    mine = load_template(path)
    assert mine.id == "mine-v3" and mine.messages("doc") == [{"role": "user", "content": "Read doc"}]
    assert mine.parse("Problem: 1+1? Solution: 2") == ("1+1?", "2") and mine.format("a", "b") == "Q a A b"
    path.write_text('name = "mine"\nversion = 1\nuser = "Read it"\ntext = "{question} {answer}"\n')
    with pytest.raises(ValueError, match="exactly once"):
        load_template(path)
    path.write_text('name = "mine"\nversion = 1\nuser = "{document}"\ntext = "{question} {answer}"\ncolour = 1\n')
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        load_template(path)
    with pytest.raises(FileNotFoundError):
        load_template("poetry")


# ------------------------------------------------------------------------------ helpers vs brute force


def _random_text(rng, n_words, vocab):
    return " ".join(rng.choice(vocab) for _ in range(n_words))


def _ngrams(text, n):
    import re

    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_ngram_index_matches_brute_force_sets():
    rng = random.Random(0)
    vocab = WORDS[:6]  # small, so random texts do share runs
    docs = [_random_text(rng, rng.randint(0, 30), vocab) for _ in range(40)]
    for n in (1, 3, 5):
        index = NgramIndex(docs, n)
        grams = set().union(*(_ngrams(d, n) for d in docs))
        assert len(index) == len(grams)
        for _ in range(200):
            text = _random_text(rng, rng.randint(0, 12), vocab).upper().replace(" ", " , ")
            assert index.shares_ngram(text) == bool(_ngrams(text, n) & grams), (n, text)


def test_copied_fraction_matches_brute_force():
    rng = random.Random(1)
    vocab = WORDS[:5]
    for _ in range(300):
        source, answer = _random_text(rng, rng.randint(0, 25), vocab), _random_text(rng, rng.randint(1, 15), vocab)
        n = rng.randint(1, 5)
        words = answer.split()
        src = _ngrams(source, n)
        covered = set()
        for i in range(len(words) - n + 1):
            if tuple(words[i:i + n]) in src:
                covered.update(range(i, i + n))
        assert copied_fraction(answer, source, n) == pytest.approx(len(covered) / len(words))


def test_deduplicator_matches_brute_force_jaccard():
    rng = random.Random(2)
    vocab = [f"w{i}" for i in range(400)]
    pairs = []
    for _ in range(60):
        base = [rng.choice(vocab) for _ in range(rng.randint(15, 40))]
        pairs.append(base)
        for _ in range(rng.randint(0, 2)):  # variants: one word changed, or the same words reordered in part
            variant = list(base)
            variant[rng.randrange(len(variant))] = rng.choice(vocab)
            pairs.append(variant if rng.random() < 0.5 else variant[3:] + variant[:3])
    rng.shuffle(pairs)
    dedup, kept, decisions, want = Deduplicator(0.7), [], [], []
    for words in pairs:
        question, answer = " ".join(words[:5]), " ".join(words[5:])
        decisions.append(dedup.check(question, answer))
        shingles = {tuple(words[i:i + 3]) for i in range(len(words) - 2)}
        if any(words == k for k, _ in kept):
            want.append("exact_duplicate")
        elif any(len(shingles & s) / len(shingles | s) >= 0.7 for _, s in kept):
            want.append("near_duplicate")
        else:
            want.append(None)
            kept.append((words, shingles))
    assert decisions == want
    assert want.count("near_duplicate") > 10 and want.count(None) > 40  # both outcomes really exercised


def test_ngram_hashing_ignores_case_and_punctuation_only():
    index = NgramIndex(["Alpha-beta, GAMMA delta"], 4)
    assert index.shares_ngram("alpha beta gamma delta!") and not index.shares_ngram("alpha beta delta gamma")
    assert np.array_equal(index.hashes, np.unique(index.hashes))


# ------------------------------------------------------------------------------ end to end


def test_cli_end_to_end_with_the_tiny_model(tiny_model, tmp_path, capsys):
    from igot.cli import main

    docs = _docs(3)
    src, out = _write_docs(tmp_path / "docs.jsonl", docs), tmp_path / "qa.jsonl"
    rc = main(["synth", "--model", str(tiny_model), "--domain", str(src), "--out", str(out), "--per-doc", "2",
               "--max-new-tokens", "5", "--batch-size", "2", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0 and f"{out}: " in printed and "tokens/s" in printed
    assert "from 3 documents" in printed and "of 6 replies" in printed
    assert (tmp_path / "qa.jsonl.done").read_text().split() == [source_hash(d) for d in docs]
    for line in _lines(out):  # a random model rarely writes a pair; whatever it kept is well formed
        assert line["model"] == tiny_model.name and line["template"] == "science-v1"


@pytest.mark.slow
def test_corpus_specs_read_the_fetched_corpora():
    from igot.data import load_corpus

    got = read_sources(["hpo:heldout", "go:heldout"])
    assert list(got) == load_corpus("hpo", "heldout") + load_corpus("go", "heldout")
