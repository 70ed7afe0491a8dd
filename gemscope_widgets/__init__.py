"""Look inside Gemma 3 with Gemma Scope 2 SAEs, live in a notebook.

The public names are imported lazily so that ``import gemscope_widgets`` does not pull in torch.
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from gemscope_widgets.backend.views import register_view

try:
    __version__ = version("gemscope-widgets")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

_EXPORTS = {
    "load_model": "gemscope_widgets.backend.gemma.model",
    "cast_model": "gemscope_widgets.backend.gemma.model",
    "GemmaModel": "gemscope_widgets.backend.gemma.model",
    "load_sae": "gemscope_widgets.backend.dictionaries.loading",
    "JumpReLUSAE": "gemscope_widgets.backend.dictionaries.jumprelu",
    "SAEConfig": "gemscope_widgets.backend.dictionaries.config",
    "capture": "gemscope_widgets.backend.gemma.capture",
    "check_compatible": "gemscope_widgets.backend.dictionaries.compat",
    "prompt_features": "gemscope_widgets.backend.analysis.features",
    "SteeringSpec": "gemscope_widgets.backend.steering.spec",
    "DirectionSpec": "gemscope_widgets.backend.steering.spec",
    "FeatureStats": "gemscope_widgets.backend.stats.feature_stats",
    "train_sae": "gemscope_widgets.backend.training.train",
    "load_default": "gemscope_widgets.backend.default",
    "attribute": "gemscope_widgets.backend.circuits.attribution",
    "AttributionGraph": "gemscope_widgets.backend.circuits.graph",
    "compare_graphs": "gemscope_widgets.backend.circuits.comparison",
    "ablate_attention_edge": "gemscope_widgets.backend.circuits.head_ablation",
    "attention_ablation_check": "gemscope_widgets.backend.circuits.head_ablation",
    "AttentionEdgeAblation": "gemscope_widgets.backend.circuits.head_ablation",
    "AttentionAblationCheck": "gemscope_widgets.backend.circuits.head_ablation",
    "GraphComparison": "gemscope_widgets.backend.circuits.comparison",
    "GroupedGraph": "gemscope_widgets.backend.circuits.supernodes",
    "GroupSuggestion": "gemscope_widgets.backend.circuits.group_suggestions",
    "GroupSuggestions": "gemscope_widgets.backend.circuits.group_suggestions",
    "suggest_groups": "gemscope_widgets.backend.circuits.group_suggestions",
    "qk_attribution": "gemscope_widgets.backend.circuits.qk",
    "attention_row": "gemscope_widgets.backend.circuits.qk",
    "QKAttribution": "gemscope_widgets.backend.circuits.qk",
    "QKTerm": "gemscope_widgets.backend.circuits.qk",
    "EdgeHeads": "gemscope_widgets.backend.circuits.head_loadings",
    "HeadLoadings": "gemscope_widgets.backend.circuits.head_loadings",
    "HeadShare": "gemscope_widgets.backend.circuits.head_loadings",
    "HeadSummary": "gemscope_widgets.backend.circuits.head_loadings",
    "logit_difference": "gemscope_widgets.backend.circuits.targets",
    "load_transcoders": "gemscope_widgets.backend.circuits.transcoder_set",
    "TranscoderSet": "gemscope_widgets.backend.circuits.transcoder_set",
    "behaviour_direction": "gemscope_widgets.backend.behaviour.direction",
    "refusal_direction": "gemscope_widgets.backend.behaviour.direction",
    "projection_track": "gemscope_widgets.backend.behaviour.direction",
    "refusal_score": "gemscope_widgets.backend.behaviour.refusal",
    "refusal_sweep": "gemscope_widgets.backend.behaviour.refusal",
    "contrast_features": "gemscope_widgets.backend.behaviour.contrast:contrast",
    "contrast_pairs": "gemscope_widgets.backend.behaviour.contrast",
    "cot_faithfulness": "gemscope_widgets.backend.behaviour.faithfulness",
    "probe": "gemscope_widgets.backend.behaviour.probe",
    "ProbeResult": "gemscope_widgets.backend.behaviour.probe",
    "validate": "gemscope_widgets.backend.behaviour.validate",
    "CausalCheck": "gemscope_widgets.backend.behaviour.validate",
    "entity_knowledge": "gemscope_widgets.backend.behaviour.entities",
    "load_entities": "gemscope_widgets.backend.behaviour.entities",
    "question_prompt": "gemscope_widgets.backend.behaviour.entities",
    "EntityKnowledge": "gemscope_widgets.backend.behaviour.entities",
    "behaviour_evidence": "gemscope_widgets.backend.behaviour.evidence",
    "BehaviourEvidence": "gemscope_widgets.backend.behaviour.evidence",
    "behaviour_sets": "gemscope_widgets.backend.behaviour.evidence",
    "topic_control": "gemscope_widgets.backend.behaviour.evidence",
    "topic_control_sets": "gemscope_widgets.backend.behaviour.evidence",
    "TopicControl": "gemscope_widgets.backend.behaviour.evidence",
    "agreement_scorer": "gemscope_widgets.backend.behaviour.evidence",
    "Scope": "gemscope_widgets.scope",
    "Workspace": "gemscope_widgets.backend.workspace",
    "heatmap": "gemscope_widgets.widgets.heatmap",
    "Heatmap": "gemscope_widgets.widgets.heatmap",
    "FeaturePane": "gemscope_widgets.widgets.feature_pane",
    "GraphComparisonView": "gemscope_widgets.widgets.graph_comparison",
    "ProbeView": "gemscope_widgets.widgets.probe",
    "FeatureCard": "gemscope_widgets.backend.analysis.card",
    "FeatureCards": "gemscope_widgets.backend.analysis.card",
    "FeatureLabels": "gemscope_widgets.backend.analysis.labels",
    "LabelScore": "gemscope_widgets.backend.analysis.label_scores",
    "LabelScores": "gemscope_widgets.backend.analysis.label_scores",
    "held_out_tokens": "gemscope_widgets.backend.analysis.label_scores",
    "SearchHit": "gemscope_widgets.backend.analysis.search",
    "search_labels": "gemscope_widgets.backend.analysis.search",
    "search_examples": "gemscope_widgets.backend.analysis.search",
    "explain": "gemscope_widgets.backend.analysis.explain",
    "Explanation": "gemscope_widgets.backend.analysis.explain",
    "Explanations": "gemscope_widgets.backend.analysis.explain",
    "JobRunner": "gemscope_widgets.backend.jobs",
    "JobListener": "gemscope_widgets.backend.jobs",
    "Job": "gemscope_widgets.backend.jobs",
    "Steer": "gemscope_widgets.widgets.steer",
    "TokenView": "gemscope_widgets.widgets.token_view",
    "Chat": "gemscope_widgets.widgets.chat",
    "ContrastView": "gemscope_widgets.widgets.contrast",
    "Circuit": "gemscope_widgets.widgets.circuit",
    "train_transcoders": "gemscope_widgets.backend.training.transcoders",
    # what the README and the examples present as public
    "GemscopeError": "gemscope_widgets.errors",
    "Prompt": "gemscope_widgets.backend.gemma.prompts",
    "generate": "gemscope_widgets.backend.steering.generation",
    "next_token_probs": "gemscope_widgets.backend.steering.generation",
    "SteeringSession": "gemscope_widgets.backend.steering.session",
    "ChatSession": "gemscope_widgets.backend.behaviour.chat_session",
    "ChatListener": "gemscope_widgets.backend.behaviour.chat_session",
    "logit_lens": "gemscope_widgets.backend.analysis.logit_lens",
    "sae_card": "gemscope_widgets.backend.analysis.evaluation",
    "BehaviourDirection": "gemscope_widgets.backend.behaviour.direction",
    "decompose": "gemscope_widgets.backend.behaviour.direction",
    "HARMFUL_REQUESTS": "gemscope_widgets.backend.behaviour.prompt_sets",
    "HARMLESS_REQUESTS": "gemscope_widgets.backend.behaviour.prompt_sets",
    "SYCOPHANCY_PAIRS": "gemscope_widgets.backend.behaviour.prompt_sets",
    "read_prompts": "gemscope_widgets.backend.behaviour.prompt_sets",
    "REFUSAL_PHRASES": "gemscope_widgets.backend.behaviour.refusal",
    # coarse-to-fine structure (Matryoshka prefixes, parents and children, the family tree across widths)
    "prefix_curve": "gemscope_widgets.backend.analysis.matryoshka",
    "PrefixCurve": "gemscope_widgets.backend.analysis.matryoshka",
    "LatentOrder": "gemscope_widgets.backend.analysis.matryoshka",
    "prefix_levels": "gemscope_widgets.backend.analysis.matryoshka",
    "first_latents": "gemscope_widgets.backend.analysis.matryoshka",
    "cofiring": "gemscope_widgets.backend.stats.cofiring",
    "CoFiring": "gemscope_widgets.backend.stats.cofiring",
    "latent_family": "gemscope_widgets.backend.analysis.hierarchy",
    "LatentFamily": "gemscope_widgets.backend.analysis.hierarchy",
    "family_tree": "gemscope_widgets.backend.analysis.width_family",
    "FamilyTree": "gemscope_widgets.backend.analysis.width_family",
    "MatryoshkaError": "gemscope_widgets.errors",
}
"""Public name -> the module defining it (``"module:attribute"`` where the public name differs)."""

_RENAMED = {
    "contrast": (
        "contrast_features",
        "gemscope_widgets.contrast is now gemscope_widgets.contrast_features (the data: features ranked by how "
        "differently they fire on two prompts); Scope.contrast is the view.",
    ),
}
"""Old public name -> (new name, why): still importable, with a DeprecationWarning."""

__all__ = ["__version__", *_EXPORTS]

# The backend's results ask this registry for their view; the widget layer builds it (imported when first asked).
register_view("AttributionGraph", "gemscope_widgets.widgets.circuit:graph_view")
register_view("GraphComparison", "gemscope_widgets.widgets.graph_comparison:comparison_view")
register_view("ProbeResult", "gemscope_widgets.widgets.probe:probe_view")


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        new, why = _RENAMED[name]
        warnings.warn(why, DeprecationWarning, stacklevel=2)
        name = new
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'gemscope_widgets' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute or name)
