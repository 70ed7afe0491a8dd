"""Heatmap: which SAE features fire on which tokens of one or more prompts."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import traitlets

from gemscope_widgets.backend.analysis.matryoshka import MATRYOSHKA_KEY, check_level, first_latents, prefix_levels
from gemscope_widgets.backend.gemma.prompts import is_token_ids
from gemscope_widgets.backend.progress import progress_bar
from gemscope_widgets.backend.workspace import Workspace
from gemscope_widgets.errors import FeatureIndexError, GemscopeError, PromptError

from .base import ViewWidget
from .bundle import bundle_path
from .messages import PING, MessageTable
from .payload import DENSE_ABOVE, RANKS, Payload, decode_payload, encode_payload

_BUNDLE = bundle_path("heatmap")

LIST_K = 20  # how many of the selected token's features the side list shows (each one labelled)
MAX_TOP_N = 256  # the front end draws at most this many feature columns

SelectCallback = Callable[[int, int, int], Any]


def split_prompts(prompts: Any) -> list[Any]:
    """One prompt (text, chat messages, token ids, a ``Prompt``) or a list of them -> a list of prompts."""
    if isinstance(prompts, str) or is_token_ids(prompts):
        return [prompts]
    if isinstance(prompts, Sequence) and len(prompts) > 0 and all(isinstance(m, Mapping) for m in prompts):
        return [list(prompts)]  # a single chat conversation
    if isinstance(prompts, Sequence):
        if len(prompts) == 0:
            raise PromptError("No prompts given: pass text, chat messages, token ids, or a list of them.")
        return list(prompts)
    return [prompts]


def _max_of(stats: Any) -> Any:
    """A statistics object's per-feature maxima, or None when there are none (yet)."""
    return None if stats is None else stats.max_act


