// Replacement and completeness scores of the pinned subgraph, recomputed in the browser as the user pins: the
// steps of backend/circuits/score_matrix.pinned_scores (= AttributionGraph.scores(pinned=...), circuit-tracer's
// compute_graph_scores on the subgraph Neuronpedia's score.worker.ts defines) on the payload's score matrix:
//
//   1. every candidate feature not pinned is merged into its error node (its column added to the error's column;
//      its row and column dropped), or dropped when it has no error node to merge into;
//   2. |A| row-normalised; influence = w @ (A + A² + …) from the logit probabilities w, until it vanishes;
//   3. replacement = token influence / (token + error influence); completeness = Σ (1 − error share of the node's
//      inputs) · (influence + w) / Σ (influence + w).
import type { Graph } from "./circuit_graph";
import { KIND } from "./circuit_graph";
import type { CircuitScores } from "./protocol";
import { formatValue } from "./format";
import { asBytes, type Bytes, readFloat, readUint } from "./sparse";

/** The two scores, and how many pinned features were scored (and how many pinned features lie outside). */
export interface PinnedScores {
  replacement: number;
  completeness: number;
  pinned: number;
  outside: number;
}

/** The decoded score matrix of one payload. */
export class ScoreGraph {
  readonly candidates: Map<number, number>; // graph node index -> candidate index
  private readonly rows: Uint16Array | Uint32Array;
  private readonly cols: Uint16Array | Uint32Array;
  private readonly values: Float32Array;
  private readonly errorOf: Uint16Array | Uint32Array;
  readonly size: number;

  constructor(readonly spec: CircuitScores, data: Bytes) {
    const bytes = asBytes(data);
    const nodes = readUint(bytes, spec.candidates);
    this.candidates = new Map(Array.from(nodes, (n, j) => [n, j]));
    this.rows = readUint(bytes, spec.rows);
    this.cols = readUint(bytes, spec.cols);
    this.values = readFloat(bytes, spec.values);
    this.errorOf = readUint(bytes, spec.candidate_error);
    this.size = nodes.length + spec.n_errors + spec.n_tokens + spec.logit_weights.length;
  }

  /**
   * The scores with the feature nodes among `pinned` (graph node indices) pinned. Pinned nodes that are not
   * features are ignored (as in Python); pinned features outside the candidates are counted in `outside` (the
   * numbers then do not describe the pinned set: the caller says so).
   */
  scores(pinned: Iterable<number>, isFeature: (node: number) => boolean): PinnedScores {
    const nCand = this.candidates.size;
    const kept = new Uint8Array(nCand);
    let count = 0;
    let outside = 0;
    for (const node of pinned) {
      const j = this.candidates.get(node);
      if (j !== undefined) {
        if (!kept[j]) count++;
        kept[j] = 1;
      } else if (isFeature(node)) outside++;
    }
    // 1. merge: entries keyed target * size + source, summed (float64).
    const merged = new Map<number, number>();
    for (let k = 0; k < this.values.length; k++) {
      const r = this.rows[k];
      let c = this.cols[k];
      if (r < nCand && !kept[r]) continue; // an unpinned candidate's inputs go
      if (c < nCand && !kept[c]) {
        if (!this.errorOf[c]) continue;
        c = this.errorOf[c] - 1;
      }
      const key = r * this.size + c;
      merged.set(key, (merged.get(key) ?? 0) + this.values[k]);
    }
    // 2. row-normalised |A| and the influence series.
    const n = this.size;
    const rowSum = new Float64Array(n);
    const er = new Uint32Array(merged.size);
    const ec = new Uint32Array(merged.size);
    const ev = new Float64Array(merged.size);
    let m = 0;
    for (const [key, v] of merged) {
      const r = Math.floor(key / n);
      er[m] = r;
      ec[m] = key - r * n;
      ev[m] = Math.abs(v);
      rowSum[r] += ev[m];
      m++;
    }
    for (let k = 0; k < m; k++) ev[k] /= Math.max(rowSum[er[k]], 1e-10);
    const weights = new Float64Array(n);
    const nLogits = this.spec.logit_weights.length;
    this.spec.logit_weights.forEach((w, k) => {
      weights[n - nLogits + k] = w;
    });
    const influence = new Float64Array(n);
    let current = weights;
    for (let step = 0; step < 1000; step++) {
      const next = new Float64Array(n);
      for (let k = 0; k < m; k++) if (current[er[k]] !== 0) next[ec[k]] += current[er[k]] * ev[k];
      let any = false;
      for (let i = 0; i < n; i++) {
        if (next[i] !== 0) {
          influence[i] += next[i];
          any = true;
        }
      }
      if (!any) break;
      current = next;
    }
    // 3. the scores.
    const e0 = nCand;
    const e1 = nCand + this.spec.n_errors;
    const t1 = e1 + this.spec.n_tokens;
    let token = 0;
    let error = 0;
    for (let i = e0; i < e1; i++) error += influence[i];
    for (let i = e1; i < t1; i++) token += influence[i];
    const errorShare = new Float64Array(n);
    for (let k = 0; k < m; k++) if (ec[k] >= e0 && ec[k] < e1) errorShare[er[k]] += ev[k];
    let num = 0;
    let den = 0;
    for (let i = 0; i < n; i++) {
      const out = influence[i] + weights[i];
      num += (1 - errorShare[i]) * out;
      den += out;
    }
    return { replacement: token / Math.max(token + error, 1e-30), completeness: num / den, pinned: count, outside };
  }
}

