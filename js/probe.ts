// Probe: held-out ROC curves of the SAE probe, the dense probe, the difference of means and the selected latent;
// the AUROCs with their intervals; the SAE probe's latents (click: select / open the pane; "steer": add to the
// steering widget); the learning curve. Mirrors gemscope_widgets/widgets/probe.py.
import type { RenderProps } from "@anywidget/types";
import css from "./probe.css";
import { el, mountTheme, svg, VIEW_ROOTS } from "./lib/dom";
import { formatPercent, formatValue } from "./lib/format";
import { keepKeys } from "./lib/keys";
import { watchKernel } from "./lib/live";
import { type ProbeInfo, type ProbeViewMessage, type ProbeViewModel, sendMessage } from "./lib/protocol";
import { float32Of } from "./lib/sparse";

type Model = ProbeViewModel;
const SIZE = 200; // the plots' inner size in pixels
const PAD = 28;
const PROBE_CLASSES = ["gs-pr-sae", "gs-pr-dense", "gs-pr-diff"];

function interval(low: number, high: number): string {
  return `[${formatValue(low)}, ${formatValue(high)}]`;
}

/** An empty plot: frame, axis titles, ticks at 0, 0.5, 1 (x from `xTicks` when given). */
function frame(xTitle: string, yTitle: string, xTicks: [number, string][], yTicks: [number, string][]): SVGSVGElement {
  const box = svg("svg", { width: SIZE + PAD + 8, height: SIZE + PAD + 8, class: "gs-pr-plot" });
  const g = svg("g", { transform: `translate(${PAD},4)` });
  g.append(svg("rect", { x: 0, y: 0, width: SIZE, height: SIZE, class: "gs-pr-frame" }));
  for (const [x, text] of xTicks) {
    const t = svg("text", { x: x * SIZE, y: SIZE + 12, class: "gs-pr-tick", "text-anchor": "middle" });
    t.textContent = text;
    g.append(t);
  }
  for (const [y, text] of yTicks) {
    const t = svg("text", { x: -3, y: (1 - y) * SIZE + 3, class: "gs-pr-tick", "text-anchor": "end" });
    t.textContent = text;
    g.append(t);
  }
  const xt = svg("text", { x: SIZE / 2, y: SIZE + 24, class: "gs-pr-axis", "text-anchor": "middle" });
  xt.textContent = xTitle;
  const yt = svg("text", { x: -SIZE / 2, y: -18, class: "gs-pr-axis", "text-anchor": "middle", transform: "rotate(-90)" });
  yt.textContent = yTitle;
  g.append(xt, yt);
  box.append(g);
  return box;
}

/** A unit coordinate in SVG pixels, to a tenth (drawing, not text). */
function px(unit: number): number {
  return Math.round(unit * SIZE * 10) / 10;
}

function polyline(points: [number, number][], cls: string, name: string): SVGPolylineElement {
  const line = svg("polyline", {
    class: `gs-pr-line ${cls}`,
    points: points.map(([x, y]) => `${px(x)},${px(1 - y)}`).join(" "),
  });
  const title = svg("title");
  title.textContent = name;
  line.append(title);
  return line;
}

