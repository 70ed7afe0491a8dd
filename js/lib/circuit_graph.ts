// The circuit view's graph: the binary payload of gemscope_widgets/widgets/circuit_payload.py decoded, a stable
// layout in world coordinates (token positions across, layers up), and what is drawn under the thresholds and pins.
//
//   Graph     decoded node and edge arrays, per-node x / y / radius, cells (row = layer + 1, column = position)
//   Visible   node and edge masks: token and logit nodes always, feature / error nodes whose influence rank is
//             under the node threshold or pinned; edges between drawn nodes under the edge threshold or between
//             two pinned nodes (gemscope_widgets/widgets/static_circuit.py draws the same for saved notebooks)
//
// No DOM here: labels are plain strings for textContent / fillText.
import type { CircuitHeader as Header } from "./protocol";
import { asBytes, type Bytes, readFloat, readUint } from "./sparse";
import { visibleText } from "./tokens";

export const KIND = { feature: 0, error: 1, token: 2, logit: 3 } as const;
export const KIND_NAMES = ["feature", "error", "token", "logit"];
const CELL_SPACING = 13; // world px between nodes of one (layer, position) cell
const PER_ROW = 8; // nodes per line inside a cell
const MIN_COL = 96;

/** The decoded graph plus a stable layout in world coordinates. */
export class Graph {
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
export class Visible {
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
