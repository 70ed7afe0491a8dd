// Heatmap: a prompt's tokens × its top SAE features, coloured by activation.
// Mirrors gemscope_widgets/widgets/heatmap.py (traits) and payload.py (the binary layout).
import type { RenderProps } from "@anywidget/types";
import css from "./heatmap.css";
import { heatBackground, normalise } from "./lib/colors";
import { formatValue } from "./lib/format";
import { VirtualRows } from "./lib/grid";
import { asBytes, type ArrayRef, type Bytes, Csr, type RankBy, readFloat, readUint } from "./lib/sparse";
import { mountTheme, renderToken, renderTokens, visibleText } from "./lib/tokens";

interface SaeInfo {
  name: string;
  width: number;
  id_dtype: string;
  feature_max: { ids: ArrayRef; values: ArrayRef } | null;
}

interface PromptInfo {
  tokens: string[];
  special: boolean[];
  template: boolean[];
  chat: boolean;
}

interface BlockInfo {
  prompt: number;
  sae: number;
  n_tokens: number;
  nnz: number;
  clamped: number;
  indptr: ArrayRef;
  indices: ArrayRef;
  values: ArrayRef;
}

interface Header {
  version: number;
  top_k: number | null;
  saes: SaeInfo[];
  prompts: PromptInfo[];
  blocks: BlockInfo[];
  bytes: number;
}

interface Model {
  _header: Header;
  _data: Bytes;
  sae_index: number;
  top_n: number;
  rank_by: RankBy;
  list_k: number;
  selected_prompt: number;
  selected_feature: number;
  selected_token: number;
}

const ROW_HEIGHT = 22;
const MAX_TOP_N = 256;

/** The decoded payload: CSR blocks and corpus maxima, decoded lazily and cached. */
class Data {
  private csrs = new Map<string, Csr>();
  private maxima = new Map<number, Map<number, number> | null>();
  readonly bytes: Uint8Array;

  constructor(
    readonly header: Header,
    data: Bytes,
  ) {
    this.bytes = asBytes(data);
  }

  csr(prompt: number, sae: number): Csr {
    const key = `${prompt}/${sae}`;
    let csr = this.csrs.get(key);
    if (!csr) {
      const block = this.header.blocks.find((b) => b.prompt === prompt && b.sae === sae);
      if (!block) throw new Error(`no activations for prompt ${prompt}, SAE ${sae}`);
      csr = Csr.read(this.bytes, block, this.header.saes[sae].width);
      this.csrs.set(key, csr);
    }
    return csr;
  }

  featureMax(sae: number): Map<number, number> | null {
    if (!this.maxima.has(sae)) {
      const info = this.header.saes[sae]?.feature_max;
      let map: Map<number, number> | null = null;
      if (info) {
        const ids = readUint(this.bytes, info.ids);
        const values = readFloat(this.bytes, info.values);
        map = new Map();
        for (let i = 0; i < ids.length; i++) map.set(ids[i], values[i]);
      }
      this.maxima.set(sae, map);
    }
    return this.maxima.get(sae) ?? null;
  }
}

function element<K extends keyof HTMLElementTagNameMap>(tag: K, className = "", text?: string) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

/** One prompt's text view and grid, for the current SAE and ranking. */
class PromptBlock {
  readonly root = element("div", "gs-hm-block");
  private readonly text = element("div", "gs-hm-text");
  private readonly grid: VirtualRows;
  private spans: HTMLSpanElement[] = [];
  features: number[] = [];
  private matrix: Float32Array = new Float32Array(0);
  private colMax: number[] = [];
  csr!: Csr;
  maxima: Map<number, number> | null = null;

  constructor(
    readonly index: number,
    readonly info: PromptInfo,
    private readonly selection: () => { prompt: number; token: number; feature: number },
  ) {
    this.root.dataset.p = String(index);
    const kind = info.chat ? " · chat template" : "";
    const title = element("div", "gs-hm-title", `Prompt ${index + 1} · ${info.tokens.length} tokens${kind}`);
    this.grid = new VirtualRows({ rowHeight: ROW_HEIGHT, renderRow: (t) => this.renderRow(t) });
    this.grid.scroller.classList.add("gs-hm-grid");
    this.root.append(title, this.text, this.grid.scroller);
    this.spans = renderTokens(this.text, info.tokens, info.special);
    this.spans.forEach((span, i) => {
      if (info.template[i] && !info.special[i]) span.classList.add("gs-template");
    });
  }

