// The circuit view's graph: the binary payload of gemscope_widgets/widgets/circuit_payload.py decoded, a layout in
// world coordinates sized to the view (token positions across, layers up), and what is drawn under the thresholds
// and pins.
//
//   Graph     decoded node and edge arrays, per-node x / y / radius from layout(width, height): cells (row =
//             layer + 1, column = position) filled as grids; logits spread along the top row
//   Visible   node and edge masks. At the thresholds the payload was pruned at (header.pruned), exactly what
//             graph.prune() keeps (the `kept` flags) plus pinned nodes; at other thresholds a preview by influence
//             rank: token and logit nodes always, feature / error nodes whose rank is under the node threshold or
//             pinned; edges between drawn nodes under the edge threshold or between two pinned nodes
//             (gemscope_widgets/widgets/static_circuit.py draws the preview for saved notebooks)
//   viewNote  what the drawing is (prune()'s graph or a preview) and what a cap left out, said on screen
//
// No DOM here: labels are plain strings for textContent / fillText.
import type { CircuitHeader as Header, KeptAt } from "./protocol";
import { asBytes, type Bytes, readFloat, readUint } from "./sparse";
import { visibleText } from "./format";

export const KIND = { feature: 0, error: 1, token: 2, logit: 3 } as const;
export const KIND_NAMES = ["feature", "error", "token", "logit"];

/** Space around the plot in CSS px: row labels on the left, logit labels above, token labels below. */
export const MARGIN = { left: 40, right: 12, top: 34, bottom: 26 };
const MIN_COL = 28; // narrowest position column (px at zoom 1); longer prompts make the world wider than the view
const NODE_STEP = 12; // px between nodes of one (layer, position) cell when there is room
const LOGIT_STEP = 72; // px per logit node across the top row

/**
 * The canvas height (CSS px) that gives every row of an `nRows` graph room for a few lines of nodes.
 * Source of the layout: circuit-tracer's and Neuronpedia's graph view (layers up, token positions across).
 */
export function canvasHeight(nRows: number): number {
  return Math.max(320, Math.min(720, nRows * 30 + MARGIN.top + MARGIN.bottom));
}

/** The decoded graph plus a layout in world coordinates (CSS px of the canvas at zoom 1). */
export class Graph {
  readonly kind: Uint16Array | Uint32Array;
  readonly layer: Uint16Array | Uint32Array;
  readonly pos: Uint16Array | Uint32Array;
  readonly feature: Uint16Array | Uint32Array;
  readonly node: Uint16Array | Uint32Array;
  readonly activation: Float32Array;
  readonly influence: Float32Array;
  readonly rank: Float32Array;
  /** 1 where graph.prune(pruned's thresholds) keeps the node / edge; null for a payload without flags. */
  kept: Uint8Array | Uint16Array | Uint32Array | null;
  /** 1 on the legible subgraph's nodes (legible_subgraph.py); null for a payload without it. */
  readonly focus: Uint16Array | Uint32Array | null;
  edgeKept: Uint8Array | Uint16Array | Uint32Array | null;
  /** The thresholds `kept` holds prune() at, prune()'s counts there, and what the payload lacks of it. */
  pruned: KeptAt | null;
  readonly src: Uint16Array | Uint32Array;
  readonly dst: Uint16Array | Uint32Array;
  readonly weight: Float32Array;
  readonly edgeRank: Float32Array;
  readonly x: Float32Array;
  readonly y: Float32Array;
  readonly radius: Float32Array;
  readonly local = new Map<number, number>(); // graph node index -> local index
  readonly nRows: number;
  readonly nCols: number;
  /** World size after `layout`: at least the view; wider when the prompt has more positions than fit. */
  width = 0;
  height = 0;
  /** Centre of each row (0 = token embeddings, 1..n_layers = layers, last = logits) and of each position. */
  rowY: number[] = [];
  colX: number[] = [];
  /** Width of each position's column: wider where its cells hold more nodes, at least MIN_COL. */
  colWidths: number[] = [];
  rowHeight = 0;
  maxWeight = 0;
  private readonly cells = new Map<number, number[]>(); // row * nCols + position -> local nodes by influence
  private readonly demand: number[]; // per position: the most nodes in one of its cells
  private readonly maxInfluence: number;

