// GraphComparisonView: two prompts' attribution graphs compared (compare_graphs(a, b).widget()).
// Mirrors gemscope_widgets/widgets/graph_comparison.py (traits: GraphComparisonModel in lib/protocol.ts).
// The features only one graph keeps are listed side by side in that graph's colour; the largest changes in
// influence share are signed bars (towards A or towards B); edges only one graph keeps follow. Text as textContent.
import type { RenderProps } from "@anywidget/types";
import css from "./graph_comparison.css";
import { el as element, mountTheme, VIEW_ROOTS } from "./lib/dom";
import { formatValue } from "./lib/format";
import { watchKernel } from "./lib/live";
import type { ComparedEdge, ComparedFeature, GraphComparisonData, GraphComparisonModel } from "./lib/protocol";

const signed = (v: number) => `${v >= 0 ? "+" : ""}${formatValue(v)}`;

/** One column of features only one graph keeps, strongest first, with its influence share there. */
function onlyList(title: string, side: "a" | "b", items: ComparedFeature[]): HTMLElement {
  const box = element("div", `gs-gc-only gs-gc-only-${side}`);
  box.append(element("div", "gs-gc-head", `${title} (${items.length})`));
  if (!items.length) box.append(element("div", "gs-muted", "none"));
  const ul = element("ul", "gs-gc-list");
  for (const c of items) {
    const li = element("li", "gs-gc-feature");
    li.append(element("bdi", "gs-gc-label", c.label), ` ${formatValue(side === "a" ? c.influence_a : c.influence_b)}`);
    ul.append(li);
  }
  box.append(ul);
  return box;
}

/** The largest changes: label, A, B, and a bar from the middle towards the graph that gained. */
function changes(items: ComparedFeature[]): HTMLElement {
  const table = element("table", "gs-gc-changes");
  const head = element("tr");
  for (const t of ["feature", "A", "B", "B − A", ""]) head.append(element("th", "", t));
  table.append(head);
  const top = Math.max(1e-30, ...items.map((c) => Math.abs(c.delta)));
  for (const c of items) {
    const tr = element("tr", c.kept_a && !c.kept_b ? "gs-gc-row-a" : c.kept_b && !c.kept_a ? "gs-gc-row-b" : "");
    const bar = element("div", `gs-gc-bar ${c.delta >= 0 ? "gs-gc-bar-b" : "gs-gc-bar-a"}`);
    bar.style.width = `${(50 * Math.abs(c.delta)) / top}%`;
    const cell = element("td", "gs-gc-bar-cell");
    cell.append(bar);
    tr.append(
      element("td", "gs-gc-label", c.label),
      element("td", "", formatValue(c.influence_a)),
      element("td", "", formatValue(c.influence_b)),
      element("td", c.delta >= 0 ? "gs-gc-b" : "gs-gc-a", signed(c.delta)),
      cell,
    );
    table.append(tr);
  }
  return table;
}

function edgeList(title: string, side: "a" | "b", items: ComparedEdge[]): HTMLElement {
  const box = element("div", `gs-gc-edges gs-gc-only-${side}`);
  box.append(element("div", "gs-gc-head", `${title} (${items.length})`));
  const ul = element("ul", "gs-gc-list");
  for (const e of items) {
    const li = element("li");
    li.append(element("bdi", "", e.source), " → ", element("bdi", "", e.target),
      ` ${signed(side === "a" ? e.weight_a : e.weight_b)}`);
    ul.append(li);
  }
  box.append(ul);
  return box;
}

function render({ model, el }: RenderProps<GraphComparisonModel>): () => void {
  mountTheme(el, VIEW_ROOTS.graph_comparison, css);
  const body = element("div");
  el.append(body);
  const draw = () => {
    const d = model.get("_comparison") as GraphComparisonData;
    if (!d || !("prompt_a" in d)) {
      body.replaceChildren(element("div", "gs-muted", "No comparison."));
      return;
    }
    const prompt = (side: "a" | "b", text: string) => {
      const line = element("div", `gs-gc-prompt gs-gc-only-${side}`);
      line.append(element("b", `gs-gc-${side}`, side.toUpperCase()), " ", element("span", "gs-gc-text", text));
      return line;
    };
    const sides = element("div", "gs-gc-sides");
    sides.append(onlyList("only in A", "a", d.only_a), onlyList("only in B", "b", d.only_b));
    const edges = element("div", "gs-gc-sides");
    edges.append(edgeList("edges only in A", "a", d.edges_only_a), edgeList("edges only in B", "b", d.edges_only_b));
    body.replaceChildren(
      prompt("a", d.prompt_a),
      prompt("b", d.prompt_b),
      element("div", "gs-muted gs-gc-summary",
        `kept features shared (Jaccard) ${formatValue(d.overlap)} · influence-weighted ` +
        `${formatValue(d.weighted_overlap)} · ${d.shared.length} kept in both · prune(${d.thresholds[0]}, ` +
        `${d.thresholds[1]}) of each graph`),
      sides,
      element("div", "gs-gc-head", "largest changes in influence share"),
      changes(d.largest_changes),
      edges,
    );
    el.dataset.onlyA = String(d.only_a.length);
    el.dataset.onlyB = String(d.only_b.length);
  };
  draw();
  model.on("change:_comparison", draw);
  const kernel = watchKernel(model, el, { disable: false });
  return () => {
    kernel.dispose();
    model.off("change:_comparison", draw);
  };
}

export default { render };
