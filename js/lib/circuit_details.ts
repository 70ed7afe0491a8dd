// What the circuit view says about one node, as text elements (textContent only, tokens bidi-isolated):
//
//   nodeTip(g, i)                      the hover tooltip: label, activation / probability / influence, top logits
//   nodeEdges(g, focus, highlighted)   the side panel: label, then the strongest inputs and outputs among the
//                                      highlighted edges, each with its weight and the other end's label
import type { Graph } from "./circuit_graph";
import { KIND, KIND_NAMES } from "./circuit_graph";
import { el as element } from "./dom";
import { formatValue, visibleText } from "./format";

/** The tooltip's lines for local node `i`. */
export function nodeTip(g: Graph, i: number): HTMLElement[] {
  const out: HTMLElement[] = [element("div", "gs-ct-tip-title", g.label(i))];
  const kind = g.kind[i];
  if (kind === KIND.feature) out.push(element("div", "", `activation ${formatValue(g.activation[i])}`));
  if (kind === KIND.logit) out.push(element("div", "", `probability ${formatValue(g.activation[i])}`));
  if (kind <= KIND.error || kind === KIND.token) out.push(element("div", "", `influence ${formatValue(g.influence[i])}`));
  const top = g.header.top_logits[String(i)];
  if (top?.length) {
    out.push(element("div", "gs-ct-tip-head", "top logits"));
    for (const [tok, val] of top) {
      // <bdi>: a right-to-left token keeps its place before its number
      const line = element("div", "gs-ct-tip-logit");
      line.append(element("bdi", "", visibleText(tok)), `  ${formatValue(val)}`);
      out.push(line);
    }
  }
  out.push(element("div", "gs-ct-tip-kind", `${KIND_NAMES[kind]} node ${g.node[i]}`));
  return out;
}

/** The side panel for the clicked node `focus`: its label, then its strongest inputs and outputs. */
export function nodeEdges(g: Graph, focus: number, highlighted: Iterable<number>): HTMLElement[] {
  const out: HTMLElement[] = [element("div", "gs-ct-side-title", g.label(focus))];
  const list = (title: string, edges: number[], other: (e: number) => number) => {
    if (!edges.length) return;
    out.push(element("div", "gs-ct-side-head", title));
    const ul = element("ul", "gs-ct-edges");
    for (const e of edges) {
      const li = element("li", g.weight[e] >= 0 ? "gs-ct-pos" : "gs-ct-neg");
      li.append(`${formatValue(g.weight[e])}  `, element("bdi", "", g.label(other(e))));
      li.dataset.node = String(g.node[other(e)]);
      ul.append(li);
    }
    out.push(ul);
  };
  const hl = [...highlighted];
  list("strongest inputs", hl.filter((e) => g.dst[e] === focus), (e) => g.src[e]);
  list("strongest outputs", hl.filter((e) => g.src[e] === focus), (e) => g.dst[e]);
  return out;
}