class Heatmap(ViewWidget):
    """Tokens × top SAE features, coloured by activation; click a token or a feature to inspect it.

    Build one with :meth:`Scope.heatmap` or :func:`heatmap`. All data lives in traits (binary CSR, see
    :mod:`gemscope_widgets.widgets.payload`), so the view is saved with the notebook and can be
    exported with :meth:`to_html`.
    """

    _esm = _BUNDLE

    MESSAGES: ClassVar[MessageTable] = {"ping": PING}
    """What the view sends (``HeatmapMessage`` in ``js/lib/protocol.ts``): only the liveness check."""

    _header = traitlets.Dict().tag(sync=True)
    """The payload's JSON header: prompts' tokens, SAEs, and where each array lies in ``_data``."""
    _data = traitlets.Bytes(b"").tag(sync=True)
    """The payload's binary blob (CSR arrays of every prompt × SAE)."""
    sae_index = traitlets.Int(0).tag(sync=True)
    """Which SAE the grid shows (index into :attr:`sae_names`)."""
    top_n = traitlets.Int(20).tag(sync=True)
    """How many features (columns) the grid shows per prompt."""
    rank_by = traitlets.Unicode("specific").tag(sync=True)
    """Rank the grid's features by their ``"max"`` or ``"sum"`` of activations over the prompt, or ``"specific"``:
    by max, with dense features (firing on more than 10 % of corpus tokens) after all others."""
    feature_info = traitlets.Dict().tag(sync=True)
    """Per SAE (by index, as a string): ``{"density": {feature: fraction}, "labels": {feature: text}}`` for the
    features the statistics and labels know; plus ``"dense_above"``, the density that marks a feature dense."""
    list_k = traitlets.Int(LIST_K).tag(sync=True)
    """How many of the selected token's features the side list shows (every one of them carries its label)."""
    selected_prompt = traitlets.Int(-1).tag(sync=True)
    """Index of the prompt of the selection, -1 when none."""
    selected_token = traitlets.Int(-1).tag(sync=True)
    """Position of the selected token in the selected prompt, -1 when none."""
    selected_feature = traitlets.Int(-1).tag(sync=True)
    """The selected feature (in the current SAE), -1 when none."""
    _track = traitlets.Bytes(b"").tag(sync=True)
    """``float32 [sum of T]``: each prompt's projection track (its tokens in order, prompt after prompt), drawn
    under the text; empty without ``direction=``."""
    track_label = traitlets.Unicode("").tag(sync=True)
    """What the track projects on (``"<direction> · layer L"``); "" without one."""
    level = traitlets.Int(0).tag(sync=True)
    """Show only the first ``level`` latents of the shown SAE (its coarse-to-fine levels: a Matryoshka SAE's
    groups); 0 shows them all. The payload is re-encoded from
    :func:`~gemscope_widgets.backend.analysis.matryoshka.first_latents`; a level outside ``1..width`` raises
    :class:`~gemscope_widgets.errors.MatryoshkaError`."""
    levels: traitlets.List[list[int]] = traitlets.List().tag(sync=True)
    """Per SAE (by index): the levels the view's slider offers
    (:func:`~gemscope_widgets.backend.analysis.matryoshka.prefix_levels`, ending at the width)."""
    nested: traitlets.List[bool] = traitlets.List().tag(sync=True)
    """Per SAE (by index): whether it was trained nested (a Matryoshka SAE, its ``config.json`` records its
    groups), so its first latents are a coarse level; for any other SAE the view says they are merely the first."""

    def __init__(self, header: dict[str, Any], data: bytes, **kwargs: Any) -> None:
        self._followed: tuple[Any, ...] | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self._callbacks: list[SelectCallback] = []
        self._last_selection: tuple[int, int, int] | None = None
        self._payload: Payload | None = None
        self._maxima: list[Any] | None = None
        super().__init__(_header=header, _data=data, **kwargs)
        self._last_selection = self.selection

    @classmethod
    def build(
        cls,
        workspace: Workspace,
        prompts: Any,
        *,
        sae: str | Sequence[str] | None = None,
        top_n: int = 20,
        rank_by: str = "specific",
        top_k: int | None = None,
        feature_max: Mapping[str, Any] | str | None = None,
        max_tokens: int | None = None,
        direction: Any = None,
        progress: bool = True,
    ) -> Heatmap:
        """Runs the model once per prompt (every SAE encoded from that one forward) and builds the widget.

        ``sae`` picks SAEs of the workspace by name (default: all of them; the widget switches between them).
        ``top_k`` keeps only each token's ``top_k`` strongest features in the payload. ``feature_max``
        maps SAE names to per-feature maxima over a corpus (``[width]``), used to scale the colours;
        ``feature_max="stats"`` takes them from the workspace's statistics of each SAE and follows them (a scan that
        finishes later rescales the colours). ``direction`` (a
        :class:`~gemscope_widgets.backend.behaviour.direction.BehaviourDirection` or a ``[d_model]`` vector) adds
        a projection track under each prompt's text: every token's residual stream at the direction's layer
        projected on it (:func:`~gemscope_widgets.backend.behaviour.direction.projection_at_layer`).
        """

        from gemscope_widgets.backend.analysis.features import prompt_features

        names = list(workspace.saes) if sae is None else [sae] if isinstance(sae, str) else list(sae)
        saes = [workspace.sae(name) for name in names]
        items = split_prompts(prompts)
        rows, tokenized = [], []
        for item in progress_bar(items, desc="heatmap", unit="prompt", disable=not progress or len(items) < 2):
            acts = prompt_features(workspace.model, saes, item, max_tokens=max_tokens)
            rows.append(acts)
            tokenized.append(acts[0].prompt)
        maxima = None
        follow = feature_max == "stats"
        if follow:
            holders = [workspace.stats_holder(name) for name in names]
            maxima = [_max_of(h.stats) for h in holders]
        elif isinstance(feature_max, str):
            raise GemscopeError(f"feature_max must map SAE names to maxima, or be 'stats'; got {feature_max!r}.")
        elif feature_max is not None:
            unknown = set(feature_max) - set(names)
            if unknown:
                raise GemscopeError(
                    f"feature_max names SAEs {sorted(unknown)} that the heatmap does not show; use {names}."
                )
            maxima = [feature_max.get(name) for name in names]
        header, data = encode_payload(tokenized, rows, top_k=top_k, feature_max=maxima)
        for info, name in zip(header["saes"], names):
            info["name"] = name
        info = _feature_info(workspace, names, decode_payload(header, data), top_n, LIST_K)
        track, track_label = b"", ""
        if direction is not None:
            from gemscope_widgets.backend.behaviour.direction import projection_at_layer

            parts = [projection_at_layer(workspace.model, prompt, direction) for prompt in tokenized]
            track = np.concatenate([values for values, _ in parts]).astype("<f4").tobytes()
            track_label = parts[0][1]
        widget = cls(header, data, top_n=top_n, rank_by=rank_by, feature_info=info, _track=track,
                     track_label=track_label, levels=[prefix_levels(s) for s in saes],
                     nested=[bool(s.config.raw.get(MATRYOSHKA_KEY)) for s in saes])
        widget._maxima = maxima
        # Densities and labels follow the statistics always; colour maxima only with feature_max="stats".
        holders = [workspace.stats_holder(name) for name in names]
        widget._followed = (workspace, tokenized, rows, top_k, names, holders, follow)
        widget._unsubscribe = [h.subscribe(widget._stats_changed) for h in holders]
        return widget

    def close(self) -> None:
        for stop in self._unsubscribe:
            stop()
        super().close()

    def _stats_changed(self, _stats: Any) -> None:
        """A shown SAE's statistics changed: new densities and labels, and (when followed) colour maxima."""
        if self._followed is None:
            return
        scope, names, holders, follow = self._followed[0], self._followed[4], self._followed[5], self._followed[6]
        if follow:
            self._maxima = [_max_of(h.stats) for h in holders]
            self._encode()
        self.feature_info = _feature_info(scope, names, self.payload, self.top_n, self.list_k, self._selected_by_sae())

    @traitlets.observe("top_n", "list_k", "selected_feature", "sae_index")
    def _info_follows_the_view(self, change: traitlets.Bunch) -> None:
        """More columns, a longer side list, or a selected feature outside them (a chip click, ``select``): label
        those too.

        Labels are cached per SAE, so this costs only the features not labelled yet."""
        if self._followed is None:
            return
        if change["name"] == "selected_feature":
            f = self.selected_feature
            if f < 0 or str(f) in self.feature_info.get(str(self.sae_index), {}).get("labels", {}):
                return
        scope, names = self._followed[0], self._followed[4]
        self.feature_info = _feature_info(scope, names, self.payload, self.top_n, self.list_k, self._selected_by_sae())

    def _encode(self) -> None:
        """Re-encode the payload from the kept activations: the current colour maxima, and only the first
        ``level`` latents of the shown SAE when a level is set."""
        if self._followed is None:
            return
        tokenized, rows, top_k, names = self._followed[1], self._followed[2], self._followed[3], self._followed[4]
        if self.level:
            s = self.sae_index
            rows = [[first_latents(a, self.level) if i == s else a for i, a in enumerate(row)] for row in rows]
        header, data = encode_payload(tokenized, rows, top_k=top_k, feature_max=self._maxima)
        for info, name in zip(header["saes"], names):
            info["name"] = name
        with self.hold_sync():
            self._header, self._data = header, data

    @traitlets.observe("level")
    def _level_changed(self, _change: traitlets.Bunch) -> None:
        """A new level: the shown SAE's activations cut to its first ``level`` latents, and labels for the
        columns that brings."""
        self._encode()
        if self._followed is not None:
            scope, names = self._followed[0], self._followed[4]
            self.feature_info = _feature_info(scope, names, self.payload, self.top_n, self.list_k,
                                              self._selected_by_sae())

    def _selected_by_sae(self) -> dict[int, set[int]]:
        return {self.sae_index: {self.selected_feature}} if self.selected_feature >= 0 else {}

    # --- validation -------------------------------------------------------------------------------

    @traitlets.validate("rank_by")
    def _check_rank(self, proposal: traitlets.Bunch) -> str:
        if proposal["value"] not in RANKS:
            raise GemscopeError(f"rank_by must be one of {', '.join(RANKS)}; got {proposal['value']!r}.")
        return proposal["value"]

    @traitlets.validate("top_n", "list_k")
    def _check_count(self, proposal: traitlets.Bunch) -> int:
        value = proposal["value"]
        if not 1 <= value <= MAX_TOP_N:
            raise GemscopeError(f"{proposal['trait'].name} must be between 1 and {MAX_TOP_N}, got {value}.")
        return value

    @traitlets.validate("sae_index")
    def _check_sae(self, proposal: traitlets.Bunch) -> int:
        value = proposal["value"]
        n = len(self._header.get("saes", [])) or 1
        if not 0 <= value < n:
            raise GemscopeError(f"sae_index {value} is outside the {n} SAEs; use 0..{n - 1}.")
        return value

    @traitlets.validate("level")
    def _check_level(self, proposal: traitlets.Bunch) -> int:
        value = proposal["value"]
        saes = self._header.get("saes")
        if value == 0 or not saes:
            return int(value)
        sae = saes[self.sae_index]
        return check_level(value, int(sae["width"]), str(sae.get("name", "the shown SAE")))

    @traitlets.validate("selected_prompt")
    def _check_prompt(self, proposal: traitlets.Bunch) -> int:
        value = proposal["value"]
        n = len(self._header.get("prompts", []))
        if not -1 <= value < n:
            raise PromptError(f"selected_prompt {value} is outside the {n} prompts; use 0..{n - 1} or -1.")
        return value

    @traitlets.validate("selected_feature")
    def _check_feature(self, proposal: traitlets.Bunch) -> int:
        value = proposal["value"]
        saes = self._header.get("saes")
        if saes and not -1 <= value < saes[self.sae_index]["width"]:
            width = saes[self.sae_index]["width"]
            raise FeatureIndexError(f"selected_feature {value} is outside the SAE's {width} features; or use -1.")
        return value

    @traitlets.observe("_header", "_data")
    def _new_payload(self, _change: traitlets.Bunch) -> None:
        self._payload = None

    # --- selection --------------------------------------------------------------------------------

    @property
    def selection(self) -> tuple[int, int, int]:
        """``(prompt, feature, token)`` as last selected (each -1 when unset)."""
        return (self.selected_prompt, self.selected_feature, self.selected_token)

    def on_select(self, callback: SelectCallback, *, remove: bool = False) -> None:
        """Calls ``callback(prompt_index, feature, token)`` whenever the selection changes."""
        if remove:
            self._callbacks.remove(callback)
        else:
            self._callbacks.append(callback)

    @traitlets.observe("selected_prompt", "selected_feature", "selected_token")
    def _selection_changed(self, _change: traitlets.Bunch) -> None:
        # The browser sends the three traits in one message; fire once for the final triple.
        current = self.selection
        if current == self._last_selection:
            return
        self._last_selection = current
        for callback in list(self._callbacks):
            callback(*current)

    @traitlets.observe("sae_index")
    def _sae_changed(self, _change: traitlets.Bunch) -> None:
        self.selected_feature = -1  # feature ids of one SAE mean nothing in another
        self.level = 0  # a level is a prefix of one SAE: another starts from all its latents

    def select(self, *, prompt: int | None = None, token: int | None = None, feature: int | None = None) -> None:
        """Sets the selection from Python (the view follows) in one update."""
        with self.hold_trait_notifications():
            if prompt is not None:
                self.selected_prompt = prompt
            if token is not None:
                self.selected_token = token
            if feature is not None:
                self.selected_feature = feature

    # --- the numbers, as the view shows them -------------------------------------------------------

    @property
    def payload(self) -> Payload:
        """The decoded payload: exactly the numbers the browser draws."""
        if self._payload is None:
            self._payload = decode_payload(self._header, self._data)
        return self._payload

    @property
    def sae_names(self) -> list[str]:
        return self.payload.sae_names

    def token_features(self, token: int, prompt: int = 0, k: int | None = None) -> list[tuple[int, float, str]]:
        """The side list for a token: ``(feature, value, text)`` with ``text`` as the view prints it."""
        tokens = self.payload.tokens(prompt)
        if not 0 <= token < len(tokens):
            raise PromptError(f"token {token} is outside prompt {prompt}'s {len(tokens)} tokens.")
        return self.payload.token_features(prompt, token, self.sae_index, k or self.list_k)

    def top_features(self, prompt: int = 0) -> list[int]:
        """The grid's feature columns for ``prompt`` under the current SAE, N and ranking; a selected feature
        outside them gets a column of its own at the end (as in the view)."""
        columns = self.payload.top_features(prompt, self.sae_index, self.top_n, self.rank_by, self.dense_features())
        if self.selected_feature >= 0 and self.selected_feature not in columns:
            columns.append(self.selected_feature)
        return columns

    def dense_features(self, sae: int | None = None) -> set[int]:
        """Features of SAE ``sae`` (default: the shown one) denser than ``feature_info["dense_above"]``."""
        info = self.feature_info.get(str(self.sae_index if sae is None else sae), {})
        limit = float(self.feature_info.get("dense_above", DENSE_ABOVE))
        return {int(f) for f, d in info.get("density", {}).items() if d > limit}

    def label(self, feature: int, sae: int | None = None) -> str:
        """The label the view shows for ``feature`` ("" when none was computed)."""
        info = self.feature_info.get(str(self.sae_index if sae is None else sae), {})
        return str(info.get("labels", {}).get(str(int(feature)), ""))

    @property
    def nbytes(self) -> int:
        """Size of the binary payload."""
        return len(self._data)

    # --- static views -------------------------------------------------------------------------------

    def to_html(self, path: str | os.PathLike[str], *, title: str = "Feature heatmap") -> pathlib.Path:
        """Writes a standalone HTML file (script and data inlined) that renders with no kernel or network."""
        from .export import export_html

        return export_html(self, path, title=title)

    def static_html(self) -> str:
        """The script-free rendering carried in the mime bundle (see :mod:`.static_view`)."""
        from .static_view import heatmap_html

        return heatmap_html(self)


