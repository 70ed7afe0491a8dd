// Circuit: an attribution graph on a canvas. Token positions across, layers up; pruned live by two sliders.
// Mirrors gemscope_widgets/widgets/circuit.py (traits and the binary layout of encode_graph).
// All text from the model (tokens, labels, logits) is drawn with fillText or set with textContent.
import type { RenderProps } from "@anywidget/types";
import css from "./circuit.css";
import { el as element, mountTheme } from "./lib/dom";
import { formatValue } from "./lib/format";
import { keepKeys } from "./lib/keys";
import type { CircuitHeader as Header, CircuitModel as Model } from "./lib/protocol";
import { asBytes, type Bytes, readFloat, readUint } from "./lib/sparse";
import { visibleText } from "./lib/tokens";

const KIND = { feature: 0, error: 1, token: 2, logit: 3 } as const;
const KIND_NAMES = ["feature", "error", "token", "logit"];
const CELL_SPACING = 13; // world px between nodes of one (layer, position) cell
const PER_ROW = 8; // nodes per line inside a cell
const MIN_COL = 96;
const HIGHLIGHT_EDGES = 6;

/** The decoded graph plus a stable layout in world coordinates. */
class Graph {
  readonly kind: Uint16Array | Uint32Array;
  readonly layer: Uint16Array | Uint32Array;
  readonly pos: Uint16Array | Uint32Array;
  readonly feature: Uint16Array | Uint32Array;
  readonly node: Uint16Array | Uint32Array;
  readonly activation: Float32Array;
  readonly influence: Float32Array;
  readonly rank: Float32Array;
  readonly src: Uint16Array | Uint32Array;
  readonly dst: Uint16Array | Uint32Array;
  readonly weight: Float32Array;
  readonly edgeRank: Float32Array;
  readonly x: Float32Array;
  readonly y: Float32Array;
  readonly radius: Float32Array;
  readonly local = new Map<number, number>(); // graph node index -> local index
  readonly width: number;
  readonly height: number;
  readonly rowY: number[] = [];
  readonly colX: number[] = [];
  readonly colWidth: number;
  maxWeight = 0;

  constructor(readonly header: Header, data: Bytes) {
    const bytes = asBytes(data);
    const n = header.nodes;
    this.kind = readUint(bytes, n.kind);
    this.layer = readUint(bytes, n.layer);
    this.pos = readUint(bytes, n.pos);
    this.feature = readUint(bytes, n.feature);
    this.node = readUint(bytes, n.node);
    this.activation = readFloat(bytes, n.activation);
    this.influence = readFloat(bytes, n.influence);
    this.rank = readFloat(bytes, n.rank);
    const e = header.edges;
    this.src = readUint(bytes, e.source);
    this.dst = readUint(bytes, e.target);
    this.weight = readFloat(bytes, e.weight);
    this.edgeRank = readFloat(bytes, e.rank);
    for (let i = 0; i < this.weight.length; i++) this.maxWeight = Math.max(this.maxWeight, Math.abs(this.weight[i]));
    const count = this.kind.length;
    for (let i = 0; i < count; i++) this.local.set(this.node[i], i);

    // Cells: (row, position). Rows: 0 = token embeddings, 1..n_layers = layers, n_layers + 1 = logits.
    const nRows = header.n_layers + 2;
    const nCols = Math.max(1, header.tokens.length);
    const cells = new Map<number, number[]>();
    for (let i = 0; i < count; i++) {
      const row = this.kind[i] === KIND.logit ? nRows - 1 : this.layer[i];
      const key = row * nCols + this.pos[i];
      let cell = cells.get(key);
      if (!cell) cells.set(key, (cell = []));
      cell.push(i);
    }
    let widest = 1;
    let deepest = 1;
    for (const cell of cells.values()) {
      widest = Math.max(widest, Math.min(PER_ROW, cell.length));
      deepest = Math.max(deepest, Math.ceil(cell.length / PER_ROW));
    }
    this.colWidth = Math.max(MIN_COL, widest * CELL_SPACING + 24);
    const rowHeight = 34 + Math.min(deepest, 6) * 9;
    for (let c = 0; c < nCols; c++) this.colX.push(c * this.colWidth);
    for (let r = 0; r < nRows; r++) this.rowY.push((nRows - 1 - r) * rowHeight);
    this.width = nCols * this.colWidth;
    this.height = nRows * rowHeight;
    this.x = new Float32Array(count);
    this.y = new Float32Array(count);
    this.radius = new Float32Array(count);
    let maxInf = 0;
    for (let i = 0; i < count; i++) if (this.kind[i] <= KIND.error) maxInf = Math.max(maxInf, this.influence[i]);
    for (const [key, cell] of cells) {
      const row = Math.floor(key / nCols);
      const col = key % nCols;
      cell.sort((a, b) => this.influence[b] - this.influence[a]);
      const perRow = Math.min(PER_ROW, cell.length);
      const left = this.colX[col] + this.colWidth / 2 - ((perRow - 1) * CELL_SPACING) / 2;
      const lines = Math.min(6, Math.ceil(cell.length / PER_ROW));
      cell.forEach((i, k) => {
        const line = Math.floor(k / PER_ROW) % 6;
        this.x[i] = left + (k % PER_ROW) * CELL_SPACING;
        this.y[i] = this.rowY[row] + rowHeight / 2 + (line - (lines - 1) / 2) * 9;
        const share = maxInf > 0 ? Math.sqrt(Math.max(0, this.influence[i]) / maxInf) : 0;
        this.radius[i] = this.kind[i] >= KIND.token ? 5 : 2.5 + 5 * share;
      });
    }
  }

