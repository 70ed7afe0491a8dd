"""Text corpora for feature statistics: lists, text files, Hugging Face datasets, an offline default, and the
documents' token ids in padded batches.

A document is tokenised exactly like a prompt (:func:`~gemscope_widgets.backend.gemma.prompts.make_prompt`):
exactly one leading ``<bos>``, and literal special-token text such as ``"<bos>"`` inside a document is parsed as
that control token, as the tokenizer does for a prompt, so a document and the same text in a heatmap give the
same tokens. Positions of :func:`~gemscope_widgets.backend.gemma.prompts.masked_ids` tokens, wherever they occur,
are left out of every statistic, as the heatmap leaves them out.

The default corpus ships with Python itself, so feature panes work with no download: the language reference
topics in ``pydoc_data.topics`` and the docstrings of the standard library's modules, read from their source
with ``ast`` (nothing is imported, nothing is executed), in a fixed order.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import re
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gemscope_widgets.backend.gemma.prompts import one_bos
from gemscope_widgets.errors import GemscopeError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel

_PARAGRAPH = re.compile(r"\n\s*\n")
_MIN_CHARS = 40


def split_paragraphs(text: str, min_chars: int = _MIN_CHARS) -> list[str]:
    """Blank-line separated paragraphs of ``text``, stripped; shorter ones than ``min_chars`` dropped."""
    return [p.strip() for p in _PARAGRAPH.split(text) if len(p.strip()) >= min_chars]


def _stdlib_docstrings() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for path in sorted(root.glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes = [tree, *(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)))]
        for node in nodes:
            doc = ast.get_docstring(node)
            if doc:
                texts.extend(split_paragraphs(doc))
    return texts


def _reference_topics() -> list[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return []
    return [p for name in sorted(topics) for p in split_paragraphs(topics[name])]


@functools.lru_cache(maxsize=4)
def _default_texts() -> tuple[str, ...]:
    a, b = _reference_topics(), _stdlib_docstrings()
    # Interleave the two sources so a small max_docs still mixes prose and docstrings.
    mixed = [t for pair in zip(a, b) for t in pair]
    longer = a if len(a) > len(b) else b
    mixed.extend(longer[min(len(a), len(b)) :])
    # Deduplicate (many docstrings repeat) keeping the first occurrence.
    return tuple(dict.fromkeys(mixed))


def default_corpus(max_docs: int | None = 2000) -> list[str]:
    """Paragraphs of Python's reference manual and stdlib docstrings: deterministic, offline, no download."""
    texts = list(_default_texts())
    if not texts:
        raise GemscopeError(
            "This Python has neither pydoc_data nor stdlib sources to build the default corpus from; "
            "pass your own texts (a list of strings or a text file)."
        )
    return texts if max_docs is None else texts[:max_docs]


def _is_dataset(obj: Any) -> bool:
    return hasattr(obj, "column_names") and hasattr(obj, "__getitem__") and hasattr(obj, "__len__")


class DatasetTexts(Sequence[str]):
    """A read-only view of a Hugging Face ``datasets.Dataset``'s ``text`` column (rows fetched on demand)."""

    def __init__(self, dataset: Any, column: str = "text") -> None:
        if column not in dataset.column_names:
            raise GemscopeError(
                f"The dataset has no {column!r} column (it has {list(dataset.column_names)}); "
                "rename the text column to 'text' or pass a list of strings."
            )
        self.dataset, self.column = dataset, column
        self.fingerprint = getattr(dataset, "_fingerprint", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [str(t) for t in self.dataset[index][self.column]]
        return str(self.dataset[int(index)][self.column])


def load_corpus(corpus: Any = None, *, max_docs: int | None = None) -> Sequence[str]:
    """Turn what the user passed into a sequence of non-empty document strings.

    ``None``: :func:`default_corpus`; a ``str``/``Path`` naming a file: its paragraphs; a list of strings;
    a Hugging Face ``datasets`` Dataset (its ``text`` column, read lazily).
    """
    if corpus is None:
        texts: Sequence[str] = default_corpus()
    elif isinstance(corpus, DatasetTexts):
        texts = corpus
    elif isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus)
        if not path.is_file():
            raise GemscopeError(
                f"Corpus {str(corpus)[:80]!r} is not a file. Pass a path to a text file, or a list of strings "
                "(wrap a single text in a list)."
            )
        texts = split_paragraphs(path.read_text(encoding="utf-8", errors="replace"))
    elif _is_dataset(corpus):
        texts = DatasetTexts(corpus)
    elif isinstance(corpus, Sequence):
        bad = next((i for i, t in enumerate(corpus) if not isinstance(t, str)), None)
        if bad is not None:
            raise GemscopeError(
                f"Corpus item {bad} is a {type(corpus[bad]).__name__}, not a string: pass a list of texts."
            )
        texts = [t for t in corpus if t.strip()]
    else:
        raise GemscopeError(
            f"Cannot use a {type(corpus).__name__} as a corpus: pass a list of strings, a text file path "
            "or a datasets.Dataset with a 'text' column."
        )
    if len(texts) == 0:
        raise GemscopeError("The corpus is empty: pass at least one non-empty text.")
    if max_docs is not None:
        texts = texts[:max_docs]
    return texts


def corpus_fingerprint(texts: Sequence[str]) -> str:
    """A hash of every text in order (a Dataset's own fingerprint when it has one)."""
    fp = getattr(texts, "fingerprint", None)
    if fp:
        return f"dataset:{fp}:{len(texts)}"
    h = hashlib.sha256()
    for t in texts:
        data = t.encode("utf-8", errors="surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]


def tokenize_docs(gm: GemmaModel, texts: Sequence[str], max_doc_tokens: int) -> list[list[int]]:
    """Token ids of each document, tokenised as a prompt (one leading ``<bos>``), cut to ``max_doc_tokens``."""
    tok = gm.tokenizer
    if tok.bos_token_id is None:
        raise GemscopeError("This tokenizer has no <bos> token; Gemma 3 needs one.")
    encoded = tok(list(texts), add_special_tokens=True)["input_ids"]
    return [one_bos(ids, tok.bos_token_id)[:max_doc_tokens] for ids in encoded]


def plan_batches(lengths: Sequence[int], batch_size: int, batch_tokens: int) -> list[list[int]]:
    """Group document indices of similar length (at most ``batch_size`` documents and ``batch_tokens`` padded
    tokens per group) so padding stays small. Deterministic: sorted by (length, index)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:  # ascending length: the newest document is the longest of its group
        if current and (len(current) + 1 > batch_size or (len(current) + 1) * lengths[i] > batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_batch(docs: Sequence[Sequence[int]], pad_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids [B, T]`` (``pad_id``, 0 when None) and ``attention_mask [B, T]`` (1 on tokens)."""
    seq = max(len(d) for d in docs)
    ids = torch.full((len(docs), seq), 0 if pad_id is None else int(pad_id), dtype=torch.long)
    mask = torch.zeros(len(docs), seq, dtype=torch.long)
    for i, d in enumerate(docs):
        ids[i, : len(d)] = torch.as_tensor(list(d), dtype=torch.long)
        mask[i, : len(d)] = 1
    return ids, mask