def _feature_info(workspace: Workspace, names: Sequence[str], payload: Payload, top_n: int, list_k: int,
                  also: Mapping[int, set[int]] | None = None) -> dict[str, Any]:
    """Densities (from statistics already known; nothing is scanned) and labels (``workspace.labels``) for the
    features the view can show: each ranking's top ``top_n`` columns per prompt, each token's ``list_k``
    strongest features (the side list), and the features in ``also`` (by SAE index: a selection outside the
    columns)."""
    out: dict[str, Any] = {"dense_above": DENSE_ABOVE}
    for s, name in enumerate(names):
        stats = workspace.stats_holder(name).find_cached()
        present: set[int] = set()
        for p in range(payload.n_prompts):
            block = payload.block(p, s)
            present.update(np.unique(block.indices).tolist())
        density: dict[str, float] = {}
        if stats is not None and stats.density is not None:
            values = stats.density
            density = {str(f): float(values[f]) for f in sorted(present)}
        dense = {int(f) for f, d in density.items() if d > DENSE_ABOVE}
        wanted: set[int] = set((also or {}).get(s, ()))
        for p in range(payload.n_prompts):
            for by in RANKS:
                wanted.update(payload.top_features(p, s, top_n, by, dense))
            block = payload.block(p, s)
            for t in range(len(block.indptr) - 1):
                wanted.update(block.row(t)[0][:list_k].tolist())
        labels = workspace.labels(name).labels(sorted(wanted)) if wanted else {}
        out[str(s)] = {"density": density, "labels": {str(f): text for f, text in labels.items() if text}}
    return out


def heatmap(
    prompts: Any,
    model: Any = None,
    sae: Any = None,
    **kwargs: Any,
) -> Heatmap:
    """One-off heatmap: ``heatmap("text", model="gemma-3-270m", sae=path)``.

    ``model`` and ``sae`` may be loaded objects or names/paths (see :class:`Workspace`); with neither, the
    embedded default model and demo SAE are used. Keyword arguments go to :meth:`Heatmap.build`.
    """
    if model is None and sae is None:
        workspace = Workspace.default()
    elif model is None or sae is None:
        raise GemscopeError(
            "heatmap() needs both model= and sae= (or neither, for the embedded default model and SAE)."
        )
    else:
        workspace = Workspace(model, sae)
    return Heatmap.build(workspace, prompts, **kwargs)
