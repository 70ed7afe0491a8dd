"""The circuit view's attention panel, kernel side: the heads that carry an edge, and why one head attends.

The view asks (``CircuitMessage`` "edge_heads" / "head_qk" in ``js/lib/protocol.ts``, each with a ``request`` id)
and gets one reply per request (``CircuitReply``), computed on demand by the backend and cached per graph:

* "edge_heads": ``graph.edge_heads(source, target)`` (:mod:`~gemscope_widgets.backend.circuits.head_loadings`):
  the edge's weight and its heads, largest ``|share|`` first (at most :data:`MAX_HEADS`, the rest summed).
* "head_qk": the head's attention row at the query position (:func:`~gemscope_widgets.backend.circuits.qk.
  attention_row`) and the QK split of its score to the key position
  (:func:`~gemscope_widgets.backend.circuits.qk.qk_attribution`'s ``to_dict()``: top pairs, marginals, labels).

A failed request (a same-position edge, a non-feature target, a key outside the window) replies with the
backend's short message in ``error``.
"""

from __future__ import annotations

from typing import Any

from gemscope_widgets.backend.circuits.qk import attention_row, qk_attribution

from .base import error_text

MAX_HEADS = 16
"""The most heads an "edge_heads" reply lists (the rest are summed in ``rest``)."""
QK_TOP = 10
"""How many pairs and marginal contributors a "head_qk" reply lists."""


class HeadRelay:
    """Answers the view's attention requests for one graph, caching each answer (keyed by its arguments)."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self._cache: dict[tuple[Any, ...], dict[str, Any]] = {}

    def edge_heads(self, source: int, target: int, request: int) -> dict[str, Any]:
        """The "edge_heads" reply: ``{type, request, source, target, weight, heads: [[layer, head, share], ...],
        rest, n_heads, rule}`` (graph node indices; shares in target-input units, summing to ``weight``) or
        ``{type, request, source, target, error}``."""
        key = ("edge_heads", int(source), int(target))
        head = {"type": "edge_heads", "request": int(request), "source": int(source), "target": int(target)}
        return {**head, **self._cached(key, lambda: self._edge(int(source), int(target)))}

    def head_qk(self, layer: int, head: int, query_pos: int, key_pos: int, request: int) -> dict[str, Any]:
        """The "head_qk" reply: ``{type, request, layer, head, query_pos, key_pos, row: [p per key 0..query_pos],
        qk: QKAttribution.to_dict()}`` or the same ids with ``error``; the row is sent even when the key is refused
        (outside the window), with ``qk`` absent."""
        key = ("head_qk", int(layer), int(head), int(query_pos), int(key_pos))
        ids = {"type": "head_qk", "request": int(request), "layer": int(layer), "head": int(head),
               "query_pos": int(query_pos), "key_pos": int(key_pos)}
        return {**ids, **self._cached(key, lambda: self._qk(int(layer), int(head), int(query_pos), int(key_pos)))}

    def answers(self) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        """Every answer computed so far, in the order first asked: ``(("edge_heads", source, target), reply)`` and
        ``(("head_qk", layer, head, query_pos, key_pos), reply)`` (the replies without ``type`` and ``request``;
        failed requests are not kept). What the view's attention panel has shown (its saved-notebook HTML)."""
        return list(self._cache.items())

    def _cached(self, key: tuple[Any, ...], compute: Any) -> dict[str, Any]:
        if key not in self._cache:
            try:
                self._cache[key] = compute()
            except Exception as exc:  # the view shows it; a later try may succeed (e.g. after graph.attach)
                return {"error": error_text(exc)}
        return self._cache[key]

    def _edge(self, source: int, target: int) -> dict[str, Any]:
        result = self.graph.edge_heads(source, target)
        heads = result.heads
        shown = heads[:MAX_HEADS]
        return {
            "weight": float(result.weight),
            "heads": [[h.layer, h.head, float(h.share)] for h in shown],
            "rest": float(sum(h.share for h in heads[MAX_HEADS:])),
            "n_heads": len(heads),
            "rule": str(result.rule),
        }

    def _qk(self, layer: int, head: int, query_pos: int, key_pos: int) -> dict[str, Any]:
        row = [float(p) for p in attention_row(self.graph, layer, head, query_pos).tolist()]
        try:
            qk = qk_attribution(self.graph, layer, head, query_pos, key_pos, top=QK_TOP).to_dict()
        except Exception as exc:
            return {"row": row, "error": error_text(exc)}
        return {"row": row, "qk": qk}
