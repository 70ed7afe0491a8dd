"""A graph's frozen state, re-made from the model and transcoders attached to it, once per attach.

An analysis that re-runs a graph's local replacement model (:mod:`.qk`, :mod:`.head_loadings`) needs the prompt's
frozen forward (:meth:`~.replacement.Replacement.frozen`) and its sources (:func:`~.active_nodes.active_nodes`).
:func:`attached_state` makes them on the first call for a graph and keeps them while the graph lives and its
replacement stays attached (a new ``graph.attach`` makes them again); each analysis keeps what it derives from them
(rotary embeddings, head loadings) beside them with :meth:`AttachedState.derived`, so it is dropped with them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from gemscope_widgets.backend.circuits.active_nodes import ActiveNodes, active_nodes
from gemscope_widgets.backend.circuits.replacement import FrozenForward
from gemscope_widgets.errors import GraphError

if TYPE_CHECKING:
    from gemscope_widgets.backend.circuits.graph import AttributionGraph

T = TypeVar("T")


@dataclass
class AttachedState:
    """What a graph's attached replacement gives its prompt: ``fwd`` (the frozen forward, shapes in
    :class:`~.replacement.FrozenForward`) and ``nodes`` (its sources, :class:`~.active_nodes.ActiveNodes`), made
    from ``replacement`` (the ``graph.replacement`` they came from)."""

    replacement: Any
    fwd: FrozenForward
    nodes: ActiveNodes
    _derived: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def derived(self, key: str, make: Callable[[], T]) -> T:
        """What ``make()`` gives, made once for this state under ``key`` (one key per analysis) and kept with it.
        ``make`` runs under this state's lock (two threads make it once); an error in it keeps nothing."""
        with self._lock:
            if key not in self._derived:
                self._derived[key] = make()
            value: T = self._derived[key]
            return value


_STATES: weakref.WeakKeyDictionary[Any, AttachedState] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def attached_state(graph: AttributionGraph, needs: str) -> AttachedState:
    """``graph``'s :class:`AttachedState`, made on the first call (one frozen forward when the replacement holds
    none for this prompt, and the transcoders' encoding of every layer) and kept while the graph lives and its
    replacement stays attached.

    ``needs``: what asks for it, for the error (``"QK attribution"``, ``"head loadings"``). Raises GraphError when
    the graph has no model attached (it was read from a file): call ``graph.attach(model, transcoders)`` first.
    """
    rep = graph.replacement
    if rep is None:
        raise GraphError(
            f"Computing {needs} re-runs the model, and this graph has no model attached (it was loaded from a "
            "file): call graph.attach(model, transcoders) first (attribute() attaches them)."
        )
    with _LOCK:
        state = _STATES.get(graph)
        if state is not None and state.replacement is rep:
            return state
        with torch.no_grad():
            fwd = rep.frozen(graph.input_tokens)  # captured once per attached model, shared with interventions
            nodes = active_nodes(fwd, rep.transcoders, rep.zero_positions, rep.model.device)
        state = AttachedState(rep, fwd, nodes)
        _STATES[graph] = state
        return state


def existing_state(graph: AttributionGraph) -> AttachedState | None:
    """``graph``'s :class:`AttachedState` if one was made for its current replacement, else None; makes nothing
    (for a view that may show what was computed but must not start a forward pass)."""
    with _LOCK:
        state = _STATES.get(graph)
    return state if state is not None and graph.replacement is not None and state.replacement is graph.replacement \
        else None


def forget(graph: AttributionGraph) -> None:
    """Drop ``graph``'s state and all derived from it: the next call makes it again, as on a fresh graph (for cold
    timings; the replacement's own frozen forward is kept: set ``graph.replacement.forward = None`` for that)."""
    with _LOCK:
        _STATES.pop(graph, None)
