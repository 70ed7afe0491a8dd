"""`Scope`: one handle on a model and its SAEs, with the notebook views as methods."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import GemscopeError

if TYPE_CHECKING:
    from gemscope_widgets.backend.gemma.model import GemmaModel


class Scope:
    """A Gemma 3 model plus one or more SAEs, and the widgets that look at them.

    ``Scope(model, sae)`` or ``Scope(model, [sae5, sae9])`` or ``Scope(model, {"L9": sae9})``.
    ``model`` may be a loaded :class:`GemmaModel` or a name for :func:`load_model`; each SAE may be a loaded
    SAE or a path/``(repo, folder)`` for :func:`load_sae`.
    """

    def __init__(self, model: GemmaModel | str, saes: Any = None, *, check: bool = True) -> None:
        from gemscope_widgets.backend.dictionaries.compat import check_compatible
        from gemscope_widgets.backend.dictionaries.loading import load_sae
        from gemscope_widgets.backend.gemma.model import load_model

        self.model: GemmaModel = load_model(model) if isinstance(model, str) else model
        if saes is None:
            saes = []
        if isinstance(saes, Mapping):
            items = list(saes.items())
        else:
            if not isinstance(saes, Sequence) or isinstance(saes, (str, tuple)):
                saes = [saes]
            items = [(None, s) for s in saes]
        self.saes: dict[str, Any] = {}
        for name, sae in items:
            if isinstance(sae, str):
                sae = load_sae(sae)
            elif isinstance(sae, tuple):
                sae = load_sae(*sae)
            if check:
                check_compatible(self.model, sae)
            self.saes[name or sae.config.name] = sae
        self._stats: dict[str, Any] = {}

    @classmethod
    def default(cls, **kwargs: Any) -> Scope:
        """The embedded default: Gemma 3 270M from PyPI and the demo SAE (trained and cached on first use)."""
        from gemscope_widgets.backend.default import load_default

        model, sae = load_default(**kwargs)
        return cls(model, sae)

    def sae(self, name: str | None = None) -> Any:
        """The SAE called ``name``, or the first one."""
        if not self.saes:
            raise GemscopeError("This Scope has no SAE: pass one, e.g. Scope(model, load_sae(path)).")
        if name is None:
            return next(iter(self.saes.values()))
        if name not in self.saes:
            raise GemscopeError(f"No SAE named {name!r} in this Scope; it has: {', '.join(self.saes)}.")
        return self.saes[name]

    def heatmap(self, prompts: Any, **kwargs: Any) -> Any:
        """Token × feature heatmap widget for one prompt, chat messages, or a list of prompts."""
        from .widgets.heatmap import Heatmap

        return Heatmap.build(self, prompts, **kwargs)

    def feature(self, feature: int, **kwargs: Any) -> Any:
        """Feature detail pane for one feature."""
        from .widgets.feature_pane import FeaturePane

        return FeaturePane.build(self, feature, **kwargs)

    def explore(self, prompts: Any, *, steer: Any = None, **kwargs: Any) -> Any:
        """Heatmap with a feature pane beneath: clicking a feature opens it (``steer``: a Steer to add to)."""
        from .widgets.explorer import Explorer

        return Explorer.build(self, prompts, steer=steer, **kwargs)

    def steer(self, prompt: Any, steering: Mapping[int, float] | None = None, **kwargs: Any) -> Any:
        """Steering widget: sliders per feature, baseline and steered continuations side by side."""
        from .widgets.steer import Steer

        return Steer.build(self, prompt, steering or {}, **kwargs)

    def generate(self, prompt: Any, steering: Any = None, *, unit: str = "typical", **kwargs: Any) -> Any:
        """Baseline and steered continuations without a widget (same code path as :meth:`steer`).

        ``steering`` is ``{feature: strength}`` or a list of SteeringSpecs. With ``unit="typical"`` (the
        default, as in the widget) strengths are multiples of each feature's typical maximum activation;
        ``unit="raw"`` takes them in the SAE's activation units.
        """
        from dataclasses import replace

        from gemscope_widgets.backend.steering.generation import generate
        from gemscope_widgets.backend.steering.spec import normalize_steering, typical_scales

        from .errors import SteeringError

        if unit not in ("typical", "raw"):
            raise SteeringError(f"unit={unit!r}: use 'typical' (multiples of max activation) or 'raw'.")
        sae = self.sae(kwargs.pop("sae", None)) if self.saes else None
        specs = normalize_steering(steering, sae)
        if unit == "typical" and specs:
            ids = self.model.prompt(prompt).input_ids
            scales: dict[int, dict[int, tuple[float, str]]] = {}
            for owner in {id(s.sae): s.sae for s in specs}.values():  # one capture per SAE, not per feature
                features = [s.feature for s in specs if s.sae is owner]
                stats = self._stats.get(owner.config.name)
                scales[id(owner)] = typical_scales(self.model, owner, features, ids, stats)
            specs = [replace(s, strength=s.strength * scales[id(s.sae)][s.feature][0]) for s in specs]
        return generate(self.model, prompt, sae=sae, steering=specs or None, **kwargs)

    def chat(self, messages: Any, **kwargs: Any) -> Any:
        """Conversation view: turns with template tokens marked, feature heat, per-turn summaries, "continue".

        Keywords: ``features`` (to heat), ``steer`` (a steering widget whose sliders steer the reply) or
        ``steering``, ``direction`` (a projection track), ``summary_k``, ``max_new_tokens``.
        """
        from .widgets.chat import Chat

        return Chat.build(self, messages, **kwargs)

    def contrast(self, a: Any = None, b: Any = None, **kwargs: Any) -> Any:
        """Features ranked by how differently they fire on ``a`` and ``b`` over a span, both heatmaps side by side;
        ``pairs=[(a, b), ...]`` ranks by the paired t statistic. Keywords: ``span``, ``reduce``, ``k``, ``sae``,
        ``steer`` (a steering widget to add features to)."""
        from .widgets.contrast import ContrastPanel, ContrastView

        pane_keys = ("related_k", "logits_k", "page_size", "corpus")
        pane_kwargs = {k: kwargs.pop(k) for k in pane_keys if k in kwargs}
        return ContrastPanel(self, ContrastView.build(self, a, b, **kwargs), **pane_kwargs)

    def stats(self, sae: str | None = None, corpus: Any = None, **kwargs: Any) -> Any:
        """Feature statistics for an SAE over a corpus (the default corpus when none is given), cached on disk."""
        from gemscope_widgets.backend.stats.feature_stats import FeatureStats

        chosen = self.sae(sae)
        key = chosen.config.name
        if corpus is not None or key not in self._stats:
            self._stats[key] = FeatureStats.load_or_scan(self.model, chosen, corpus, **kwargs)
        return self._stats[key]
