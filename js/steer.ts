// Steer: one slider per SAE feature; baseline and steered continuations streamed side by side.
// Mirrors gemscope_widgets/widgets/steer.py (traits and messages: lib/protocol.ts). Every string from the kernel
// goes in via textContent.
import type { RenderProps } from "@anywidget/types";
import { choice as select, el, labelled, mountTheme } from "./lib/dom";
import { formatValue } from "./lib/format";
import { keepKeys, onCommit, sliderKeys } from "./lib/keys";
import { sendMessage, type SteerFeature as FeatureEntry, type SteerMessage, type SteerModel } from "./lib/protocol";
import { renderTokens } from "./lib/tokens";
import css from "./steer.css";

type Settings = SteerModel["settings"];

function render({ model, el: root }: RenderProps<SteerModel>): () => void {
  mountTheme(root, css);
  const disposers = [keepKeys(root)];
  const head = el("div", "gs-steer-head");
  const errorLine = el("div", "gs-error");
  const featureBox = el("div", "gs-steer-features");
  const addBox = el("div", "gs-steer-settings");
  const settingsBox = el("div", "gs-steer-settings");
  const promptBox = el("div");
  const cols = el("div", "gs-steer-cols");
  const baseCol = el("div", "gs-steer-col gs-baseline");
  const steerCol = el("div", "gs-steer-col gs-steered");
  const baseTokens = el("div");
  const steerTokens = el("div");
  baseCol.append(el("h4", "", "baseline"), baseTokens);
  steerCol.append(el("h4", "", "steered"), steerTokens);
  cols.append(baseCol, steerCol);
  const status = el("div", "gs-status");
  const next = el("div", "gs-next");
  root.append(head, errorLine, featureBox, addBox, settingsBox, promptBox, cols, status, next);

  const send = (message: SteerMessage) => sendMessage(model, message);

  // --- header, add box, settings: built once, refreshed from the model.
  const addInput = el("input");
  addInput.type = "number";
  addInput.min = "0";
  addInput.placeholder = "feature";
  const addButton = el("button", "gs-add", "add feature");
  const addFeature = () => {
    if (addInput.value !== "") send({ type: "add", feature: Number(addInput.value) });
  };
  addButton.addEventListener("click", addFeature);
  addInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter") addFeature();
  });
  const rangeMin = el("input");
  const rangeMax = el("input");
  for (const r of [rangeMin, rangeMax]) {
    r.type = "number";
    r.step = "0.5";
    disposers.push(onCommit(r, () => send({ type: "range", min: Number(rangeMin.value), max: Number(rangeMax.value) })));
  }
  addBox.append(addInput, addButton, labelled("slider range ×", rangeMin), labelled("to", rangeMax));

  const num = (key: keyof Settings, step: string) => {
    const input = el("input");
    input.type = "number";
    input.step = step;
    input.dataset.key = key;
    disposers.push(onCommit(input, (value) => send({ type: "settings", values: { [key]: Number(value) } })));
    return input;
  };
  const maxNew = num("max_new_tokens", "1");
  const temperature = num("temperature", "0.1");
  const topP = num("top_p", "0.05");
  const seed = num("seed", "1");
  const penalty = num("frequency_penalty", "0.1");
  const stopEos = el("input");
  stopEos.type = "checkbox";
  stopEos.addEventListener("change", () => send({ type: "settings", values: { stop_at_eos: stopEos.checked } }));
  const special = el("input");
  special.type = "checkbox";
  special.addEventListener("change", () =>
    send({ type: "settings", values: { steer_special_tokens: special.checked } }),
  );
  const errorMode = select(
    [
      ["keep", "keep the SAE's reconstruction error"],
      ["replace", "replace the activation by the SAE reconstruction"],
    ],
    "keep",
  );
  errorMode.className = "gs-error-mode";
  errorMode.addEventListener("change", () => send({ type: "settings", values: { error: errorMode.value } }));
  settingsBox.append(
    labelled("max new tokens", maxNew),
    labelled("temperature (0 = greedy)", temperature),
    labelled("top-p", topP),
    labelled("seed", seed),
    labelled("frequency penalty", penalty),
    labelled("stop at <eos>/<end_of_turn>", stopEos),
    labelled("steer special tokens", special),
    labelled("SAE error:", errorMode),
  );

  const drawHead = () => {
    const title = el("b", "", "Steering");
    const sae = el("span", "gs-muted", model.get("sae_name"));
    const unit = el("span", "gs-muted", "strength: × the feature's typical max activation (raw value beside it)");
    head.replaceChildren(title, sae, unit);
  };
  const drawSettings = () => {
    const s = model.get("settings");
    const active = document.activeElement;
    for (const input of [maxNew, temperature, topP, seed, penalty]) {
      if (input !== active) input.value = String(s[input.dataset.key as keyof Settings]);
    }
    stopEos.checked = s.stop_at_eos;
    special.checked = s.steer_special_tokens;
    errorMode.value = s.error;
    const [lo, hi] = model.get("strength_range");
    if (rangeMin !== active) rangeMin.value = String(lo);
    if (rangeMax !== active) rangeMax.value = String(hi);
  };

  // --- one row per feature. Rows are rebuilt only when the set of features or the range changes, so a
  // slider being dragged keeps its focus and pointer capture.
  let rowKey = "";
  const sliders = new Map<number, { input: HTMLInputElement; value: HTMLSpanElement; mode: HTMLSelectElement;
    positions: HTMLSelectElement }>();
  const valueText = (f: FeatureEntry) =>
    f.mode === "ablate"
      ? "ablate (→ 0)"
      : `${formatValue(f.multiple)}× = ${formatValue(f.raw)} raw (${f.scale_source})`;
  const drawFeatures = () => {
    const features = model.get("features");
    const [lo, hi] = model.get("strength_range");
    const key = JSON.stringify([features.map((f) => f.feature), lo, hi]);
    if (key !== rowKey) {
      rowKey = key;
      sliders.clear();
      const rows = features.map((f) => {
        const row = el("div", "gs-steer-row");
        row.dataset.feature = String(f.feature);
        const name = el("span", "gs-steer-name", `#${f.feature}`);
        const mode = select([["add", "add"], ["clamp", "clamp"], ["ablate", "ablate"]], f.mode);
        mode.className = "gs-mode";
        const positions = select([["all", "all tokens"], ["prompt", "prompt only"], ["generated", "generated only"]],
          f.positions);
        positions.className = "gs-positions";
        const input = el("input", "gs-slider");
        input.type = "range";
        input.min = String(lo);
        input.max = String(hi);
        input.step = String((hi - lo) / 120);
        input.setAttribute("aria-label", `strength of feature ${f.feature}`);
        const value = el("span", "gs-steer-value");
        const remove = el("button", "gs-remove", "×");
        remove.title = `remove feature ${f.feature}`;
        let timer: number | undefined;
        const sendValue = () => send({ type: "set", feature: f.feature, key: "multiple", value: Number(input.value) });
        // While dragging, at most one update per 150 ms; the release always sends the final value.
        input.addEventListener("input", () => {
          value.textContent = `${formatValue(Number(input.value))}×`;
          if (timer === undefined) timer = window.setTimeout(() => { timer = undefined; sendValue(); }, 150);
        });
        input.addEventListener("change", () => {
          if (timer !== undefined) window.clearTimeout(timer);
          timer = undefined;
          sendValue();
        });
        mode.addEventListener("change", () => send({ type: "set", feature: f.feature, key: "mode", value: mode.value }));
        positions.addEventListener("change", () =>
          send({ type: "set", feature: f.feature, key: "positions", value: positions.value }),
        );
        remove.addEventListener("click", () => send({ type: "remove", feature: f.feature }));
        sliderKeys(input); // the row and its listeners go together when the rows are rebuilt
        sliders.set(f.feature, { input, value, mode, positions });
        row.append(name, mode, positions, input, value, remove);
        return row;
      });
      featureBox.replaceChildren(...rows);
      if (!features.length) featureBox.append(el("div", "gs-muted", "No features: add one below."));
    }
    for (const f of features) {
      const s = sliders.get(f.feature);
      if (!s) continue;
      if (document.activeElement !== s.input) s.input.value = String(f.multiple);
      s.input.disabled = f.mode === "ablate";
      s.value.textContent = valueText(f);
      s.mode.value = f.mode;
      s.positions.value = f.positions;
    }
  };

  const drawPrompt = () => {
    const label = el("div", "gs-muted", model.get("chat") ? "prompt (chat template)" : "prompt");
    const tokens = el("div");
    renderTokens(tokens, model.get("prompt_tokens"), model.get("prompt_special"));
    promptBox.replaceChildren(label, tokens);
  };

  const drawColumn = (container: HTMLElement, tokens: string[], column: string) => {
    const spans = renderTokens(container, tokens);
    const d = model.get("divergence");
    spans.forEach((span, i) => {
      span.classList.add("gs-clickable");
      span.dataset.column = column;
      if (i === d) {
        span.classList.add("gs-diverge");
        span.title = `first divergence (token ${i})`;
      }
    });
  };
  const drawColumns = () => {
    drawColumn(baseTokens, model.get("baseline_tokens"), "baseline");
    drawColumn(steerTokens, model.get("steered_tokens"), "steered");
    cols.classList.toggle("gs-running", model.get("running"));
  };
  const onColumnClick = (event: MouseEvent) => {
    const target = event.target instanceof Element ? event.target.closest<HTMLElement>(".gs-token[data-index]") : null;
    if (!target || model.get("running")) return;
    const column = target.dataset.column === "baseline" ? "baseline" : "steered";
    send({ type: "next", index: Number(target.dataset.index), column });
  };
  cols.addEventListener("click", onColumnClick);

  const drawStatus = () => {
    status.textContent = model.get("status");
    errorLine.textContent = model.get("error");
  };

  const drawNext = () => {
    const n = model.get("next_token");
    if (!n.tokens || !n.tokens.length) {
      next.replaceChildren(el("div", "gs-muted", "Click a generated token to see the next-token probabilities."));
      return;
    }
    const caption = el("div", "", `Next token after ${JSON.stringify(n.context)} (${n.column} token ${n.index}):`);
    const table = el("table");
    const header = el("tr");
    header.append(el("th", "", "token"), el("th", "", "baseline"), el("th", "", "steered"));
    table.append(header);
    const bar = (p: number) => {
      const wrap = el("td");
      const b = el("span", "gs-bar");
      b.style.width = `${Math.round(p * 80)}px`;
      wrap.append(b, document.createTextNode(` ${(100 * p).toFixed(1)}%`));
      return wrap;
    };
    n.tokens.forEach((tok, i) => {
      const tr = el("tr", tok === n.chosen ? "gs-chosen" : "");
      tr.append(el("td", "", JSON.stringify(tok)), bar(n.baseline?.[i] ?? 0), bar(n.steered?.[i] ?? 0));
      table.append(tr);
    });
    next.replaceChildren(caption, table);
  };

  drawHead();
  drawSettings();
  drawFeatures();
  drawPrompt();
  drawColumns();
  drawStatus();
  drawNext();
  const handlers: [string, () => void][] = [
    ["change:sae_name", drawHead],
    ["change:settings", drawSettings],
    ["change:strength_range", () => { drawSettings(); drawFeatures(); }],
    ["change:features", drawFeatures],
    ["change:prompt_tokens", drawPrompt],
    ["change:chat", drawPrompt],
    ["change:baseline_tokens", drawColumns],
    ["change:steered_tokens", drawColumns],
    ["change:divergence", drawColumns],
    ["change:running", drawColumns],
    ["change:status", drawStatus],
    ["change:error", drawStatus],
    ["change:next_token", drawNext],
  ];
  for (const [event, fn] of handlers) model.on(event, fn);
  return () => {
    cols.removeEventListener("click", onColumnClick);
    for (const dispose of disposers) dispose();
    for (const [event, fn] of handlers) model.off(event, fn);
  };
}

export default { render };