  /** Recomputes the feature columns for a SAE / ranking / N. */
  setData(csr: Csr, maxima: Map<number, number> | null, n: number, by: RankBy): void {
    this.csr = csr;
    this.maxima = maxima;
    this.features = csr.topFeatures(n, by);
    this.matrix = csr.columns(this.features);
    const k = this.features.length;
    this.colMax = this.features.map((f, j) => {
      const corpus = maxima?.get(f);
      if (corpus !== undefined && corpus > 0) return corpus;
      let m = 0;
      for (let t = 0; t < csr.nRows; t++) m = Math.max(m, this.matrix[t * k + j]);
      return m;
    });
    this.renderHeader();
    this.grid.reset(this.info.tokens.length);
  }

  private renderHeader(): void {
    const head = element("div", "gs-hm-row gs-hm-head");
    head.append(element("div", "gs-hm-label", this.features.length ? "token \\ feature" : "no active features"));
    for (const f of this.features) {
      const cell = element("div", "gs-hm-fhead", String(f));
      cell.dataset.f = String(f);
      cell.title = `feature ${f}: click to colour the text by it`;
      head.append(cell);
    }
    this.grid.header.replaceChildren(head);
  }

  private renderRow(t: number): HTMLElement {
    const { prompt, token, feature } = this.selection();
    const row = element("div", "gs-hm-row");
    row.dataset.t = String(t);
    if (prompt === this.index && token === t) row.classList.add("gs-selected");
    const label = element("div", "gs-hm-label");
    label.dataset.t = String(t);
    label.append(element("span", "gs-hm-pos", String(t)));
    const tok = this.info.tokens[t];
    const span = element("span", this.info.special[t] ? "gs-token gs-special" : "gs-token", visibleText(tok));
    if (this.info.template[t] && !this.info.special[t]) span.classList.add("gs-template");
    label.append(span);
    label.title = `${t}: ${visibleText(tok)}`;
    row.append(label);
    const k = this.features.length;
    for (let j = 0; j < k; j++) {
      const f = this.features[j];
      const v = this.matrix[t * k + j];
      const cell = element("div", "gs-hm-cell");
      cell.dataset.t = String(t);
      cell.dataset.f = String(f);
      if (v > 0) cell.style.background = heatBackground(normalise(v, this.colMax[j]));
      cell.title = `#${f} · ${visibleText(tok)} · ${formatValue(v)}`;
      if (f === feature) cell.classList.add("gs-hm-col-selected");
      row.append(cell);
    }
    return row;
  }

  /** Re-colours the text by `feature` (or clears it) and redraws the selection marks. */
  showSelection(): void {
    const { prompt, token, feature } = this.selection();
    this.root.classList.toggle("gs-hm-current", prompt === this.index);
    const column = feature >= 0 && this.csr ? this.csr.column(feature) : null;
    let max = 0;
    if (column) {
      const corpus = this.maxima?.get(feature);
      max = corpus !== undefined && corpus > 0 ? corpus : column.reduce((a, b) => Math.max(a, b), 0);
    }
    this.spans.forEach((span, t) => {
      span.classList.toggle("gs-selected", prompt === this.index && token === t);
      const tok = visibleText(this.info.tokens[t]);
      if (column) {
        span.style.background = heatBackground(normalise(column[t], max));
        span.title = `${tok} · #${feature} = ${formatValue(column[t])}`;
      } else {
        span.style.background = "";
        span.title = tok;
      }
    });
    for (const head of this.grid.header.querySelectorAll<HTMLElement>(".gs-hm-fhead")) {
      head.classList.toggle("gs-selected", Number(head.dataset.f) === feature);
    }
    this.grid.refresh();
    if (prompt === this.index && token >= 0) this.grid.reveal(token);
  }

  destroy(): void {
    this.grid.destroy();
  }
}

