// The circuit view's intervention result: the next-token probabilities before and after, as a table.
// Token text is set with textContent (el()); a running or failed intervention says so.
import { el as element } from "./dom";
import { formatValue, visibleText } from "./format";
import type { CircuitIntervention } from "./protocol";

/**
 * Replace ``result``'s children with the record of the last intervention (nothing when there is none).
 * ``nodeLabel(node)`` names a changed node as the view does; without it (or for an unknown node) the record's own
 * label is shown.
 */
export function renderIntervention(
  result: HTMLElement,
  r: CircuitIntervention,
  nodeLabel: (node: number) => string | undefined = () => undefined,
): void {
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
  result.append(element("div", "gs-ct-result-title", `${(r.nodes ?? []).length} feature(s) ${what}:`));
  const changed = element("ul", "gs-ct-changed");
  (r.changed ?? []).forEach(([label, before, after], k) => {
    const li = element("li");
    const node = r.nodes?.[k];
    const name = (node === undefined ? undefined : nodeLabel(node)) ?? label;
    li.append(element("bdi", "", name), `  ${formatValue(before)} → ${formatValue(after)}`);
    changed.append(li);
  });
  result.append(changed);
  const table = element("table", "gs-ct-table");
  const head = element("tr");
  for (const t of ["token", "before", "after", "change"]) head.append(element("th", "", t));
  table.append(head);
  const show = (p: number | null) => (p === null ? "—" : formatValue(p));
  for (const [tok, before, after] of r.rows ?? []) {
    const tr = element("tr");
    const known = before !== null && after !== null;
    const delta = known ? after - before : 0;
    tr.append(
      element("td", "gs-ct-token", visibleText(tok)),
      element("td", "", show(before)),
      element("td", "", show(after)),
      element(
        "td",
        !known ? "" : delta >= 0 ? "gs-ct-pos" : "gs-ct-neg",
        known ? `${delta >= 0 ? "+" : ""}${formatValue(delta)}` : "—",
      ),
    );
    table.append(tr);
  }
  result.append(table);
}
