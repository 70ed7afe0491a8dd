// Circuit: an attribution graph on a canvas. Token positions across, layers up; pruned live by two sliders.
// Mirrors gemscope_widgets/widgets/circuit.py (traits and the binary layout of encode_graph).
// All text from the model (tokens, labels, logits) is drawn with fillText or set with textContent.
import type { RenderProps } from "@anywidget/types";
import css from "./circuit.css";
import { el as element, mountTheme, onThemeChange, VIEW_ROOTS } from "./lib/dom";
import { keepKeys } from "./lib/keys";
import { watchKernel } from "./lib/live";
import { defaultColors, drawGraph, readThemeColors } from "./lib/circuit_draw";
import { canvasHeight, drawnNote, focusNote, Graph, hasFocus, KIND, Visible, viewNote } from "./lib/circuit_graph";
import { nodeEdges, nodeTip } from "./lib/circuit_details";
import { ScorePanel } from "./lib/circuit_scores";
import { type Offset, Viewport } from "./lib/circuit_viewport";
import { drawGroups, GroupLayout, groupPanel, groupTip } from "./lib/circuit_groups";
import { interventionPanel } from "./lib/circuit_intervene";
import { headsPanel } from "./lib/circuit_heads";
import { thresholdPanel } from "./lib/circuit_thresholds";
import type { CircuitModel as Model } from "./lib/protocol";

const HIGHLIGHT_EDGES = 6;
const WHEEL_HINT = "Drag to pan · Ctrl/⌘ + wheel zooms (or click the graph, then the wheel zooms) · “fit” shows it all";
const FOCUSED_HINT = "The wheel zooms the graph (click outside it to scroll the page again) · drag to pan";

/** Whether a wheel event over the graph zooms it (else it scrolls the page): a modifier, or the graph focused. */
function wheelZooms(ev: { ctrlKey: boolean; metaKey: boolean }, focused: boolean): boolean {
  return ev.ctrlKey || ev.metaKey || focused;
}