  constructor(readonly header: Header, data: Bytes, view: { width: number; height: number } = { width: 800, height: 600 }) {
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
    this.kept = n.kept ? readUint(bytes, n.kept) : null;
    this.focus = n.focus ? readUint(bytes, n.focus) : null;
    const e = header.edges;
    this.src = readUint(bytes, e.source);
    this.dst = readUint(bytes, e.target);
    this.weight = readFloat(bytes, e.weight);
    this.edgeRank = readFloat(bytes, e.rank);
    this.edgeKept = e.kept ? readUint(bytes, e.kept) : null;
    this.pruned = header.pruned ? { ...header.pruned, left_out: header.left_out ? { nodes: 0, ...header.left_out } : null }
      : null;
    for (let i = 0; i < this.weight.length; i++) this.maxWeight = Math.max(this.maxWeight, Math.abs(this.weight[i]));
    const count = this.kind.length;
    for (let i = 0; i < count; i++) this.local.set(this.node[i], i);
    this.x = new Float32Array(count);
    this.y = new Float32Array(count);
    this.radius = new Float32Array(count);

    // Cells: (row, position). Rows: 0 = token embeddings, 1..n_layers = layers, n_layers + 1 = logits.
    this.nRows = header.n_layers + 2;
    this.nCols = Math.max(1, header.tokens.length);
    let maxInf = 0;
    for (let i = 0; i < count; i++) {
      if (this.kind[i] === KIND.logit) continue; // the logit row is laid out on its own
      const key = this.layer[i] * this.nCols + this.pos[i];
      let cell = this.cells.get(key);
      if (!cell) this.cells.set(key, (cell = []));
      cell.push(i);
      if (this.kind[i] <= KIND.error) maxInf = Math.max(maxInf, this.influence[i]);
    }
    this.demand = new Array<number>(this.nCols).fill(0);
    for (const [key, cell] of this.cells) {
      cell.sort((a, b) => this.influence[b] - this.influence[a]);
      const col = key % this.nCols;
      this.demand[col] = Math.max(this.demand[col], cell.length);
    }
    this.maxInfluence = maxInf;
    this.layout(view.width, view.height);
  }

  /**
   * Places every node for a view of `width` × `height` CSS px: rows share the height; positions share the width
   * in proportion to how many nodes their fullest cell holds (1 + sqrt of it, at most 8: a position with 40
   * features gets about 7 times an empty one's width), each at least MIN_COL px; each cell's nodes form a grid
   * that fills the cell, closer together (and smaller) when a cell holds many. Logit nodes spread along the top
   * row, ending above the last position.
   */
  layout(width: number, height: number): void {
    const plotW = Math.max(60, width - MARGIN.left - MARGIN.right);
    const plotH = Math.max(60, height - MARGIN.top - MARGIN.bottom);
    const weights = this.demand.map((d) => 1 + Math.min(7, Math.sqrt(d)));
    const total = weights.reduce((a, b) => a + b, 0);
    this.colWidths = weights.map((w) => Math.max(MIN_COL, (plotW * w) / total));
    this.rowHeight = plotH / this.nRows;
    this.colX = [];
    let left = MARGIN.left;
    for (const w of this.colWidths) {
      this.colX.push(left + w / 2);
      left += w;
    }
    this.width = left + MARGIN.right;
    this.height = height;
    this.rowY = Array.from({ length: this.nRows }, (_, r) => MARGIN.top + (this.nRows - 1 - r + 0.5) * this.rowHeight);
    const ch = Math.max(4, this.rowHeight - 6);
    for (const [key, cell] of this.cells) {
      const row = Math.floor(key / this.nCols);
      const col = key % this.nCols;
      const cw = Math.max(4, this.colWidths[col] - 6);
      const n = cell.length;
      const step = Math.min(NODE_STEP, Math.sqrt((cw * ch) / n));
      const perLine = Math.max(1, Math.min(n, Math.floor(cw / step)));
      const lines = Math.ceil(n / perLine);
      const dx = Math.min(NODE_STEP, cw / perLine);
      const dy = Math.min(NODE_STEP, ch / lines);
      const cap = Math.max(1.5, 0.5 * Math.min(dx, dy));
      cell.forEach((i, k) => {
        const line = Math.floor(k / perLine);
        const inLine = line === lines - 1 ? n - line * perLine : perLine;
        this.x[i] = this.colX[col] + (k % perLine - (inLine - 1) / 2) * dx;
        this.y[i] = this.rowY[row] + (line - (lines - 1) / 2) * dy;
        const share = this.maxInfluence > 0 ? Math.sqrt(Math.max(0, this.influence[i]) / this.maxInfluence) : 0;
        this.radius[i] = this.kind[i] >= KIND.token ? 5 : Math.min(2.5 + 5 * share, cap);
      });
    }
    // Logits: most probable first (payload order), left to right, ending above the last position.
    const logits: number[] = [];
    for (let i = 0; i < this.count; i++) if (this.kind[i] === KIND.logit) logits.push(i);
    const right = this.width - MARGIN.right;
    const span = Math.min(right - MARGIN.left, logits.length * LOGIT_STEP);
    logits.forEach((i, k) => {
      this.x[i] = right - span + (k + 0.5) * (span / logits.length);
      this.y[i] = this.rowY[this.nRows - 1];
      this.radius[i] = 5;
    });
  }

