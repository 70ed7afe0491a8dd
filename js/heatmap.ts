// Heatmap: a prompt's tokens × its top SAE features, coloured by activation.
// Mirrors gemscope_widgets/widgets/heatmap.py (traits: HeatmapModel in lib/protocol.ts) and payload.py (the
// binary layout, decoded by lib/sparse.ts). One PromptGrid (lib/heatgrid.ts) per prompt; this file holds the
// toolbar, the side list and the wiring.
import type { RenderProps } from "@anywidget/types";
import css from "./heatmap.css";
import { normalise } from "./lib/colors";
import { el, labelled, mountTheme, VIEW_ROOTS } from "./lib/dom";
import { formatValue, visibleText } from "./lib/format";
import { densityText, describeFeature, type FeatureNotes, NO_NOTES, PromptGrid, type Selection } from "./lib/heatgrid";
import { watchKernel } from "./lib/live";
import { gridKey, keepKeys, moveIndex, onCommit, sliderKeys } from "./lib/keys";
import type { HeatmapModel, RankBy } from "./lib/protocol";
import { float32Of as floats, Payload } from "./lib/sparse";
import { renderToken } from "./lib/tokens";

const MAX_TOP_N = 256; // the most feature columns the grid draws (heatmap.py's MAX_TOP_N)
const KEY_HINT = "Click the grid, then ↑ ↓ move the token, ← → the feature, Enter opens it";

