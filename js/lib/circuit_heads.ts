// The circuit view's attention panel: for the clicked node, its strongest inputs from other positions; pick one to
// see the heads that carry it (graph.edge_heads: layer.head, share, bar); pick a head to see its attention row at
// the query position and why it attends to the key position (graph.qk: top query × key feature pairs, marginals);
// pick another key in the row to see why the head attends there.
// Nothing is computed here: each pick sends a CircuitMessage with a request id and draws the CircuitReply of the
// latest request of its kind (an older reply is dropped). Text goes in with textContent; numbers via formatValue.
import type { Graph } from "./circuit_graph";
import { el as element } from "./dom";
import { formatValue, visibleText } from "./format";
import type { CircuitMessage, CircuitReply, QKTrace } from "./protocol";

/** How many cross-position inputs the panel lists. */
export const MAX_INPUTS = 8;

interface ModelLike {
  send(content: CircuitMessage): void;
  on(event: "msg:custom", callback: (msg: unknown) => void): void;
  off?(event: "msg:custom", callback: (msg: unknown) => void): void;
}

/** Payload edges into local node `i` from another position, strongest |weight| first (payload edge indices). */
export function crossInputs(g: Graph, i: number, limit = MAX_INPUTS): number[] {
  const out: number[] = [];
  for (let e = 0; e < g.dst.length; e++) if (g.dst[e] === i && g.pos[g.src[e]] !== g.pos[i]) out.push(e);
  return out.sort((a, b) => Math.abs(g.weight[b]) - Math.abs(g.weight[a])).slice(0, limit);
}

/** A horizontal bar of |value| / max, coloured by sign. */
function bar(value: number, max: number): HTMLElement {
  const outer = element("span", "gs-ct-hd-bar");
  const inner = element("span", value >= 0 ? "gs-ct-hd-fill gs-ct-hd-pos" : "gs-ct-hd-fill gs-ct-hd-neg");
  inner.style.width = `${max > 0 ? Math.min(100, (100 * Math.abs(value)) / max) : 0}%`;
  outer.append(inner);
  return outer;
}

function button(cls: string, ...content: (string | Node)[]): HTMLButtonElement {
  const b = element("button", cls);
  b.type = "button";
  b.append(...content);
  return b;
}

/**
 * The panel inside `container`. `show(g, i)` lists local node `i`'s cross-position inputs (i < 0: empty); the same
 * node again keeps what the panel shows. Returns `show` and `dispose` (stops listening to the kernel).
 */
