"""Attribution graph files: one ``.safetensors`` file, the non-tensor fields as JSON in its header metadata.

Only safetensors and JSON are read: nothing is pickled. A file records ``format`` and ``version`` so a foreign
``.safetensors`` file is refused with a clear error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemscope_widgets.errors import GraphError

if TYPE_CHECKING:
    from gemscope_widgets.backend.circuits.graph import AttributionGraph

FORMAT = "gemscope-attribution-graph"
FORMAT_VERSION = 1
TENSORS = (
    "input_tokens",
    "active_features",
    "activation_values",
    "selected_features",
    "adjacency_matrix",
    "logit_tokens",
    "logit_probabilities",
    "bias_input",
    "node_inputs",
    "unselected_input",
)
OPTIONAL = ("node_inputs", "unselected_input")


def save_graph(graph: AttributionGraph, path: str | os.PathLike[str]) -> Path:
    """Write ``graph`` to one ``.safetensors`` file (tensors, with the other fields as JSON in its header).

    Raises GraphError for a path not ending in ``.safetensors``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise GraphError(f"Save attribution graphs as .safetensors files, not {path.name!r}.")
    tensors = {k: getattr(graph, k).contiguous() for k in TENSORS if getattr(graph, k) is not None}
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "input_string": graph.input_string,
        "n_layers": graph.n_layers,
        "input_token_strings": graph.input_token_strings,
        "logit_token_strings": graph.logit_token_strings,
        "model_name": graph.model_name,
        "scan": graph.scan,
        "feature_labels": [[k[0], k[1], v] for k, v in graph.feature_labels.items()],
        "info": graph.info,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"graph": json.dumps(meta)})
    return path


def load_graph(cls: type[AttributionGraph], path: str | os.PathLike[str]) -> AttributionGraph:
    """Read a graph written by :func:`save_graph` as a ``cls``. Raises GraphError for a missing or foreign file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise GraphError(f"No attribution graph file at {str(path)!r}.")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:  # safetensors raises its own error types
        raise GraphError(f"{path.name} is not a readable .safetensors file: {exc}") from None
    try:
        meta = json.loads(header["graph"])
        if meta.get("format") != FORMAT:
            raise KeyError("format")
    except (KeyError, ValueError):
        raise GraphError(f"{path.name} is a .safetensors file but not an attribution graph.") from None
    missing = [k for k in TENSORS if k not in tensors and k not in OPTIONAL]
    if missing:
        raise GraphError(f"{path.name} lacks the tensor(s) {missing}.")
    fields: dict[str, Any] = {k: tensors.get(k) for k in TENSORS}
    return cls(
        input_string=meta["input_string"],
        n_layers=meta["n_layers"],
        input_token_strings=meta.get("input_token_strings"),
        logit_token_strings=meta.get("logit_token_strings"),
        model_name=meta.get("model_name"),
        scan=meta.get("scan"),
        feature_labels={(int(a), int(b)): str(c) for a, b, c in meta.get("feature_labels", [])},
        info=meta.get("info") or {},
        **fields,
    )
