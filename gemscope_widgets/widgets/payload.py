"""Sparse SAE activations as compact binary buffers for the browser, and back.

One payload holds every (prompt, SAE) pair of a heatmap as CSR blocks in a single ``bytes`` blob
described by a small JSON header:

- ``indptr``: uint32 ``[T + 1]``, row ``t`` = token ``t``;
- ``indices``: feature ids, uint16 when the SAE's width is at most 65,536, else uint32;
- ``values``: float16. Gemma Scope 2 activations reach the thousands, well inside float16's range
  (max 65,504); larger values are clamped to it and counted in the block's ``clamped`` field.

Within a row the entries are sorted by float16 value, largest first, ties by feature id, so "a token's
top features" is the start of its row on both sides. Every offset is a multiple of 4 bytes so the
front end can view the blob through typed arrays.

Numbers shown to the user follow one rule on both sides (:func:`format_value` here,
``formatValue`` in ``js/lib/format.ts``): the float16 value rounded to 4 significant digits, halves
rounded up, written in plain decimal notation without trailing zeros (``1235``, ``0.5``, ``12350``).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np

from gemscope_widgets.errors import GemscopeError

PAYLOAD_VERSION = 1
FLOAT16_MAX = float(np.finfo(np.float16).max)
_ALIGN = 4


RANKS = ("specific", "max", "sum")
"""Heatmap column rankings: max with dense features last (the default), max, sum."""
DENSE_ABOVE = 0.10
"""A feature firing on more than this fraction of corpus tokens is "dense": marked, and ranked last by "specific"."""


def format_value(value: float) -> str:
    """An activation as the widgets print it: 4 significant digits, halves up, plain decimal."""
    value = float(value)
    if value == 0.0:
        return "0"
    if not np.isfinite(value):
        return str(value)
    exact = Decimal(value)  # the exact binary value, so the rounding matches JS toPrecision
    quantum = Decimal(1).scaleb(exact.adjusted() - 3)
    text = format(exact.quantize(quantum, rounding=ROUND_HALF_UP), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_percent(share: float) -> str:
    """A share (0.0123) as a percentage ("1.23%"), digits by :func:`format_value` (``formatPercent`` in JS)."""
    return f"{format_value(float(share) * 100)}%"


def feature_id_dtype(width: int) -> np.dtype:
    """uint16 ids when every feature index fits, else uint32."""
    return np.dtype(np.uint16) if width <= 65536 else np.dtype(np.uint32)


def to_float16(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Values as float16, clamped to ±65,504; also returns how many had to be clamped."""
    values = np.asarray(values, dtype=np.float32)
    over = np.abs(values) > FLOAT16_MAX
    clamped = int(over.sum())
    if clamped:
        values = np.clip(values, -FLOAT16_MAX, FLOAT16_MAX)
    return values.astype(np.float16), clamped