export function headsPanel(container: HTMLElement, model: ModelLike) {
  const inputs = element("div", "gs-ct-hd-inputs");
  const heads = element("div", "gs-ct-hd-heads");
  const qk = element("div", "gs-ct-hd-qk");
  container.append(inputs, heads, qk);
  let g: Graph | null = null;
  let shown = -1; // graph node index the panel is for
  let request = 0;
  const latest = { edge_heads: -1, head_qk: -1 };
  let edge: { source: number; target: number; qPos: number; kPos: number } | null = null;

  const label = (node: number) => {
    const i = g?.local.get(node);
    return g && i !== undefined ? g.label(i) : `node ${node}`;
  };
  const token = (pos: number) => visibleText(g?.header.tokens[pos] ?? "");

  const show = (graph: Graph, i: number) => {
    const node = i < 0 ? -1 : graph.node[i];
    if (graph === g && node === shown) return;
    g = graph;
    shown = node;
    edge = null;
    latest.edge_heads = latest.head_qk = -1;
    inputs.replaceChildren();
    heads.replaceChildren();
    qk.replaceChildren();
    if (i < 0) return;
    const list = crossInputs(graph, i);
    inputs.append(element("div", "gs-ct-side-head", "attention: inputs from other positions (pick one for its heads)"));
    if (!list.length) {
      inputs.append(element("div", "gs-muted", "none among the edges sent to the view"));
      return;
    }
    const ul = element("ul", "gs-ct-hd-list");
    for (const e of list) {
      const src = graph.src[e];
      const b = button(graph.weight[e] >= 0 ? "gs-ct-hd-edge gs-ct-pos" : "gs-ct-hd-edge gs-ct-neg",
        `${formatValue(graph.weight[e])}  `, element("bdi", "", graph.label(src)), `  → @${graph.pos[i]}`); // the label has @source
      b.dataset.source = String(graph.node[src]);
      b.dataset.target = String(node);
      b.addEventListener("click", () => askEdge(graph.node[src], node, graph.pos[i], graph.pos[src]));
      const li = element("li");
      li.append(b);
      ul.append(li);
    }
    inputs.append(ul);
  };

  const askEdge = (source: number, target: number, qPos: number, kPos: number) => {
    edge = { source, target, qPos, kPos };
    latest.edge_heads = ++request;
    latest.head_qk = -1;
    heads.replaceChildren(element("div", "gs-status", "finding the heads that carry this edge…"));
    qk.replaceChildren();
    model.send({ type: "edge_heads", source, target, request });
  };

  const askHead = (layer: number, head: number, query_pos: number, key_pos: number) => {
    latest.head_qk = ++request;
    qk.replaceChildren(element("div", "gs-status", `tracing L${layer}.H${head}…`));
    model.send({ type: "head_qk", layer, head, query_pos, key_pos, request });
  };

  const renderHeads = (r: Extract<CircuitReply, { type: "edge_heads" }>) => {
    heads.replaceChildren();
    heads.dataset.source = String(r.source);
    heads.dataset.target = String(r.target);
    if (r.error) {
      heads.append(element("div", "gs-error", r.error));
      return;
    }
    const list = r.heads ?? [];
    heads.append(element("div", "gs-ct-side-head",
      `heads carrying ${label(r.source)} → ${label(r.target)}: weight ${formatValue(r.weight ?? 0)} = Σ shares ` +
      `(${r.n_heads ?? list.length} heads)`));
    const max = Math.max(0, ...list.map(([, , s]) => Math.abs(s)));
    const table = element("table", "gs-ct-hd-table");
    for (const [layer, head, share] of list) {
      const tr = element("tr", "gs-ct-hd-head");
      tr.dataset.layer = String(layer);
      tr.dataset.head = String(head);
      tr.dataset.share = String(share);
      const b = button("gs-ct-hd-pick", `L${layer}.H${head}`);
      b.title = "its attention row and why it attends (QK pairs)";
      b.addEventListener("click", () => edge && askHead(layer, head, edge.qPos, edge.kPos));
      const name = element("td");
      name.append(b);
      const value = element("td", "gs-ct-hd-value", formatValue(share));
      const cell = element("td");
      cell.append(bar(share, max));
      tr.append(name, value, cell);
      table.append(tr);
    }
    heads.append(table);
    if (r.rest) heads.append(element("div", "gs-muted", `other heads: ${formatValue(r.rest)}`));
  };

  const renderQK = (r: Extract<CircuitReply, { type: "head_qk" }>) => {
    qk.replaceChildren();
    qk.dataset.layer = String(r.layer);
    qk.dataset.head = String(r.head);
    qk.append(element("div", "gs-ct-side-head",
      `L${r.layer}.H${r.head} at query @${r.query_pos} “${token(r.query_pos)}”: attention to each key position`));
    if (r.row) {
      const max = Math.max(0, ...r.row);
      const table = element("table", "gs-ct-hd-table gs-ct-hd-row");
      r.row.forEach((p, j) => {
        const tr = element("tr", j === r.key_pos ? "gs-ct-hd-key gs-ct-hd-here" : "gs-ct-hd-key");
        tr.dataset.pos = String(j);
        tr.dataset.p = String(p);
        const tok = element("td", "gs-ct-token");
        const pick = button("gs-ct-hd-pick", `@${j} `, element("bdi", "", token(j)));
        pick.title = "why the head attends to this key position (QK pairs)";
        pick.addEventListener("click", () => askHead(r.layer, r.head, r.query_pos, j));
        tok.append(pick);
        const cell = element("td");
        cell.append(bar(p, max));
        tr.append(tok, element("td", "gs-ct-hd-value", formatValue(p)), cell);
        table.append(tr);
      });
      qk.append(table);
    }
    if (r.error) {
      qk.append(element("div", "gs-error", r.error));
      return;
    }
    if (r.qk) qk.append(...traceLines(r.qk));
  };

  const onMessage = (msg: unknown) => {
    const r = msg as CircuitReply | null;
    if (!r || (r.type !== "edge_heads" && r.type !== "head_qk")) return;
    if (r.request !== latest[r.type]) return; // an older request's answer
    if (r.type === "edge_heads") renderHeads(r);
    else renderQK(r);
  };
  model.on("msg:custom", onMessage);
  return { show, dispose: () => model.off?.("msg:custom", onMessage) };
}

/** The QK split as text: score and probability, the top (query, key) pairs, each side's marginals, the remainder. */
export function traceLines(t: QKTrace): HTMLElement[] {
  const name = (id: string) => t.contributors[id]?.label ?? id;
  const out: HTMLElement[] = [
    element("div", "gs-ct-hd-score",
      `key @${t.key_pos}: score ${formatValue(t.score)}, probability ${formatValue(t.probability)}; ` +
      `node pairs ${formatValue(t.node_pairs_total)}`),
    element("div", "gs-ct-side-head", "top (query feature × key feature) pairs"),
  ];
  const pairs = element("table", "gs-ct-hd-table gs-ct-hd-pairs");
  for (const [q, k, v] of t.pair_wise_contributors) {
    const tr = element("tr", "gs-ct-hd-pair");
    tr.dataset.q = q;
    tr.dataset.k = k;
    tr.dataset.value = String(v);
    const qc = element("td", "gs-ct-hd-label");
    qc.append(element("bdi", "", name(q)));
    const kc = element("td", "gs-ct-hd-label");
    kc.append(element("bdi", "", name(k)));
    tr.append(element("td", "gs-ct-hd-value", formatValue(v)), qc, element("td", "", "×"), kc);
    pairs.append(tr);
  }
  out.push(pairs);
  const marginals = (title: string, list: [string, number][], cls: string) => {
    out.push(element("div", "gs-ct-side-head", title));
    const ul = element("ul", `gs-ct-hd-list ${cls}`);
    for (const [id, v] of list) {
      const li = element("li", v >= 0 ? "gs-ct-pos" : "gs-ct-neg");
      li.dataset.id = id;
      li.dataset.value = String(v);
      li.append(`${formatValue(v)}  `, element("bdi", "", name(id)));
      ul.append(li);
    }
    out.push(ul);
  };
  marginals("query side (with every key term)", t.top_q_marginal_contributors, "gs-ct-hd-q");
  marginals("key side (with every query term)", t.top_k_marginal_contributors, "gs-ct-hd-k");
  const rest = Object.entries(t.remainder).filter(([, v]) => v !== 0);
  if (rest.length) {
    out.push(element("div", "gs-muted gs-ct-hd-rest",
      `not node pairs: ${rest.map(([k, v]) => `${k} ${formatValue(v)}`).join(", ")}`));
  }
  return out;
}