/**
 * The line under the graph: the whole graph's scores (graph.scores()), and with features pinned, the pinned
 * subgraph's, recomputed here (or why they are not: pinned features outside the scored set). Plain text.
 */
export function scoresLine(
  spec: CircuitScores | undefined,
  graph: ScoreGraph | null,
  pinned: number[],
  isFeature: (node: number) => boolean,
): { text: string; pinned: PinnedScores | null } {
  if (!spec || !graph) return { text: "", pinned: null };
  let text = `graph: replacement ${formatValue(spec.replacement)}, completeness ${formatValue(spec.completeness)}`;
  const features = pinned.filter(isFeature);
  if (!features.length) return { text: `${text} · pin features to score their subgraph`, pinned: null };
  const s = graph.scores(features, isFeature);
  if (s.outside) {
    text += ` · ${s.outside} pinned feature(s) lie outside ${spec.scope}: graph.scores(pinned=...) in Python scores them`;
    return { text, pinned: null };
  }
  text += ` · pinned subgraph (${s.pinned} features): replacement ${formatValue(s.replacement)}, completeness ` +
    `${formatValue(s.completeness)}`;
  return { text, pinned: s };
}

/**
 * The scores line of one payload: writes scoresLine's text into `line` and the pinned scores into `root`'s data
 * attributes (pinnedScores: [replacement, completeness]; pinnedScored: how many pinned features were scored).
 */
export class ScorePanel {
  private readonly graph: ScoreGraph | null;

  constructor(private readonly root: HTMLElement, private readonly line: HTMLElement, private readonly g: Graph,
    data: Bytes) {
    const spec = g.header.scores;
    this.graph = spec ? new ScoreGraph(spec, data) : null;
  }

  render(pinned: number[]): void {
    const { g, graph } = this;
    const isFeature = (node: number) => graph !== null &&
      (graph.candidates.has(node) || (g.local.has(node) && g.kind[g.local.get(node) as number] === KIND.feature));
    const out = scoresLine(g.header.scores, graph, pinned, isFeature);
    this.line.textContent = out.text;
    this.root.dataset.pinnedScores = out.pinned ? JSON.stringify([out.pinned.replacement, out.pinned.completeness]) : "";
    this.root.dataset.pinnedScored = String(out.pinned?.pinned ?? 0);
  }
}