function render({ model, el }: RenderProps<Model>): () => void {
  mountTheme(el, VIEW_ROOTS.circuit, css);
  const releaseKeys = keepKeys(el);
  const toolbar = element("div", "gs-ct-toolbar");
  const stage = element("div", "gs-ct-stage");
  const canvas = element("canvas", "gs-ct-canvas");
  const tip = element("div", "gs-ct-tip");
  tip.hidden = true;
  stage.append(canvas, tip);
  // The wheel scrolls the notebook over the graph; it zooms only with Ctrl/⌘ held or once the graph has focus.
  canvas.tabIndex = 0;
  canvas.setAttribute("aria-label", "attribution graph: drag to pan; Ctrl/⌘ + wheel, or wheel after a click, zooms");
  const hint = element("div", "gs-ct-hint gs-muted", WHEEL_HINT);
  const side = element("div", "gs-ct-side");
  const result = element("div", "gs-ct-result");
  const scoresEl = element("div", "gs-ct-scores gs-muted");
  const groupList = element("div", "gs-ct-group-list");
  el.append(toolbar, groupList, stage, hint, scoresEl, result, side); // the intervention result right under the graph it changes
  const headsEl = element("div", "gs-ct-heads");
  el.append(headsEl);
  const heads = headsPanel(headsEl, model); // the clicked node's cross-position inputs -> heads -> QK pairs

  // The toolbar wraps between groups of related controls, never inside one: thresholds, intervention, groups,
  // the view (pin, unpin all, fit, show all), then the status line.
  const group = (name: string) => {
    const g = element("div", `gs-ct-tools gs-ct-tools-${name}`);
    toolbar.append(g);
    return g;
  };
  const thresholdTools = group("thresholds");
  const interveneTools = group("intervene");
  const groupTools = group("groups");
  const viewTools = group("view");
  const thresholds = thresholdPanel(thresholdTools, model, () => {
    recompute();
    keepInView();
  });
  const button = (cls: string, text: string, title: string) => {
    const b = element("button", cls, text);
    b.type = "button";
    b.title = title;
    viewTools.append(b);
    return b;
  };
  const renderResult = interventionPanel(interveneTools, result, model, () => selectedFeatures(), (node) => nodeLabel(node));
  const renderGroups = groupPanel(groupTools, groupList, model);
  const pinBtn = button("gs-ct-pin", "pin", "keep the selected nodes drawn whatever the thresholds");
  const unpinBtn = button("gs-ct-unpin", "unpin all", "remove every pin");
  const resetBtn = button("gs-ct-reset", "fit", "fit the graph in the view");
  const allBtn = button("gs-ct-show-all", "show all", "draw every node prune() keeps, or only the legible subgraph");
  allBtn.addEventListener("click", () => {
    model.set("show_all", !model.get("show_all"));
    model.save_changes();
    recompute();
  });
  const status = element("span", "gs-status gs-ct-status");
  toolbar.append(status);

  let g = new Graph(model.get("_header"), model.get("_data"));
  g.setKept(model.get("_kept"), model.get("_kept_at")); // the kernel's prune() at the view's thresholds
  let visible: Visible;
  let scores = new ScorePanel(el, scoresEl, g, model.get("_data"));
  const renderScores = () => scores.render(model.get("pinned") ?? []);
  let groups: GroupLayout;
  let hoverGroup = -1;
  const vp = new Viewport(); // world -> screen, and whether the user has panned or zoomed since the last fit
  let hover = -1;
  let focus = -1; // local index of the clicked node
  let highlight = new Set<number>(); // edges highlighted around the focus
  const neighbours = new Set<number>(); // local nodes at the ends of the highlighted edges
  let frame = 0;
  let frames = 0;
  let lastDrawMs = 0;
  const dpr = () => window.devicePixelRatio || 1;
  const colors = defaultColors();

  const pinnedSet = () => new Set(model.get("pinned") ?? []);
  const selectedSet = () => new Set(model.get("selected") ?? []);

  const regroup = () => {
    groups = new GroupLayout(g, visible, model.get("_groups") ?? []);
    el.dataset.groups = String(groups.drawn.length);
    hoverGroup = -1;
  };

  const recompute = () => {
    visible = new Visible(g, model.get("node_threshold"), model.get("edge_threshold"), pinnedSet(),
      !model.get("show_all"));
    allBtn.hidden = !hasFocus(g);
    allBtn.textContent = visible.focused ? "show all" : "legible subgraph";
    el.dataset.focused = String(visible.focused);
    regroup();
    renderScores();
    el.dataset.visibleNodes = String(visible.nodeCount);
    el.dataset.visibleEdges = String(visible.edges.length);
    status.textContent = drawnNote(g, visible);
    const note = viewNote(g, visible);
    if (note) status.textContent += ` · ${note}`;
    const focused = focusNote(g, visible);
    if (focused) status.textContent += ` · ${focused}`;
    status.textContent += groups.note();
    el.dataset.exact = String(visible.exact);
    thresholds.show();
    // The clicked node's highlighted edges follow the thresholds; a node pruned away is no longer the focus,
    // hovered or selected (an intervention acts only on nodes the user can see).
    if (focus >= 0) setFocus(visible.nodes[focus] ? focus : -1);
    if (hover >= 0 && !visible.nodes[hover]) {
      hover = -1;
      tip.hidden = true;
    }
    const selected = model.get("selected") ?? [];
    const shown = selected.filter((n) => {
      const i = g.local.get(n);
      return i !== undefined && visible.nodes[i] === 1;
    });
    if (shown.length !== selected.length) {
      model.set("selected", shown);
      model.save_changes();
    }
    request();
  };

  // "fit": the whole graph in the view (a prompt too long for its columns is squeezed across).
  const fit = () => {
    vp.fit(canvas.clientWidth || g.width, g.width);
    request();
  };
  // After a zoom or pan, a threshold change must not leave drawn nodes outside the view: if any is, fit again.
  const keepInView = () => {
    if (!vp.moved || !visible) return;
    const w = canvas.clientWidth || g.width;
    const h = canvas.clientHeight || canvasHeight(g.nRows);
    for (let i = 0; i < g.count; i++) {
      if (!visible.nodes[i]) continue;
      const x = vp.sx(g.x[i]);
      const y = vp.sy(g.y[i]);
      if (x < 0 || x > w || y < 0 || y > h) {
        fit();
        return;
      }
    }
  };
  // The first view: at full size; when the prompt is wider than the view, its end (where the logits are).
  const home = () => {
    vp.home(canvas.clientWidth || g.width, g.width);
    request();
  };

  let laidOut = "";
  const resize = () => {
    const w = stage.clientWidth || 800;
    const h = canvasHeight(g.nRows);
    if (laidOut === `${w}x${h}`) return;
    laidOut = `${w}x${h}`;
    canvas.style.width = `${w}px`;
    canvas.style.height = `${h}px`;
    canvas.width = Math.round(w * dpr());
    canvas.height = Math.round(h * dpr());
    g.layout(w, h);
    if (!vp.moved) home();
    request();
  };

  function request() {
    if (!frame) frame = requestAnimationFrame(draw);
  }

  function draw() {
    frame = 0;
    const t0 = performance.now();
    const ctx = canvas.getContext("2d");
    if (!ctx || !visible) return;
    const k = dpr();
    readThemeColors(el, colors);
    ctx.setTransform(k, 0, 0, k, 0, 0);
    ctx.clearRect(0, 0, canvas.width / k, canvas.height / k);
    const drawn = drawGraph(ctx, g, visible, {
      kx: vp.kx, ky: vp.ky, tx: vp.tx, ty: vp.ty, w: canvas.width / k, h: canvas.height / k, focus, hover, highlight, neighbours,
      pinned: pinnedSet(), selected: selectedSet(), colors, hidden: groups.hidden, isolate: hover,
    });
    el.dataset.drawnEdges = String(drawn.edges);
    el.dataset.nodeLabels = String(drawn.labels);
    if (groups.drawn.length) drawGroups(ctx, g, groups, { ...vp, hover: hoverGroup, colors });
    frames++;
    lastDrawMs = performance.now() - t0;
    el.dataset.frames = String(frames);
    el.dataset.lastDrawMs = lastDrawMs.toFixed(2);
  }


  const setFocus = (i: number) => {
    focus = i;
    highlight = new Set();
    neighbours.clear();
    if (i >= 0) {
      const ins: number[] = [];
      const outs: number[] = [];
      for (let j = 0; j < visible.edges.length; j++) {
        const e = visible.edges[j];
        if (g.dst[e] === i) ins.push(e);
        if (g.src[e] === i) outs.push(e);
      }
      const strongest = (list: number[]) =>
        list.sort((a, b) => Math.abs(g.weight[b]) - Math.abs(g.weight[a])).slice(0, HIGHLIGHT_EDGES);
      for (const e of [...strongest(ins), ...strongest(outs)]) {
        highlight.add(e);
        neighbours.add(g.src[e]);
        neighbours.add(g.dst[e]);
      }
    }
    renderSide();
    request();
  };

  const renderSide = () => {
    side.replaceChildren(...(focus < 0 ? [] : nodeEdges(g, focus, highlight)));
    heads.show(g, focus);
  };

  const nodeAt = (clientX: number, clientY: number): number => {
    const rect = canvas.getBoundingClientRect();
    const px = clientX - rect.left;
    const py = clientY - rect.top;
    let best = -1;
    let bestD = Infinity;
    for (let i = 0; i < g.count; i++) {
      if (!visible.nodes[i] || groups.hidden[i]) continue;
      const dx = vp.sx(g.x[i]) - px;
      const dy = vp.sy(g.y[i]) - py;
      const d = dx * dx + dy * dy;
      const r = Math.max(g.radius[i], 6) + 3;
      if (d <= r * r && d < bestD) {
        best = i;
        bestD = d;
      }
    }
    return best;
  };

  const groupAt = (clientX: number, clientY: number): number => {
    const rect = canvas.getBoundingClientRect();
    return groups.hit(clientX - rect.left, clientY - rect.top, vp);
  };

  const showTip = (i: number, clientX: number, clientY: number) => {
    if (i < 0) {
      tip.hidden = true;
      return;
    }
    placeTip(nodeTip(g, i), clientX, clientY);
  };

  const placeTip = (lines: HTMLElement[], clientX: number, clientY: number) => {
    tip.replaceChildren(...lines);
    const rect = stage.getBoundingClientRect();
    tip.style.left = `${Math.max(0, Math.min(clientX - rect.left + 14, rect.width - 260))}px`;
    tip.hidden = false;
    // Below the pointer when it fits inside the graph, else above it: the stage clips what overflows.
    const below = clientY - rect.top + 14;
    const height = tip.offsetHeight;
    const y = below + height <= rect.height ? below : Math.max(0, clientY - rect.top - 14 - height);
    tip.style.top = `${y}px`;
  };

  // --- interaction -----------------------------------------------------------------------------------------
  // Pointer events with capture: the notebook host never sees (or swallows) a drag that starts on the canvas.
  let drag: { x: number; y: number; from: Offset; moved: boolean } | null = null;
  canvas.addEventListener("pointerdown", (ev) => {
    if (ev.button !== 0) return;
    canvas.focus({ preventScroll: true }); // a clicked graph takes the wheel (the hint says so)
    drag = { x: ev.clientX, y: ev.clientY, from: { tx: vp.tx, ty: vp.ty }, moved: false };
    try {
      canvas.setPointerCapture(ev.pointerId);
    } catch {
      // synthetic events have no active pointer to capture
    }
    ev.stopPropagation();
  });
  const onMove = (ev: PointerEvent) => {
    if (drag) {
      const dx = ev.clientX - drag.x;
      const dy = ev.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (drag.moved) {
        vp.panFrom(drag.from, dx, dy);
        tip.hidden = true;
        request();
        return;
      }
    }
    const k = groupAt(ev.clientX, ev.clientY);
    if (k !== hoverGroup) {
      hoverGroup = k;
      request();
    }
    if (k >= 0) {
      placeTip(groupTip(g, groups.drawn[k]), ev.clientX, ev.clientY);
      return;
    }
    const i = nodeAt(ev.clientX, ev.clientY);
    if (i !== hover) {
      hover = i;
      request();
    }
    showTip(i, ev.clientX, ev.clientY);
  };
  const onUp = (ev: PointerEvent) => {
    const d = drag;
    drag = null;
    if (!d || d.moved) return;
    const k = groupAt(ev.clientX, ev.clientY);
    if (k >= 0) {
      // A click on a group selects its members (shift adds them), as a click on a node selects it.
      const members = groups.drawn[k].group.members;
      const before = ev.shiftKey ? model.get("selected") ?? [] : [];
      model.set("selected", [...new Set([...before, ...members])]);
      model.save_changes();
      setFocus(-1);
      return;
    }
    const i = nodeAt(ev.clientX, ev.clientY);
    if (i < 0) {
      setFocus(-1);
      return;
    }
    const node = g.node[i];
    let selected = model.get("selected") ?? [];
    if (ev.shiftKey) selected = selected.includes(node) ? selected.filter((n) => n !== node) : [...selected, node];
    else selected = [node];
    model.set("selected", selected);
    model.set("clicked", node);
    model.save_changes();
    setFocus(i);
  };
  canvas.addEventListener("pointermove", onMove);
  canvas.addEventListener("pointerup", onUp);
  canvas.addEventListener("pointercancel", () => {
    drag = null;
  });
  canvas.addEventListener("pointerleave", () => {
    tip.hidden = true;
    if (hover >= 0) {
      hover = -1;
      request();
    }
  });
  canvas.addEventListener(
    "wheel",
    (ev) => {
      if (!wheelZooms(ev, document.activeElement === canvas)) return; // the page scrolls, as everywhere else
      ev.preventDefault();
      const rect = canvas.getBoundingClientRect();
      const px = ev.clientX - rect.left;
      const py = ev.clientY - rect.top;
      vp.zoomAt(px, py, ev.deltaY);
      request();
    },
    { passive: false },
  );

  canvas.addEventListener("focus", () => {
    hint.textContent = FOCUSED_HINT;
  });
  canvas.addEventListener("blur", () => {
    hint.textContent = WHEEL_HINT;
  });

  const selectedFeatures = () =>
    (model.get("selected") ?? []).filter((n) => {
      const i = g.local.get(n);
      return i !== undefined && g.kind[i] === KIND.feature;
    });
  pinBtn.addEventListener("click", () => {
    model.set("pinned", [...new Set([...(model.get("pinned") ?? []), ...(model.get("selected") ?? [])])]);
    model.save_changes();
  });
  unpinBtn.addEventListener("click", () => {
    model.set("pinned", []);
    model.save_changes();
  });
  resetBtn.addEventListener("click", fit);

  // Changed features are named as the graph names them (the record's own label only for nodes not in the payload).
  const nodeLabel = (node: number) => {
    const i = g.local.get(node);
    return i === undefined ? undefined : g.label(i);
  };

  const onData = () => {
    g = new Graph(model.get("_header"), model.get("_data"), { width: stage.clientWidth || 800,
      height: canvasHeight(model.get("_header").n_layers + 2) });
    g.setKept(model.get("_kept"), model.get("_kept_at"));
    scores = new ScorePanel(el, scoresEl, g, model.get("_data"));
    laidOut = "";
    vp.moved = false;
    setFocus(-1);
    recompute();
    resize();
  };
  model.on("change:_header", onData);
  model.on("change:_kept_at", () => {
    g.setKept(model.get("_kept"), model.get("_kept_at"));
    recompute();
  });
  const onThreshold = () => {
    recompute();
    keepInView();
  };
  model.on("change:node_threshold", onThreshold);
  model.on("change:edge_threshold", onThreshold);
  model.on("change:pinned", recompute);
  model.on("change:show_all", recompute);
  model.on("change:selected", request);
  model.on("change:_groups", recompute);

  const observer = new ResizeObserver(() => {
    resize();
  });
  observer.observe(stage);
  recompute();
  resize();
  renderResult();
  renderGroups();

  // Test hook: screen position of a node (graph node index) relative to the canvas, and the view transform.
  (el as unknown as { gsCircuit: unknown }).gsCircuit = {
    screen: (node: number) => {
      const i = g.local.get(node);
      return i === undefined ? null : [vp.sx(g.x[i]), vp.sy(g.y[i])];
    },
    view: () => ({ kx: vp.kx, ky: vp.ky, tx: vp.tx, ty: vp.ty, width: g.width }),
    colors: () => ({ ...colors }),
    hit: (clientX: number, clientY: number) => nodeAt(clientX, clientY),
    hitNode: (clientX: number, clientY: number) => {
      const i = nodeAt(clientX, clientY);
      return i < 0 ? -1 : g.node[i];
    },
    // Drawn supernodes: name, screen position, and each summed edge as [other end, weight] (a graph node index
    // or a group's name; "in" edges come into the group, "out" edges leave it).
    groups: () => groups.drawn.map((d, k) => {
      const name = (end: { group: number } | { node: number }) =>
        "group" in end ? groups.drawn[end.group].group.name : g.node[end.node];
      const touching = groups.edges.filter((e) => ("group" in e.source && e.source.group === k) ||
        ("group" in e.target && e.target.group === k));
      return {
        name: d.group.name, screen: [vp.sx(d.x), vp.sy(d.y)],
        out: touching.filter((e) => "group" in e.source && e.source.group === k).map((e) => [name(e.target), e.weight]),
        in: touching.filter((e) => "group" in e.target && e.target.group === k).map((e) => [name(e.source), e.weight]),
      };
    }),
  };

  const kernel = watchKernel(model, el, { disable: false }); // the graph works alone; interventions need it
  const stopTheme = onThemeChange(request); // the canvas takes the new theme's colours at once
  return () => {
    kernel.dispose();
    heads.dispose();
    releaseKeys();
    stopTheme();
    observer.disconnect();
    if (frame) cancelAnimationFrame(frame);
  };
}

export default { render };