function render({ model, el: root }: RenderProps<Model>): () => void {
  mountTheme(root, VIEW_ROOTS.probe, css);
  const title = el("div", "gs-pr-title");
  const top = el("div", "gs-pr-top");
  const rocBox = el("div", "gs-pr-roc");
  const detectors = el("table", "gs-pr-detectors");
  const curveBox = el("div", "gs-pr-curve");
  const features = el("table", "gs-pr-features");
  const error = el("div", "gs-error");
  top.append(rocBox, detectors, curveBox);
  root.append(title, top, features, error);

  const draw = () => {
    const view: ProbeInfo = model.get("_view") ?? {};
    const selected = model.get("selected_feature");
    const rows = view.features ?? [];
    const ids = rows.map((r) => r.feature);
    // The selected latent, else the best single latent (what the result's summary names).
    const shown = ids.includes(selected) ? selected : ids.includes(view.best ?? -1) ? (view.best as number) : (ids[0] ?? -1);
    title.textContent = `${view.sae_name ?? ""} · layer ${view.layer ?? ""} · position ${view.position ?? ""} · ` +
      `${view.n_positive ?? 0} + ${view.n_negative ?? 0} prompts · ${view.scheme ?? ""} · seed ${view.seed ?? ""}`;

    // --- ROC curves on held-out prompts -------------------------------------------------------------------
    const roc = float32Of(model.get("_roc"));
    const plot = frame("false positive rate", "true positive rate", [[0, "0"], [0.5, "0.5"], [1, "1"]],
      [[0, "0"], [0.5, "0.5"], [1, "1"]]);
    const g = plot.querySelector("g") as SVGGElement;
    g.append(svg("line", { x1: 0, y1: SIZE, x2: SIZE, y2: 0, class: "gs-pr-chance" }));
    let probeIndex = 0;
    for (const c of view.roc ?? []) {
      if (c.feature !== -1 && c.feature !== shown) continue;
      const points: [number, number][] = [];
      for (let i = 0; i < c.n; i++) points.push([roc[c.offset + i] ?? 0, roc[c.offset + c.n + i] ?? 0]);
      const cls = c.feature === -1 ? (PROBE_CLASSES[probeIndex++] ?? "gs-pr-diff") : "gs-pr-latent";
      const line = polyline(points, cls, c.name);
      line.dataset.curve = c.name;
      g.append(line);
    }
    rocBox.replaceChildren(el("div", "gs-pr-caption", "ROC on held-out prompts"), plot);

    // --- detectors: AUROC with interval; the shown latent last ---------------------------------------------
    const head = el("tr");
    for (const c of ["", "detector", "held-out AUROC", "95% interval", "held out"]) head.append(el("th", "", c));
    const body: HTMLElement[] = [head];
    (view.detectors ?? []).forEach((d, i) => {
      const tr = el("tr", "gs-pr-detector");
      tr.dataset.detector = d.name;
      tr.append(el("td", `gs-pr-key ${PROBE_CLASSES[i] ?? ""}`), el("td", "", d.title),
        el("td", "gs-pr-num", formatValue(d.auroc)), el("td", "gs-pr-num", interval(d.low, d.high)),
        el("td", "gs-pr-num", String(d.n_held_out)));
      body.push(tr);
    });
    const latent = rows.find((r) => r.feature === shown);
    if (latent) {
      const tr = el("tr", "gs-pr-detector");
      tr.dataset.detector = `#${latent.feature}`;
      tr.append(el("td", "gs-pr-key gs-pr-latent"), el("td", "",
        latent.feature === selected ? `latent #${latent.feature} alone` : `best single latent #${latent.feature}`),
        el("td", "gs-pr-num", formatValue(latent.auroc)), el("td", "gs-pr-num", interval(latent.low, latent.high)),
        el("td", "gs-pr-num", String(latent.n_held_out)));
      body.push(tr);
    }
    detectors.replaceChildren(...body);

    // --- learning curve ---------------------------------------------------------------------------------------
    const sizes = view.curve?.sizes ?? [];
    const lc = frame("training prompts per class", "held-out AUROC",
      sizes.map((s, i) => [sizes.length > 1 ? i / (sizes.length - 1) : 0.5, String(s)]),
      [[0, "0"], [0.5, "0.5"], [1, "1"]]);
    const lg = lc.querySelector("g") as SVGGElement;
    lg.append(svg("line", { x1: 0, y1: SIZE / 2, x2: SIZE, y2: SIZE / 2, class: "gs-pr-chance" }));
    Object.entries(view.curve?.values ?? {}).forEach(([name, values], i) => {
      const points = values.map((v, j): [number, number] => [sizes.length > 1 ? j / (sizes.length - 1) : 0.5, v]);
      const line = polyline(points, PROBE_CLASSES[i] ?? "gs-pr-diff", name);
      line.dataset.curve = name;
      lg.append(line);
      points.forEach(([x, y], j) => {
        const dot = svg("circle", { cx: x * SIZE, cy: (1 - y) * SIZE, r: 2.5, class: `gs-pr-dot ${PROBE_CLASSES[i] ?? ""}` });
        const t = svg("title");
        t.textContent = `${name}: ${sizes[j]} per class → AUROC ${formatValue(values[j] ?? 0)}`;
        dot.append(t);
        lg.append(dot);
      });
    });
    curveBox.replaceChildren(el("div", "gs-pr-caption", "learning curve"), lc);

    // --- the SAE probe's latents ---------------------------------------------------------------------------------
    const fhead = el("tr");
    for (const c of ["latent", "AUROC alone", "95% interval", "density", "Δ mean", "chosen", ""]) fhead.append(el("th", "", c));
    const frows: HTMLElement[] = [fhead];
    for (const r of rows) {
      const tr = el("tr", "gs-pr-row");
      tr.dataset.feature = String(r.feature);
      tr.classList.toggle("gs-selected", r.feature === selected);
      const fid = el("td", "gs-pr-fid", `#${r.feature}`);
      if (r.label) {
        const label = el("span", "gs-pr-label gs-muted", r.label); // spaced by CSS: an inline-block drops a leading space
        label.title = r.label;
        fid.append(label);
      }
      tr.append(fid, el("td", "gs-pr-num", formatValue(r.auroc)), el("td", "gs-pr-num", interval(r.low, r.high)),
        el("td", "gs-pr-num", r.density === null || r.density === undefined ? "–" : formatPercent(r.density)),
        el("td", "gs-pr-num", formatValue(r.mean_difference)),
        el("td", "gs-pr-num", `${r.chosen_in}/${view.n_folds ?? 1}`));
      const act = el("td");
      if (model.get("can_steer")) {
        const steer = el("button", "gs-pr-steer", "steer");
        steer.type = "button";
        steer.dataset.steer = String(r.feature);
        act.append(steer);
      }
      tr.append(act);
      frows.push(tr);
    }
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "gs-muted", "The SAE probe chose no latent.");
      td.colSpan = 7;
      tr.append(td);
      frows.push(tr);
    }
    features.replaceChildren(...frows);
    error.textContent = model.get("error");
  };

  const onClick = (event: MouseEvent) => {
    const target = event.target instanceof Element ? event.target : null;
    const steer = target?.closest<HTMLElement>("[data-steer]");
    if (steer) {
      sendMessage<ProbeViewMessage>(model, { type: "steer", feature: Number(steer.dataset.steer) });
      return;
    }
    const row = target?.closest<HTMLElement>("tr[data-feature]");
    if (row) {
      model.set("selected_feature", Number(row.dataset.feature));
      model.save_changes();
    }
  };
  features.addEventListener("click", onClick);
  const names = ["_view", "_roc", "selected_feature", "can_steer", "error"];
  for (const name of names) model.on(`change:${name}`, draw);
  draw();
  const releaseKeys = keepKeys(root);
  const kernel = watchKernel(model, root, { disable: false }); // the numbers read alone; "steer" needs the kernel
  return () => {
    releaseKeys();
    kernel.dispose();
    features.removeEventListener("click", onClick);
    for (const name of names) model.off(`change:${name}`, draw);
  };
}

export default { render };
