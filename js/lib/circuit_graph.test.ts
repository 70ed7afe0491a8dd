import { describe, expect, it } from "vitest";
import { canvasHeight, drawnNote, focusNote, Graph, KIND, MARGIN, Visible, viewNote } from "./circuit_graph";
import type { ArrayRef, CircuitHeader } from "./protocol";

// Lays arrays out as circuit_payload.py's _Blob does: little-endian, each start a multiple of 4 bytes.
function blob(arrays: Record<string, Uint32Array | Uint16Array | Float32Array>): {
  bytes: Uint8Array;
  refs: Record<string, ArrayRef>;
} {
  const refs: Record<string, ArrayRef> = {};
  let size = 0;
  for (const [name, a] of Object.entries(arrays)) {
    const dtype = a instanceof Uint32Array ? "uint32" : a instanceof Float32Array ? "float32" : "uint16";
    refs[name] = { offset: size, length: a.length, dtype };
    size += Math.ceil(a.byteLength / 4) * 4;
  }
  const bytes = new Uint8Array(size);
  for (const [name, a] of Object.entries(arrays)) {
    bytes.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), refs[name].offset);
  }
  return { bytes, refs };
}

// Two layers, two positions. Local nodes: 0 feature L0@0, 1 feature L1@1, 2 error L0@1, 3 token @0, 4 token @1,
// 5 logit. Graph node indices: features 0-1, errors 2-5, tokens 6-7, logit 8 (n_nodes_total 9).
// With `pruned`, the payload also carries prune()'s flags at 0.8 / 0.98: here they keep the error node (rank 0.8,
// which the rank preview would drop) and drop feature 1's logit edge (edge rank 0.7 < 0.98).
function graph(pruned = false, leftOut = 0, focus = false): Graph {
  const { bytes, refs } = blob({
    kind: new Uint16Array([KIND.feature, KIND.feature, KIND.error, KIND.token, KIND.token, KIND.logit]),
    layer: new Uint16Array([1, 2, 1, 0, 0, 3]),
    pos: new Uint16Array([0, 1, 1, 0, 1, 1]),
    feature: new Uint32Array([7, 9, 0, 2, 5, 11]),
    node: new Uint32Array([0, 1, 3, 6, 7, 8]),
    activation: new Float32Array([1.5, 2.5, 0, 0, 0, 0.75]),
    influence: new Float32Array([0.5, 0.3, 0.2, 0.4, 0.1, 0]),
    rank: new Float32Array([0, 0.5, 0.8, 0, 0, 0]),
    source: new Uint32Array([3, 0, 1, 2]),
    target: new Uint32Array([0, 1, 5, 5]),
    weight: new Float32Array([2, -1, 0.5, 0.25]),
    edgeRank: new Float32Array([0, 0.4, 0.7, 0.9]),
    kept: new Uint16Array([1, 1, 1, 1, 1, 1]),
    edgeKept: new Uint16Array([1, 1, 0, 1]),
    focus: new Uint16Array([1, 0, 1, 1, 1, 1]),
  });
  const header: CircuitHeader = {
    version: 1,
    prompt: "a b",
    tokens: ["<bos>", "<img/src=x/onerror=alert(1)>"],
    logit_tokens: ["</script>"],
    logit_probabilities: [0.75],
    n_layers: 2,
    n_nodes_total: 9,
    n_edges_total: 4,
    n_nodes: 6,
    n_edges: 4,
    nodes: {
      kind: refs.kind, layer: refs.layer, pos: refs.pos, feature: refs.feature, node: refs.node,
      activation: refs.activation, influence: refs.influence, rank: refs.rank,
    },
    edges: { source: refs.source, target: refs.target, weight: refs.weight, rank: refs.edgeRank },
    labels: { "1": "<b>label</b>" },
    top_logits: {},
    model: "m",
    scan: "s",
    bytes: bytes.byteLength,
  };
  if (pruned) {
    header.nodes.kept = refs.kept;
    header.edges.kept = refs.edgeKept;
    header.pruned = { node_threshold: 0.8, edge_threshold: 0.98, n_nodes: 6, n_edges: 3 + leftOut };
    header.left_out = leftOut ? { edges: leftOut, reason: "max_edges=4: only the 4 most influential edges" } : null;
  }
  if (focus) {
    // The legible subgraph at 0.8 / 0.98: feature 0 and the error node, of the 3 feature and error nodes kept.
    header.nodes.focus = refs.focus;
    header.focus = { logit_token: "</script>", n_chosen: 2, n_pruned: 3 };
  }
  return new Graph(header, bytes);
}