  get count(): number {
    return this.kind.length;
  }

  /**
   * Takes the kernel's prune() at other thresholds (Circuit._kept / _kept_at: a byte per payload node, then per
   * payload edge); ignored when its length does not match this payload.
   */
  setKept(flags: Bytes | null | undefined, at: Partial<KeptAt> | null | undefined): void {
    if (!flags || !at || at.node_threshold === undefined) return;
    const bytes = asBytes(flags);
    if (bytes.byteLength !== this.count + this.src.length) return;
    this.kept = bytes.subarray(0, this.count);
    this.edgeKept = bytes.subarray(this.count);
    this.pruned = at as KeptAt;
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

  /** A node's name beside it when zoomed in: its label when it has one, else "L3 #812" / "err L3" (text only). */
  shortLabel(i: number): string {
    const label = this.header.labels[String(i)];
    if (this.kind[i] === KIND.feature) return label ? label : `L${this.layer[i] - 1} #${this.feature[i]}`;
    if (this.kind[i] === KIND.error) return `err L${this.layer[i] - 1}`;
    return this.label(i);
  }

  logitText(i: number): string {
    const j = this.node[i] - (this.header.n_nodes_total - this.header.logit_tokens.length);
    return this.header.logit_tokens[j] ?? "";
  }
}

/** True when `nodeT` / `edgeT` are the thresholds the payload's `kept` flags were computed at. */
export function atPrunedThresholds(g: Graph, nodeT: number, edgeT: number): boolean {
  const p = g.pruned;
  return !!p && !!g.kept && !!g.edgeKept && p.node_threshold === nodeT && p.edge_threshold === edgeT;
}

/** What is drawn under the current thresholds and pins. */
export class Visible {
  nodes: Uint8Array;
  edges: Uint32Array = new Uint32Array(0);
  nodeCount = 0;
  /** True when the drawing is exactly graph.prune(nodeT, edgeT) (plus pins), false for a rank preview. */
  readonly exact: boolean;
  /** True when only the legible subgraph's nodes are drawn (`focused` on, and the payload has one). */
  readonly focused: boolean;