def canonical_rows(
    indptr: np.ndarray, indices: np.ndarray, values16: np.ndarray, top_k: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorts each CSR row by value (largest first, ties by feature id) and keeps its first ``top_k``."""
    indptr = np.asarray(indptr, dtype=np.int64)
    n_rows = len(indptr) - 1
    rows = np.repeat(np.arange(n_rows), np.diff(indptr))
    order = np.lexsort((indices, -values16.astype(np.float32), rows))
    indices, values16, rows = indices[order], values16[order], rows[order]
    if top_k is not None:
        rank = np.arange(len(rows)) - indptr[rows]
        keep = rank < top_k
        indices, values16, rows = indices[keep], values16[keep], rows[keep]
        counts = np.bincount(rows, minlength=n_rows)
        indptr = np.concatenate([[0], np.cumsum(counts)])
    return indptr, indices, values16


@dataclass
class PromptView:
    """What the widget shows of one prompt besides its activations."""

    tokens: list[str]
    special: list[bool]
    template: list[bool]
    chat: bool = False

    @classmethod
    def from_prompt(cls, prompt: Any) -> PromptView:
        """From a backend ``Prompt`` (``tokens``, ``special`` and, when present, ``template`` masks)."""
        special = [bool(s) for s in prompt.special]
        template = getattr(prompt, "template", None)
        return cls(
            tokens=list(prompt.tokens),
            special=special,
            template=[bool(s) for s in template] if template is not None else list(special),
            chat=bool(getattr(prompt, "is_chat", False)),
        )


class _BlobWriter:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, array: np.ndarray) -> dict[str, Any]:
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        ref = {"offset": self.size, "length": int(array.size), "dtype": array.dtype.name}
        self.parts.append(data)
        self.size += len(data)
        pad = (-self.size) % _ALIGN
        if pad:
            self.parts.append(b"\0" * pad)
            self.size += pad
        return ref

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def _sae_info(sparse: Any) -> dict[str, Any]:
    return {
        "name": str(sparse.sae_name),
        "width": int(sparse.width),
        "id_dtype": feature_id_dtype(int(sparse.width)).name,
    }


def encode_payload(
    prompts: Sequence[Any],
    activations: Sequence[Sequence[Any]],
    *,
    top_k: int | None = None,
    feature_max: Sequence[Any] | None = None,
) -> tuple[dict[str, Any], bytes]:
    """Packs sparse activations into ``(header, blob)``.

    ``prompts[p]`` is a backend ``Prompt`` or a :class:`PromptView`; ``activations[p][s]`` is the
    ``SparseActivations`` of prompt ``p`` under SAE ``s`` (every prompt has the same SAEs, in the same
    order). ``top_k`` keeps only each token's ``top_k`` largest features. ``feature_max[s]`` (optional,
    ``None`` per SAE allowed) is a per-feature maximum over a corpus, shape ``[width]``, used to
    normalise colours; only the entries of features present in the payload are sent.
    """
    if len(prompts) == 0:
        raise GemscopeError("No prompts to show: pass at least one prompt.")
    if len(activations) != len(prompts):
        raise GemscopeError(f"Got activations for {len(activations)} prompts but {len(prompts)} prompts.")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise GemscopeError(f"top_k must be a positive integer or None (keep all), got {top_k!r}.")
    n_saes = len(activations[0])
    if n_saes == 0:
        raise GemscopeError("No SAE activations to show: the heatmap needs at least one SAE.")
    saes = [_sae_info(sa) for sa in activations[0]]
    if feature_max is not None and len(feature_max) != n_saes:
        raise GemscopeError(f"feature_max has {len(feature_max)} entries for {n_saes} SAEs; give one per SAE.")

    writer = _BlobWriter()
    views = [p if isinstance(p, PromptView) else PromptView.from_prompt(p) for p in prompts]
    blocks = []
    present: list[set[int]] = [set() for _ in range(n_saes)]
    for p, (view, row) in enumerate(zip(views, activations)):
        if len(row) != n_saes:
            raise GemscopeError(f"Prompt {p} has activations for {len(row)} SAEs, expected {n_saes}.")
        for s, sparse in enumerate(row):
            if int(sparse.width) != saes[s]["width"]:
                raise GemscopeError(f"SAE {s} has width {sparse.width} for prompt {p} but {saes[s]['width']} before.")
            indptr = np.asarray(sparse.indptr, dtype=np.int64)
            if len(indptr) != len(view.tokens) + 1:
                raise GemscopeError(
                    f"Prompt {p} has {len(view.tokens)} tokens but its activations have {len(indptr) - 1} rows."
                )
            ids = np.asarray(sparse.indices, dtype=np.int64)
            values16, clamped = to_float16(np.asarray(sparse.values))
            indptr, ids, values16 = canonical_rows(indptr, ids, values16, top_k)
            present[s].update(np.unique(ids).tolist())
            blocks.append(
                {
                    "prompt": p,
                    "sae": s,
                    "n_tokens": len(view.tokens),
                    "nnz": len(ids),
                    "clamped": clamped,
                    "indptr": writer.add(indptr.astype(np.uint32)),
                    "indices": writer.add(ids.astype(feature_id_dtype(saes[s]["width"]))),
                    "values": writer.add(values16),
                }
            )
    for s, info in enumerate(saes):
        info["feature_max"] = None
        if feature_max is not None and feature_max[s] is not None:
            maxima = np.asarray(_as_numpy(feature_max[s]), dtype=np.float32).reshape(-1)
            if maxima.shape[0] != info["width"]:
                raise GemscopeError(
                    f"feature_max for SAE {info['name']!r} has {maxima.shape[0]} entries; it needs one per "
                    f"feature ({info['width']})."
                )
            ids = np.array(sorted(present[s]), dtype=np.uint32)
            info["feature_max"] = {"ids": writer.add(ids), "values": writer.add(maxima[ids].astype(np.float32))}
    header = {
        "version": PAYLOAD_VERSION,
        "top_k": top_k,
        "saes": saes,
        "prompts": [
            {"tokens": v.tokens, "special": v.special, "template": v.template, "chat": v.chat} for v in views
        ],
        "blocks": blocks,
        "bytes": writer.size,
    }
    return header, writer.bytes()


def _as_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().float().cpu().numpy()
    return np.asarray(array)


def _view(blob: bytes | memoryview, ref: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(ref["dtype"]).newbyteorder("<")
    return np.frombuffer(blob, dtype=dtype, count=ref["length"], offset=ref["offset"])


@dataclass
class Block:
    """One decoded (prompt, SAE) CSR block, exactly as the browser sees it."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray  # float16
    width: int

    def dense(self) -> np.ndarray:
        """``[T, width]`` float32 with zeros where the payload has no entry."""
        n_rows = len(self.indptr) - 1
        out = np.zeros((n_rows, self.width), dtype=np.float32)
        rows = np.repeat(np.arange(n_rows), np.diff(self.indptr).astype(np.int64))
        out[rows, self.indices.astype(np.int64)] = self.values.astype(np.float32)
        return out

    def row(self, token: int) -> tuple[np.ndarray, np.ndarray]:
        """Feature ids and float16 values of one token, largest first."""
        lo, hi = int(self.indptr[token]), int(self.indptr[token + 1])
        return self.indices[lo:hi].astype(np.int64), self.values[lo:hi]