describe("Graph", () => {
  it("decodes the payload and lays layers out upwards, positions across", () => {
    const g = graph();
    expect(g.count).toBe(6);
    expect(Array.from(g.weight)).toEqual([2, -1, 0.5, 0.25]);
    expect(g.maxWeight).toBe(2);
    expect(g.local.get(8)).toBe(5);
    // Tokens lowest (largest y), then layer 0, layer 1, logits on top; position 1 right of position 0.
    expect(g.y[3]).toBeGreaterThan(g.y[0]);
    expect(g.y[0]).toBeGreaterThan(g.y[1]);
    expect(g.y[1]).toBeGreaterThan(g.y[5]);
    expect(g.x[4]).toBeGreaterThan(g.x[3]);
  });

  it("labels nodes as plain text (markup stays text)", () => {
    const g = graph();
    expect(g.label(0)).toBe("L0 #7 @0 “<bos>”");
    expect(g.label(1)).toBe("L1 #9 @1 “<img/src=x/onerror=alert(1)>”: <b>label</b>");
    expect(g.label(2)).toBe("error L0 @1 “<img/src=x/onerror=alert(1)>”");
    expect(g.label(5)).toBe("logit “</script>”");
  });
});

// `perCell` features in every (layer, position) cell of an `nTokens`-position, `nLayers`-layer graph, plus tokens
// and `nLogits` logit nodes; no edges.
function crowded(nTokens: number, nLayers: number, perCell: number | ((pos: number) => number), nLogits: number): Graph {
  const count = typeof perCell === "number" ? () => perCell : perCell;
  const kind: number[] = [];
  const layer: number[] = [];
  const pos: number[] = [];
  for (let l = 0; l < nLayers; l++) {
    for (let p = 0; p < nTokens; p++) {
      for (let k = 0; k < count(p); k++) {
        kind.push(KIND.feature);
        layer.push(l + 1);
        pos.push(p);
      }
    }
  }
  for (let p = 0; p < nTokens; p++) {
    kind.push(KIND.token);
    layer.push(0);
    pos.push(p);
  }
  for (let k = 0; k < nLogits; k++) {
    kind.push(KIND.logit);
    layer.push(nLayers + 1);
    pos.push(nTokens - 1);
  }
  const n = kind.length;
  const { bytes, refs } = blob({
    kind: new Uint16Array(kind), layer: new Uint16Array(layer), pos: new Uint16Array(pos),
    feature: new Uint32Array(n), node: Uint32Array.from({ length: n }, (_, i) => i),
    activation: new Float32Array(n).fill(1), influence: Float32Array.from({ length: n }, (_, i) => 1 / (1 + i)),
    rank: new Float32Array(n), source: new Uint32Array(0), target: new Uint32Array(0),
    weight: new Float32Array(0), edgeRank: new Float32Array(0),
  });
  const header = {
    version: 1, prompt: "", tokens: Array.from({ length: nTokens }, (_, i) => `t${i}`),
    logit_tokens: Array.from({ length: nLogits }, (_, i) => `l${i}`), logit_probabilities: new Array(nLogits).fill(0.1),
    n_layers: nLayers, n_nodes_total: n, n_edges_total: 0, n_nodes: n, n_edges: 0,
    nodes: {
      kind: refs.kind, layer: refs.layer, pos: refs.pos, feature: refs.feature, node: refs.node,
      activation: refs.activation, influence: refs.influence, rank: refs.rank,
    },
    edges: { source: refs.source, target: refs.target, weight: refs.weight, rank: refs.edgeRank },
    labels: {}, top_logits: {}, model: "m", scan: "s", bytes: bytes.byteLength,
  } as CircuitHeader;
  return new Graph(header, bytes, { width: 1000, height: canvasHeight(nLayers + 2) });
}

