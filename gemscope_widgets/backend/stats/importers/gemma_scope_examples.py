"""Gemma Scope 2's ``examples.safetensors`` (the dashboard data beside ``params.safetensors``) as feature statistics.

The layout is not documented first-party; what users of the release report is::

    top_tokens, top_logits, bottom_tokens, bottom_logits   [W, k]     logit-lens token ids and values
    activations, seq_ids, positions                        [W, K]     top-K (value, sequence, position) triples
    feature_frequencies                                    [W]        fraction of tokens where the feature fires
    tokens                                                 [N, S]     the token corpus the triples point into

The keys are detected, every shape is checked against the others (and the SAE width), and anything that does
not fit raises :class:`ExamplesFormatError` naming what was found. The file (~800 MB) is read lazily, one
feature's rows at a time; only the per-feature maximum is computed over the whole file, in chunks, on demand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from gemscope_widgets.backend.gemma.prompts import token_strings
from gemscope_widgets.backend.stats.feature_stats import Example, FeatureStats
from gemscope_widgets.errors import ExamplesFormatError

EXAMPLES_FILE = "examples.safetensors"
_EXAMPLE_KEYS = ("activations", "seq_ids", "positions", "tokens")
_LOGIT_KEYS = ("top_tokens", "top_logits", "bottom_tokens", "bottom_logits")
_CHUNK_ROWS = 4096
_INT_KEYS = {"seq_ids", "positions", "top_tokens", "bottom_tokens", "tokens"}


def find_examples_file(sae_or_folder: Any) -> Path | None:
    """The ``examples.safetensors`` beside an SAE's ``params.safetensors``, or None when there is none."""
    folder = getattr(getattr(sae_or_folder, "config", None), "path", sae_or_folder)
    if folder is None:
        return None
    path = Path(folder)
    candidate = path if path.name == EXAMPLES_FILE else path / EXAMPLES_FILE
    return candidate if candidate.is_file() else None