  get count(): number {
    return this.kind.length;
  }

  /** Human label of a local node (text only). */
  label(i: number): string {
    const kind = this.kind[i];
    const pos = this.pos[i];
    const tok = visibleText(this.header.tokens[pos] ?? "");
    if (kind === KIND.feature) {
      const base = `L${this.layer[i] - 1} #${this.feature[i]} @${pos} “${tok}”`;
      const label = this.header.labels[String(i)];
      return label ? `${base}: ${label}` : base;
    }
    if (kind === KIND.error) return `error L${this.layer[i] - 1} @${pos} “${tok}”`;
    if (kind === KIND.token) return `token @${pos} “${tok}”`;
    return `logit “${visibleText(this.logitText(i))}”`;
  }

  logitText(i: number): string {
    const j = this.node[i] - (this.header.n_nodes_total - this.header.logit_tokens.length);
    return this.header.logit_tokens[j] ?? "";
  }
}

/** What is drawn under the current thresholds and pins. */
class Visible {
  nodes: Uint8Array;
  edges: Uint32Array = new Uint32Array(0);
  nodeCount = 0;

  constructor(g: Graph, nodeT: number, edgeT: number, pinned: Set<number>) {
    this.nodes = new Uint8Array(g.count);
    for (let i = 0; i < g.count; i++) {
      const keep = g.kind[i] >= KIND.token || g.rank[i] < nodeT || pinned.has(g.node[i]);
      if (keep) {
        this.nodes[i] = 1;
        this.nodeCount++;
      }
    }
    const edges: number[] = [];
    for (let e = 0; e < g.src.length; e++) {
      if (!this.nodes[g.src[e]] || !this.nodes[g.dst[e]]) continue;
      const bothPinned = pinned.has(g.node[g.src[e]]) && pinned.has(g.node[g.dst[e]]);
      if (g.edgeRank[e] < edgeT || bothPinned) edges.push(e);
    }
    this.edges = Uint32Array.from(edges);
  }
}