function render({ model, el }: RenderProps<Model>): () => void {
  mountTheme(el, css);
  el.classList.add("gs-heatmap");
  const toolbar = element("div", "gs-hm-toolbar");
  const main = element("div", "gs-hm-main");
  const blocksEl = element("div", "gs-hm-blocks");
  const side = element("div", "gs-hm-side");
  main.append(blocksEl, side);
  el.append(toolbar, main);

  const saeSelect = element("select", "gs-hm-sae");
  const rankSelect = element("select", "gs-hm-rank");
  for (const by of ["max", "sum"]) {
    const opt = element("option", "", by === "max" ? "max activation" : "summed activation");
    opt.value = by;
    rankSelect.append(opt);
  }
  const topInput = element("input", "gs-hm-topn");
  topInput.type = "number";
  topInput.min = "1";
  topInput.max = String(MAX_TOP_N);
  const status = element("span", "gs-status gs-hm-status");

  let data: Data;
  let blocks: PromptBlock[] = [];
  const selection = () => ({
    prompt: model.get("selected_prompt"),
    token: model.get("selected_token"),
    feature: model.get("selected_feature"),
  });
  const sae = () => Math.min(Math.max(0, model.get("sae_index")), data.header.saes.length - 1);

  const select = (change: Partial<{ prompt: number; token: number; feature: number }>) => {
    if (change.prompt !== undefined) model.set("selected_prompt", change.prompt);
    if (change.token !== undefined) model.set("selected_token", change.token);
    if (change.feature !== undefined) model.set("selected_feature", change.feature);
    model.save_changes();
  };

  const labelled = (text: string, control: HTMLElement) => {
    const label = element("label", "", text);
    label.append(control);
    return label;
  };

  const drawToolbar = () => {
    const saes = data.header.saes;
    saeSelect.replaceChildren(
      ...saes.map((s, i) => {
        const opt = element("option", "", `${s.name} (${s.width} features)`);
        opt.value = String(i);
        return opt;
      }),
    );
    saeSelect.value = String(sae());
    rankSelect.value = model.get("rank_by");
    topInput.value = String(model.get("top_n"));
    const parts: HTMLElement[] = [];
    if (saes.length > 1) parts.push(labelled("SAE ", saeSelect));
    else parts.push(element("span", "gs-hm-sae-name", saes[0]?.name ?? ""));
    parts.push(labelled("top ", topInput), labelled("features by ", rankSelect), status);
    toolbar.replaceChildren(...parts);
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
      const head = element("h4", "gs-hm-side-title", `Token ${token}: `);
      head.append(renderToken(block.info.tokens[token], { special: block.info.special[token] }));
      parts.push(head);
      const rows = block.csr.row(token, model.get("list_k"));
      if (rows.length === 0) {
        const why = block.info.special[token] ? "special tokens are left out" : "no feature fires here";
        parts.push(element("div", "gs-muted", `No active features (${why}).`));
      } else {
        const list = element("ol", "gs-hm-list");
        const top = rows[0].value;
        for (const { feature: f, value } of rows) {
          const item = element("li", "gs-hm-item");
          item.dataset.f = String(f);
          if (f === feature) item.classList.add("gs-selected");
          const box = element("span", "gs-hm-barbox");
          const bar = element("span", "gs-hm-bar");
          bar.style.display = "block";
          bar.style.width = `${Math.max(2, Math.round(normalise(value, top) * 100))}%`;
          box.append(bar);
          item.append(element("span", "gs-hm-fid", `#${f}`), box, element("span", "gs-hm-value", formatValue(value)));
          list.append(item);
        }
        parts.push(list);
      }
    } else {
      parts.push(element("div", "gs-muted", "Click a token to list its top features."));
    }
    if (feature >= 0) {
      const title = element("h4", "gs-hm-feature-title", `Feature #${feature}`);
      parts.push(title);
      const lines = blocks.map((b) => {
        const col = b.csr.column(feature);
        let best = 0;
        for (let t = 1; t < col.length; t++) if (col[t] > col[best]) best = t;
        const text = col[best] > 0 ? `max ${formatValue(col[best])} at “${visibleText(b.info.tokens[best])}”` : "not active";
        return element("div", "gs-hm-feature-line", blocks.length > 1 ? `prompt ${b.index + 1}: ${text}` : text);
      });
      parts.push(...lines);
    } else {
      parts.push(element("div", "gs-muted", "Click a feature to colour the text by it."));
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
    data = new Data(model.get("_header"), model.get("_data"));
    blocks = data.header.prompts.map((info, p) => new PromptBlock(p, info, selection));
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
  const onTop = () => {
    const n = Math.round(Number(topInput.value));
    if (!Number.isFinite(n) || n < 1) return;
    model.set("top_n", Math.min(MAX_TOP_N, n));
    model.save_changes();
  };
  el.addEventListener("click", onClick);
  saeSelect.addEventListener("change", onSae);
  rankSelect.addEventListener("change", onRank);
  topInput.addEventListener("change", onTop);

  const onGrid = () => {
    drawToolbar();
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
    const msg = element("div", "gs-error", `Could not draw the heatmap: ${String(err)}`);
    el.append(msg);
  }

  return () => {
    for (const [name, fn] of events) model.off(name, fn);
    el.removeEventListener("click", onClick);
    for (const b of blocks) b.destroy();
  };
}

export default { render };
