// Heatmap: a prompt's tokens × its top SAE features, coloured by activation.
// Mirrors gemscope_widgets/widgets/heatmap.py (traits: HeatmapModel in lib/protocol.ts) and payload.py (the
// binary layout, decoded by lib/sparse.ts). One PromptGrid (lib/heatgrid.ts) per prompt; this file holds the
// toolbar, the side list and the wiring.
import type { RenderProps } from "@anywidget/types";
import css from "./heatmap.css";
import { normalise } from "./lib/colors";
import { el, labelled, mountTheme } from "./lib/dom";
import { formatValue } from "./lib/format";
import { PromptGrid, type Selection } from "./lib/heatgrid";
import { keepKeys, onCommit } from "./lib/keys";
import type { HeatmapModel, RankBy } from "./lib/protocol";
import { Payload } from "./lib/sparse";
import { renderToken, visibleText } from "./lib/tokens";

const MAX_TOP_N = 256; // the most feature columns the grid draws (heatmap.py's MAX_TOP_N)

function render({ model, el: root }: RenderProps<HeatmapModel>): () => void {
  mountTheme(root, css);
  root.classList.add("gs-heatmap");
  const toolbar = el("div", "gs-hm-toolbar");
  const main = el("div", "gs-hm-main");
  const blocksEl = el("div", "gs-hm-blocks");
  const side = el("div", "gs-hm-side");
  main.append(blocksEl, side);
  root.append(toolbar, main);

  const saeSelect = el("select", "gs-hm-sae");
  const rankSelect = el("select", "gs-hm-rank");
  for (const by of ["max", "sum"]) {
    const opt = el("option", "", by === "max" ? "max activation" : "summed activation");
    opt.value = by;
    rankSelect.append(opt);
  }
  const topInput = el("input", "gs-hm-topn");
  topInput.type = "number";
  topInput.min = "1";
  topInput.max = String(MAX_TOP_N);
  const status = el("span", "gs-status gs-hm-status");

  let data: Payload;
  let blocks: PromptGrid[] = [];
  const selection = (): Selection => ({
    prompt: model.get("selected_prompt"),
    token: model.get("selected_token"),
    feature: model.get("selected_feature"),
  });
  const sae = () => Math.min(Math.max(0, model.get("sae_index")), data.header.saes.length - 1);

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
    parts.push(labelled("top ", topInput), labelled("features by ", rankSelect), status);
    toolbar.replaceChildren(...parts);
    syncToolbar();
  };
  // The controls show the model's values; the toolbar itself is left alone so a focused box keeps its focus.
  const syncToolbar = () => {
    saeSelect.value = String(sae());
    rankSelect.value = model.get("rank_by");
    if (document.activeElement !== topInput || Number(topInput.value) !== model.get("top_n")) {
      topInput.value = String(model.get("top_n"));
    }
  };

  const drawStatus = () => {
    const s = data.header.saes[sae()];
    const clamped = data.header.blocks.filter((b) => b.sae === sae()).reduce((a, b) => a + b.clamped, 0);
    const notes = [];
    if (data.header.top_k) notes.push(`top ${data.header.top_k} features kept per token`);
    if (s.feature_max) notes.push("colours scaled by corpus maxima");
    if (clamped) notes.push(`${clamped} values above 65504 clamped`);
    status.textContent = notes.join(" · ");
  };

  const drawSide = () => {
    const { prompt, token, feature } = selection();
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
          item.append(el("span", "gs-hm-fid", `#${f}`), box, el("span", "gs-hm-value", formatValue(value)));
          list.append(item);
        }
        parts.push(list);
      }
    } else {
      parts.push(el("div", "gs-muted", "Click a token to list its top features."));
    }
    if (feature >= 0) {
      const title = el("h4", "gs-hm-feature-title", `Feature #${feature}`);
      parts.push(title);
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
    for (const b of blocks) b.showSelection();
    drawSide();
  };

  const drawGrids = () => {
    const n = Math.min(MAX_TOP_N, Math.max(1, model.get("top_n")));
    const by: RankBy = model.get("rank_by") === "sum" ? "sum" : "max";
    for (const b of blocks) b.setData(data.csr(b.index, sae()), data.featureMax(sae()), n, by);
    drawStatus();
    drawSelection();
  };

  const drawAll = () => {
    for (const b of blocks) b.destroy();
    data = new Payload(model.get("_header"), model.get("_data"));
    blocks = data.header.prompts.map((info, p) => new PromptGrid(p, info, selection));
    blocksEl.replaceChildren(...blocks.map((b) => b.root));
    drawToolbar();
    drawGrids();
  };

  const onClick = (event: MouseEvent) => {
    const target = event.target instanceof Element ? event.target : null;
    if (!target) return;
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
  const disposers = [keepKeys(root), onCommit(topInput, onTop)];

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
    ["change:list_k", drawSide],
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
    for (const dispose of disposers) dispose();
    for (const b of blocks) b.destroy();
  };
}

export default { render };
