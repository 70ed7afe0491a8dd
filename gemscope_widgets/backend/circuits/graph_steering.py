"""Steering a multi-token continuation from an attribution graph's feature nodes.

``graph.intervene`` answers "what would the next token be"; a researcher then wants to see the continuation the
intervention produces, beside the unsteered one. A feature node is ``(layer, position, feature)``; a continuation
has positions the graph never saw, so each node (or supernode member) becomes the steering entry of its
``(layer, feature)`` (:class:`~gemscope_widgets.backend.steering.spec.SteeringSpec` on its transcoder, in raw
activation units) applied at ``positions`` (``"all"``: prompt and continuation; ``"prompt"``; ``"generated"``),
as circuit-tracer's ``feature_intervention_generate`` applies an open-ended position range. The specs then go
through the package's steering path unchanged: :func:`~gemscope_widgets.backend.steering.generation.generate`
(baseline and steered rows together, ``on_token`` streams each step) or a
:class:`~gemscope_widgets.backend.steering.session.SteeringSession` (latest-wins runs in the background, streamed to
its listener, the steering widget's model).

Modes, per node with activation ``a`` on the prompt: ``"set"`` clamps the feature to the value; ``"scale"`` clamps
it to value × ``a``; ``"ablate"`` clamps it to 0; ``"add"`` adds value × its decoder row (steering's ``add``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from gemscope_widgets.backend.circuits.intervention import expand_supernodes
from gemscope_widgets.backend.steering.generation import GenerationResult, generate
from gemscope_widgets.backend.steering.session import SessionListener, SteeringSession
from gemscope_widgets.backend.steering.spec import POSITIONS, SteeringSpec
from gemscope_widgets.errors import GraphError

if TYPE_CHECKING:
    from gemscope_widgets.backend.circuits.graph import AttributionGraph

STEER_MODES = ("set", "scale", "ablate", "add")


def graph_steering_specs(
    graph: AttributionGraph, interventions: Any, *, mode: str = "set", positions: str = "all"
) -> list[SteeringSpec]:
    """The :class:`SteeringSpec` list (raw units, ``unit="raw"``) that steers the graph's feature nodes.

    ``interventions``: ``{node: value}`` with node references as :meth:`AttributionGraph.intervene` takes them
    (supernode names expand to their members); for ``mode="ablate"`` a list of nodes will do. Nodes of the same
    ``(layer, feature)`` at different positions make one entry (they must then ask for the same strength).
    Raises GraphError for a graph without its transcoders, a non-feature node, an unknown mode or positions, or
    one feature asked for two strengths.
    """
    rep = graph.replacement
    if rep is None:
        raise GraphError(
            "This graph has no model attached (it was loaded from a file): call graph.attach(model, transcoders) "
            "first."
        )
    if mode not in STEER_MODES:
        raise GraphError(f"Unknown steering mode {mode!r}: use one of {', '.join(STEER_MODES)}.")
    if positions not in POSITIONS:
        raise GraphError(f"Unknown positions {positions!r}: use one of {', '.join(POSITIONS)}.")
    if mode == "ablate" and not isinstance(interventions, Mapping):
        if isinstance(interventions, (str, int)) or not isinstance(interventions, Iterable):
            interventions = [interventions]
        interventions = {ref: 0.0 for ref in interventions}
    if not isinstance(interventions, Mapping) or not interventions:
        raise GraphError("Pass the nodes to steer as a non-empty {node: value} dict, e.g. {12: 0.0}.")
    tset = rep.transcoders
    strengths: dict[tuple[int, int], float] = {}
    for ref, value in expand_supernodes(graph, interventions):
        node = graph.node_index(ref)
        if node >= graph.n_selected:
            raise GraphError(f"Node {ref!r} is a {graph.node_kind(node)} node; only feature nodes can be steered.")
        try:
            value = 0.0 if mode == "ablate" else float(value)
        except (TypeError, ValueError):
            raise GraphError(f"The value for node {ref!r} is not a number: {value!r}.") from None
        layer, _, feature = graph.selected_active_features[node].tolist()
        strength = value * float(graph.selected_activation_values[node]) if mode == "scale" else value
        key = (int(layer), int(feature))
        if key in strengths and strengths[key] != strength:
            raise GraphError(
                f"Feature {feature} of layer {layer} is asked for two strengths ({strengths[key]:g} and "
                f"{strength:g}) at different positions; a continuation steers it the same at every position."
            )
        strengths[key] = strength
    return [
        SteeringSpec(
            feature=tset.dictionary_feature(layer, feature),
            strength=strength,
            mode="add" if mode == "add" else "clamp",
            positions=positions,
            sae=tset.dictionary(layer),
            unit="raw",
        )
        for (layer, feature), strength in strengths.items()
    ]


def steer_graph(
    graph: AttributionGraph, interventions: Any, *, mode: str = "set", positions: str = "all", **kwargs: Any
) -> GenerationResult:
    """Baseline and steered continuations of the graph's prompt with its nodes steered (:func:`generate`; keywords
    go there: ``max_new_tokens``, ``temperature``, ``on_token`` to stream, ...). See :func:`graph_steering_specs`."""
    specs = graph_steering_specs(graph, interventions, mode=mode, positions=positions)
    return generate(graph.replacement.model, graph.input_tokens, specs, unit="raw", **kwargs)


def graph_steering_session(
    graph: AttributionGraph,
    interventions: Any,
    *,
    mode: str = "set",
    positions: str = "all",
    listener: SessionListener | None = None,
    **settings: Any,
) -> SteeringSession:
    """A :class:`SteeringSession` on the graph's prompt holding its nodes' steering entries: ``session.run()``
    streams baseline and steered tokens to ``listener`` in the background, ``session.generate()`` runs now.
    ``settings``: the session's (``max_new_tokens``, ``temperature``, ...). See :func:`graph_steering_specs`."""
    specs = graph_steering_specs(graph, interventions, mode=mode, positions=positions)
    return SteeringSession(graph.replacement.model, graph.input_tokens, specs, unit="raw", listener=listener,
                           **settings)
