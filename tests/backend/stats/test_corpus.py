"""Corpus inputs: the offline default corpus, text files, lists, datasets, and fingerprints."""

from __future__ import annotations

import pytest

from gemscope_widgets.backend.stats.corpus import (
    DatasetTexts,
    corpus_fingerprint,
    default_corpus,
    load_corpus,
    split_paragraphs,
)
from gemscope_widgets.errors import GemscopeError


def test_default_corpus_is_offline_deterministic_and_mixed():
    from pydoc_data.topics import topics

    a = default_corpus(max_docs=50)
    assert len(a) == 50 and a == default_corpus(max_docs=50)
    assert all(isinstance(t, str) and len(t) >= 40 for t in a)
    reference = {p for text in topics.values() for p in split_paragraphs(text)}
    from_reference = [t for t in a if t in reference]
    assert 10 < len(from_reference) < 50  # the reference manual and stdlib docstrings, interleaved
    assert len(set(default_corpus(max_docs=None))) == len(default_corpus(max_docs=None))


def test_text_file_splits_into_paragraphs(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("First paragraph is long enough to be kept as a document.\n\n  \nshort\n\n"
                    "Second paragraph\nspans two lines and is also long enough.\n")
    assert load_corpus(path) == [
        "First paragraph is long enough to be kept as a document.",
        "Second paragraph\nspans two lines and is also long enough.",
    ]
    assert load_corpus(str(path), max_docs=1) == ["First paragraph is long enough to be kept as a document."]


def test_bad_corpora_raise_clear_errors(tmp_path):
    with pytest.raises(GemscopeError, match="not a file"):
        load_corpus("a single sentence that is not a path")
    with pytest.raises(GemscopeError, match="item 1 is a int"):
        load_corpus(["fine", 3])
    with pytest.raises(GemscopeError, match="empty"):
        load_corpus(["", "  "])
    with pytest.raises(GemscopeError, match="Cannot use a float"):
        load_corpus(1.5)


class FakeDataset:
    """The part of datasets.Dataset the corpus uses: column_names, len, row and slice access."""

    def __init__(self, rows):
        self.rows = rows
        self.column_names = ["text", "label"]
        self._fingerprint = "abc123"

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return {"text": self.rows[index], "label": [0] * len(self.rows[index])}
        return {"text": self.rows[index], "label": 0}


def test_dataset_text_column_is_read_lazily():
    texts = load_corpus(FakeDataset(["one text here", "two texts here", "three"]))
    assert isinstance(texts, DatasetTexts)
    assert len(texts) == 3 and texts[1] == "two texts here" and texts[0:2] == ["one text here", "two texts here"]
    assert corpus_fingerprint(texts) == "dataset:abc123:3"
    bad = FakeDataset(["x"])
    bad.column_names = ["content"]
    with pytest.raises(GemscopeError, match="no 'text' column"):
        load_corpus(bad)


def test_real_datasets_dataset():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["alpha beta gamma", "delta epsilon"]})
    texts = load_corpus(ds)
    assert list(texts[0:2]) == ["alpha beta gamma", "delta epsilon"]


def test_fingerprint_depends_on_every_text_and_its_order():
    base = corpus_fingerprint(["a", "b"])
    assert base == corpus_fingerprint(["a", "b"])
    assert base != corpus_fingerprint(["b", "a"])
    assert base != corpus_fingerprint(["ab"])  # boundaries count
    assert base != corpus_fingerprint(["a", "b", "c"])
