"""Standalone HTML export of an anywidget: the bundle and the state inlined, no kernel, no network.

The page runs the widget's own ``render`` against a small in-page model holding the saved traits
(binary traits travel as base64 and arrive as a ``DataView``, as in a live notebook). Clicks still
work; they just have no kernel to tell.
"""

from __future__ import annotations

import base64
import html
import json
import os
import pathlib
from typing import Any

import anywidget

# Traits of the ipywidgets machinery, not of the widget's view.
_SKIP = {"_dom_classes", "_view_count", "layout", "tabbable", "tooltip", "_esm", "_css"}

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
  :root {{ color-scheme: light dark; }}
  body {{ margin: 16px; background: Canvas; color: CanvasText; font-family: system-ui, sans-serif; }}
</style>
</head>
<body>
<div id="gs-widget"></div>
<script type="application/json" id="gs-state">{state}</script>
<script type="text/plain" id="gs-bundle">{bundle}</script>
<script type="module">
const bytesOf = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const saved = JSON.parse(document.getElementById("gs-state").textContent);
const values = {{}};
for (const [key, value] of Object.entries(saved)) {{
  const isBytes = value && typeof value === "object" && "$bytes" in value;
  values[key] = isBytes ? new DataView(bytesOf(value.$bytes).buffer) : value;
}}
const handlers = new Map();
const fire = (event, ...args) => (handlers.get(event) || []).slice().forEach((fn) => fn(...args));
const model = {{
  get: (key) => values[key],
  set: (key, value) => {{ values[key] = value; fire("change:" + key); fire("change"); }},
  on: (event, fn) => {{ if (!handlers.has(event)) handlers.set(event, []); handlers.get(event).push(fn); }},
  off: (event, fn) => {{
    if (!event) return handlers.clear();
    const list = handlers.get(event) || [];
    const i = list.indexOf(fn);
    if (i >= 0) list.splice(i, 1);
  }},
  save_changes: () => {{}},
  // No kernel here by design: the view's liveness check (js/lib/live.ts) is answered by the page itself,
  // so a view that works on its own (the heatmap) shows no "kernel gone" note.
  send: (msg) => {{ if (msg && msg.type === "ping") setTimeout(() => fire("msg:custom", {{ type: "pong" }}), 0); }},
  widget_manager: {{}},
}};
const code = bytesOf(document.getElementById("gs-bundle").textContent.trim());
const el = document.getElementById("gs-widget");
try {{
  const url = URL.createObjectURL(new Blob([code], {{ type: "text/javascript" }}));
  const mod = await import(url);
  const widget = typeof mod.default === "function" ? await mod.default() : mod.default;
  if (widget.initialize) await widget.initialize({{ model }});
  await widget.render({{ model, el }});
  document.body.dataset.rendered = "true";
}} catch (err) {{
  el.textContent = "This page could not draw the widget: " + err;
  document.body.dataset.rendered = "error";
}}
</script>
</body>
</html>
"""


def widget_state(widget: anywidget.AnyWidget) -> dict[str, Any]:
    """The widget's own synced traits as JSON-ready values (bytes as ``{"$bytes": base64}``)."""
    state = {}
    for key, value in widget.get_state().items():
        if key in _SKIP or key.startswith(("_model_", "_view_")):
            continue
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
        state[key] = value
    return state


def _script_safe_json(value: Any) -> str:
    # "<" escaped as \\u003c so no "</script>" or "<!--" in token text can end the script element.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def export_html(
    widget: anywidget.AnyWidget, path: str | os.PathLike[str], *, title: str = "gemscope widget"
) -> pathlib.Path:
    """Writes ``widget`` as one self-contained HTML file and returns its path."""
    bundle = widget._esm
    if isinstance(bundle, pathlib.Path):
        bundle = bundle.read_text(encoding="utf-8")
    page = _PAGE.format(
        title=html.escape(title),
        state=_script_safe_json(widget_state(widget)),
        bundle=base64.b64encode(str(bundle).encode("utf-8")).decode("ascii"),
    )
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