function render({ model, el }: RenderProps<Model>): () => void {
  mountTheme(el, css);
  el.classList.add("gs-circuit");
  const releaseKeys = keepKeys(el);
  const toolbar = element("div", "gs-ct-toolbar");
  const stage = element("div", "gs-ct-stage");
  const canvas = element("canvas", "gs-ct-canvas");
  const tip = element("div", "gs-ct-tip");
  tip.hidden = true;
  stage.append(canvas, tip);
  const side = element("div", "gs-ct-side");
  const result = element("div", "gs-ct-result");
  el.append(toolbar, stage, side, result);

  const slider = (cls: string, title: string, text: string) => {
    const label = element("label", cls, text);
    label.title = title;
    const input = element("input");
    input.type = "range";
    input.min = "0";
    input.max = "1";
    input.step = "0.01";
    const out = element("span", "gs-ct-value");
    label.append(input, out);
    toolbar.append(label);
    return { input, out };
  };
  const nodeSlider = slider("gs-ct-node-threshold", "keep the nodes covering this share of influence", "nodes ");
  const edgeSlider = slider("gs-ct-edge-threshold", "keep the edges covering this share of influence", "edges ");
  const button = (cls: string, text: string, title: string) => {
    const b = element("button", cls, text);
    b.type = "button";
    b.title = title;
    toolbar.append(b);
    return b;
  };
  const clampBtn = button("gs-ct-clamp", "clamp to 0", "set the selected features to 0 and show the logit change");
  const scaleBtn = button("gs-ct-scale", "scale ×", "multiply the selected features by the factor");
  const factor = element("input", "gs-ct-factor");
  factor.type = "number";
  factor.step = "0.5";
  factor.value = "2";
  toolbar.append(factor);
  const pinBtn = button("gs-ct-pin", "pin", "keep the selected nodes drawn whatever the thresholds");
  const unpinBtn = button("gs-ct-unpin", "unpin all", "remove every pin");
  const resetBtn = button("gs-ct-reset", "fit", "fit the graph in the view");
  const status = element("span", "gs-status gs-ct-status");
  toolbar.append(status);

  let g = new Graph(model.get("_header"), model.get("_data"));
  let visible: Visible;
  let scale = 1;
  let tx = 0;
  let ty = 0;
  let hover = -1;
  let focus = -1; // local index of the clicked node
  let highlight = new Set<number>(); // edges highlighted around the focus
  let frame = 0;
  let frames = 0;
  let lastDrawMs = 0;
  const dpr = () => window.devicePixelRatio || 1;
  const colors = { pos: "#1f77b4", neg: "#d62728", fg: "#333", muted: "#888", accent: "#1976d2", bg: "#fff" };

  const readColors = () => {
    const s = getComputedStyle(el);
    const v = (name: string, fallback: string) => s.getPropertyValue(name).trim() || fallback;
    colors.pos = v("--gs-ct-pos", colors.pos);
    colors.neg = v("--gs-ct-neg", colors.neg);
    colors.fg = s.color || colors.fg;
    colors.muted = v("--gs-ct-muted", colors.muted);
    colors.accent = v("--gs-ct-accent", colors.accent);
  };

  const pinnedSet = () => new Set(model.get("pinned") ?? []);
  const selectedSet = () => new Set(model.get("selected") ?? []);

  const recompute = () => {
    visible = new Visible(g, model.get("node_threshold"), model.get("edge_threshold"), pinnedSet());
    el.dataset.visibleNodes = String(visible.nodeCount);
    el.dataset.visibleEdges = String(visible.edges.length);
    status.textContent =
      `${visible.nodeCount} of ${g.count} nodes, ${visible.edges.length} of ${g.header.n_edges} edges drawn` +
      (g.header.n_edges < g.header.n_edges_total ? ` (graph: ${g.header.n_edges_total} edges)` : "");
    nodeSlider.input.value = String(model.get("node_threshold"));
    nodeSlider.out.textContent = model.get("node_threshold").toFixed(2);
    edgeSlider.input.value = String(model.get("edge_threshold"));
    edgeSlider.out.textContent = model.get("edge_threshold").toFixed(2);
    request();
  };

  const fit = () => {
    const w = canvas.clientWidth || 600;
    const h = canvas.clientHeight || 400;
    scale = Math.min(w / (g.width + 40), h / (g.height + 40), 4);
    tx = (w - g.width * scale) / 2;
    ty = (h - g.height * scale) / 2;
    request();
  };

  const resize = () => {
    const w = stage.clientWidth || 600;
    const h = Math.max(320, Math.min(720, g.height * 0.9 + 60));
    canvas.style.width = `${w}px`;
    canvas.style.height = `${h}px`;
    canvas.width = Math.round(w * dpr());
    canvas.height = Math.round(h * dpr());
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
    ctx.setTransform(k, 0, 0, k, 0, 0);
    ctx.clearRect(0, 0, canvas.width / k, canvas.height / k);
    const sx = (x: number) => x * scale + tx;
    const sy = (y: number) => y * scale + ty;
    const w = canvas.width / k;
    const h = canvas.height / k;

    // Row labels and column guides.
    ctx.font = "11px var(--gs-font, sans-serif)";
    ctx.fillStyle = colors.muted;
    ctx.textBaseline = "middle";
    const rowH = g.rowY.length > 1 ? g.rowY[0] - g.rowY[1] : 40;
    for (let r = 0; r < g.rowY.length; r++) {
      const y = sy(g.rowY[r] + rowH / 2);
      if (y < -20 || y > h + 20) continue;
      const name = r === 0 ? "emb" : r === g.rowY.length - 1 ? "logits" : `L${r - 1}`;
      ctx.fillText(name, 2, y);
    }

    // Edges, bucketed by sign and width so each bucket is one path.
    const edges = visible.edges;
    const dim = focus >= 0;
    const buckets = 4;
    for (let sign = 0; sign < 2; sign++) {
      for (let b = 0; b < buckets; b++) {
        ctx.beginPath();
        let any = false;
        for (let j = 0; j < edges.length; j++) {
          const e = edges[j];
          const wgt = g.weight[e];
          if ((wgt >= 0 ? 0 : 1) !== sign) continue;
          const rel = g.maxWeight > 0 ? Math.abs(wgt) / g.maxWeight : 0;
          const bucket = Math.min(buckets - 1, Math.floor(Math.sqrt(rel) * buckets));
          if (bucket !== b) continue;
          const s = g.src[e];
          const d = g.dst[e];
          const x1 = sx(g.x[s]);
          const y1 = sy(g.y[s]);
          const x2 = sx(g.x[d]);
          const y2 = sy(g.y[d]);
          if ((x1 < 0 && x2 < 0) || (x1 > w && x2 > w) || (y1 < 0 && y2 < 0) || (y1 > h && y2 > h)) continue;
          ctx.moveTo(x1, y1);
          ctx.lineTo(x2, y2);
          any = true;
        }
        if (!any) continue;
        ctx.strokeStyle = sign === 0 ? colors.pos : colors.neg;
        ctx.globalAlpha = (dim ? 0.12 : 0.25) + (dim ? 0.1 : 0.5) * (b / (buckets - 1));
        ctx.lineWidth = 0.6 + 2.4 * (b / (buckets - 1));
        ctx.stroke();
      }
    }
    ctx.globalAlpha = 1;
    if (highlight.size) {
      for (const e of highlight) {
        ctx.beginPath();
        ctx.moveTo(sx(g.x[g.src[e]]), sy(g.y[g.src[e]]));
        ctx.lineTo(sx(g.x[g.dst[e]]), sy(g.y[g.dst[e]]));
        ctx.strokeStyle = g.weight[e] >= 0 ? colors.pos : colors.neg;
        ctx.lineWidth = 1.5 + 3 * (g.maxWeight > 0 ? Math.sqrt(Math.abs(g.weight[e]) / g.maxWeight) : 0);
        ctx.stroke();
      }
    }

    // Nodes.
    const pinned = pinnedSet();
    const selected = selectedSet();
    for (let i = 0; i < g.count; i++) {
      if (!visible.nodes[i]) continue;
      const x = sx(g.x[i]);
      const y = sy(g.y[i]);
      if (x < -20 || x > w + 20 || y < -20 || y > h + 20) continue;
      const r = g.radius[i];
      const kind = g.kind[i];
      ctx.beginPath();
      if (kind === KIND.feature) ctx.arc(x, y, r, 0, 2 * Math.PI);
      else if (kind === KIND.error) ctx.rect(x - r, y - r, 2 * r, 2 * r);
      else ctx.rect(x - 6, y - 5, 12, 10);
      ctx.fillStyle = kind === KIND.error ? colors.muted : kind === KIND.feature ? colors.fg : colors.accent;
      ctx.globalAlpha = dim && i !== focus && !isNeighbour(i) ? 0.35 : 1;
      ctx.fill();
      ctx.globalAlpha = 1;
      const node = g.node[i];
      if (selected.has(node) || pinned.has(node) || i === hover) {
        ctx.lineWidth = selected.has(node) ? 2.5 : 1.5;
        ctx.strokeStyle = selected.has(node) ? colors.accent : pinned.has(node) ? "#e6a700" : colors.fg;
        ctx.beginPath();
        ctx.arc(x, y, r + 3, 0, 2 * Math.PI);
        ctx.stroke();
      }
    }

    // Token and logit text (inert: canvas text).
    ctx.fillStyle = colors.fg;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let i = 0; i < g.count; i++) {
      if (!visible.nodes[i] || g.kind[i] < KIND.token) continue;
      const x = sx(g.x[i]);
      const y = sy(g.y[i]);
      if (x < -80 || x > w + 80 || y < -40 || y > h + 40) continue;
      const text = g.kind[i] === KIND.token ? g.header.tokens[g.pos[i]] ?? "" : g.logitText(i);
      const shown = visibleText(text);
      ctx.fillText(shown.length > 14 ? `${shown.slice(0, 13)}…` : shown, x, g.kind[i] === KIND.token ? y + 8 : y - 20);
    }
    ctx.textAlign = "start";
    frames++;
    lastDrawMs = performance.now() - t0;
    el.dataset.frames = String(frames);
    el.dataset.lastDrawMs = lastDrawMs.toFixed(2);
  }

  const neighbours = new Set<number>();
  function isNeighbour(i: number): boolean {
    return neighbours.has(i);
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
    side.replaceChildren();
    if (focus < 0) return;
    side.append(element("div", "gs-ct-side-title", g.label(focus)));
    const list = (title: string, edges: number[], other: (e: number) => number) => {
      if (!edges.length) return;
      side.append(element("div", "gs-ct-side-head", title));
      const ul = element("ul", "gs-ct-edges");
      for (const e of edges) {
        const li = element("li", g.weight[e] >= 0 ? "gs-ct-pos" : "gs-ct-neg");
        li.textContent = `${formatValue(g.weight[e])}  ${g.label(other(e))}`;
        li.dataset.node = String(g.node[other(e)]);
        ul.append(li);
      }
      side.append(ul);
    };
    const hl = [...highlight];
    list("strongest inputs", hl.filter((e) => g.dst[e] === focus), (e) => g.src[e]);
    list("strongest outputs", hl.filter((e) => g.src[e] === focus), (e) => g.dst[e]);
  };

  const nodeAt = (clientX: number, clientY: number): number => {
    const rect = canvas.getBoundingClientRect();
    const px = clientX - rect.left;
    const py = clientY - rect.top;
    let best = -1;
    let bestD = Infinity;
    for (let i = 0; i < g.count; i++) {
      if (!visible.nodes[i]) continue;
      const dx = g.x[i] * scale + tx - px;
      const dy = g.y[i] * scale + ty - py;
      const d = dx * dx + dy * dy;
      const r = Math.max(g.radius[i], 6) + 3;
      if (d <= r * r && d < bestD) {
        best = i;
        bestD = d;
      }
    }
    return best;
  };

  const showTip = (i: number, clientX: number, clientY: number) => {
    if (i < 0) {
      tip.hidden = true;
      return;
    }
    tip.replaceChildren();
    tip.append(element("div", "gs-ct-tip-title", g.label(i)));
    const kind = g.kind[i];
    if (kind === KIND.feature) tip.append(element("div", "", `activation ${formatValue(g.activation[i])}`));
    if (kind === KIND.logit) tip.append(element("div", "", `probability ${formatValue(g.activation[i])}`));
    if (kind <= KIND.error || kind === KIND.token) {
      tip.append(element("div", "", `influence ${formatValue(g.influence[i])}`));
    }
    const top = g.header.top_logits[String(i)];
    if (top?.length) {
      tip.append(element("div", "gs-ct-tip-head", "top logits"));
      for (const [tok, val] of top) tip.append(element("div", "gs-ct-tip-logit", `${visibleText(tok)}  ${formatValue(val)}`));
    }
    tip.append(element("div", "gs-ct-tip-kind", `${KIND_NAMES[kind]} node ${g.node[i]}`));
    const rect = stage.getBoundingClientRect();
    tip.style.left = `${Math.min(clientX - rect.left + 14, rect.width - 260)}px`;
    tip.style.top = `${clientY - rect.top + 14}px`;
    tip.hidden = false;
  };

  // --- interaction -----------------------------------------------------------------------------------------
  let drag: { x: number; y: number; tx: number; ty: number; moved: boolean } | null = null;
  canvas.addEventListener("mousedown", (ev) => {
    drag = { x: ev.clientX, y: ev.clientY, tx, ty, moved: false };
  });
  const onMove = (ev: MouseEvent) => {
    if (drag) {
      const dx = ev.clientX - drag.x;
      const dy = ev.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (drag.moved) {
        tx = drag.tx + dx;
        ty = drag.ty + dy;
        tip.hidden = true;
        request();
        return;
      }
    }
    if (ev.target !== canvas) return;
    const i = nodeAt(ev.clientX, ev.clientY);
    if (i !== hover) {
      hover = i;
      request();
    }
    showTip(i, ev.clientX, ev.clientY);
  };
  const onUp = (ev: MouseEvent) => {
    const d = drag;
    drag = null;
    if (!d || d.moved || ev.target !== canvas) return;
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
  window.addEventListener("mousemove", onMove);
  window.addEventListener("mouseup", onUp);
  canvas.addEventListener("mouseleave", () => {
    tip.hidden = true;
    if (hover >= 0) {
      hover = -1;
      request();
    }
  });
  canvas.addEventListener(
    "wheel",
    (ev) => {
      ev.preventDefault();
      const rect = canvas.getBoundingClientRect();
      const px = ev.clientX - rect.left;
      const py = ev.clientY - rect.top;
      const f = Math.exp(-ev.deltaY * 0.0015);
      const next = Math.min(40, Math.max(0.05, scale * f));
      tx = px - ((px - tx) * next) / scale;
      ty = py - ((py - ty) * next) / scale;
      scale = next;
      request();
    },
    { passive: false },
  );

  nodeSlider.input.addEventListener("input", () => {
    model.set("node_threshold", Number(nodeSlider.input.value));
    model.save_changes();
    recompute();
  });
  edgeSlider.input.addEventListener("input", () => {
    model.set("edge_threshold", Number(edgeSlider.input.value));
    model.save_changes();
    recompute();
  });

  const selectedFeatures = () =>
    (model.get("selected") ?? []).filter((n) => {
      const i = g.local.get(n);
      return i !== undefined && g.kind[i] === KIND.feature;
    });
  const intervene = (mode: "set" | "scale", value: number) => {
    const nodes = selectedFeatures();
    if (!nodes.length) {
      result.replaceChildren(element("div", "gs-error", "Select one or more feature nodes first (shift-click adds)."));
      return;
    }
    model.send({ type: "intervene", mode, value });
  };
  clampBtn.addEventListener("click", () => intervene("set", 0));
  scaleBtn.addEventListener("click", () => intervene("scale", Number(factor.value)));
  pinBtn.addEventListener("click", () => {
    model.set("pinned", [...new Set([...(model.get("pinned") ?? []), ...(model.get("selected") ?? [])])]);
    model.save_changes();
  });
  unpinBtn.addEventListener("click", () => {
    model.set("pinned", []);
    model.save_changes();
  });
  resetBtn.addEventListener("click", fit);

  const renderResult = () => {
    const r = model.get("intervention") ?? {};
    result.replaceChildren();
    if (!r.state) return;
    if (r.state === "running") {
      result.append(element("div", "gs-status", "intervening…"));
      return;
    }
    if (r.state === "error") {
      result.append(element("div", "gs-error", r.message ?? "intervention failed"));
      return;
    }
    const what = r.mode === "scale" ? `× ${formatValue(r.value ?? 0)}` : `set to ${formatValue(r.value ?? 0)}`;
    result.append(element("div", "gs-ct-result-title", `${(r.nodes ?? []).length} feature(s) ${what}`));
    const table = element("table", "gs-ct-table");
    const head = element("tr");
    for (const t of ["token", "before", "after", "change"]) head.append(element("th", "", t));
    table.append(head);
    for (const [tok, before, after] of r.rows ?? []) {
      const tr = element("tr");
      const delta = after - before;
      tr.append(
        element("td", "gs-ct-token", visibleText(tok)),
        element("td", "", formatValue(before)),
        element("td", "", formatValue(after)),
        element("td", delta >= 0 ? "gs-ct-pos" : "gs-ct-neg", `${delta >= 0 ? "+" : ""}${formatValue(delta)}`),
      );
      table.append(tr);
    }
    result.append(table);
  };

  const onData = () => {
    g = new Graph(model.get("_header"), model.get("_data"));
    setFocus(-1);
    recompute();
    resize();
    fit();
  };
  model.on("change:_header", onData);
  model.on("change:node_threshold", recompute);
  model.on("change:edge_threshold", recompute);
  model.on("change:pinned", recompute);
  model.on("change:selected", request);
  model.on("change:intervention", renderResult);

  const observer = new ResizeObserver(() => {
    resize();
  });
  observer.observe(stage);
  readColors();
  recompute();
  resize();
  fit();
  renderResult();

  // Test hook: screen position of a node (graph node index) relative to the canvas, and the view transform.
  (el as unknown as { gsCircuit: unknown }).gsCircuit = {
    screen: (node: number) => {
      const i = g.local.get(node);
      return i === undefined ? null : [g.x[i] * scale + tx, g.y[i] * scale + ty];
    },
    view: () => ({ scale, tx, ty }),
  };

  return () => {
    releaseKeys();
    observer.disconnect();
    window.removeEventListener("mousemove", onMove);
    window.removeEventListener("mouseup", onUp);
    if (frame) cancelAnimationFrame(frame);
  };
}

export default { render };
