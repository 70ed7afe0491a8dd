// Contrast: features ranked by the difference between two prompts over a span, and both prompts side by side
// coloured by the selected feature, the span outlined. Mirrors gemscope_widgets/widgets/contrast.py.
import type { RenderProps } from "@anywidget/types";
import css from "./contrast.css";
import { heatBackground, normalise } from "./lib/colors";
import { el, mountTheme, VIEW_ROOTS } from "./lib/dom";
import { formatValue } from "./lib/format";
import { type ContrastSide, type ContrastViewMessage, type ContrastViewModel, sendMessage } from "./lib/protocol";
import { float32Of as floats } from "./lib/sparse";
import { keepKeys } from "./lib/keys";
import { watchKernel } from "./lib/live";
import { renderToken } from "./lib/tokens";

type Model = ContrastViewModel;
type Side = ContrastSide;

function fmt(v: number): string {
  if (!Number.isFinite(v)) return v > 0 ? "∞" : "−∞";
  return formatValue(v);
}

function render({ model, el: root }: RenderProps<Model>): () => void {
  mountTheme(root, VIEW_ROOTS.contrast, css);
  const title = el("div", "gs-ct-title");
  const caveat = el("div", "gs-ct-caveat gs-muted");
  const main = el("div", "gs-ct-main");
  const table = el("table", "gs-ct-table");
  const sides = el("div", "gs-ct-sides");
  const error = el("div", "gs-error");
  main.append(table, sides);
  root.append(title, caveat, main, error);

  const drawSide = (label: string, side: Side | undefined, heat: Float32Array, row: number, max: number) => {
    const box = el("div", "gs-ct-side");
    box.append(el("div", "gs-ct-side-title", label));
    const text = el("div", "gs-tokens gs-ct-text");
    if (side) {
      const n = side.tokens.length;
      const span = new Set(side.span);
      side.tokens.forEach((tok, i) => {
        const s = renderToken(tok, { special: Boolean(side.special[i]), index: i, title: null });
        if (side.template[i]) s.classList.add("gs-template");
        if (span.has(i)) s.classList.add("gs-ct-span");
        const v = row >= 0 ? heat[row * n + i] ?? 0 : 0;
        if (v > 0) s.style.background = heatBackground(normalise(v, max));
        s.title = `${i}: ${JSON.stringify(tok)}${row >= 0 ? `\nactivation ${formatValue(v)}` : ""}${span.has(i) ? "\n(in span)" : ""}`;
        text.append(s);
      });
    }
    box.append(text);
    return box;
  };

  const draw = () => {
    const view = model.get("_view") ?? {};
    const rows = view.rows ?? [];
    const selected = model.get("selected_feature");
    const pairs = (view.n_pairs ?? 1) > 1;
    title.textContent = `${view.sae_name ?? ""} · span ${view.span ?? ""} (${view.reduce ?? ""})` +
      (pairs ? ` · ${view.n_pairs} pairs, ranked by paired t` : " · ranked by |A − B|");
    caveat.textContent = view.caveat ?? "";
    caveat.hidden = !view.caveat;
    const head = el("tr");
    const cols = pairs ? ["feature", "mean Δ", "± se", "t", "A (pair 1)", "B (pair 1)", ""] : ["feature", "A", "B", "Δ = A − B", ""];
    for (const c of cols) head.append(el("th", "", c));
    const body: HTMLElement[] = [head];
    const maxDiff = rows.reduce((m, r) => Math.max(m, Math.abs(r.diff)), 0);
    rows.forEach((r) => {
      const tr = el("tr", "gs-ct-row");
      tr.dataset.feature = String(r.feature);
      tr.classList.toggle("gs-selected", r.feature === selected);
      const fid = el("td", "gs-ct-fid", `#${r.feature}`);
      if (r.label) {
        const label = el("span", "gs-ct-label gs-muted", ` ${r.label}`);
        label.title = r.label;
        fid.append(label);
      }
      tr.append(fid);
      const bar = el("div", `gs-ct-bar ${r.diff >= 0 ? "gs-ct-pos" : "gs-ct-neg"}`);
      bar.style.width = `${Math.round(normalise(Math.abs(r.diff), maxDiff) * 60)}px`;
      const diffCell = el("td", "gs-ct-num");
      diffCell.append(bar, document.createTextNode(fmt(r.diff)));
      if (pairs) {
        tr.append(diffCell, el("td", "gs-ct-num", fmt(r.stderr ?? 0)), el("td", "gs-ct-num", fmt(r.t ?? 0)),
          el("td", "gs-ct-num", fmt(r.a)), el("td", "gs-ct-num", fmt(r.b)));
      } else {
        tr.append(el("td", "gs-ct-num", fmt(r.a)), el("td", "gs-ct-num", fmt(r.b)), diffCell);
      }
      const act = el("td");
      if (model.get("can_steer")) {
        const steer = el("button", "gs-ct-steer", "steer");
        steer.type = "button";
        steer.dataset.steer = String(r.feature);
        act.append(steer);
      }
      tr.append(act);
      body.push(tr);
    });
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "gs-muted", "No feature differs over this span.");
      td.colSpan = cols.length;
      tr.append(td);
      body.push(tr);
    }
    table.replaceChildren(...body);
    const index = rows.findIndex((r) => r.feature === selected);
    const heatA = floats(model.get("_heat_a"));
    const heatB = floats(model.get("_heat_b"));
    const nA = view.a?.tokens.length ?? 0;
    const nB = view.b?.tokens.length ?? 0;
    let max = 0;
    if (index >= 0) {
      for (let i = 0; i < nA; i++) max = Math.max(max, heatA[index * nA + i] ?? 0);
      for (let i = 0; i < nB; i++) max = Math.max(max, heatB[index * nB + i] ?? 0);
    }
    sides.replaceChildren(
      drawSide(pairs ? "A (pair 1)" : "A", view.a, heatA, index, max),
      drawSide(pairs ? "B (pair 1)" : "B", view.b, heatB, index, max),
    );
    error.textContent = model.get("error");
  };

  const onClick = (event: MouseEvent) => {
    const target = event.target instanceof Element ? event.target : null;
    const steer = target?.closest<HTMLElement>("[data-steer]");
    if (steer) {
      sendMessage<ContrastViewMessage>(model, { type: "steer", feature: Number(steer.dataset.steer) });
      return;
    }
    const row = target?.closest<HTMLElement>("tr[data-feature]");
    if (row) {
      model.set("selected_feature", Number(row.dataset.feature));
      model.save_changes();
    }
  };
  table.addEventListener("click", onClick);
  const names = ["_view", "_heat_a", "_heat_b", "selected_feature", "can_steer", "error"];
  for (const name of names) model.on(`change:${name}`, draw);
  draw();
  const releaseKeys = keepKeys(root);
  const kernel = watchKernel(model, root, { disable: false }); // the ranking works alone; "steer" needs it
  return () => {
    releaseKeys();
    kernel.dispose();
    table.removeEventListener("click", onClick);
    for (const name of names) model.off(`change:${name}`, draw);
  };
}

export default { render };