describe("layout", () => {
  it("fills the view: the plot spans the width and the height it is given", () => {
    const g = crowded(7, 18, 12, 10);
    const h = canvasHeight(20);
    expect(g.width).toBeCloseTo(1000, 6);
    const xs = Array.from(g.x);
    const ys = Array.from(g.y);
    expect(Math.min(...xs)).toBeLessThan(MARGIN.left + 1000 / 7 / 2);
    expect(Math.max(...xs)).toBeGreaterThan(1000 - MARGIN.right - 1000 / 7 / 2 - 12);
    expect(Math.max(...ys) - Math.min(...ys)).toBeGreaterThan(0.85 * (h - MARGIN.top - MARGIN.bottom));
  });

  it("keeps the nodes of a crowded cell apart: no two circles overlap", () => {
    for (const perCell of [5, 40, 200]) {
      const g = crowded(7, 18, perCell, 3);
      const cell = Array.from({ length: perCell }, (_, k) => k); // layer 0, position 0
      for (const a of cell) {
        for (const b of cell) {
          if (a >= b) continue;
          const d = Math.hypot(g.x[a] - g.x[b], g.y[a] - g.y[b]);
          expect(d).toBeGreaterThanOrEqual(g.radius[a] + g.radius[b] - 1e-3);
        }
      }
      // and stay inside their own cell
      for (const a of cell) expect(Math.abs(g.x[a] - g.colX[0])).toBeLessThanOrEqual(g.colWidths[0] / 2);
      for (const a of cell) expect(Math.abs(g.y[a] - g.rowY[1])).toBeLessThanOrEqual(g.rowHeight / 2);
    }
  });

  it("spreads the logits along the top row, ending above the last position", () => {
    const g = crowded(7, 4, 2, 10);
    const logits = Array.from({ length: g.count }, (_, i) => i).filter((i) => g.kind[i] === KIND.logit);
    const xs = logits.map((i) => g.x[i]);
    for (let k = 1; k < xs.length; k++) expect(xs[k] - xs[k - 1]).toBeGreaterThanOrEqual(60);
    expect(xs[xs.length - 1]).toBeLessThanOrEqual(g.colX[6] + g.colWidths[6] / 2);
    for (const i of logits) expect(g.y[i]).toBeCloseTo(g.rowY[g.nRows - 1], 3);
  });

  it("gives a long prompt columns of at least 28 px: the world grows wider than the view", () => {
    const g = crowded(300, 4, 1, 2);
    expect(Math.min(...g.colWidths)).toBe(28);
    expect(g.width).toBeCloseTo(MARGIN.left + 300 * 28 + MARGIN.right, 6);
    g.layout(20_000, 400); // a wider view: columns widen, the world is the view again
    expect(g.width).toBeCloseTo(20_000, 6);
    expect(Math.min(...g.colWidths)).toBeGreaterThan(28);
  });

  it("gives the position whose cells hold many nodes a wider column than positions with few", () => {
    const even = crowded(4, 3, 1, 2);
    expect(even.colWidths[3]).toBeCloseTo(even.colWidths[0], 6); // equal demand, equal widths
    const last = crowded(4, 3, (pos) => (pos === 3 ? 36 : 1), 2); // the last position holds most features
    expect(last.colWidths[3]).toBeGreaterThan(3 * last.colWidths[0]);
    expect(last.colWidths.reduce((a, b) => a + b, 0)).toBeCloseTo(1000 - MARGIN.left - MARGIN.right, 6);
    expect(last.width).toBeCloseTo(1000, 6);
  });
});

