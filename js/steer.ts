// Steer: one slider per SAE feature; baseline and steered continuations streamed side by side.
// Mirrors gemscope_widgets/widgets/steer.py (traits and messages: lib/protocol.ts). Every string from the kernel
// goes in via textContent.
import type { RenderProps } from "@anywidget/types";
import { choice as select, el, labelled, mountTheme, VIEW_ROOTS } from "./lib/dom";
import { EchoGuard, requestId } from "./lib/echo";
import { formatPercent, formatValue } from "./lib/format";
import { watchKernel } from "./lib/live";
import { keepKeys, onCommit, sliderKeys } from "./lib/keys";
import { sendMessage, type SteerFeature as FeatureEntry, type SteerMessage, type SteerModel } from "./lib/protocol";
import { renderTokens } from "./lib/tokens";
import css from "./steer.css";

type Settings = SteerModel["settings"];


function render({ model, el: root }: RenderProps<SteerModel>): () => void {
  mountTheme(root, VIEW_ROOTS.steer, css);
  const disposers = [keepKeys(root)];
  const head = el("div", "gs-steer-head");
  const errorLine = el("div", "gs-error");
  const noteLine = el("div", "gs-note gs-muted");
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
  root.append(head, errorLine, noteLine, featureBox, addBox, settingsBox, promptBox, cols, status, next);

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

  const unitChoice = select(
    [
      ["typical", "× each entry's unit"],
      ["raw", "raw values"],
    ],
    "typical",
  );
  unitChoice.className = "gs-unit-choice";
  unitChoice.addEventListener("change", () =>
    send({ type: "unit", value: unitChoice.value === "raw" ? "raw" : "typical" }),
  );
  const drawHead = () => {
    const title = el("b", "", "Steering");
    const sae = el("span", "gs-muted", model.get("sae_name"));
    unitChoice.value = model.get("unit");
    head.replaceChildren(title, sae, labelled("strength:", unitChoice));
  };
  const drawNote = () => {
    noteLine.textContent = model.get("note");
  };
  const drawSettings = (force = false) => {
    const s = model.get("settings");
    const active = force ? null : document.activeElement;
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

  // --- one row per feature or direction. Rows are rebuilt only when the set of entries or the range changes,
  // so a slider being dragged keeps its focus and pointer capture.
  let rowKey = "";
  interface Row {
    input: HTMLInputElement;
    value: HTMLSpanElement;
    unit: HTMLSpanElement;
    label: HTMLSpanElement;
    widened: HTMLSpanElement;
    mode: HTMLSelectElement;
    positions: HTMLSelectElement;
    // Older kernel values do not move the slider or its label back while the user drags or awaits an echo.
    guard: EchoGuard;
  }
  const rows = new Map<string, Row>();
  const entries = (): FeatureEntry[] => [...model.get("features"), ...(model.get("directions") ?? [])];
  const isFraction = (f: FeatureEntry) => f.kind === "direction" && f.mode === "ablate";
  const valueText = (f: FeatureEntry, multiple = f.multiple) => {
    if (f.kind === "feature" && f.mode === "ablate") return "ablate (→ 0)";
    if (isFraction(f)) return `${formatValue(100 * multiple)}% of the component removed`;
    if (f.scale_source === "raw") return `${formatValue(multiple)} raw`;
    return `${formatValue(multiple)}× = ${formatValue(multiple * f.scale)} raw`;
  };
  const sendEntry = (f: FeatureEntry, key: "multiple" | "mode" | "positions", value: number | string,
    request = requestId()) => {
    if (f.kind === "direction") send({ type: "set_direction", direction: String(f.key), key, value, request });
    else send({ type: "set", feature: Number(f.feature), key, value, request });
  };
  const drawFeatures = () => {
    const all = entries();
    const [lo, hi] = model.get("strength_range");
    const key = JSON.stringify([all.map((f) => [f.key, isFraction(f)]), lo, hi]);
    if (key !== rowKey) {
      rowKey = key;
      const previous = new Map(rows);
      rows.clear();
      const built = all.map((f) => {
        const id = String(f.key);
        const row = el("div", "gs-steer-row");
        row.dataset.key = id;
        if (f.kind === "feature") row.dataset.feature = String(f.feature);
        else row.dataset.direction = id;
        const title = f.kind === "direction" && f.mode === "add" ? `${f.label} @ layer ${f.layer}` : f.label;
        const name = el("span", "gs-steer-name", title);
        name.title = title;
        // The feature's label (from the kernel: Scope.labels) under its id, cut short, whole on hover.
        const label = el("span", "gs-steer-label gs-muted");
        // Said next to the slider itself when its range was widened to show this value.
        const widened = el("span", "gs-steer-widened");
        widened.setAttribute("role", "note");
        const modes: [string, string][] =
          f.kind === "direction"
            ? [["ablate", "ablate"], ["add", "add"]]
            : [["add", "add"], ["clamp", "clamp"], ["ablate", "ablate"]];
        const mode = select(modes, f.mode);
        mode.className = "gs-mode";
        const positions = select([["all", "all tokens"], ["prompt", "prompt only"], ["generated", "generated only"]],
          f.positions);
        positions.className = "gs-positions";
        const input = el("input", "gs-slider");
        input.type = "range";
        const [min, max] = isFraction(f) ? [0, 1] : [lo, hi];
        input.min = String(min);
        input.max = String(max);
        input.step = String((max - min) / 120);
        input.setAttribute("aria-label", `strength of ${f.kind === "feature" ? `feature ${f.feature}` : f.label}`);
        const value = el("span", "gs-steer-value");
        const unit = el("span", "gs-steer-unit gs-muted");
        const remove = el("button", "gs-remove", "×");
        remove.title = `remove ${f.kind === "feature" ? `feature ${f.feature}` : f.label}`;
        const state: Row = { input, value, unit, label, widened, mode, positions,
          guard: previous.get(id)?.guard ?? new EchoGuard() };
        let timer: number | undefined;
        const current = () => entries().find((e) => String(e.key) === id) ?? f;
        const sendValue = () => {
          const v = Number(input.value);
          const request = requestId();
          if (state.guard.send(v, current().multiple, request)) sendEntry(current(), "multiple", v, request);
        };
        // While dragging, at most one update per 150 ms; the release always sends the final value.
        input.addEventListener("input", () => {
          state.guard.grab();
          value.textContent = valueText(current(), Number(input.value));
          if (timer === undefined) timer = window.setTimeout(() => { timer = undefined; sendValue(); }, 150);
        });
        input.addEventListener("change", () => {
          if (timer !== undefined) window.clearTimeout(timer);
          timer = undefined;
          state.guard.release();
          sendValue();
        });
        mode.addEventListener("change", () => sendEntry(current(), "mode", mode.value));
        positions.addEventListener("change", () => sendEntry(current(), "positions", positions.value));
        remove.addEventListener("click", () => {
          if (f.kind === "direction") send({ type: "remove_direction", direction: id });
          else send({ type: "remove", feature: Number(f.feature) });
        });
        sliderKeys(input); // the row and its listeners go together when the rows are rebuilt
        rows.set(id, state);
        row.dataset.gsAnchor = ""; // lib/live.ts says next to this row why a change was not sent
        row.append(name, mode, positions, input, value, remove, label, unit, widened);
        return row;
      });
      featureBox.replaceChildren(...built);
      if (!all.length) featureBox.append(el("div", "gs-muted", "No features: add one below."));
    }
    const note = model.get("note");
    for (const f of all) {
      const s = rows.get(String(f.key));
      if (!s) continue;
      s.label.textContent = f.feature_label ?? "";
      s.label.title = f.feature_label ?? "";
      s.label.hidden = !f.feature_label;
      // The kernel widened the range to show a value outside it (Steer._fit_range): the row at its end says so.
      const atEnd = !isFraction(f) && note !== "" && (f.multiple <= lo || f.multiple >= hi);
      s.widened.hidden = !atEnd;
      s.widened.textContent = atEnd
        ? `slider widened to ${formatValue(lo)}…${formatValue(hi)} to show ${formatValue(f.multiple)}; `
          + "set “slider range” below to narrow it"
        : "";
      // An older value while the user drags or the kernel has not yet handled the last value sent.
      if (!s.guard.accept(model.get("applied_request"))) continue;
      s.input.value = String(f.multiple);
      s.input.disabled = f.kind === "feature" && f.mode === "ablate";
      s.value.textContent = valueText(f);
      s.unit.textContent = `unit: ${f.unit_source}`;
      s.unit.title = f.scale_source;
      s.mode.value = f.mode;
      s.positions.value = f.positions;
    }
  };
  const onError = () => {
    // A refused value: the kernel kept the old one, so show it again (nothing else will echo it).
    if (!model.get("error")) return;
    for (const s of rows.values()) s.guard.reset();
    drawFeatures();
    drawSettings(true);
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
      wrap.append(b, document.createTextNode(` ${formatPercent(p)}`));
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
  drawNote();
  drawSettings();
  drawFeatures();
  drawPrompt();
  drawColumns();
  drawStatus();
  drawNext();
  // Every control asks the kernel: without one a slider would move its label while the texts stay old.
  // When it stops answering, the sliders go back to the values the texts were made with.
  const onOffline = () => {
    for (const s of rows.values()) s.guard.reset(); // no echo will come
    drawFeatures();
  };
  disposers.push(watchKernel(model, root, { onChange: (live) => live || onOffline() }).dispose);
  const handlers: [string, () => void][] = [
    ["change:sae_name", drawHead],
    ["change:unit", drawHead],
    ["change:note", () => { drawNote(); drawFeatures(); }],
    ["change:settings", () => drawSettings()],
    ["change:strength_range", () => { drawSettings(); drawFeatures(); }],
    ["change:features", drawFeatures],
    ["change:directions", drawFeatures],
    ["change:applied_request", drawFeatures],
    ["change:error", onError],
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