  constructor(g: Graph, nodeT: number, edgeT: number, pinned: Set<number>, focused = false) {
    this.nodes = new Uint8Array(g.count);
    this.exact = atPrunedThresholds(g, nodeT, edgeT);
    this.focused = focused && hasFocus(g);
    const focus = g.focus as Uint16Array | Uint32Array;
    const kept = g.kept as Uint16Array | Uint32Array;
    const edgeKept = g.edgeKept as Uint16Array | Uint32Array;
    // Exact: the kernel's prune() flags; preview: influence ranks under the thresholds. Pins are always drawn.
    const nodeIn = this.exact ? (i: number) => !!kept[i] : (i: number) => g.kind[i] >= KIND.token || g.rank[i] < nodeT;
    const edgeIn = this.exact ? (e: number) => !!edgeKept[e] : (e: number) => g.edgeRank[e] < edgeT;
    for (let i = 0; i < g.count; i++) {
      if ((nodeIn(i) && (!this.focused || focus[i])) || pinned.has(g.node[i])) {
        this.nodes[i] = 1;
        this.nodeCount++;
      }
    }
    const edges: number[] = [];
    for (let e = 0; e < g.src.length; e++) {
      if (!this.nodes[g.src[e]] || !this.nodes[g.dst[e]]) continue;
      const bothPinned = pinned.has(g.node[g.src[e]]) && pinned.has(g.node[g.dst[e]]);
      if (edgeIn(e) || bothPinned) edges.push(e);
    }
    this.edges = Uint32Array.from(edges);
  }
}

/** Whether the payload has a legible subgraph smaller than prune()'s graph (else there is nothing to focus on). */
export function hasFocus(g: Graph): boolean {
  const f = g.header.focus;
  return !!g.focus && !!f && f.n_pruned > f.n_chosen;
}

/** What the legible subgraph leaves out and why, for the status line (plain text); "" when it is not drawn. */
export function focusNote(g: Graph, v: Visible): string {
  const f = g.header.focus;
  if (!v.focused || !f) return "";
  const logit = `“${visibleText(f.logit_token)}”`;
  let drawn = 0; // feature and error nodes of the legible subgraph drawn now
  const focus = g.focus as Uint16Array | Uint32Array;
  for (let i = 0; i < g.count; i++) if (v.nodes[i] && focus[i] && g.kind[i] < KIND.token) drawn++;
  const built = g.header.pruned;
  const p = g.pruned;
  const tail = " (other logits hidden) · “show all” draws the rest";
  if (!v.exact || !p) return `showing ${drawn} nodes of the legible subgraph (preview)${tail}`;
  // prune() always keeps every token and logit node: the rest of its count are feature and error nodes.
  const pruned = p.n_nodes - g.header.tokens.length - g.header.logit_tokens.length;
  if (!built || (built.node_threshold === p.node_threshold && built.edge_threshold === p.edge_threshold)) {
    return `showing the legible subgraph: the ${drawn} nodes with the most influence on ${logit}` +
      ` of the ${pruned} feature and error nodes prune() keeps${tail}`;
  }
  return `showing the legible subgraph: ${drawn} of the ${pruned} feature and error nodes prune() keeps,` +
    ` those among the ${f.n_chosen} with the most influence on ${logit} at` +
    ` prune(${built.node_threshold}, ${built.edge_threshold})${tail}`;
}

/** "12 of 583 nodes, 40 of 900 edges drawn (the graph: 655 nodes, 2,000 edges)": drawn of the payload's, and the
 * graph's totals (what `print(graph)` counts) where the payload holds fewer. Plain text. */
export function drawnNote(g: Graph, v: Visible): string {
  const h = g.header;
  const totals: string[] = [];
  if (g.count < h.n_nodes_total) totals.push(`${h.n_nodes_total} nodes`);
  if (h.n_edges < h.n_edges_total) totals.push(`${h.n_edges_total} edges`);
  return `${v.nodeCount} of ${g.count} nodes, ${v.edges.length} of ${h.n_edges} edges drawn` +
    (totals.length ? ` (the graph: ${totals.join(", ")})` : "");
}

/**
 * One line saying what the drawing is: graph.prune()'s graph at the payload's thresholds, or a preview by influence
 * rank at others (the exact pruning is at the thresholds the view was built with); and, when the payload was
 * capped, how many of prune()'s edges were not sent and why. Plain text, for textContent.
 */
export function viewNote(g: Graph, v: Visible): string {
  const p = g.pruned;
  const parts: string[] = [];
  if (p && g.kept) {
    parts.push(
      v.exact
        ? `= graph.prune(${p.node_threshold}, ${p.edge_threshold}): ${p.n_nodes} nodes, ${p.n_edges} edges`
        : `preview by influence rank (graph.prune() at these thresholds is on its way from the kernel)`,
    );
    const out = p.left_out;
    if (v.exact && out && (out.nodes > 0 || out.edges > 0)) {
      const what = [out.nodes ? `${out.nodes} nodes` : "", out.edges ? `${out.edges} edges` : ""].filter(Boolean);
      parts.push(`${what.join(" and ")} of it not drawn: ${out.reason}`);
    }
  }
  return parts.join(" · ");
}