class GemmaScopeExamples(FeatureStats):
    """:class:`FeatureStats` read lazily from an ``examples.safetensors``.

    ``density`` is the file's ``feature_frequencies``; ``max_act`` the per-feature maximum of its activations;
    ``examples(f)`` the top examples (no quantile examples, no histogram); ``stored_logits(f)`` the file's
    top/bottom logit tokens. Example windows are decoded with ``tokenizer``; per-token values are known only
    where the file lists a (sequence, position) of this feature, so other tokens in a window show 0.
    """

    def __init__(
        self,
        path: str | Path,
        tokenizer: Any,
        *,
        width: int | None = None,
        sae_name: str = "",
        window: tuple[int, int] = (24, 8),
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ExamplesFormatError(f"{self.path} does not exist.")
        self.tokenizer = tokenizer
        self.window = window
        self._max_act: torch.Tensor | None = None
        self._density: torch.Tensor | None = None
        try:
            with safe_open(str(self.path), "pt") as fh:
                self.shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as exc:
            raise ExamplesFormatError(f"{self.path} is not a readable safetensors file: {exc}.") from None
        width = self._check_layout(width)
        n_seq, seq_len = self.shapes["tokens"]
        super().__init__(sae_name=sae_name, width=width, source="gemma-scope-examples", n_tokens=int(n_seq * seq_len))

    # --- layout ----------------------------------------------------------------------------------------

    def _check_layout(self, width: int | None) -> int:
        found = ", ".join(f"{k} {list(s)}" for k, s in sorted(self.shapes.items())) or "no tensors"
        missing = [k for k in _EXAMPLE_KEYS if k not in self.shapes]
        if missing:
            raise ExamplesFormatError(
                f"{self.path.name} lacks {', '.join(missing)}, so it is not the Gemma Scope 2 examples layout "
                f"(expected activations/seq_ids/positions [W, K] and tokens [N, S]); it holds: {found}."
            )
        triple = {self.shapes[k] for k in ("activations", "seq_ids", "positions")}
        act = self.shapes["activations"]
        if len(triple) != 1 or len(act) != 2:
            raise ExamplesFormatError(
                f"{self.path.name}: activations, seq_ids and positions must share one [W, K] shape; "
                f"it holds: {found}."
            )
        if len(self.shapes["tokens"]) != 2:
            raise ExamplesFormatError(f"{self.path.name}: tokens must be [N, S]; it holds: {found}.")
        w = act[0]
        for key in (*_LOGIT_KEYS, "feature_frequencies"):
            if key in self.shapes and self.shapes[key][0] != w:
                raise ExamplesFormatError(
                    f"{self.path.name}: {key} has {self.shapes[key][0]} rows but activations has {w}; "
                    f"it holds: {found}."
                )
        for ids, vals in (("top_tokens", "top_logits"), ("bottom_tokens", "bottom_logits")):
            if (ids in self.shapes) != (vals in self.shapes) or (
                ids in self.shapes and self.shapes[ids] != self.shapes[vals]
            ):
                raise ExamplesFormatError(f"{self.path.name}: {ids} and {vals} must come together with one shape.")
        if width is not None and int(width) != w:
            raise ExamplesFormatError(
                f"{self.path.name} describes {w} features but the SAE has {width}: it belongs to another SAE. "
                "Use the examples.safetensors from the same folder as the SAE's params.safetensors."
            )
        return int(w)

    def _row(self, key: str, f: int) -> np.ndarray:
        with safe_open(str(self.path), "pt") as fh:
            row = fh.get_slice(key)[f : f + 1][0]
        out: np.ndarray = row.long().numpy() if key in _INT_KEYS else row.float().numpy()
        return out

    # --- FeatureStats reading interface --------------------------------------------------------------

    # The base constructor assigns density/max_act; here they are read from the file on first use instead.
    @property
    def density(self) -> torch.Tensor | None:
        if "feature_frequencies" not in self.shapes:
            return None
        if self._density is None:
            with safe_open(str(self.path), "pt") as fh:
                self._density = fh.get_tensor("feature_frequencies").float()
        return self._density

    @density.setter
    def density(self, value: torch.Tensor | None) -> None:
        self._density = value

    @property
    def max_act(self) -> torch.Tensor:
        if self._max_act is None:
            out = torch.empty(self.width)
            with safe_open(str(self.path), "pt") as fh:
                acts = fh.get_slice("activations")
                for lo in range(0, self.width, _CHUNK_ROWS):
                    out[lo : lo + _CHUNK_ROWS] = acts[lo : lo + _CHUNK_ROWS].float().amax(dim=1).clamp_min(0)
            self._max_act = out
        return self._max_act

    @max_act.setter
    def max_act(self, value: torch.Tensor | None) -> None:
        self._max_act = value

    def _ranked(self, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        values, seqs, positions = (self._row(k, f) for k in ("activations", "seq_ids", "positions"))
        n_seq, seq_len = self.shapes["tokens"]
        keep = (values > 0) & (seqs >= 0) & (seqs < n_seq) & (positions >= 0) & (positions < seq_len)
        order = np.argsort(-values[keep], kind="stable")
        return values[keep][order], seqs[keep][order], positions[keep][order]

    def n_examples(self, f: int, kind: str = "top") -> int:
        f = self._check(f)
        return len(self._ranked(f)[0]) if kind == "top" else 0

    def examples(self, f: int, *, kind: str = "top", start: int = 0, count: int = 10) -> list[Example]:
        """Windows around the ``count`` examples from rank ``start``; the file has only top examples."""
        f = self._check(f)
        if kind != "top":
            return []
        values, seqs, positions = self._ranked(f)
        left, right = self.window
        out = []
        with safe_open(str(self.path), "pt") as fh:
            corpus = fh.get_slice("tokens")
            for i in range(start, min(start + count, len(values))):
                seq, pos = int(seqs[i]), int(positions[i])
                ids = corpus[seq : seq + 1].long()[0]
                lo, hi = max(0, pos - left), min(len(ids), pos + right + 1)
                window_values = np.zeros(hi - lo, dtype=np.float32)
                # Other listed hits of this feature in the same window are exact values too.
                same = (seqs == seq) & (positions >= lo) & (positions < hi)
                window_values[positions[same] - lo] = values[same]
                out.append(
                    Example(
                        tokens=token_strings(self.tokenizer, ids[lo:hi].tolist()),
                        values=window_values.tolist(),
                        peak=pos - lo,
                        value=float(values[i]),
                        doc=seq,
                        position=pos,
                    )
                )
        return out

    def stored_logits(self, f: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]] | None:
        """The file's top/bottom logit tokens for ``f``, or None when it has none."""
        f = self._check(f)
        if "top_tokens" not in self.shapes:
            return None
        pairs: list[Any] = []
        for ids_key, vals_key in (("top_tokens", "top_logits"), ("bottom_tokens", "bottom_logits")):
            if ids_key not in self.shapes:
                pairs.append([])
                continue
            ids, vals = self._row(ids_key, f), self._row(vals_key, f)
            pairs.append(list(zip(token_strings(self.tokenizer, ids.tolist()), vals.tolist())))
        return pairs[0], pairs[1]

def load_examples_safetensors(
    path: str | Path, tokenizer: Any, sae: Any = None, **kwargs: Any
) -> GemmaScopeExamples:
    """Open an ``examples.safetensors`` (or the SAE folder holding one) as feature statistics.

    ``tokenizer`` decodes the example windows and logit tokens (use the model's: ``gm.tokenizer``);
    ``sae``, when given, checks the width and names the statistics.
    """
    found = find_examples_file(path)
    if found is None:
        raise ExamplesFormatError(
            f"No {EXAMPLES_FILE} at {path}. Gemma Scope 2 ships it beside params.safetensors; download it "
            "with the folder (e.g. huggingface_hub.snapshot_download) to see examples without a scan."
        )
    if sae is not None:
        kwargs.setdefault("width", int(sae.config.width))
        kwargs.setdefault("sae_name", str(sae.config.name))
    return GemmaScopeExamples(found, tokenizer, **kwargs)
