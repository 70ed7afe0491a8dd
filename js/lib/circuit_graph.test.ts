import { describe, expect, it } from "vitest";
import { Graph, KIND, Visible } from "./circuit_graph";
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
function graph(): Graph {
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
});