class Payload:
    """A decoded payload: the same numbers the front end draws, for tests and for Python-side views."""

    def __init__(self, header: dict[str, Any], blob: bytes | memoryview) -> None:
        if header.get("version") != PAYLOAD_VERSION:
            raise GemscopeError(
                f"Heatmap payload version {header.get('version')!r} is not {PAYLOAD_VERSION}; rebuild the widget."
            )
        if len(blob) < header["bytes"]:
            raise GemscopeError(f"Heatmap payload is truncated: {len(blob)} of {header['bytes']} bytes.")
        self.header = header
        self.blob = blob
        self._blocks = {(b["prompt"], b["sae"]): b for b in header["blocks"]}

    @property
    def n_prompts(self) -> int:
        return len(self.header["prompts"])

    @property
    def sae_names(self) -> list[str]:
        return [s["name"] for s in self.header["saes"]]

    def tokens(self, prompt: int = 0) -> list[str]:
        return list(self.header["prompts"][prompt]["tokens"])

    def block(self, prompt: int = 0, sae: int = 0) -> Block:
        """The CSR block of one prompt under one SAE."""
        if (prompt, sae) not in self._blocks:
            raise GemscopeError(
                f"No activations for prompt {prompt} and SAE {sae}: there are {self.n_prompts} prompts "
                f"and {len(self.header['saes'])} SAEs."
            )
        b = self._blocks[(prompt, sae)]
        width = self.header["saes"][sae]["width"]
        return Block(
            _view(self.blob, b["indptr"]), _view(self.blob, b["indices"]), _view(self.blob, b["values"]), width
        )

    def feature_max(self, sae: int = 0) -> dict[int, float] | None:
        """The corpus maxima sent for colour normalisation, by feature id, or None."""
        info = self.header["saes"][sae]["feature_max"]
        if info is None:
            return None
        ids = _view(self.blob, info["ids"])
        values = _view(self.blob, info["values"])
        return dict(zip(ids.tolist(), values.tolist()))

    def token_features(self, prompt: int, token: int, sae: int = 0, k: int = 20) -> list[tuple[int, float, str]]:
        """A token's top ``k`` features as the side list shows them: ``(feature, value, text)``."""
        ids, values = self.block(prompt, sae).row(token)
        return [(int(f), float(v), format_value(v)) for f, v in zip(ids[:k], values[:k])]

    def top_features(
        self, prompt: int = 0, sae: int = 0, n: int = 20, by: str = "max", dense: Collection[int] = ()
    ) -> list[int]:
        """The grid's feature columns: the ``n`` features with the largest max (or sum) over the prompt.

        ``by="specific"`` ranks by max but puts the ``dense`` features (those firing on more than
        :data:`DENSE_ABOVE` of corpus tokens) after all others: they fire on nearly everything, so a large value
        says little about this prompt. Ties: the smaller feature id first.
        """
        if by not in RANKS:
            raise GemscopeError(f"Rank features by one of {', '.join(RANKS)}, not {by!r}.")
        block = self.block(prompt, sae)
        ids = block.indices.astype(np.int64)
        values = block.values.astype(np.float64)
        score = np.zeros(block.width, dtype=np.float64)
        if by == "sum":
            np.add.at(score, ids, values)
        else:
            np.maximum.at(score, ids, values)
        seen = np.unique(ids)
        is_dense = np.isin(seen, np.fromiter(dense, np.int64)) if by == "specific" else np.zeros(len(seen), bool)
        order = np.lexsort((seen, -score[seen], is_dense))
        return seen[order][:n].tolist()


def decode_payload(header: dict[str, Any] | str, blob: bytes | memoryview) -> Payload:
    """The inverse of :func:`encode_payload` (the header may be its JSON text)."""
    parsed: dict[str, Any] = json.loads(header) if isinstance(header, str) else header
    return Payload(parsed, blob)


def payload_nbytes(header: dict[str, Any], blob: bytes) -> int:
    """Bytes on the wire: the blob plus the JSON header."""
    return len(blob) + len(json.dumps(header, separators=(",", ":")).encode())