describe("Visible", () => {
  it("keeps tokens and logits always, other nodes under the node threshold, edges under the edge threshold", () => {
    const g = graph();
    const all = new Visible(g, 1, 1, new Set());
    expect(all.nodeCount).toBe(6);
    expect(Array.from(all.edges)).toEqual([0, 1, 2, 3]);
    const some = new Visible(g, 0.6, 0.5, new Set());
    expect(Array.from(some.nodes)).toEqual([1, 1, 0, 1, 1, 1]); // the error node (rank 0.8) is dropped
    expect(Array.from(some.edges)).toEqual([0, 1]); // rank < 0.5, both ends drawn
    const none = new Visible(g, 0, 0, new Set());
    expect(none.nodeCount).toBe(3);
    expect(none.edges).toHaveLength(0);
  });

  it("draws pinned nodes whatever the thresholds, and the edges between two pinned nodes", () => {
    const g = graph();
    const pinned = new Visible(g, 0, 0, new Set([0, 1])); // graph node indices of both features
    expect(Array.from(pinned.nodes)).toEqual([1, 1, 0, 1, 1, 1]);
    expect(Array.from(pinned.edges)).toEqual([1]); // feature 0 -> feature 1 only: the others have an unpinned end
  });

  it("draws exactly prune()'s nodes and edges at the thresholds the payload was pruned at", () => {
    const g = graph(true);
    const exact = new Visible(g, 0.8, 0.98, new Set());
    expect(exact.exact).toBe(true);
    expect(Array.from(exact.nodes)).toEqual([1, 1, 1, 1, 1, 1]); // the error node too: prune() keeps it
    expect(Array.from(exact.edges)).toEqual([0, 1, 3]); // not edge 2, which prune() drops
    expect(viewNote(g, exact)).toBe("= graph.prune(0.8, 0.98): 6 nodes, 3 edges");
    // Other thresholds: the rank preview, and the note says so.
    const preview = new Visible(g, 0.6, 0.5, new Set());
    expect(preview.exact).toBe(false);
    expect(Array.from(preview.nodes)).toEqual([1, 1, 0, 1, 1, 1]);
    expect(viewNote(g, preview)).toContain("preview by influence rank");
    // The kernel's prune() at the new thresholds arrives as Circuit._kept: exact again, with its flags.
    g.setKept(new Uint8Array([1, 1, 0, 1, 1, 1, 1, 0, 0, 0]), {
      node_threshold: 0.6, edge_threshold: 0.5, n_nodes: 5, n_edges: 1, left_out: null,
    });
    const again = new Visible(g, 0.6, 0.5, new Set());
    expect(again.exact).toBe(true);
    expect(Array.from(again.edges)).toEqual([0]);
    expect(viewNote(g, again)).toBe("= graph.prune(0.6, 0.5): 5 nodes, 1 edges");
    g.setKept(new Uint8Array(3), { node_threshold: 0.1, edge_threshold: 0.1 }); // not this payload's: ignored
    expect(g.pruned?.node_threshold).toBe(0.6);
    // Without flags (an older payload) it is the preview everywhere, with nothing to say.
    const old = graph();
    expect(new Visible(old, 0.8, 0.98, new Set()).exact).toBe(false);
    expect(viewNote(old, new Visible(old, 0.8, 0.98, new Set()))).toBe("");
  });

  it("says on screen how many of prune()'s edges a cap left out, and why", () => {
    const g = graph(true, 2);
    const note = viewNote(g, new Visible(g, 0.8, 0.98, new Set()));
    expect(note).toContain("2 edges of it not drawn: max_edges=4");
  });

  it("counts the legible subgraph's nodes at the thresholds drawn, not those the view was built at", () => {
    const g = graph(true, 0, true);
    const built = new Visible(g, 0.8, 0.98, new Set(), true);
    expect(focusNote(g, built)).toContain("the 2 nodes with the most influence on “</script>” of the 3 feature");
    // prune() at 0.6 / 0.5 keeps 5 nodes: the 2 tokens, the logit, features 0 and 1 (not the error node).
    g.setKept(new Uint8Array([1, 1, 0, 1, 1, 1, 1, 0, 0, 0]), {
      node_threshold: 0.6, edge_threshold: 0.5, n_nodes: 5, n_edges: 1, left_out: null,
    });
    const moved = new Visible(g, 0.6, 0.5, new Set(), true);
    expect(Array.from(moved.nodes)).toEqual([1, 0, 0, 1, 1, 1]);
    const note = focusNote(g, moved);
    expect(note).toContain("1 of the 2 feature and error nodes prune() keeps");
    expect(note).toContain("among the 2 with the most influence on “</script>” at prune(0.8, 0.98)");
  });

  it("names the graph's own node and edge totals (print(graph)'s) beside the payload's", () => {
    const g = graph(true);
    const v = new Visible(g, 0.8, 0.98, new Set());
    expect(drawnNote(g, v)).toBe("6 of 6 nodes, 3 of 4 edges drawn (the graph: 9 nodes)");
  });
});
