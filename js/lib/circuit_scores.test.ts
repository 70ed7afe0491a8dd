import { describe, expect, it } from "vitest";
import { ScoreGraph } from "./circuit_scores";
import type { ArrayRef, CircuitScores } from "./protocol";

// A five-node graph worked by hand: candidates f0 (graph node 10), f1 (11); one error e; one token t; one logit l.
// Edges (source -> target: weight): t->f0 1, t->f1 0.5, f0->l 2, f1->l 1, e->l 1; both features merge into e.
function graph(): ScoreGraph {
  const arrays = {
    candidates: new Uint32Array([10, 11]),
    rows: new Uint32Array([0, 1, 4, 4, 4]), // targets: f0, f1, l, l, l
    cols: new Uint32Array([3, 3, 0, 1, 2]), // sources: t, t, f0, f1, e
    values: new Float32Array([1, 0.5, 2, 1, 1]),
    candidate_error: new Uint32Array([3, 3]), // error node (index 2) + 1
  };
  const refs: Record<string, ArrayRef> = {};
  let size = 0;
  for (const [name, a] of Object.entries(arrays)) {
    refs[name] = { offset: size, length: a.length, dtype: a instanceof Float32Array ? "float32" : "uint32" };
    size += a.byteLength;
  }
  const bytes = new Uint8Array(size);
  for (const [name, a] of Object.entries(arrays)) bytes.set(new Uint8Array(a.buffer), refs[name].offset);
  const spec: CircuitScores = {
    replacement: 0, completeness: 0, candidates: refs.candidates, rows: refs.rows, cols: refs.cols,
    values: refs.values, candidate_error: refs.candidate_error, logit_weights: [1], n_errors: 1, n_tokens: 1,
    scope: "test",
  };
  return new ScoreGraph(spec, bytes);
}

const feature = (node: number) => node < 20;

describe("pinned scores", () => {
  it("pinning both features keeps the graph: replacement 0.75, completeness 2.5 / 2.75", () => {
    const s = graph().scores([10, 11], feature);
    expect(s.replacement).toBeCloseTo(0.75, 12);
    expect(s.completeness).toBeCloseTo(2.5 / 2.75, 12);
    expect(s.pinned).toBe(2);
  });
  it("nothing pinned: every feature merged into the error node", () => {
    const s = graph().scores([], feature);
    expect(s.replacement).toBe(0);
    expect(s.completeness).toBeCloseTo(0.5, 12);
  });
  it("one pinned: the other's edge to the logit joins the error's", () => {
    const s = graph().scores([10, 99], feature); // 99: a pinned token node, ignored
    expect(s.replacement).toBeCloseTo(0.5, 12);
    expect(s.completeness).toBeCloseTo(0.8, 12);
    expect(s.outside).toBe(0);
    expect(graph().scores([12], feature).outside).toBe(1);
  });
});