function render({ model, el: root }: RenderProps<HeatmapModel>): () => void {
  mountTheme(root, VIEW_ROOTS.heatmap, css);
  const toolbar = el("div", "gs-hm-toolbar");
  const main = el("div", "gs-hm-main");
  const blocksEl = el("div", "gs-hm-blocks");
  const side = el("div", "gs-hm-side");
  main.append(blocksEl, side);
  // The grid takes the keyboard once clicked (or tabbed to): ↑/↓ move the token, ←/→ the feature column,
  // Enter selects that feature (the explorer opens its pane). Keys stop in the view (keepKeys).
  main.tabIndex = 0;
  main.setAttribute("aria-label", "heatmap: ↑ ↓ move the token, ← → the feature, Enter opens the feature");
  const keyHint = el("div", "gs-hm-keys gs-muted", KEY_HINT);
  root.append(toolbar, keyHint, main);

  const saeSelect = el("select", "gs-hm-sae");
  const rankSelect = el("select", "gs-hm-rank");
  const rankNames: Record<RankBy, string> = {
    specific: "max activation, dense last",
    max: "max activation",
    sum: "summed activation",
  };
  for (const by of ["specific", "max", "sum"] as RankBy[]) {
    const opt = el("option", "", rankNames[by]);
    opt.value = by;
    rankSelect.append(opt);
  }
  const topInput = el("input", "gs-hm-topn");
  topInput.type = "number";
  topInput.min = "1";
  topInput.max = String(MAX_TOP_N);
  const status = el("span", "gs-status gs-hm-status");
  // The level slider: the shown SAE's first k latents only (its coarse-to-fine levels; the last is all of them).
  const levelInput = el("input", "gs-hm-level");
  levelInput.type = "range";
  levelInput.min = "0";
  levelInput.step = "1";
  levelInput.setAttribute("aria-label", "level: show the first k latents only");
  const levelText = el("span", "gs-hm-level-text");
  // Said when the SAE was not trained nested: its first k latents are then not a coarse level, only the first k.
  const levelNote = el("span", "gs-muted gs-hm-level-note",
    " · not a Matryoshka SAE: the first latents are not a coarse level");
  const levelBox = labelled("level ", levelInput);
  levelBox.append(levelText, levelNote);

  let data: Payload;
  let blocks: PromptGrid[] = [];
  const selection = (): Selection => ({
    prompt: model.get("selected_prompt"),
    token: model.get("selected_token"),
    feature: model.get("selected_feature"),
  });
  const sae = () => Math.min(Math.max(0, model.get("sae_index")), data.header.saes.length - 1);
  const notes = (): FeatureNotes => {
    const info = model.get("feature_info") ?? {};
    const mine = info[String(sae())];
    if (!mine || typeof mine !== "object") return NO_NOTES;
    const limit = typeof info.dense_above === "number" ? info.dense_above : 0.1;
    const density = new Map(Object.entries(mine.density ?? {}).map(([f, d]) => [Number(f), d] as [number, number]));
    const labels = new Map(Object.entries(mine.labels ?? {}).map(([f, t]) => [Number(f), t] as [number, string]));
    const dense = new Set([...density].filter(([, d]) => d > limit).map(([f]) => f));
    return { dense, labels, density };
  };

  const select = (change: Partial<Selection>) => {
    if (change.prompt !== undefined) model.set("selected_prompt", change.prompt);
    if (change.token !== undefined) model.set("selected_token", change.token);
    if (change.feature !== undefined) model.set("selected_feature", change.feature);
    model.save_changes();
  };

  const drawToolbar = () => {
    const saes = data.header.saes;
    saeSelect.replaceChildren(
      ...saes.map((s, i) => {
        const opt = el("option", "", `${s.name} (${s.width} features)`);
        opt.value = String(i);
        return opt;
      }),
    );
    const parts: HTMLElement[] = [];
    if (saes.length > 1) parts.push(labelled("SAE ", saeSelect));
    else parts.push(el("span", "gs-hm-sae-name", saes[0]?.name ?? ""));
    parts.push(labelled("top ", topInput), labelled("features by ", rankSelect));
    if (levelsOf().length > 1) parts.push(levelBox);
    parts.push(status);
    toolbar.replaceChildren(...parts);
    syncToolbar();
  };
  const levelsOf = (): number[] => (model.get("levels") ?? [])[sae()] ?? [];
  // Slider position i shows the first levels[i] latents; the last position (the width) is level 0: all of them.
  const syncLevel = () => {
    const levels = levelsOf();
    const width = data.header.saes[sae()]?.width ?? 0;
    const level = model.get("level") || width;
    levelInput.max = String(Math.max(0, levels.length - 1));
    const i = levels.indexOf(level);
    levelInput.value = String(i >= 0 ? i : levels.length - 1);
    levelText.textContent = level >= width ? `all ${width.toLocaleString()} latents` : `first ${level.toLocaleString()} of ${width.toLocaleString()} latents`;
    levelNote.hidden = level >= width || !!(model.get("nested") ?? [])[sae()];
  };
  // The controls show the model's values; the toolbar itself is left alone so a focused box keeps its focus.
  const syncToolbar = () => {
    syncLevel();
    saeSelect.value = String(sae());
    rankSelect.value = model.get("rank_by");
    if (document.activeElement !== topInput || Number(topInput.value) !== model.get("top_n")) {
      topInput.value = String(model.get("top_n"));
    }
  };

  const drawStatus = () => {
    const s = data.header.saes[sae()];
    const clamped = data.header.blocks.filter((b) => b.sae === sae()).reduce((a, b) => a + b.clamped, 0);
    const lines: string[] = [];
    if (data.header.top_k) lines.push(`top ${data.header.top_k} features kept per token`);
    if (s.feature_max) lines.push("colours scaled by corpus maxima");
    if (model.get("rank_by") === "specific" && notes().density.size === 0) lines.push("no densities known yet: ranked by max");
    if (clamped) lines.push(`${clamped} values above 65504 clamped`);
    status.textContent = lines.join(" · ");
  };

  const drawSide = () => {
    const { prompt, token, feature } = selection();
    const known = notes();
    const parts: HTMLElement[] = [];
    const block = blocks[prompt];
    if (block && token >= 0 && token < block.info.tokens.length) {
      const head = el("h4", "gs-hm-side-title", `Token ${token}: `);
      head.append(renderToken(block.info.tokens[token], { special: block.info.special[token] }));
      parts.push(head);
      const rows = block.csr.row(token, model.get("list_k"));
      if (rows.length === 0) {
        const why = block.info.special[token] ? "special tokens are left out" : "no feature fires here";
        parts.push(el("div", "gs-muted", `No active features (${why}).`));
      } else {
        const list = el("ol", "gs-hm-list");
        const top = rows[0].value;
        for (const { feature: f, value } of rows) {
          const item = el("li", "gs-hm-item");
          item.dataset.f = String(f);
          if (f === feature) item.classList.add("gs-selected");
          const box = el("span", "gs-hm-barbox");
          const bar = el("span", "gs-hm-bar");
          bar.style.display = "block";
          bar.style.width = `${Math.max(2, Math.round(normalise(value, top) * 100))}%`;
          box.append(bar);
          const density = el("span", "gs-hm-density", densityText(known.density.get(f)));
          if (known.dense.has(f)) density.classList.add("gs-hm-dense");
          item.title = describeFeature(f, known);
          // The label on a line of its own, the width of the list; cut with an ellipsis, whole on hover.
          const label = el("span", "gs-hm-flabel", known.labels.get(f) ?? "");
          label.title = known.labels.get(f) ?? "";
          item.append(
            el("span", "gs-hm-fid", `#${f}`),
            label,
            box,
            el("span", "gs-hm-value", formatValue(value)),
            density,
          );
          list.append(item);
        }
        parts.push(list);
      }
    } else {
      parts.push(el("div", "gs-muted", "Click a token to list its top features."));
    }
    if (feature >= 0) {
      const title = el("h4", "gs-hm-feature-title", `Feature #${feature}`);
      parts.push(title, el("div", "gs-hm-note", describeFeature(feature, known).split(" · ").slice(1).join(" · ")));
      const lines = blocks.map((b) => {
        const col = b.csr.column(feature);
        let best = 0;
        for (let t = 1; t < col.length; t++) if (col[t] > col[best]) best = t;
        const text = col[best] > 0 ? `max ${formatValue(col[best])} at “${visibleText(b.info.tokens[best])}”` : "not active";
        return el("div", "gs-hm-feature-line", blocks.length > 1 ? `prompt ${b.index + 1}: ${text}` : text);
      });
      parts.push(...lines);
    } else {
      parts.push(el("div", "gs-muted", "Click a feature to colour the text by it."));
    }
    side.replaceChildren(...parts);
  };

  const drawSelection = () => {
    const feature = model.get("selected_feature");
    // One selection for heatmap and pane: a feature chosen elsewhere (a related-feature chip) gets a column.
    if (feature >= 0 && blocks.some((b) => !b.features.includes(feature))) return drawGrids();
    for (const b of blocks) b.showSelection();
    drawSide();
  };

  const drawGrids = () => {
    const n = Math.min(MAX_TOP_N, Math.max(1, model.get("top_n")));
    const rank = model.get("rank_by");
    const by: RankBy = rank === "sum" || rank === "max" ? rank : "specific";
    const known = notes();
    for (const b of blocks) b.setData(data.csr(b.index, sae()), data.featureMax(sae()), n, by, known);
    drawStatus();
    for (const b of blocks) b.showSelection();
    drawSide();
  };

  const drawAll = () => {
    for (const b of blocks) b.destroy();
    data = new Payload(model.get("_header"), model.get("_data"));
    blocks = data.header.prompts.map((info, p) => new PromptGrid(p, info, selection));
    cursor = -1;
    keyHint.textContent = KEY_HINT;
    const track = floats(model.get("_track"));
    let offset = 0;
    for (const b of blocks) {
      const n = b.info.tokens.length;
      b.setTrack(track.length ? track.subarray(offset, offset + n) : null, model.get("track_label"));
      offset += n;
    }
    blocksEl.replaceChildren(...blocks.map((b) => b.root));
    drawToolbar();
    drawGrids();
  };

  // The keyboard cursor: a feature column (-1: none; then ←/→ start from the selected feature).
  let cursor = -1;
  const setCursor = (f: number) => {
    cursor = f;
    for (const b of blocks) b.setCursor(f);
    const known = notes();
    keyHint.textContent = f >= 0 ? `${describeFeature(f, known)}: Enter opens it` : KEY_HINT;
  };
  const onKey = (event: KeyboardEvent) => {
    const step = gridKey(event.key);
    if (step === null || event.altKey || event.ctrlKey || event.metaKey) return;
    event.preventDefault(); // no scrolling of the page or the grid by the same keys
    const { prompt, token, feature } = selection();
    const p = prompt >= 0 && prompt < blocks.length ? prompt : 0;
    const block = blocks[p];
    if (!block) return;
    if (step === "clear") return setCursor(-1);
    if (step === "open") {
      const row = token >= 0 ? block.csr.row(token, 1) : [];
      const f = cursor >= 0 ? cursor : feature >= 0 ? feature : (row[0]?.feature ?? -1);
      if (f < 0) return;
      setCursor(-1);
      return select({ prompt: p, feature: f });
    }
    if (step.rows) {
      const t = moveIndex(prompt === p ? token : -1, step.rows, block.info.tokens.length);
      if (t >= 0) select({ prompt: p, token: t });
    }
    if (step.cols) {
      const cols = block.features;
      const from = cols.indexOf(cursor >= 0 ? cursor : feature);
      const j = moveIndex(from, step.cols, cols.length);
      if (j >= 0) setCursor(cols[j]);
    }
  };
  main.addEventListener("keydown", onKey);

  const onClick = (event: MouseEvent) => {
    const target = event.target instanceof Element ? event.target : null;
    if (!target) return;
    if (cursor >= 0) setCursor(-1); // a click selects: the keyboard goes on from there
    const item = target.closest<HTMLElement>(".gs-hm-item[data-f]");
    if (item) return select({ feature: Number(item.dataset.f) });
    const blockEl = target.closest<HTMLElement>(".gs-hm-block");
    if (!blockEl) return;
    const prompt = Number(blockEl.dataset.p);
    const cell = target.closest<HTMLElement>(".gs-hm-cell");
    if (cell) return select({ prompt, token: Number(cell.dataset.t), feature: Number(cell.dataset.f) });
    const head = target.closest<HTMLElement>(".gs-hm-fhead");
    if (head) return select({ prompt, feature: Number(head.dataset.f) });
    const label = target.closest<HTMLElement>(".gs-hm-label[data-t]");
    if (label) return select({ prompt, token: Number(label.dataset.t) });
    const tok = target.closest<HTMLElement>(".gs-hm-text .gs-token[data-index]");
    if (tok) return select({ prompt, token: Number(tok.dataset.index) });
  };
  const onSae = () => {
    model.set("sae_index", Number(saeSelect.value));
    model.set("selected_feature", -1); // feature ids mean something else in another SAE
    model.save_changes();
  };
  const onRank = () => {
    model.set("rank_by", rankSelect.value as RankBy);
    model.save_changes();
  };
  const onLevel = () => {
    const levels = levelsOf();
    const k = levels[Number(levelInput.value)] ?? 0;
    model.set("level", k >= (data.header.saes[sae()]?.width ?? 0) ? 0 : k);
    model.save_changes();
  };
  const onTop = (text: string) => {
    const n = Math.round(Number(text));
    if (text.trim() === "" || !Number.isFinite(n) || n < 1) {
      topInput.value = String(model.get("top_n")); // an invalid box reverts to the last good value
      return;
    }
    model.set("top_n", Math.min(MAX_TOP_N, n));
    model.save_changes();
    if (n > MAX_TOP_N) topInput.value = String(MAX_TOP_N);
  };
  root.addEventListener("click", onClick);
  saeSelect.addEventListener("change", onSae);
  rankSelect.addEventListener("change", onRank);
  levelInput.addEventListener("change", onLevel);
  const disposers = [keepKeys(root), onCommit(topInput, onTop), sliderKeys(levelInput)];
  const kernel = watchKernel(model, root, { disable: false }); // the grid works without it; selections wait
  disposers.push(kernel.dispose);

  const onGrid = () => {
    syncToolbar();
    drawGrids();
  };
  const events: [string, () => void][] = [
    ["change:_header", drawAll],
    ["change:_data", drawAll],
    ["change:sae_index", onGrid],
    ["change:rank_by", onGrid],
    ["change:top_n", onGrid],
    ["change:level", syncLevel],
    ["change:levels", drawToolbar],
    ["change:nested", syncLevel],
    ["change:list_k", drawSide],
    ["change:feature_info", onGrid],
    ["change:selected_prompt", drawSelection],
    ["change:selected_token", drawSelection],
    ["change:selected_feature", drawSelection],
  ];
  for (const [name, fn] of events) model.on(name, fn);
  try {
    drawAll();
  } catch (err) {
    root.append(el("div", "gs-error", `Could not draw the heatmap: ${String(err)}`));
  }

  return () => {
    for (const [name, fn] of events) model.off(name, fn);
    root.removeEventListener("click", onClick);
    main.removeEventListener("keydown", onKey);
    for (const dispose of disposers) dispose();
    for (const b of blocks) b.destroy();
  };
}

export default { render };
